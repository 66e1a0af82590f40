"""The decode step compiled with `torch.compile`: one graph per token instead of ~150 PyTorch calls.

On a small model a decode step is mostly fixed cost: every RMSNorm, RoPE rotation, cache write and
residual add is its own PyTorch call with its own dispatch, and the matmuls are small. Inductor
fuses the elementwise work into a few C++ loops and calls oneDNN with weights it packed once
(`freezing`); on CPU it also swaps oneDNN for its own C++ micro-GEMM wherever that measures faster.
The ~6M model decodes about 2.4× faster. The price is a compile of 20–80 s per shape on a 2-core CPU
(batch 1 and a batch; less in later processes, from Inductor's on-disk cache), which is why it is
opt-in (`--compile`) and worth it for long generations and servers, not for one short prompt.

A compiled graph needs fixed shapes, but a growing cache has a new length every token. So the step
always attends over the whole preallocated cache, with the unfilled slots masked, and takes the
write position as a tensor (`SlotCache`). The cache is allocated at a bucketed length
(`cache_length`), so most generations reuse one compiled graph.
"""

from __future__ import annotations

import functools
import warnings

import torch
import torch._dynamo.config
import torch._inductor.config

from krmini import hardware
from krmini.infer.fast.fused import PackedLinear
from krmini.model import KVCache, LlamaModel
from krmini.model.info import count_parameters

CACHE_BUCKET = 256  # cache lengths are multiples of this (capped at the context)
RECOMPILE_LIMIT = 64
# On CPU the graph's caller is C++, not Python: a step makes ~100 calls (matmuls, attention
# kernels), and Python's few µs around each one add up to ~10% of a 135M model's step.
CPU_WRAPPER = {"cpp_wrapper": True}
# On CPU, let Inductor's autotuner pick its own C++ micro-GEMM where it beats the oneDNN call: for a
# single row against a small matrix the call's fixed cost dominates (2-5 µs against ~20 µs).
CPU_GEMM = {"max_autotune": True, "max_autotune_gemm_backends": "CPP,ATEN",
            "autotune_num_choices_displayed": 0, "max_autotune_report_choices_stats": False}  # quiet
# Where our bf16 kernel runs (`gemv.py`) the bf16 matmuls are its calls and there is nothing to tune.
# Elsewhere: the autotuner times each matmul alone, with its weight hot in cache. Once a bf16 model's weights
# are well past the CPU's cache they stream from memory on every token, and there the bf16
# micro-GEMMs it picked ran at 17-19 GB/s against oneDNN's 24-33 (135M model, x86-64 without AMX):
# past this size bf16 keeps oneDNN. fp32 and int8 of that model gained from it (fp32 87.9 against 67.3
# tokens/s), and so did bf16 of the ~6M model (2,503 against 1,687).
BF16_AUTOTUNE_MAX_BYTES = 64 << 20


