"""Step 2: an MLP of `Value` scalars learns XOR."""

from krmini.lab.nn import MLP, train_xor, xor_accuracy


def test_xor_reaches_full_accuracy():
    model, losses = train_xor(hidden=8, steps=200, lr=0.1, seed=0)
    assert xor_accuracy(model) == 1.0
    assert losses[-1] < 0.05 < losses[0]


def test_mlp_parameter_count():
    model = MLP(2, [8, 1])
    assert len(model.parameters()) == 2 * 8 + 8 + 8 + 1
