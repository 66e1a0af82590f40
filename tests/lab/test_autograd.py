"""Step 1: `Value` gradients equal torch's in float64 on random graphs, deep chains and reuse."""

import math
import random

import torch

from krmini.lab.autograd import Value


def random_graph(seed: int, n_leaves: int = 5, n_ops: int = 60):
    """Build the same random expression twice, once with Value and once with torch tensors.

    Operands are drawn from all earlier nodes, so nodes are reused along many paths. Domains are
    kept safe: log and fractional powers only see positive inputs, division a denominator ≥ 1.
    """
    rng = random.Random(seed)
    leaves = [rng.uniform(-2, 2) for _ in range(n_leaves)]
    vs = [Value(x) for x in leaves]
    ts = [torch.tensor(x, dtype=torch.float64, requires_grad=True) for x in leaves]
    nodes = list(zip(vs, ts, strict=True))
    for _ in range(n_ops):
        op = rng.choice(["add", "sub", "mul", "div", "pow", "exp", "log", "tanh", "relu", "const"])
        (a, ta), (b, tb) = rng.choice(nodes), rng.choice(nodes)
        if op == "add":
            new = (a + b, ta + tb)
        elif op == "sub":
            new = (a - b, ta - tb)
        elif op == "mul":
            new = (a * b, ta * tb)
        elif op == "div":
            new = (a / (b * b + 1.0), ta / (tb * tb + 1.0))
        elif op == "pow":
            new = ((a * a + 0.5) ** 1.5, (ta * ta + 0.5) ** 1.5)
        elif op == "exp":
            new = (a.tanh().exp(), ta.tanh().exp())
        elif op == "log":
            new = ((a * a + 1.0).log(), (ta * ta + 1.0).log())
        elif op == "tanh":
            new = (a.tanh(), ta.tanh())
        elif op == "relu":
            new = (a.relu(), ta.relu())
        else:
            c = rng.uniform(-1, 1)
            new = (2.0 - a * c + 1.0 / (1.0 + b * b), 2.0 - ta * c + 1.0 / (1.0 + tb * tb))
        nodes.append(new)
    out_v = sum((v for v, _ in nodes[-10:]), Value(0.0))
    out_t = sum(t for _, t in nodes[-10:])
    return vs, ts, out_v, out_t


def torch_grad(t: torch.Tensor) -> float:
    """torch leaves a leaf's grad as None when no path reaches it; the true gradient is 0."""
    return 0.0 if t.grad is None else t.grad.item()


def test_random_graphs_match_torch():
    worst = 0.0
    for seed in range(20):
        vs, ts, out_v, out_t = random_graph(seed)
        out_v.backward()
        out_t.backward()
        assert math.isclose(out_v.data, out_t.item(), rel_tol=1e-12, abs_tol=1e-12)
        for v, t in zip(vs, ts, strict=True):
            worst = max(worst, abs(v.grad - torch_grad(t)) / max(1.0, abs(torch_grad(t))))
    assert worst < 1e-10, worst


def test_reused_node_accumulates_over_every_path():
    x = Value(3.0)
    y = x * x + x  # dy/dx = 2x + 1 = 7
    z = y * x  # dz/dx = (2x+1)·x + y = 21 + 12 = 33
    z.backward()
    assert x.grad == 33.0


def test_deep_chain_10000_nodes_without_recursion():
    x = Value(0.5)
    tx = torch.tensor(0.5, dtype=torch.float64, requires_grad=True)
    y, ty = x, tx
    for i in range(10_000):
        if i % 2:
            y, ty = y * 0.9999 + 0.0001, ty * 0.9999 + 0.0001
        else:
            y, ty = y.tanh() + y * 0.5, ty.tanh() + ty * 0.5
    y.backward()
    ty.backward()
    assert len(y.topo_order()) > 10_000
    assert abs(x.grad - tx.grad.item()) <= 1e-9 * max(1.0, abs(tx.grad.item()))


def test_zero_grad_makes_second_backward_correct():
    vs, ts, out_v, out_t = random_graph(123)
    out_v.backward()
    first = [v.grad for v in vs]
    out_v.backward()  # without zero_grad, stale gradients of inner nodes pile up
    assert any(not math.isclose(v.grad, g, rel_tol=1e-6) for v, g in zip(vs, first, strict=True))
    out_v.zero_grad()
    out_v.backward()
    out_t.backward()
    for v, t in zip(vs, ts, strict=True):
        assert math.isclose(v.grad, torch_grad(t), rel_tol=1e-10, abs_tol=1e-10)