def cache_length(needed: int, context: int) -> int:
    """Round a cache length up to the next bucket: fewer distinct shapes, fewer compiles."""
    return min(context, -(-needed // CACHE_BUCKET) * CACHE_BUCKET)


class SlotCache(KVCache):
    """The cache as the compiled step sees it: the write position is a tensor (`slot`, shape (1,)),
    and attention reads every slot — the key mask hides the ones not yet written."""

    def __init__(self, k: list[torch.Tensor], v: list[torch.Tensor], slot: torch.Tensor) -> None:
        super().__init__(k, v)
        self.slot = slot

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        self.k[layer].index_copy_(2, self.slot, k.to(self.k[layer].dtype))
        self.v[layer].index_copy_(2, self.slot, v.to(self.v[layer].dtype))
        return self.k[layer], self.v[layer]

    def attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """One query per row, as products, sums and a softmax instead of SDPA: Inductor fuses them
        into a few C++ loops, where an SDPA call costs ~35 µs a layer on CPU, more than its arithmetic.
        q: (B, heads, 1, head_dim); k, v: (B, kv_heads, slots, head_dim); mask: (B, 1, 1, slots)."""
        B, H, _, D = q.shape
        groups = k.shape[1]
        q = q.view(B, groups, H // groups, 1, D)  # the query heads that share each key/value head
        scores = (q * k[:, :, None]).sum(-1) * D**-0.5  # (B, kv_heads, group, slots)
        scores = scores.masked_fill(~mask.view(B, 1, 1, -1), float("-inf"))
        out = (scores.softmax(-1)[..., None] * v[:, :, None]).sum(-2)  # (B, kv_heads, group, head_dim)
        return out.view(B, H, 1, D)


def _decode_step(model: LlamaModel, tokens: torch.Tensor, positions: torch.Tensor, slot: torch.Tensor,
                 key_ok: torch.Tensor, keys: list[torch.Tensor], values: list[torch.Tensor]) -> torch.Tensor:
    """Logits (B, V) for one new token per row; writes its keys/values at `slot` of every layer."""
    cos, sin = model.rope_cos[positions], model.rope_sin[positions]
    slots = torch.arange(keys[0].shape[2], device=tokens.device)
    mask = (key_ok & (slots <= slot))[:, None, None, :]
    cache = SlotCache(keys, values, slot)
    x = model.model.embed_tokens(tokens)
    for i, layer in enumerate(model.model.layers):
        x = layer(x, cos, sin, cache, i, mask)
    return model.logits(model.model.norm(x))[:, -1]


def _streams_bf16_weights(model: LlamaModel) -> bool:
    """Whether `model`'s matmuls are bf16 and read more than BF16_AUTOTUNE_MAX_BYTES per token (the
    layers and the LM head; an untied embedding is read one row at a time)."""
    head = model.lm_head  # nn.Linear, fused PackedLinear or Int8Linear
    weight = head.packed if isinstance(head, PackedLinear) else head.weight
    counts = count_parameters(model.config)
    read = counts["layers"] + (counts["lm_head"] or counts["embedding"])  # a tied head is the embedding
    return weight.dtype == torch.bfloat16 and 2 * read > BF16_AUTOTUNE_MAX_BYTES


def _compiles() -> bool:
    """The probe: Inductor compiles and runs a tiny function (it needs a working C++ compiler on CPU)."""
    x = torch.arange(8, dtype=torch.float32)
    with torch._dynamo.config.patch(recompile_limit=RECOMPILE_LIMIT):
        return bool(torch.equal(torch.compile(lambda t: t * 2 + 1, fullgraph=True)(x), x * 2 + 1))


def compile_available() -> bool:
    """Whether `torch.compile` works in this process (probed once: a few seconds on a 2-core CPU)."""
    return hardware.probe("torch-compile", _compiles).ok


class CompiledDecoder:
    """`model`'s decode step under `torch.compile` (Inductor, weights frozen as constants).

    Freezing folds the weights into the graph as constants, so the model must not change after the
    first call. Plain, fused (`fuse_for_decoding`) and int8 models all compile. Where compiling
    fails (no C++ compiler, an unsupported device, a graph Inductor rejects), one line says so and
    the same step runs eagerly: the tokens are the same, only slower.
    """

    def __init__(self, model: LlamaModel) -> None:
        self._eager = functools.partial(_decode_step, model)
        self._step = torch.compile(self._eager, fullgraph=True)
        options = {"freezing": True}
        if model.rope_cos.device.type == "cpu":
            options |= CPU_WRAPPER
            if not _streams_bf16_weights(model):
                options |= CPU_GEMM
        # Inductor reads these from its global config when it compiles (in torch 2.13 the `options=`
        # route does not reach the freezing pass); a scoped patch keeps them off for any other graph
        # in the process, such as a training run's evaluation.
        self._config = torch._inductor.config.patch(options)
        # Dynamo keeps at most `recompile_limit` (8) graphs of one function, and every model and
        # new shape is a graph of `_decode_step`: several decoders in one process (the benchmark
        # has four) would run out, which with fullgraph=True is an error.
        self._limit = torch._dynamo.config.patch(recompile_limit=RECOMPILE_LIMIT)
        # torch 2.13's autotuner calls a deprecated storage API; the warning is noise to a user
        warnings.filterwarnings("ignore", "TypedStorage is deprecated", UserWarning, "torch._inductor")

    @staticmethod
    def cache_length(needed: int, context: int) -> int:
        return cache_length(needed, context)

    def __call__(self, tokens: torch.Tensor, positions: torch.Tensor, key_ok: torch.Tensor,
                 cache: KVCache) -> torch.Tensor:
        """tokens, positions: (B, 1); key_ok: (B, max_len) False on pad slots. Advances `cache`."""
        slot = torch.tensor([cache.length], device=tokens.device)
        with torch.inference_mode(), self._config, self._limit:
            try:
                logits = self._step(tokens, positions, slot, key_ok, cache.k, cache.v)
            except Exception as exc:  # Dynamo, Inductor or the C++ compiler: fall back to the eager step
                if self._step is self._eager:
                    raise
                reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
                hardware.say_once("compile-failed", f"--compile: torch.compile could not compile the decode "
                                  f"step ({reason[:160]}); decoding without it")
                self._step = self._eager
                logits = self._step(tokens, positions, slot, key_ok, cache.k, cache.v)
        cache.length += 1
        return logits
