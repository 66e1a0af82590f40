"""The engine: batching equals one-by-one, n samples, stops, penalties, streaming, bad input."""

from __future__ import annotations

import copy

import pytest
import torch

from krmini.errors import KrminiError
from krmini.infer.engine import DecodeBatch, Engine, PromptTooLong, fit_prompt
from krmini.infer.generate import generate_ids, generate_text, stream_text
from krmini.infer.load import load_model
from krmini.infer.sampling import SamplingConfig, apply_penalties
from krmini.infer.textstream import StopStrings, TextStream
from krmini.model import KVCache

GREEDY = SamplingConfig(max_new_tokens=12, temperature=0)


def run_rows(model, prompts, cfgs, stop_ids=frozenset()):
    batch = DecodeBatch(model, prompts, cfgs, stop_ids)
    out, reasons = [[] for _ in batch.row_request], [None] * len(batch.row_request)
    while batch.running:
        for row, tid, reason in batch.step():
            if tid is not None:
                out[row].append(tid)
            reasons[row] = reason or reasons[row]
    return out, reasons


@pytest.fixture(scope="module")
def trained(tiny_run):
    return load_model(tiny_run, torch.device("cpu"))


def test_batch_of_different_lengths_equals_one_by_one(trained):
    engine = Engine(trained.model, trained.tokenizer)
    prompts = ["대한민국은", "모든 국민은 법 앞에 평등하다. 누구든지", "국회는", "제1조"]
    cfg = SamplingConfig(max_new_tokens=24, temperature=0)
    batched = engine.generate_batch([(p, cfg) for p in prompts])
    for prompt, done in zip(prompts, batched, strict=True):
        alone = engine.generate_batch([(prompt, cfg)])[0]
        assert done.token_ids == alone.token_ids
        assert done.texts == alone.texts
    assert len({len(engine.prepare(p, cfg)) for p in prompts}) >= 3  # really padded


def test_cached_decode_matches_full_recompute(small_model):
    prompt = [5, 17, 42, 7]
    ids = list(generate_ids(small_model, prompt, SamplingConfig(max_new_tokens=10, temperature=0)))
    seq = list(prompt)
    with torch.inference_mode():
        for _ in range(10):
            logits, _ = small_model(torch.tensor([seq]))
            seq.append(int(logits[0, -1].argmax()))
    assert ids == seq[len(prompt):]


def test_decode_step_reuses_the_preallocated_cache(small_model):
    batch = DecodeBatch(small_model, [[1, 2, 3], [4, 5]], [GREEDY, GREEDY])
    k_ptr = batch.cache.k[0].data_ptr()
    for _ in range(5):
        batch.step()
    assert batch.cache.k[0].data_ptr() == k_ptr and batch.cache.length == 3 + 4
    assert isinstance(batch.cache, KVCache) and batch.cache.max_len == 3 + 12


def test_n_samples_share_one_prefill(small_model):
    cfg = SamplingConfig(max_new_tokens=8, temperature=1.0, top_k=0, seed=3, n=4)
    rows, _ = run_rows(small_model, [[1, 9, 8]], [cfg])
    assert len(rows) == 4 and len({tuple(r) for r in rows}) > 1  # independent samples
    again, _ = run_rows(small_model, [[1, 9, 8]], [cfg])
    assert again == rows  # the seed makes them reproducible
    greedy, _ = run_rows(small_model, [[1, 9, 8]], [SamplingConfig(max_new_tokens=8, temperature=0, n=3)])
    alone, _ = run_rows(small_model, [[1, 9, 8]], [SamplingConfig(max_new_tokens=8, temperature=0)])
    assert greedy == alone * 3


def test_stop_token_and_length_limits(small_model):
    first = run_rows(small_model, [[1, 2, 3]], [GREEDY])[0][0]
    stop = first[3]
    rows, reasons = run_rows(small_model, [[1, 2, 3]], [GREEDY], stop_ids={stop})
    assert rows[0] == first[: first.index(stop)] and reasons == ["stop"]
    rows, reasons = run_rows(small_model, [[1, 2, 3]], [GREEDY])
    assert len(rows[0]) == 12 and reasons == ["length"]


