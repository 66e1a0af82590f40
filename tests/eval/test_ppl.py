"""Perplexity: the sliding window scores every token once, and the numbers are the plain definitions."""

from __future__ import annotations

import json
import math

import pytest
import torch

from krmini.cli import main
from krmini.eval.ppl import perplexity, read_eval_texts, sliding_requests
from krmini.infer.load import load_model

TEXTS = ["대한민국은 민주공화국이다.", "모든 국민은 법 앞에 평등하다. 누구든지 성별·종교 또는 사회적 신분에 의하여 차별을 받지 아니한다."]


@pytest.mark.parametrize(("n", "context", "stride"), [(1, 8, 4), (8, 8, 4), (9, 8, 4), (50, 8, 3), (50, 8, 8)])
def test_sliding_windows_score_each_token_once(n, context, stride):
    ids = list(range(10, 10 + n))
    requests = sliding_requests(ids, 1, context, stride)
    assert [t for r in requests for t in r.continuation] == ids
    for i, r in enumerate(requests):
        assert len(r.context) + len(r.continuation) - 1 <= context  # inputs fit the model
        if i > 0:
            assert len(r.continuation) <= stride
            assert len(r.context) == context + 1 - len(r.continuation)  # as much left context as fits


def test_perplexity_matches_the_model_loss_and_counts_bytes(tiny_run):
    loaded = load_model(tiny_run, torch.device("cpu"))
    model, tok = loaded.model, loaded.tokenizer
    result = perplexity(model, tok, TEXTS)
    nats, tokens = 0.0, 0
    for text in TEXTS:
        ids = torch.tensor([[tok.bos_id, *tok.encode(text)]])
        _, loss = model(ids[:, :-1], ids[:, 1:])
        nats += loss.item() * (ids.shape[1] - 1)
        tokens += ids.shape[1] - 1
    assert result.tokens == tokens
    assert result.bytes == sum(len(t.encode("utf-8")) for t in TEXTS)  # Hangul: 3 bytes a syllable
    assert result.nats == pytest.approx(nats, rel=1e-5)
    assert result.perplexity == pytest.approx(math.exp(nats / tokens), rel=1e-5)
    assert result.bits_per_byte == pytest.approx(nats / math.log(2) / result.bytes, rel=1e-5)


def test_long_document_uses_sliding_windows(tiny_run):
    loaded = load_model(tiny_run, torch.device("cpu"))
    context = loaded.model.config.max_position_embeddings
    text = " ".join([TEXTS[1]] * 40)
    assert len(loaded.tokenizer.encode(text)) > 2 * context
    coarse = perplexity(loaded.model, loaded.tokenizer, [text], stride=context)
    fine = perplexity(loaded.model, loaded.tokenizer, [text], stride=context // 4)
    assert coarse.tokens == fine.tokens == len(loaded.tokenizer.encode(text))
    assert fine.loss < coarse.loss  # more left context on the repeated text helps


def test_cli_writes_json(tiny_run, tmp_path, capsys):
    data = tmp_path / "held.jsonl"
    data.write_text("".join(json.dumps({"text": t}, ensure_ascii=False) + "\n" for t in TEXTS), encoding="utf-8")
    out = tmp_path / "ppl.json"
    assert main(["eval", "ppl", str(tiny_run), "--data", str(data), "--out", str(out), "--device", "cpu"]) == 0
    record = json.loads(out.read_text(encoding="utf-8"))
    assert record["kind"] == "ppl" and record["documents"] == 2
    assert record["bits_per_byte"] == pytest.approx(record["loss"] * record["tokens"] / math.log(2) / record["bytes"])
    assert "bits/byte" in capsys.readouterr().out


def test_read_eval_texts_cleans_and_rejects_empty(tmp_path):
    f = tmp_path / "a.txt"
    f.write_text("가  나\r\n\n\n다", encoding="utf-8")
    assert read_eval_texts([f]) == ["가 나", "다"]
    empty = tmp_path / "e.txt"
    empty.write_text("\n\n", encoding="utf-8")
    assert main(["eval", "ppl", "unused", "--data", str(empty)]) == 1
