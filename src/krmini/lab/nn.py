"""Step 2: a multilayer perceptron built from `Value` scalars.

A neuron is w·x + b followed by a nonlinearity; a layer is a list of neurons reading the same
input; an MLP is layers in sequence. Nothing here knows about gradients: `Value` does all of it,
which is the point of step 1. Training XOR shows why the hidden layer matters (no single line
separates it).
"""

from __future__ import annotations

import random

from krmini.lab.autograd import Value


class Neuron:
    """tanh(w·x + b), or linear for an output neuron."""

    def __init__(self, n_in: int, rng: random.Random, nonlinear: bool = True) -> None:
        scale = n_in**-0.5
        self.w = [Value(rng.uniform(-scale, scale)) for _ in range(n_in)]
        self.b = Value(0.0)
        self.nonlinear = nonlinear

    def __call__(self, x: list[Value | float]) -> Value:
        act = sum((wi * xi for wi, xi in zip(self.w, x, strict=True)), self.b)
        return act.tanh() if self.nonlinear else act

    def parameters(self) -> list[Value]:
        return [*self.w, self.b]


class Layer:
    def __init__(self, n_in: int, n_out: int, rng: random.Random, nonlinear: bool = True) -> None:
        self.neurons = [Neuron(n_in, rng, nonlinear) for _ in range(n_out)]

    def __call__(self, x: list[Value | float]) -> list[Value]:
        return [n(x) for n in self.neurons]

    def parameters(self) -> list[Value]:
        return [p for n in self.neurons for p in n.parameters()]


class MLP:
    """Layers of the given sizes; the last layer is linear so it can output any real number."""

    def __init__(self, n_in: int, sizes: list[int], seed: int = 0) -> None:
        rng = random.Random(seed)
        dims = [n_in, *sizes]
        self.layers = [
            Layer(dims[i], dims[i + 1], rng, nonlinear=i < len(sizes) - 1) for i in range(len(sizes))
        ]

    def __call__(self, x: list[Value | float]) -> list[Value]:
        for layer in self.layers:
            x = layer(x)
        return x

    def parameters(self) -> list[Value]:
        return [p for layer in self.layers for p in layer.parameters()]


XOR_X = [[0.0, 0.0], [0.0, 1.0], [1.0, 0.0], [1.0, 1.0]]
XOR_Y = [-1.0, 1.0, 1.0, -1.0]


def train_xor(hidden: int = 8, steps: int = 200, lr: float = 0.1, seed: int = 0) -> tuple[MLP, list[float]]:
    """Fit XOR with mean squared error and plain gradient descent; returns the model and losses."""
    model = MLP(2, [hidden, 1], seed=seed)
    params = model.parameters()
    losses = []
    for _ in range(steps):
        loss = sum(((model(x)[0] - y) ** 2 for x, y in zip(XOR_X, XOR_Y, strict=True)), Value(0.0)) / 4
        for p in params:
            p.grad = 0.0
        loss.backward()
        for p in params:
            p.data -= lr * p.grad
        losses.append(loss.data)
    return model, losses


def xor_accuracy(model: MLP) -> float:
    hits = sum((model(x)[0].data > 0) == (y > 0) for x, y in zip(XOR_X, XOR_Y, strict=True))
    return hits / len(XOR_X)
