"""The inference engine: one prefill, then a decode loop over a static batch of sequences.

    prompts ──left-pad──▶ prefill (one forward pass, fills a preallocated KV cache)
            ──n copies of each prompt's cache rows──▶ decode: feed the newest token of every row,
            penalise / sample per request, stop on stop ids, stop strings or the length limit

Prompts of different lengths share one batch by left padding: pad slots are masked out of every
key set (`attn_mask`) and each row's positions start at 0 at its first real token (`position_ids`),
so a row computes what it would alone. Everything per step is preallocated or a view (cache, key
mask, positions); what remains per token is the model's own activations and the logits.

The CLI, the chat REPL and the server all use this one engine: `Engine.stream` for a single
streamed prompt, `Engine.stream_batch` / `Engine.generate_batch` for concurrent requests, and
`Engine.embed` for texts as vectors (the server's /v1/embeddings). It is the
plain path and depends only on the model, sampling and text streaming; the speed layers
(`krmini.infer.fast`: fused layers, our kernels, int8, the compiled step) plug in from outside, as a
rebuilt model and an optional `Decoder` (`krmini.infer.build.build_engine` does both).

A continuation ends at a stop id: EOS, `<|end|>` and `<|bos|>` by default (a new document starts:
what follows belongs to another text). Special tokens are never printed as text.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import torch

from krmini.errors import KrminiError
from krmini.infer.sampling import SamplingConfig, apply_penalties, sample_next
from krmini.infer.textstream import StopStrings, TextStream
from krmini.model import KVCache, LlamaModel
from krmini.tokenizer import KoTokenizer

Prompt = str | list[int]


class PromptTooLong(KrminiError):
    """A prompt that leaves no position for a new token. Its message tells the Python API's way out
    (truncate='left'); each front door names its own with `worded` (the CLI: `--truncate left`)."""

    def __init__(self, tokens: int, context: int, option: str = "truncate='left'") -> None:
        self.tokens, self.context = tokens, context
        super().__init__(f"prompt: {tokens} tokens, but the model's context is {context} (at most {context - 1} "
                         f"prompt tokens); shorten it or pass {option} to keep its end")

    def worded(self, option: str) -> PromptTooLong:
        """The same error, naming the front door's spelling of the `truncate` setting."""
        return PromptTooLong(self.tokens, self.context, option)


def fit_prompt(ids: list[int], context: int, cfg: SamplingConfig) -> list[int]:
    """Apply the context rule: a prompt needs at least one free position for a new token. With
    truncate="left" a prompt keeps its last context − max_new_tokens tokens (at least one), so the
    request still gets the room it asks for; otherwise `max_new_tokens` is capped by what is left."""
    if not ids:
        raise KrminiError("prompt: empty; give at least one token of text")
    if cfg.truncate == "left":
        keep = max(context - cfg.max_new_tokens, 1)
        return ids[len(ids) - keep:] if len(ids) > keep else ids
    if len(ids) >= context:
        raise PromptTooLong(len(ids), context)
    return ids


def kv_cache_dtype(dtype: torch.dtype, device: torch.device) -> torch.dtype:
    """fp32 for a bf16 model on CPU: PyTorch's CPU attention kernel is 3–5× slower in bf16 than in fp32
    for one query row (52–102 µs against 14–19 µs for `small`'s heads on 2 cores), and the cache stores
    the bf16 keys and values exactly. Everywhere else the cache has the model's dtype."""
    return torch.float32 if device.type == "cpu" and dtype == torch.bfloat16 else dtype


class Decoder(Protocol):
    """A replacement decode step (`krmini.infer.fast.compiled.CompiledDecoder`): logits (B, V) for one
    new token per row, advancing the cache. It may want the cache allocated at a length of its own."""

    def cache_length(self, needed: int, context: int) -> int: ...

    def __call__(self, tokens: torch.Tensor, positions: torch.Tensor, key_ok: torch.Tensor,
                 cache: KVCache) -> torch.Tensor: ...


