"""The prepare pipeline: filters with accounting, near-dedup, byte-identical output for any worker
count, bad records skipped and counted (or fatal with --strict), the manifest as commit point,
mixing weights, and machine parts joined by `prepare merge`."""

from __future__ import annotations

import gzip
import json
import random
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from krmini.cli import main
from krmini.data.prepare import PrepareConfig, clean_documents, prepare
from krmini.data.shards import load_split, read_manifest
from krmini.tokenizer.tokenizer import KoTokenizer

WORDS = ["국민", "법률", "정부", "국회", "대통령", "헌법", "권리", "의무", "자유", "평등", "선거", "법원", "판결", "재판", "사건", "영화", "배우", "연기", "음악", "노래", "학교", "학생", "선생님", "공부", "시험", "도시", "서울", "부산", "바다", "산", "강", "하늘", "사람", "친구", "가족", "사랑", "시간", "오늘", "내일", "어제", "경제", "시장", "회사", "일", "돈", "문화", "역사", "전통", "기술", "과학", "컴퓨터", "인터넷", "뉴스", "기사", "정책", "제도", "사회", "환경"]
ENDINGS = ("이다.", "했다.", "합니다.", "있다.", "없다.", "된다.")


def korean_doc(rng: random.Random, sentences: int = 8) -> str:
    return " ".join(" ".join(rng.choices(WORDS, k=rng.randint(5, 12))) + " " + rng.choice(ENDINGS)
                    for _ in range(sentences))


def corpus(tmp_path: Path, n: int = 300, seed: int = 0) -> tuple[Path, list[str]]:
    """JSONL of n distinct Korean documents plus planted junk, duplicates and near duplicates."""
    rng = random.Random(seed)
    docs = [korean_doc(rng) for _ in range(n)]
    words = docs[0].split(" ")
    words[3] = "바뀐단어"
    planted = [
        docs[5],  # exact duplicate
        " ".join(words),  # near duplicate: one word changed in ~80
        "Only English text here, nothing Korean at all in this document whatsoever.",  # hangul_ratio
        "\n".join(["같은 줄이 계속 반복됩니다"] * 30),  # repeated_lines
        " ".join(["광고 클릭 지금 바로"] * 40),  # repeated_ngrams
        "",  # empty
    ]
    path = tmp_path / "corpus.jsonl"
    path.write_text("".join(json.dumps({"text": t}, ensure_ascii=False) + "\n" for t in docs + planted), encoding="utf-8")
    return path, docs


def run_cli(*args: str) -> int:
    return main(["prepare", *map(str, args)])


def test_filters_and_near_dedup_are_accounted(tmp_path, tokenizer_dir):
    path, docs = corpus(tmp_path)
    tok = KoTokenizer.load(tokenizer_dir)
    m = prepare([path], tok, str(tokenizer_dir), tmp_path / "out",
                PrepareConfig.recommended(val_fraction=0.1, test_fraction=0.1), progress=False)
    counts = m["documents"]
    assert counts["read"] == len(docs) + 6
    for reason in ("duplicate", "near_duplicate", "hangul_ratio", "repeated_lines", "repeated_ngrams", "empty"):
        assert counts[reason] == 1, (reason, counts)
    assert counts["kept"] == len(docs)  # docs[0] is kept; its near copy is not
    removed = m["sources"]["input"]["removed"]
    assert removed["duplicate"] == {"documents": 1, "bytes": len(docs[5].encode())}
    assert sum(m["splits"][s]["documents"] for s in ("train", "val", "test")) == counts["kept"]
    assert m["near_dedup"]["bands"] * m["near_dedup"]["rows"] <= m["near_dedup"]["num_perm"]
    train = np.concatenate(load_split(tmp_path / "out", "train"))
    assert len(train) == m["splits"]["train"]["tokens"]
    assert (train == tok.bos_id).sum() == m["splits"]["train"]["documents"]


def test_output_is_byte_identical_for_any_worker_count(tmp_path, tokenizer_dir):
    path, _ = corpus(tmp_path, n=400)
    outs = []
    for workers in (1, 2):
        out = tmp_path / f"w{workers}"
        assert run_cli(path, "--tokenizer", tokenizer_dir, "--out", out, "--workers", workers,
                       "--val-fraction", 0.1, "--test-fraction", 0.1) == 0
        outs.append(out)
    m1, m2 = (read_manifest(o) for o in outs)
    assert m1["documents"] == m2["documents"] and m1["splits"] == m2["splits"]
    for split in ("train", "val", "test"):
        for name in m1["splits"][split]["shards"]:
            assert (outs[0] / name).read_bytes() == (outs[1] / name).read_bytes()


