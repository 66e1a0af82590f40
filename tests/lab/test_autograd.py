"""Step 1: `Value` gradients equal torch's in float64 on random graphs, deep chains and reuse."""

import math

import torch

from krmini.lab.autograd import Value
from krmini.lab.checks import autograd_vs_torch, random_graph, torch_grad


def test_random_graphs_match_torch():
    for seed in range(20):
        _, _, out_v, out_t = random_graph(seed)
        assert math.isclose(out_v.data, out_t.item(), rel_tol=1e-12, abs_tol=1e-12)
    worst = autograd_vs_torch(n_graphs=20)
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
