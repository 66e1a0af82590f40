"""Step 1: a scalar autograd engine.

Every `Value` remembers the values it was computed from and how to push its gradient back to
them (the local derivative of one operation). `backward()` orders the graph topologically with an
explicit stack instead of recursion, so a chain of 10,000 nodes works, then applies the chain rule
from the output back. Gradients are *added* (`+=`), which is what makes a reused node correct: the
derivative of the output sums over every path through it.
"""

from __future__ import annotations

import math


class Value:
    """A scalar that records the operation that made it, so its gradient can flow back."""

    __slots__ = ("data", "grad", "_parents", "_backward", "op")

    def __init__(self, data: float, parents: tuple[Value, ...] = (), op: str = "") -> None:
        self.data = float(data)
        self.grad = 0.0
        self._parents = parents
        self._backward = None
        self.op = op

    def __repr__(self) -> str:
        return f"Value(data={self.data:.6g}, grad={self.grad:.6g})"

    @staticmethod
    def lift(x: Value | float) -> Value:
        return x if isinstance(x, Value) else Value(x)

    def __add__(self, other: Value | float) -> Value:
        other = Value.lift(other)
        out = Value(self.data + other.data, (self, other), "+")

        def backward() -> None:
            self.grad += out.grad
            other.grad += out.grad

        out._backward = backward
        return out

    def __mul__(self, other: Value | float) -> Value:
        other = Value.lift(other)
        out = Value(self.data * other.data, (self, other), "*")

        def backward() -> None:
            self.grad += other.data * out.grad
            other.grad += self.data * out.grad

        out._backward = backward
        return out

    def __pow__(self, exponent: float) -> Value:
        """x**p for a constant p: d/dx = p·x**(p-1)."""
        if isinstance(exponent, Value):
            raise TypeError("Value ** Value is not supported; use exp(log(x) * y)")
        out = Value(self.data**exponent, (self,), f"**{exponent}")

        def backward() -> None:
            self.grad += exponent * self.data ** (exponent - 1) * out.grad

        out._backward = backward
        return out

    def exp(self) -> Value:
        out = Value(math.exp(self.data), (self,), "exp")

        def backward() -> None:
            self.grad += out.data * out.grad

        out._backward = backward
        return out

    def log(self) -> Value:
        out = Value(math.log(self.data), (self,), "log")

        def backward() -> None:
            self.grad += out.grad / self.data

        out._backward = backward
        return out

    def tanh(self) -> Value:
        t = math.tanh(self.data)
        out = Value(t, (self,), "tanh")

        def backward() -> None:
            self.grad += (1.0 - t * t) * out.grad

        out._backward = backward
        return out

    def relu(self) -> Value:
        out = Value(max(self.data, 0.0), (self,), "relu")

        def backward() -> None:
            self.grad += (self.data > 0) * out.grad

        out._backward = backward
        return out

    def __neg__(self) -> Value:
        return self * -1.0

    def __sub__(self, other: Value | float) -> Value:
        return self + (-Value.lift(other))

    def __truediv__(self, other: Value | float) -> Value:
        return self * Value.lift(other) ** -1.0

    def __radd__(self, other: float) -> Value:
        return self + other

    def __rmul__(self, other: float) -> Value:
        return self * other

    def __rsub__(self, other: float) -> Value:
        return Value.lift(other) - self

    def __rtruediv__(self, other: float) -> Value:
        return Value.lift(other) / self

    def topo_order(self) -> list[Value]:
        """Every node reachable from self, parents before children, found without recursion.

        Depth-first with an explicit stack: a node is pushed once to expand its parents and once
        more (flagged) to be emitted after all of them.
        """
        order: list[Value] = []
        seen: set[int] = set()
        stack: list[tuple[Value, bool]] = [(self, False)]
        while stack:
            node, expanded = stack.pop()
            if expanded:
                order.append(node)
                continue
            if id(node) in seen:
                continue
            seen.add(id(node))
            stack.append((node, True))
            stack.extend((p, False) for p in node._parents if id(p) not in seen)
        return order

    def zero_grad(self) -> None:
        """Reset the gradient of every node in this graph, so the next backward starts clean."""
        for node in self.topo_order():
            node.grad = 0.0

    def backward(self) -> None:
        """d(self)/d(node) for every node in the graph, accumulated into `node.grad`."""
        order = self.topo_order()
        self.grad = 1.0
        for node in reversed(order):
            if node._backward is not None:
                node._backward()