def test_max_new_tokens_beyond_context_is_capped(small_model):
    rows, reasons = run_rows(small_model, [[1] * 40, [1, 2]], [SamplingConfig(max_new_tokens=100, temperature=0)] * 2)
    assert [len(r) for r in rows] == [48 - 40, 48 - 2] and reasons == ["length", "length"]


def test_stop_strings_split_across_pieces():
    stops = StopStrings(("</s>", "끝."))
    assert stops.feed("안녕 <") == ("안녕 ", False)  # "<" may start "</s>": held back
    assert stops.feed("/") == ("", False)
    assert stops.feed("x>") == ("</x>", False)
    assert stops.feed("그럼 끝") == ("그럼 ", False)
    assert stops.feed(".이후") == ("", True)
    assert StopStrings(("ab",)).feed("xa") == ("x", False)


def test_stop_string_ends_generation(trained):
    engine = Engine(trained.model, trained.tokenizer)
    full = engine.generate("대한민국은", GREEDY)
    stop = full[4:7]
    done = engine.generate_batch([("대한민국은", SamplingConfig(max_new_tokens=12, temperature=0, stop=(stop,)))])[0]
    assert done.texts[0] == full[: full.index(stop)] and done.finish_reasons == ["stop"]


def test_stream_pieces_join_to_the_generated_text(trained):
    cfg = SamplingConfig(max_new_tokens=20, temperature=0.9, seed=1)
    pieces = list(stream_text(trained.model, trained.tokenizer, "국회는", cfg))
    assert len(pieces) > 1 and "".join(pieces) == generate_text(trained.model, trained.tokenizer, "국회는", cfg)
    assert "\ufffd" not in "".join(pieces)


def test_text_stream_holds_incomplete_hangul(trained):
    tok = trained.tokenizer
    byte_ids = [tok.token_id(f"<0x{b:02X}>") for b in "꿻".encode()]
    stream = TextStream(tok)
    assert [stream.push(i) for i in byte_ids] == ["", "", "꿻"]


def test_penalties_numbers():
    logits = torch.tensor([[2.0, -2.0, 1.0, 0.5]])
    seen = torch.tensor([[True, True, False, False]])
    counts = torch.tensor([[0.0, 0.0, 3.0, 0.0]])
    out = apply_penalties(logits, seen, counts, SamplingConfig(repetition_penalty=2.0, frequency_penalty=0.5,
                                                               presence_penalty=0.25))
    assert out.tolist() == [[1.0, -4.0, 1.0 - 1.5 - 0.25, 0.5]]


def test_repetition_penalty_reduces_repeats(small_model):
    plain, _ = run_rows(small_model, [[1, 2]], [SamplingConfig(max_new_tokens=40, temperature=0)])
    penalised, _ = run_rows(small_model, [[1, 2]],
                            [SamplingConfig(max_new_tokens=40, temperature=0, repetition_penalty=5.0)])
    assert len(set(penalised[0])) > len(set(plain[0]))


def test_temperature_zero_or_below_is_greedy(small_model):
    greedy = run_rows(small_model, [[1, 2]], [GREEDY])[0]
    assert run_rows(small_model, [[1, 2]], [SamplingConfig(max_new_tokens=12, temperature=-1, seed=5)])[0] == greedy


@pytest.mark.parametrize("field,value,message", [
    ("top_p", 0.0, "top_p: expected a value in (0, 1]"), ("top_p", 1.5, "top_p"),
    ("max_new_tokens", 0, "max_new_tokens"), ("n", 0, "n: expected >= 1"),
    ("repetition_penalty", 0.0, "repetition_penalty"), ("truncate", "right", "truncate"),
    ("stop", "끝", "stop: expected a list"),
])
def test_bad_settings_are_rejected(trained, field, value, message):
    cfg = SamplingConfig(**{field: value})
    with pytest.raises(KrminiError, match=message.replace("(", r"\(").replace(")", r"\)")):
        Engine(trained.model, trained.tokenizer).generate("국회는", cfg)