class DecodeBatch:
    """Token-level state of one batch: prefill on construction, then `step()` until `running` is False.

    `prompts` are token ids (already fitted to the context); request i gets `cfgs[i].n` rows, which
    copy its prefilled cache rows. `step()` returns (row, token id or None, finish reason or None)
    for every row still running; a row that hits a stop id reports (row, None, "stop").

    Requests share the forward pass but nothing else: each is sampled on its own, and one whose
    sampling raises ends alone, its rows reporting (row, None, "error") with the exception kept in
    `failed[request]`, while the others go on. `cancel(request)` ends a request's rows silently
    (its client left); a request with no row left is no longer sampled.
    """

    def __init__(self, model: LlamaModel, prompts: list[list[int]], cfgs: list[SamplingConfig],
                 stop_ids: frozenset[int] | set[int] = frozenset(), decoder: Decoder | None = None) -> None:
        for cfg in cfgs:
            cfg.validate()
        self.model, self.cfgs, self.stop_ids, self.decoder = model, cfgs, stop_ids, decoder
        context = model.config.max_position_embeddings
        device = model.model.norm.weight.device
        dtype = kv_cache_dtype(model.model.norm.weight.dtype, device)
        lengths = torch.tensor([len(p) for p in prompts], device=device)
        width = int(lengths.max())
        self.steps_left = [min(c.max_new_tokens, context - len(p)) for p, c in zip(prompts, cfgs, strict=True)]
        total = max(self.steps_left)

        padded = torch.zeros(len(prompts), width, dtype=torch.long, device=device)
        for i, p in enumerate(prompts):
            padded[i, width - len(p):] = torch.tensor(p, device=device)
        self.padded = bool((lengths != width).any())
        size = width + total if decoder is None else decoder.cache_length(width + total, context)
        cache = KVCache.empty(model.config, len(prompts), size, device, dtype)
        slots = torch.arange(size, device=device)
        pad = (width - lengths)[:, None]
        key_ok = slots[None, :] >= pad  # (R, S): False on pad slots (all True without padding)
        with torch.inference_mode():
            if self.padded:
                causal = torch.ones(width, width, dtype=torch.bool, device=device).tril()
                # A pad query attends to itself only, so its (unused) values stay finite.
                mask = (causal & key_ok[:, None, :width]) | torch.eye(width, dtype=torch.bool, device=device)
                positions = (slots[None, :width] - pad).clamp(min=0)
                logits, _ = model(padded, cache=cache, position_ids=positions, attn_mask=mask[:, None],
                                  last_only=True)
            else:
                logits, _ = model(padded, cache=cache, last_only=True)
        logits = logits[:, -1]

        counts = [c.n for c in cfgs]
        self.row_request = [r for r, n in enumerate(counts) for _ in range(n)]
        self.rows_of = []
        start = 0
        for n in counts:
            self.rows_of.append(slice(start, start + n))
            start += n
        if start != len(prompts):  # n > 1 somewhere: the samples share their prompt's prefill
            index = torch.tensor(self.row_request, device=device)
            cache = KVCache([k.index_select(0, index) for k in cache.k], [v.index_select(0, index) for v in cache.v],
                            cache.length)
            logits = logits.index_select(0, index)
            lengths = lengths.index_select(0, index)
            key_ok = key_ok.index_select(0, index)
        self.steps_left = [self.steps_left[r] for r in self.row_request]
        self.cache, self.logits, self.key_ok = cache, logits, key_ok
        # Each row's position at every decode step, one step per row of the table (so a step's slice
        # has the same strides whatever the generation length: a compiled step guards on strides).
        # Rows that finished early keep being fed (static batch); clamp so they stay in the RoPE table.
        positions = torch.arange(total, device=device)[:, None] + lengths[None, :]
        self.positions = positions.clamp(max=context - 1)
        self.step_index = 0
        self.pending: torch.Tensor | None = None
        self.alive = [True] * len(self.row_request)
        self.failed: dict[int, Exception] = {}
        self.generators = [torch.Generator(device=device).manual_seed(c.seed) if c.seed is not None else None
                           for c in cfgs]
        self.penalised = any(c.penalised for c in cfgs)
        if self.penalised:
            vocab = logits.size(-1)
            self.seen = torch.zeros(len(self.row_request), vocab, dtype=torch.bool, device=device)
            for row, r in enumerate(self.row_request):
                self.seen[row, torch.tensor(prompts[r], device=device)] = True
            self.counts = torch.zeros(len(self.row_request), vocab, device=device)

    @property
    def running(self) -> bool:
        return any(self.alive)

    def finish(self, row: int) -> None:
        """End a row early (a stop string was found); the batch stops when no row is left."""
        self.alive[row] = False

    def cancel(self, request: int) -> None:
        """End every row of a request, without events: its rows are not sampled again."""
        for row in range(self.rows_of[request].start, self.rows_of[request].stop):
            self.alive[row] = False

    @torch.inference_mode()
    def _forward(self, tokens: torch.Tensor) -> None:
        positions = self.positions[self.step_index - 1][:, None]  # (B, 1)
        if self.decoder is not None:
            self.logits = self.decoder(tokens[:, None], positions, self.key_ok, self.cache)
        elif self.padded:
            logits, _ = self.model(tokens[:, None], cache=self.cache, position_ids=positions,
                                   attn_mask=self.key_ok[:, None, None, : self.cache.length + 1])
            self.logits = logits[:, -1]
        else:  # positions follow from the cache length
            self.logits = self.model(tokens[:, None], cache=self.cache)[0][:, -1]

    @torch.inference_mode()
    def _sample(self) -> torch.Tensor:
        logits = self.logits
        if not self.penalised and all(c.greedy for c in self.cfgs):
            return logits.float().argmax(dim=-1)  # argmax over bf16 is several times slower on CPU
        tokens = torch.zeros(logits.size(0), dtype=torch.long, device=logits.device)  # ended rows feed 0
        for r, cfg in enumerate(self.cfgs):
            rows = self.rows_of[r]
            if not any(self.alive[rows]):
                continue
            try:
                lg = logits[rows].float()
                if cfg.penalised:
                    lg = apply_penalties(lg, self.seen[rows], self.counts[rows], cfg)
                tokens[rows] = sample_next(lg, cfg, self.generators[r])
            except Exception as exc:  # this request's failure is its own: the others keep their batch
                self.failed[r] = exc
        if self.penalised:
            self.counts.scatter_add_(1, tokens[:, None], torch.ones_like(tokens[:, None], dtype=self.counts.dtype))
            self.seen.scatter_(1, tokens[:, None], True)
        return tokens

    def step(self) -> list[tuple[int, int | None, str | None]]:
        if self.pending is not None:
            self._forward(self.pending)
        tokens = self._sample()
        self.pending = tokens
        self.step_index += 1
        events = []
        for row, tid in enumerate(tokens.tolist()):
            if not self.alive[row]:
                continue
            if self.row_request[row] in self.failed:
                self.alive[row] = False
                events.append((row, None, "error"))
                continue
            if tid in self.stop_ids:
                self.alive[row] = False
                events.append((row, None, "stop"))
                continue
            self.steps_left[row] -= 1
            if self.steps_left[row] == 0:
                self.alive[row] = False
                events.append((row, tid, "length"))
            else:
                events.append((row, tid, None))
        return events