def test_bad_records_are_skipped_and_counted_or_fatal_when_strict(tmp_path, tokenizer_dir, capsys):
    path, docs = corpus(tmp_path, n=200)
    lines = path.read_bytes().split(b"\n")
    lines[10] = b'{"text": "broken'  # not JSON
    lines[20] = "잘린 문자".encode()[:-1] + b'"}'  # cut in the middle of a Hangul syllable
    lines[30] = b'{"body": "no text field"}'
    bad = tmp_path / "bad.jsonl"
    bad.write_bytes(b"\n".join(lines))
    gz = tmp_path / "cut.jsonl.gz"
    gz.write_bytes(gzip.compress(path.read_bytes())[:3000])  # truncated compressed file
    out = tmp_path / "out"
    assert run_cli(bad, gz, "--tokenizer", tokenizer_dir, "--out", out, "--val-fraction", 0.2) == 0
    problems = read_manifest(out)["read_problems"]
    assert problems["counts"] == {"invalid_json": 1, "invalid_utf8": 1, "missing_field": 1, "unreadable": 1}
    assert any(e.startswith(f"{bad}:11: not valid JSON") for e in problems["examples"])
    assert any(e.startswith(f"{bad}:21: not valid UTF-8 at byte ") and e.endswith("; line skipped")
               for e in problems["examples"])
    assert any(e.startswith(f"{gz}:") and "rest of the file skipped" in e for e in problems["examples"])

    capsys.readouterr()
    before = {f.name: f.read_bytes() for f in out.iterdir()}
    assert run_cli(bad, "--tokenizer", tokenizer_dir, "--out", out, "--strict") == 1
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith(f"krmini: error: {bad}:11: not valid JSON (") and err.endswith("column 17) (stopped: --strict)")
    assert {f.name: f.read_bytes() for f in out.iterdir()} == before  # the failed run left the old output as it was
    assert sorted(f.name for f in tmp_path.iterdir()) == ["bad.jsonl", "corpus.jsonl", "cut.jsonl.gz", "out"]


@pytest.mark.parametrize(("case", "error"), [
    ("bad line", ":57: not valid JSON"), ("no text field", "files: no usable documents"),
    ("one split empty", "files: only 2 documents, none fell in the val split"),
])
def test_a_failed_prepare_leaves_no_output(tmp_path, tokenizer_dir, capsys, case, error):
    path, docs = corpus(tmp_path, n=50)
    bad = tmp_path / "bad.jsonl"
    strict = ["--strict"] if case == "bad line" else []
    if case == "bad line":  # fatal under --strict, after the 56 lines before it were read
        bad.write_bytes(path.read_bytes() + b'{"text": "broken\n')
    elif case == "no text field":  # chat records given to pretraining's prepare: every one skipped
        bad.write_text("".join(json.dumps({"messages": [{"role": "user", "content": d}]}, ensure_ascii=False) + "\n"
                               for d in docs), encoding="utf-8")
    else:  # val (chosen by hash) gets neither of 2 documents
        bad.write_text("".join(json.dumps({"text": d}, ensure_ascii=False) + "\n" for d in docs[:2]), encoding="utf-8")
    out = tmp_path / "new" / "data"
    assert run_cli(bad, "--tokenizer", tokenizer_dir, "--out", out, *strict) == 1
    assert error in capsys.readouterr().err
    assert not out.exists() and list((tmp_path / "new").iterdir()) == []  # no directory, no temporary left

    assert run_cli(path, "--tokenizer", tokenizer_dir, "--out", out, "--val-fraction", 0.2) == 0
    before = {f.name: f.read_bytes() for f in out.iterdir()}
    assert "manifest.json" in before and any(n.startswith("train_") for n in before)
    (out / "notes.txt").write_text("mine", encoding="utf-8")
    assert run_cli(bad, "--tokenizer", tokenizer_dir, "--out", out, *strict) == 1
    assert {f.name: f.read_bytes() for f in out.iterdir()} == {**before, "notes.txt": b"mine"}  # as it was
    assert [f.name for f in (tmp_path / "new").iterdir()] == ["data"]


def test_clean_documents_keeps_its_call_signature(tmp_path):
    path, docs = corpus(tmp_path, n=50)
    counts: Counter = Counter()
    texts = [t for t, _ in clean_documents([path], PrepareConfig.recommended(text_field="text"), counts)]
    assert len(texts) == counts["kept"] == len(docs) + 2  # near duplicate and repetitive junk need tokens
    assert counts["duplicate"] == 1 and counts["hangul_ratio"] == 1 and counts["empty"] == 1
    plain: Counter = Counter()  # the library default: clean, length and exact duplicates only
    assert len(list(clean_documents([path], PrepareConfig(), plain))) == len(docs) + 4
    assert plain == Counter(read=len(docs) + 6, kept=len(docs) + 4, duplicate=1, empty=1)


