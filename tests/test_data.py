"""Corpus reading, cleaning, deterministic splits, shards and the manifest."""

from __future__ import annotations

import bz2
import gzip
import json
import unicodedata
from collections import Counter

import numpy as np
import pytest

from krmini.data.clean import clean_text
from krmini.data.dedup import DedupConfig
from krmini.data.loader import TokenWindows
from krmini.data.prepare import PrepareConfig, clean_documents, prepare
from krmini.data.readers import read_documents
from krmini.data.shards import load_split, read_manifest, token_dtype
from krmini.data.split import document_digest, split_of
from krmini.errors import KrminiError
from krmini.tokenizer import KoTokenizer

DOCS = [f"{i}번째 문서입니다. 대한민국의 수도는 서울이며 인구는 약 {900 + i}만 명이다." for i in range(400)]


@pytest.fixture(scope="module")
def tokenizer() -> KoTokenizer:
    return KoTokenizer.train(DOCS * 2, vocab_size=400, show_progress=False)


def write_jsonl(path, texts, field="text"):
    path.write_text("".join(json.dumps({field: t, "id": i}, ensure_ascii=False) + "\n" for i, t in enumerate(texts)),
                    encoding="utf-8")


def test_readers_txt_jsonl_and_compressed(tmp_path):
    (tmp_path / "a.txt").write_text("첫 문서\n둘째 줄\n\n\n둘째 문서\n", encoding="utf-8")
    write_jsonl(tmp_path / "b.jsonl", ["셋째", "넷째"])
    with gzip.open(tmp_path / "c.jsonl.gz", "wt", encoding="utf-8") as fh:
        fh.write(json.dumps({"body": "다섯째"}, ensure_ascii=False) + "\n")
    (tmp_path / "d.txt.bz2").write_bytes(bz2.compress("여섯째\n".encode()))
    texts = [d.text.strip() for d in read_documents([tmp_path / "a.txt", tmp_path / "b.jsonl", tmp_path / "d.txt.bz2"])]
    assert texts == ["첫 문서\n둘째 줄", "둘째 문서", "셋째", "넷째", "여섯째"]
    assert [d.text for d in read_documents([tmp_path / "c.jsonl.gz"], text_field="body")] == ["다섯째"]


def test_directory_order_is_sorted(tmp_path):
    write_jsonl(tmp_path / "b.jsonl", ["b"])
    write_jsonl(tmp_path / "a.jsonl", ["a"])
    assert [d.text for d in read_documents([tmp_path])] == ["a", "b"]