@dataclass
class StreamEvent:
    """New output of one sequence: `text` may be "" (a character still incomplete or held back)."""

    request: int
    sample: int
    text: str
    token_id: int | None
    finish_reason: str | None  # "stop" (stop id or string), "length" or "error"; on a sequence's last event
    error: Exception | None = None  # with "error": what went wrong (for the log, not for a client)


@dataclass
class Completion:
    prompt_tokens: int
    texts: list[str] = field(default_factory=list)  # one per sample (n)
    token_ids: list[list[int]] = field(default_factory=list)
    finish_reasons: list[str] = field(default_factory=list)  # "error" for a request that failed alone
    error: Exception | None = None


class Engine:
    """Text in, text out, for one model and its tokenizer. Stops at EOS, `<|end|>` and `<|bos|>`.

    With a `decoder` (a `Decoder` of the same model, such as the compiled step), decode steps run
    through it. `source` is the checkpoint the model came from, for messages.
    """

    def __init__(self, model: LlamaModel, tokenizer: KoTokenizer, add_bos: bool = True,
                 stop_ids: set[int] | None = None, decoder: Decoder | None = None,
                 source: Path | None = None) -> None:
        self.model, self.tokenizer, self.add_bos, self.decoder = model, tokenizer, add_bos, decoder
        self.source = source
        self.stop_ids = frozenset(stop_ids or default_stop_ids(tokenizer))

    @property
    def context(self) -> int:
        return self.model.config.max_position_embeddings

    def prepare(self, prompt: Prompt, cfg: SamplingConfig) -> list[int]:
        """Check a request and turn it into the prompt ids it runs on: settings validated, text → BOS +
        tokens (token-id prompts are used as given), fitted to the context. The one check every front
        door goes through; it raises `KrminiError` with a one-line reason."""
        cfg.validate()
        if isinstance(prompt, str):
            if not self.tokenizer.encode(prompt):
                raise KrminiError("prompt: empty; give at least one character of text")
            ids = self.tokenizer.encode_prompt(prompt) if self.add_bos else self.tokenizer.encode(prompt)
        else:
            ids = list(prompt)
            vocab = self.model.config.vocab_size
            bad = next((t for t in ids if type(t) is not int or not 0 <= t < vocab), None)  # bool is no id
            if bad is not None:
                raise KrminiError(f"prompt: token ids are integers 0…{vocab - 1} (this model's vocabulary); got {bad!r}")
        return fit_prompt(ids, self.context, cfg)

    def stream_batch(self, requests: list[tuple[Prompt, SamplingConfig]]) -> Iterator[StreamEvent]:
        """Run several requests in one batch, yielding each sequence's text as it grows."""
        return self.stream_prepared([(self.prepare(p, c), c) for p, c in requests])

    def stream_prepared(self, requests: list[tuple[list[int], SamplingConfig]],
                        cancelled: Callable[[int], bool] | None = None) -> Iterator[StreamEvent]:
        """`stream_batch` for requests already through `prepare` (the server checks each on arrival).

        `cancelled(i)` is asked before every decode step: request i's rows end there, with no more
        events (its client left), and the batch ends when no row is left. A request that fails ends
        alone with finish reason "error" (see `DecodeBatch`)."""
        if not requests:
            return
        batch = DecodeBatch(self.model, [ids for ids, _ in requests], [c for _, c in requests], self.stop_ids,
                            self.decoder)
        rows = [(r, s) for r, (_, c) in enumerate(requests) for s in range(c.n)]
        texts = [TextStream(self.tokenizer, requests[r][0][-1:]) for r, _ in rows]
        stops = [StopStrings(requests[r][1].stop) for r, _ in rows]
        while batch.running:
            if cancelled is not None:
                for r in range(len(requests)):
                    if cancelled(r):
                        batch.cancel(r)
                if not batch.running:
                    return
            for row, tid, reason in batch.step():
                if reason == "error":
                    yield StreamEvent(*rows[row], "", None, reason, batch.failed[batch.row_request[row]])
                    continue
                piece = texts[row].push(tid) if tid is not None else ""
                if reason:
                    piece += texts[row].flush()
                text, hit = stops[row].feed(piece)
                if hit:
                    batch.finish(row)
                    reason = "stop"
                elif reason:
                    text += stops[row].flush()
                yield StreamEvent(*rows[row], text, tid, reason)

    def generate_batch(self, requests: list[tuple[Prompt, SamplingConfig]]) -> list[Completion]:
        prepared = [(self.prepare(p, c), c) for p, c in requests]
        out = [Completion(len(ids), [""] * c.n, [[] for _ in range(c.n)], [""] * c.n) for ids, c in prepared]
        for ev in self.stream_prepared(prepared):
            done = out[ev.request]
            done.texts[ev.sample] += ev.text
            if ev.token_id is not None:
                done.token_ids[ev.sample].append(ev.token_id)
            if ev.finish_reason:
                done.finish_reasons[ev.sample] = ev.finish_reason
                done.error = done.error or ev.error
        return out

    def stream(self, prompt: Prompt, cfg: SamplingConfig) -> Iterator[str]:
        """Text pieces of one continuation, as they are produced (n must be 1). The request is checked
        before the first piece, so an error never follows printed text."""
        ids = self.prepare(prompt, cfg)
        if cfg.n != 1:
            raise KrminiError(f"n: stream() yields one sequence; got n={cfg.n} (use stream_batch)")
        return self._texts(self.stream_prepared([(ids, cfg)]))

    @staticmethod
    def _texts(events: Iterator[StreamEvent]) -> Iterator[str]:
        for ev in events:
            if ev.error is not None:
                raise ev.error
            if ev.text:
                yield ev.text

    def generate(self, prompt: Prompt, cfg: SamplingConfig) -> str:
        return "".join(self.stream(prompt, cfg))

    @torch.inference_mode()
    def embed(self, ids_batch: list[list[int]], batch_size: int = 16) -> torch.Tensor:
        """Each token-id sequence as one vector: the final hidden states (after the final norm) averaged
        over its tokens, L2-normalised; (len(ids_batch), hidden_size) float32 on the CPU.

        The plain path, no cache: sequences of similar length share a forward pass, right-padded (with
        causal attention a token never sees the pads after it, so a row computes what it would alone)."""
        vocab, model = self.model.config.vocab_size, self.model
        for i, ids in enumerate(ids_batch):
            if not 0 < len(ids) <= self.context:
                raise KrminiError(f"input.{i}: expected 1 to {self.context} tokens (the context), got {len(ids)}")
            bad = next((t for t in ids if type(t) is not int or not 0 <= t < vocab), None)
            if bad is not None:
                raise KrminiError(f"input.{i}: token ids are integers 0…{vocab - 1} (this model's vocabulary); "
                                  f"got {bad!r}")
        device = model.model.norm.weight.device
        out = torch.empty(len(ids_batch), model.config.hidden_size)
        order = sorted(range(len(ids_batch)), key=lambda i: len(ids_batch[i]))
        for start in range(0, len(order), batch_size):
            rows = order[start:start + batch_size]
            lengths = torch.tensor([len(ids_batch[i]) for i in rows], device=device)
            tokens = torch.zeros(len(rows), int(lengths.max()), dtype=torch.long, device=device)
            for j, i in enumerate(rows):
                tokens[j, :len(ids_batch[i])] = torch.tensor(ids_batch[i], device=device)
            real = (torch.arange(tokens.size(1), device=device)[None, :] < lengths[:, None]).float()
            hidden = final_hidden(model, tokens).float()
            pooled = (hidden * real[..., None]).sum(1) / lengths[:, None]
            out[rows] = torch.nn.functional.normalize(pooled, dim=-1).cpu()
        return out


def final_hidden(model: LlamaModel, tokens: torch.Tensor) -> torch.Tensor:
    """(B, T, hidden): the decoder's output after its final norm, before the LM head (positions from 0)."""
    positions = torch.arange(tokens.size(1), device=tokens.device)[None, :]
    cos, sin = model.rope_cos[positions], model.rope_sin[positions]
    x = model.model.embed_tokens(tokens)
    for i, layer in enumerate(model.model.layers):
        x = layer(x, cos, sin, None, i, None)
    return model.model.norm(x)


def default_stop_ids(tokenizer: KoTokenizer) -> set[int]:
    """EOS, the end of a chat turn (where the tokenizer has one) and BOS: a document boundary. An
    imported model stops where its generation config says, as it does in transformers."""
    if tokenizer.foreign is not None:
        return set(tokenizer.stop_ids)
    ids = {tokenizer.eos_id, tokenizer.bos_id}
    with contextlib.suppress(KrminiError):
        ids.add(tokenizer.token_id("<|end|>"))
    return ids