def test_empty_prompt_is_rejected(trained, small_model):
    with pytest.raises(KrminiError, match="prompt: empty"):
        Engine(trained.model, trained.tokenizer).generate("", GREEDY)
    with pytest.raises(KrminiError, match="prompt: empty"):
        list(generate_ids(small_model, [], GREEDY))


def test_long_prompt_errors_or_truncates_left(small_model):
    long = list(range(3, 63))  # 60 tokens, context 48
    with pytest.raises(PromptTooLong, match=r"context is 48 .* pass truncate='left' to keep its end$"):
        list(generate_ids(small_model, long, GREEDY))
    cfg = SamplingConfig(max_new_tokens=5, temperature=0, truncate="left")
    kept = list(generate_ids(small_model, long, cfg))
    assert kept == list(generate_ids(small_model, long[-43:], cfg)) and len(kept) == 5  # 43 + 5 = 48


@pytest.mark.parametrize(("prompt", "asked", "kept", "generated"), [
    (60, 5, 43, 5),  # longer than the context (48): its last 48 - 5 tokens
    (45, 5, 43, 5),  # fits, but leaves room for 3: cut so that the 5 asked for fit
    (10, 5, 10, 5),  # room enough: untouched
    (60, 47, 1, 47), (60, 100, 1, 47),  # the whole context or more: one prompt token, the rest generated
])
def test_truncating_left_keeps_the_room_asked_for(small_model, prompt, asked, kept, generated):
    ids = [3 + i % 290 for i in range(prompt)]
    cfg = SamplingConfig(max_new_tokens=asked, temperature=0, truncate="left")
    assert fit_prompt(ids, 48, cfg) == ids[prompt - kept:]
    out = list(generate_ids(small_model, ids, cfg))  # no stop ids: every step yields a token
    assert len(out) == generated and out == list(generate_ids(small_model, ids[prompt - kept:], cfg))


def test_generate_cli_batches_prompts(tiny_run, capsys):
    from krmini.cli import main

    assert main(["generate", str(tiny_run), "--prompt", "국회는", "--prompt", "대한민국은", "--temperature", "0",
                 "--max-new-tokens", "8"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("국회는") and lines[1].startswith("대한민국은")
    assert main(["generate", str(tiny_run), "--prompt", "국회는", "--top-p", "2"]) == 1
    assert "top_p: expected a value in (0, 1]" in capsys.readouterr().err


def _spiking(model, token_id: int, at_step: int):
    """`model` made to emit `token_id` as its `at_step`-th new token (greedy), otherwise unchanged."""
    forward, calls = model.forward, []

    def spiked(*args, **kwargs):
        logits, cache = forward(*args, **kwargs)
        calls.append(1)
        if len(calls) == at_step:
            logits = logits.clone()
            logits[..., token_id] = 1e4
        return logits, cache

    model.forward = spiked
    return model


@pytest.mark.parametrize("token", ["<|bos|>", "<|reserved_0|>", "<|user|>"])
def test_special_tokens_never_print_and_a_document_boundary_ends_the_text(trained, token):
    cfg = SamplingConfig(max_new_tokens=12, temperature=0)
    plain = Engine(trained.model, trained.tokenizer).generate_batch([("국회는", cfg)])[0]
    model = _spiking(copy.deepcopy(trained.model), trained.tokenizer.token_id(token), at_step=4)
    done = Engine(model, trained.tokenizer).generate_batch([("국회는", cfg)])[0]
    assert "<|" not in done.texts[0]
    if token == "<|bos|>":  # a new document begins: the continuation ends before it
        assert done.finish_reasons == ["stop"] and done.token_ids[0] == plain.token_ids[0][:3]
        assert plain.texts[0].startswith(done.texts[0])
    else:  # other markup is generated but decodes to nothing
        ids = done.token_ids[0]
        assert trained.tokenizer.token_id(token) in ids
        assert done.texts[0] == trained.tokenizer.decode([i for i in ids if i > 14])