def test_mix_weights_and_realised_share(tmp_path, tokenizer_dir):
    rng = random.Random(1)
    a, b = tmp_path / "a.jsonl", tmp_path / "b.jsonl"
    for p in (a, b):
        p.write_text("".join(json.dumps({"text": korean_doc(rng, 4)}, ensure_ascii=False) + "\n" for _ in range(400)),
                     encoding="utf-8")
    cfg = tmp_path / "data.yaml"
    cfg.write_text(f"sources:\n  - {{name: a, paths: [{a}], weight: 0.25}}\n  - {{name: b, paths: [{b}], weight: 2.0}}\n"
                   "prepare:\n  val_fraction: 0.05\n  test_fraction: 0.05\n  workers: 1\n", encoding="utf-8")
    out = tmp_path / "out"
    assert run_cli("--config", cfg, "--tokenizer", tokenizer_dir, "--out", out) == 0
    src = read_manifest(out)["sources"]
    assert 60 <= src["a"]["removed"]["sampled_out"]["documents"] <= 340 and 70 <= src["a"]["written"]["documents"] <= 130
    assert src["b"]["written"]["unique_documents"] == 400 and src["b"]["written"]["documents"] > 750
    assert 0.85 <= src["b"]["train_token_share"] <= 0.93  # 2 / (2 + 0.25) = 0.89
    bad = tmp_path / "bad.yaml"
    bad.write_text(f"sources:\n  - {{name: a, paths: [{a}], wieght: 1}}\n", encoding="utf-8")
    assert run_cli("--config", bad, "--tokenizer", tokenizer_dir, "--out", out) == 1


def test_machine_parts_merge_into_one_directory(tmp_path, tokenizer_dir, capsys):
    path, _ = corpus(tmp_path, n=400)
    out = tmp_path / "parts"
    for i in range(2):
        assert run_cli(path, "--tokenizer", tokenizer_dir, "--out", out, "--shard-index", i, "--num-shards", 2,
                       "--val-fraction", 0.1, "--workers", 1) == 0
    parts = [json.loads((out / f"manifest.part-{i:03d}-of-002.json").read_text()) for i in range(2)]
    names = [set(p["splits"]["train"]["shards"]) for p in parts]
    assert not names[0] & names[1] and all(n.startswith("part-") for n in names[0] | names[1])
    assert parts[0]["documents"]["read"] + parts[1]["documents"]["read"] == 406  # each document on one machine
    assert run_cli("merge", out) == 0
    merged = read_manifest(out)
    assert merged["splits"]["train"]["tokens"] == sum(p["splits"]["train"]["tokens"] for p in parts)
    assert merged["documents"]["duplicate"] == 1  # exact copies share a hash, so they meet on one machine
    assert sum(len(a) for a in load_split(out, "train")) == merged["splits"]["train"]["tokens"]
    (out / "manifest.part-001-of-002.json").unlink()
    capsys.readouterr()
    assert run_cli("merge", out) == 1
    assert "parts [1] of 2 are missing" in capsys.readouterr().err


def test_dry_run_prints_table_and_examples_and_writes_nothing(tmp_path, tokenizer_dir, capsys):
    path, _ = corpus(tmp_path)
    assert run_cli(path, "--tokenizer", tokenizer_dir, "--dry-run", "--workers", 1) == 0
    out = capsys.readouterr().out
    assert "removed by" in out and "near_duplicate" in out and "examples — repeated_lines:" in out
    assert "같은 줄이 계속 반복됩니다 ⏎ 같은 줄이" in out
    assert f"≈ {path}:1" in out  # the near duplicate points at the document it copies
    assert list(tmp_path.iterdir()) == [path]


def test_workers_tokenize_as_the_tokenizer_does_after_cleaning(tokenizer_dir):
    """The workers skip the tokenizer's own NFC pass (clean_text has done it): same ids, also for text
    written in conjoining jamo."""
    from krmini.data.clean import clean_text
    from krmini.data.dedup import DedupConfig
    from krmini.data.filters import FilterConfig
    from krmini.data.parallel import ChunkProcessor, WorkerSetup

    tok = KoTokenizer.load(tokenizer_dir)
    texts = ["대한민국의 헌법은 국민의 권리를 보장한다.", "\u1112\u1161\u11ab\u1100\u1173\u11af 자모로 쓴 글",
             "서울  2024년\t가격 12,000원!"]
    setup = WorkerSetup((Path(tokenizer_dir) / "tokenizer.json").read_text(encoding="utf-8"), tok.bos_id, tok.eos_id,
                        FilterConfig(min_hangul_ratio=0.0), DedupConfig(near=False), "uint32")
    result = ChunkProcessor(setup)(texts, wikitext=False)
    want = [[tok.bos_id, *tok.encode(clean_text(t)), tok.eos_id] for t in texts]
    assert result.tokens.tolist() == [i for ids in want for i in ids]
