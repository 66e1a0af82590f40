"""Step 3: stable softmax / log-softmax / cross-entropy equal torch, gradients included."""

import numpy as np
import torch
import torch.nn.functional as F

from krmini.lab.numpy_ops import (
    cross_entropy,
    log_softmax,
    log_softmax_backward,
    softmax,
    softmax_backward,
    train_digits,
)


def test_extreme_logits_do_not_overflow():
    z = np.array([[1000.0, -1000.0, 0.0], [-1000.0, -1000.0, -1000.0]])
    with np.errstate(over="raise", invalid="raise", divide="raise"):  # underflow to 0 is fine
        p = softmax(z)
        logp = log_softmax(z)
        loss, _ = cross_entropy(z, np.array([1, 2]))
    assert np.allclose(p[0], [1, 0, 0]) and np.allclose(p[1], 1 / 3)
    assert np.isfinite(logp).all() and logp[0, 1] == -2000.0
    assert abs(loss - (2000.0 + np.log(3)) / 2) < 1e-9


def test_values_and_gradients_match_torch():
    rng = np.random.default_rng(0)
    z = rng.normal(0, 5, (7, 11))
    y = rng.integers(0, 11, 7)
    upstream = rng.normal(size=z.shape)
    tz = torch.tensor(z, requires_grad=True)

    tp = torch.softmax(tz, -1)
    (tp * torch.tensor(upstream)).sum().backward()
    assert np.abs(softmax(z) - tp.detach().numpy()).max() < 1e-12
    assert np.abs(softmax_backward(softmax(z), upstream) - tz.grad.numpy()).max() < 1e-12

    tz.grad = None
    tl = torch.log_softmax(tz, -1)
    (tl * torch.tensor(upstream)).sum().backward()
    assert np.abs(log_softmax(z) - tl.detach().numpy()).max() < 1e-12
    assert np.abs(log_softmax_backward(log_softmax(z), upstream) - tz.grad.numpy()).max() < 1e-12

    tz.grad = None
    tloss = F.cross_entropy(tz, torch.tensor(y))
    tloss.backward()
    loss, dz = cross_entropy(z, y)
    assert abs(loss - tloss.item()) < 1e-12
    assert np.abs(dz - tz.grad.numpy()).max() < 1e-12


def test_numpy_classifier_on_digits_reaches_95_percent():
    result = train_digits(epochs=15)
    assert result.test_accuracy >= 0.95, result.test_accuracy
    assert result.train_loss[-1] < 0.1 * result.train_loss[0]
