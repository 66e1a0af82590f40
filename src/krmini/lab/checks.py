"""Step 1's referee: the same random expression built with `Value` and with torch tensors.

Shared by the tests and `krmini lab autograd`, so the command prints the number the tests assert.
"""

from __future__ import annotations

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


def autograd_vs_torch(n_graphs: int = 20, seed: int = 0) -> float:
    """Worst relative gradient error of `Value` against torch (float64) over random graphs."""
    worst = 0.0
    for s in range(seed, seed + n_graphs):
        vs, ts, out_v, out_t = random_graph(s)
        out_v.backward()
        out_t.backward()
        for v, t in zip(vs, ts, strict=True):
            worst = max(worst, abs(v.grad - torch_grad(t)) / max(1.0, abs(torch_grad(t))))
    return worst
