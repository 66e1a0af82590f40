"""Step 6: the complete math — a decoder-only language model in NumPy, backward pass by hand.

    x₀ = E[tokens] + PE
    xₗ' = xₗ + Attn(LN₁(xₗ))            causal multi-head attention
    xₗ₊₁ = xₗ' + W₂ act(W₁ LN₂(xₗ') + b₁) + b₂   ReLU or GELU
    logits = LN_f(x_L) W_out + b_out,   loss = mean −log softmax(logits)[target]

Every forward function returns its output and a cache; its backward twin takes dL/d(output) and
the cache and returns dL/d(input), adding parameter gradients into `grads`. That is all
backpropagation is: the chain rule applied layer by layer in reverse, each layer knowing only its
own local derivative. The tests check every gradient against finite differences and PyTorch.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from krmini.lab.attention import sinusoidal_positions
from krmini.lab.chardata import CharVocab, random_windows
from krmini.lab.numpy_ops import cross_entropy, softmax, softmax_backward

GELU_C = math.sqrt(2.0 / math.pi)


def linear_forward(x, w, b):
    return x @ w + b, x


def linear_backward(dy, x, w, grads, w_name, b_name):
    """y = xW + b: dW = xᵀ dy, db = Σ dy, dx = dy Wᵀ (summed over batch and time)."""
    grads[w_name] += x.reshape(-1, x.shape[-1]).T @ dy.reshape(-1, dy.shape[-1])
    grads[b_name] += dy.reshape(-1, dy.shape[-1]).sum(0)
    return dy @ w.T


def layernorm_forward(x, g, b, eps=1e-5):
    """Normalise each position to mean 0, variance 1, then scale by g and shift by b."""
    mu = x.mean(-1, keepdims=True)
    rstd = 1.0 / np.sqrt(x.var(-1, keepdims=True) + eps)
    xhat = (x - mu) * rstd
    return xhat * g + b, (xhat, rstd, g)


def layernorm_backward(dy, cache, grads, g_name, b_name):
    """dx = (1/σ)(dx̂ − mean(dx̂) − x̂·mean(dx̂ ⊙ x̂)), since x̂ depends on x through μ and σ too."""
    xhat, rstd, g = cache
    grads[g_name] += (dy * xhat).reshape(-1, g.shape[0]).sum(0)
    grads[b_name] += dy.reshape(-1, g.shape[0]).sum(0)
    dxhat = dy * g
    return rstd * (dxhat - dxhat.mean(-1, keepdims=True) - xhat * (dxhat * xhat).mean(-1, keepdims=True))


def gelu_forward(x):
    """GELU, tanh form: ½x(1 + tanh(√(2/π)(x + 0.044715x³)))."""
    t = np.tanh(GELU_C * (x + 0.044715 * x**3))
    return 0.5 * x * (1.0 + t), (x, t)


def gelu_backward(dy, cache):
    x, t = cache
    return dy * (0.5 * (1.0 + t) + 0.5 * x * (1.0 - t * t) * GELU_C * (1.0 + 3 * 0.044715 * x * x))


def relu_forward(x):
    return np.maximum(x, 0.0), x > 0


def relu_backward(dy, positive):
    return dy * positive


ACTIVATIONS = {"relu": (relu_forward, relu_backward), "gelu": (gelu_forward, gelu_backward)}


def attention_forward(x, p, name, n_heads):
    """Causal multi-head self-attention; returns (B, T, C) and what backward needs."""
    b, t, c = x.shape
    hd = c // n_heads
    qkv, x_in = linear_forward(x, p[f"{name}.w_qkv"], p[f"{name}.b_qkv"])
    q, k, v = (a.reshape(b, t, n_heads, hd).transpose(0, 2, 1, 3) for a in np.split(qkv, 3, axis=-1))
    scores = q @ k.transpose(0, 1, 3, 2) / math.sqrt(hd)
    scores = np.where(np.tril(np.ones((t, t), dtype=bool)), scores, -np.inf)
    probs = softmax(scores)
    merged = (probs @ v).transpose(0, 2, 1, 3).reshape(b, t, c)
    out, merged_in = linear_forward(merged, p[f"{name}.w_o"], p[f"{name}.b_o"])
    return out, (x_in, q, k, v, probs, merged_in)


def attention_backward(dout, cache, p, grads, name):
    """Back through the output projection, P·V, the softmax (masked entries have P = 0, so no
    gradient leaks to the future), Q·Kᵀ/√d and the input projection."""
    x_in, q, k, v, probs, merged_in = cache
    b, h, t, hd = q.shape
    dmerged = linear_backward(dout, merged_in, p[f"{name}.w_o"], grads, f"{name}.w_o", f"{name}.b_o")
    dheads = dmerged.reshape(b, t, h, hd).transpose(0, 2, 1, 3)
    dprobs = dheads @ v.transpose(0, 1, 3, 2)
    dv = probs.transpose(0, 1, 3, 2) @ dheads
    dscores = softmax_backward(probs, dprobs) / math.sqrt(hd)
    dq = dscores @ k
    dk = dscores.transpose(0, 1, 3, 2) @ q
    dqkv = np.concatenate([a.transpose(0, 2, 1, 3).reshape(b, t, h * hd) for a in (dq, dk, dv)], axis=-1)
    return linear_backward(dqkv, x_in, p[f"{name}.w_qkv"], grads, f"{name}.w_qkv", f"{name}.b_qkv")


@dataclass
class LMConfig:
    vocab: int
    block: int = 32
    d_model: int = 64
    n_heads: int = 4
    n_layers: int = 2
    activation: str = "gelu"


class NumpyLM:
    """Parameters live in a flat dict so the optimiser, gradient check and PyTorch test can walk them."""

    def __init__(self, cfg: LMConfig, seed: int = 0, init_std: float = 0.02) -> None:
        if cfg.activation not in ACTIVATIONS:
            raise ValueError(f"activation must be one of {sorted(ACTIVATIONS)}")
        self.cfg = cfg
        rng = np.random.default_rng(seed)
        c, f = cfg.d_model, 4 * cfg.d_model

        def normal(*shape):
            return rng.normal(0.0, init_std, shape)

        p = {"wte": normal(cfg.vocab, c)}
        for i in range(cfg.n_layers):
            n = f"h{i}"
            p |= {
                f"{n}.ln1.g": np.ones(c),
                f"{n}.ln1.b": np.zeros(c),
                f"{n}.ln2.g": np.ones(c),
                f"{n}.ln2.b": np.zeros(c),
            }
            p |= {f"{n}.attn.w_qkv": normal(c, 3 * c), f"{n}.attn.b_qkv": np.zeros(3 * c)}
            p |= {f"{n}.attn.w_o": normal(c, c), f"{n}.attn.b_o": np.zeros(c)}
            p |= {
                f"{n}.ffn.w1": normal(c, f),
                f"{n}.ffn.b1": np.zeros(f),
                f"{n}.ffn.w2": normal(f, c),
                f"{n}.ffn.b2": np.zeros(c),
            }
        p |= {
            "lnf.g": np.ones(c),
            "lnf.b": np.zeros(c),
            "w_out": normal(c, cfg.vocab),
            "b_out": np.zeros(cfg.vocab),
        }
        self.params = p
        self.pe = sinusoidal_positions(cfg.block, c)

    def loss_and_grads(self, idx: np.ndarray, targets: np.ndarray) -> tuple[float, dict[str, np.ndarray]]:
        """One forward pass (caching what each layer needs) and one hand-written backward pass."""
        p, cfg = self.params, self.cfg
        act_fwd, act_bwd = ACTIVATIONS[cfg.activation]
        x = p["wte"][idx] + self.pe[: idx.shape[1]]
        caches = []
        for i in range(cfg.n_layers):
            n = f"h{i}"
            h, ln1 = layernorm_forward(x, p[f"{n}.ln1.g"], p[f"{n}.ln1.b"])
            a, att = attention_forward(h, p, f"{n}.attn", cfg.n_heads)
            x = x + a
            h, ln2 = layernorm_forward(x, p[f"{n}.ln2.g"], p[f"{n}.ln2.b"])
            u, fc1 = linear_forward(h, p[f"{n}.ffn.w1"], p[f"{n}.ffn.b1"])
            z, act = act_fwd(u)
            y, fc2 = linear_forward(z, p[f"{n}.ffn.w2"], p[f"{n}.ffn.b2"])
            x = x + y
            caches.append((ln1, att, ln2, fc1, act, fc2))
        h, lnf = layernorm_forward(x, p["lnf.g"], p["lnf.b"])
        logits, head_in = linear_forward(h, p["w_out"], p["b_out"])
        loss, dlogits = cross_entropy(logits.reshape(-1, cfg.vocab), targets.reshape(-1))

        grads = {k: np.zeros_like(v) for k, v in p.items()}
        dh = linear_backward(dlogits.reshape(logits.shape), head_in, p["w_out"], grads, "w_out", "b_out")
        dx = layernorm_backward(dh, lnf, grads, "lnf.g", "lnf.b")
        for i in reversed(range(cfg.n_layers)):
            n = f"h{i}"
            ln1, att, ln2, fc1, act, fc2 = caches[i]
            # A residual x + f(x) passes dx through unchanged and adds f's contribution.
            dz = linear_backward(dx, fc2, p[f"{n}.ffn.w2"], grads, f"{n}.ffn.w2", f"{n}.ffn.b2")
            dh = linear_backward(act_bwd(dz, act), fc1, p[f"{n}.ffn.w1"], grads, f"{n}.ffn.w1", f"{n}.ffn.b1")
            dx = dx + layernorm_backward(dh, ln2, grads, f"{n}.ln2.g", f"{n}.ln2.b")
            dh = attention_backward(dx, att, p, grads, f"{n}.attn")
            dx = dx + layernorm_backward(dh, ln1, grads, f"{n}.ln1.g", f"{n}.ln1.b")
        np.add.at(grads["wte"], idx, dx)
        return loss, grads

    def loss(self, idx: np.ndarray, targets: np.ndarray) -> float:
        return self.loss_and_grads(idx, targets)[0]


class Adam:
    """m ← β₁m + (1−β₁)g, v ← β₂v + (1−β₂)g², θ ← θ − lr·m̂/(√v̂ + ε) with bias-corrected m̂, v̂."""

    def __init__(self, params: dict[str, np.ndarray], lr: float = 3e-3, betas=(0.9, 0.999), eps=1e-8) -> None:
        self.params, self.lr, self.betas, self.eps = params, lr, betas, eps
        self.m = {k: np.zeros_like(v) for k, v in params.items()}
        self.v = {k: np.zeros_like(v) for k, v in params.items()}
        self.t = 0

    def step(self, grads: dict[str, np.ndarray]) -> None:
        self.t += 1
        b1, b2 = self.betas
        for k, g in grads.items():
            self.m[k] = b1 * self.m[k] + (1 - b1) * g
            self.v[k] = b2 * self.v[k] + (1 - b2) * g * g
            m_hat = self.m[k] / (1 - b1**self.t)
            v_hat = self.v[k] / (1 - b2**self.t)
            self.params[k] -= self.lr * m_hat / (np.sqrt(v_hat) + self.eps)


def gradient_check(
    model: NumpyLM, idx: np.ndarray, targets: np.ndarray, eps: float = 1e-6
) -> dict[str, float]:
    """Relative error ‖g_analytic − g_numeric‖ / (‖g_analytic‖ + ‖g_numeric‖) per parameter, with
    central differences (L(θ+ε) − L(θ−ε)) / 2ε, whose error is O(ε²)."""
    _, grads = model.loss_and_grads(idx, targets)
    errors = {}
    for name, param in model.params.items():
        numeric = np.zeros_like(param)
        for i in np.ndindex(param.shape):
            old = param[i]
            param[i] = old + eps
            up = model.loss(idx, targets)
            param[i] = old - eps
            down = model.loss(idx, targets)
            param[i] = old
            numeric[i] = (up - down) / (2 * eps)
        denom = np.linalg.norm(grads[name]) + np.linalg.norm(numeric)
        errors[name] = float(np.linalg.norm(grads[name] - numeric) / denom) if denom else 0.0
    return errors


@dataclass
class CharLMResult:
    model: NumpyLM
    vocab: CharVocab
    losses: list[float]
    initial_eval: float
    final_eval: float


def train_char_lm(
    text: str, steps: int = 200, cfg: LMConfig | None = None, batch: int = 8, lr: float = 3e-3, seed: int = 0
) -> CharLMResult:
    """Train on `text` character by character with Adam; loss is measured on a fixed set of windows
    before and after so the two numbers are comparable."""
    vocab = CharVocab(text)
    data = vocab.encode(text)
    cfg = cfg or LMConfig(vocab=len(vocab))
    cfg.vocab = len(vocab)
    model = NumpyLM(cfg, seed=seed)
    rng = np.random.default_rng(seed)
    eval_x, eval_y = random_windows(data, cfg.block, 32, np.random.default_rng(seed + 1))
    initial = model.loss(eval_x, eval_y)
    opt = Adam(model.params, lr=lr)
    losses = []
    for _ in range(steps):
        loss, grads = model.loss_and_grads(*random_windows(data, cfg.block, batch, rng))
        opt.step(grads)
        losses.append(loss)
    return CharLMResult(model, vocab, losses, initial, model.loss(eval_x, eval_y))
