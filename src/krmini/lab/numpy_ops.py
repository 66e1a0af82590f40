"""Step 3: batch math in NumPy — softmax, log-softmax, cross-entropy and their gradients.

Softmax is invariant to adding a constant to every logit, so subtracting the row maximum first
keeps exp() from overflowing (logits of ±1000 are fine). Log-softmax is computed as
z − max − log Σ exp(z − max), never as log(softmax), which would underflow to log(0).

Cross-entropy of the true class y under p = softmax(z) is −log p_y, and its gradient with respect
to the logits is the famous p − onehot(y): the model is pushed up on the truth, down on the rest
in proportion to how much it believed them.

The digits classifier (scikit-learn's bundled 8×8 images, no download) is a one-hidden-layer
network whose backward pass is written out by hand with these pieces.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from krmini.errors import KrminiError


def softmax(z: np.ndarray, axis: int = -1) -> np.ndarray:
    e = np.exp(z - z.max(axis=axis, keepdims=True))
    return e / e.sum(axis=axis, keepdims=True)


def log_softmax(z: np.ndarray, axis: int = -1) -> np.ndarray:
    shifted = z - z.max(axis=axis, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=axis, keepdims=True))


def softmax_backward(p: np.ndarray, dp: np.ndarray) -> np.ndarray:
    """dL/dz from dL/dp for p = softmax(z): the Jacobian diag(p) − p pᵀ applied row by row."""
    return p * (dp - (dp * p).sum(axis=-1, keepdims=True))


def log_softmax_backward(logp: np.ndarray, dlogp: np.ndarray) -> np.ndarray:
    """dL/dz from dL/d(log p): dz = dlogp − p · Σ dlogp."""
    return dlogp - np.exp(logp) * dlogp.sum(axis=-1, keepdims=True)


def cross_entropy(z: np.ndarray, y: np.ndarray) -> tuple[float, np.ndarray]:
    """Mean −log p_y over the batch and its gradient (p − onehot(y)) / N with respect to z."""
    n = z.shape[0]
    logp = log_softmax(z)
    loss = -logp[np.arange(n), y].mean()
    dz = np.exp(logp)
    dz[np.arange(n), y] -= 1.0
    return float(loss), dz / n


def load_digits_split(seed: int = 0, test_fraction: float = 0.2):
    """8×8 digit images scaled to [0, 1], shuffled and split into train and test."""
    try:
        from sklearn.datasets import load_digits
    except ImportError as exc:
        raise KrminiError("scikit-learn: install the lab extra, pip install 'krmini[lab]'") from exc
    data = load_digits()
    x = data.data.astype(np.float64) / 16.0
    y = data.target.astype(np.int64)
    order = np.random.default_rng(seed).permutation(len(x))
    n_test = int(len(x) * test_fraction)
    test, train = order[:n_test], order[n_test:]
    return x[train], y[train], x[test], y[test]


@dataclass
class DigitsResult:
    train_loss: list[float]
    test_accuracy: float


def train_digits(
    hidden: int = 64, epochs: int = 30, lr: float = 0.1, batch: int = 32, seed: int = 0
) -> DigitsResult:
    """64 → hidden (ReLU) → 10, minibatch SGD with momentum; every gradient by hand."""
    xtr, ytr, xte, yte = load_digits_split(seed)
    rng = np.random.default_rng(seed)
    w1 = rng.normal(0, (2 / 64) ** 0.5, (64, hidden))
    b1 = np.zeros(hidden)
    w2 = rng.normal(0, (1 / hidden) ** 0.5, (hidden, 10))
    b2 = np.zeros(10)
    params = [w1, b1, w2, b2]
    velocity = [np.zeros_like(p) for p in params]
    losses = []
    for _ in range(epochs):
        order = rng.permutation(len(xtr))
        epoch_loss = 0.0
        for start in range(0, len(order), batch):
            idx = order[start : start + batch]
            x, y = xtr[idx], ytr[idx]
            h_pre = x @ w1 + b1
            h = np.maximum(h_pre, 0)
            loss, dz = cross_entropy(h @ w2 + b2, y)
            dh = (dz @ w2.T) * (h_pre > 0)
            grads = [x.T @ dh, dh.sum(0), h.T @ dz, dz.sum(0)]
            for p, v, g in zip(params, velocity, grads, strict=True):
                v *= 0.9
                v -= lr * g
                p += v
            epoch_loss += loss * len(idx)
        losses.append(epoch_loss / len(xtr))
    pred = (np.maximum(xte @ w1 + b1, 0) @ w2 + b2).argmax(1)
    return DigitsResult(train_loss=losses, test_accuracy=float((pred == yte).mean()))