def test_reader_errors_name_file_and_line(tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "좋음"}\n{oops\n', encoding="utf-8")
    with pytest.raises(KrminiError, match=r"bad.jsonl:2: not valid JSON.*--strict"):
        list(read_documents([bad]))
    latin = tmp_path / "latin.txt"
    latin.write_bytes("정상\n".encode() + "caf\xe9\n".encode("latin-1"))
    with pytest.raises(KrminiError, match=r"latin.txt:2: not valid UTF-8 at byte 10"):
        list(read_documents([latin]))
    with pytest.raises(KrminiError, match="not found"):
        list(read_documents([tmp_path / "missing.txt"]))
    missing_field = tmp_path / "f.jsonl"
    write_jsonl(missing_field, ["x"], field="body")
    with pytest.raises(KrminiError, match="string field 'text'"):
        list(read_documents([missing_field]))


def test_clean_text_normalises():
    decomposed = unicodedata.normalize("NFD", "한국어")
    assert decomposed != "한국어"
    assert clean_text(decomposed) == "한국어"
    assert clean_text("  가\u200b나\x07다   라\t\t마  \r\n\n\n\n바 ") == "가나다 라 마\n\n바"
    # one space stays; a lone tab, no-break or ideographic space, or one next to a space, becomes one
    assert clean_text("가 나\t다\u00a0라\u3000마 \u3000바\u00a0 사") == "가 나 다 라 마 바 사"


def test_hangul_ratio_counts_letters_only():
    from krmini.data.filters import hangul_ratio

    assert hangul_ratio("한국어 abc 123 _!?") == pytest.approx(3 / 6)  # digits, "_" and punctuation are not letters
    assert hangul_ratio("ㄱㄴ 漢字") == pytest.approx(2 / 4) and hangul_ratio("123 !") == 0.0


def test_split_is_deterministic_and_near_98_1_1():
    digests = [document_digest(f"문서 {i}") for i in range(20000)]
    counts = Counter(split_of(d) for d in digests)
    assert 0.975 < counts["train"] / 20000 < 0.985
    assert 0.007 < counts["val"] / 20000 < 0.013
    assert 0.007 < counts["test"] / 20000 < 0.013
    assert [split_of(d) for d in reversed(digests)] == [split_of(d) for d in digests][::-1]


def test_prepare_writes_shards_and_manifest(tmp_path, tokenizer):
    docs = DOCS + DOCS[:50] + ["", "   "]  # 50 exact duplicates and two empty documents
    write_jsonl(tmp_path / "corpus.jsonl", docs)
    exact_only = PrepareConfig(val_fraction=0.1, test_fraction=0.1, dedup=DedupConfig(near=False))
    manifest = prepare([tmp_path / "corpus.jsonl"], tokenizer, "tok", tmp_path / "out", exact_only, progress=False)
    assert {k: manifest["documents"][k] for k in ("read", "kept", "duplicate", "empty")} == {
        "read": 452, "kept": 400, "duplicate": 50, "empty": 2}
    splits = manifest["splits"]
    assert sum(s["documents"] for s in splits.values()) == 400
    assert sum(s["bytes"] for s in splits.values()) == sum(len(d.encode()) for d in DOCS)
    assert manifest["dtype"] == "uint16"
    for split in ("train", "val", "test"):
        tokens = np.concatenate(load_split(tmp_path / "out", split))
        assert len(tokens) == splits[split]["tokens"]
        assert (tokens == tokenizer.bos_id).sum() == splits[split]["documents"]
        assert (tokens == tokenizer.eos_id).sum() == splits[split]["documents"]
        assert tokens[0] == tokenizer.bos_id and tokens[-1] == tokenizer.eos_id
    # the same document always lands in the same split, whatever else is in the corpus
    write_jsonl(tmp_path / "shuffled.jsonl", list(reversed(DOCS[:200])))
    again = prepare([tmp_path / "shuffled.jsonl"], tokenizer, "tok", tmp_path / "out2", exact_only, progress=False)
    first_val = {tokenizer.decode(d) for d in _documents(tmp_path / "out", "val", tokenizer)}
    second_val = {tokenizer.decode(d) for d in _documents(tmp_path / "out2", "val", tokenizer)}
    assert second_val == {t for t in first_val if t in set(DOCS[:200])}
    assert again["splits"]["val"]["documents"] == len(second_val)


def _documents(data_dir, split, tokenizer):
    tokens = np.concatenate(load_split(data_dir, split)).tolist()
    docs, cur = [], []
    for t in tokens:
        if t == tokenizer.bos_id:
            cur = []
        elif t == tokenizer.eos_id:
            docs.append(cur)
        else:
            cur.append(t)
    return docs


def test_prepare_rejects_empty_corpus(tmp_path, tokenizer):
    (tmp_path / "empty.txt").write_text("\n\n  \n", encoding="utf-8")
    with pytest.raises(KrminiError, match="no usable documents"):
        prepare([tmp_path / "empty.txt"], tokenizer, "tok", tmp_path / "out", progress=False)


def test_length_filter_and_counts(tmp_path):
    write_jsonl(tmp_path / "c.jsonl", ["짧다", "이 문서는 충분히 길다", "이 문서는 충분히 길다"])
    counts = Counter()
    config = PrepareConfig(min_chars=5)
    kept = [t for t, _ in clean_documents([tmp_path / "c.jsonl"], config, counts)]
    assert kept == ["이 문서는 충분히 길다"]
    assert counts == Counter(read=3, kept=1, too_short=1, duplicate=1)


def test_token_dtype_widens_for_large_vocabularies():
    assert token_dtype(32000) == np.uint16
    assert token_dtype(65536) == np.uint16
    assert token_dtype(100_000) == np.uint32


def test_truncated_shard_is_detected(tmp_path, tokenizer):
    write_jsonl(tmp_path / "corpus.jsonl", DOCS)
    prepare([tmp_path / "corpus.jsonl"], tokenizer, "tok", tmp_path / "out", progress=False)
    shard = tmp_path / "out" / read_manifest(tmp_path / "out")["splits"]["train"]["shards"][0]
    shard.write_bytes(shard.read_bytes()[:-3])
    with pytest.raises(KrminiError, match="truncated shard"):
        load_split(tmp_path / "out", "train")


def test_token_windows_cover_each_window_once_per_epoch():
    stream = np.arange(1001, dtype=np.uint16)
    windows = TokenWindows([stream[:501], stream[501:]], seq_len=10, seed=3)
    assert windows.num_windows == 50 + 49  # windows never straddle two shards
    firsts = [int(windows.sample(i)[0]) for i in range(99)]
    assert len(set(firsts)) == 99
    x, y = windows.batch(0, 4, __import__("torch").device("cpu"))
    assert x.shape == (4, 10) and (y[:, :-1] == x[:, 1:]).all()
    # a pure function of the sample index: a fresh object gives the same samples
    again = TokenWindows([stream[:501], stream[501:]], seq_len=10, seed=3)
    assert all(np.array_equal(windows.sample(i), again.sample(i)) for i in (0, 57, 150, 399))
