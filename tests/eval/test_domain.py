"""`krmini eval domain`: before/after bits per byte, chars per token and generations, as JSON, table and PNG."""

from __future__ import annotations

import json
import shutil

from krmini.cli import main
from krmini.data.filters import FilterConfig
from krmini.data.prepare import PrepareConfig, prepare
from krmini.data.readers import read_documents
from krmini.data.split import texts_in_split
from krmini.runs import resolve_checkpoint
from krmini.tokenizer import KoTokenizer


def test_domain_report_before_and_after(tiny_run, domain_run, tmp_path, capsys):
    run = tmp_path / "run"
    shutil.copytree(domain_run, run)
    text = domain_run.parent / "text"
    argv = ["eval", "domain", str(run), "--domain", str(text / "legal_heldout.jsonl"), "--general",
            str(text / "general_heldout.jsonl"), "--limit", "3", "--max-new-tokens", "4", "--device", "cpu",
            "--prompt", "원고의 청구를"]
    assert main(argv) == 0  # the base is the run's train.init_from
    said = capsys.readouterr().out
    record = json.loads((run / "eval" / "domain.json").read_text(encoding="utf-8"))
    assert record["before"]["checkpoint"] == str(resolve_checkpoint(tiny_run))
    assert (record["before"]["vocab_size"], record["after"]["vocab_size"]) == (2048, 2148)
    before, after = record["before"], record["after"]
    for name in ("domain", "general"):
        assert before[name]["chars"] == after[name]["chars"] and before[name]["documents"] == 3
        assert before[name]["chars_per_token"] == before[name]["chars"] / before[name]["tokens"]
        assert 0 < after[name]["bits_per_byte"] < 8
    assert after["domain"]["chars_per_token"] > 1.05 * before["domain"]["chars_per_token"]  # the legal tokens
    assert after["general"]["chars_per_token"] >= before["general"]["chars_per_token"]  # never more tokens
    assert set(after["generations"]) == {"원고의 청구를"}
    assert "| chars/token | domain (3 docs) |" in said and "| 원고의 청구를 |" in said
    assert (run / "eval" / "domain.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert main(["report", str(run), "--max-new-tokens", "2", "--device", "cpu"]) == 0
    page = (run / "report.md").read_text(encoding="utf-8")
    assert "Domain adaptation (`domain.json`, chart `domain.png`)" in page and "| bits/byte | general (3 docs) |" in page


def test_no_base_is_one_line(tiny_run, tmp_path, capsys):
    held = tmp_path / "held.jsonl"
    held.write_text(json.dumps({"text": "대한민국은 민주공화국이다."}, ensure_ascii=False) + "\n", encoding="utf-8")
    assert main(["eval", "domain", str(tiny_run), "--domain", str(held), "--general", str(held),
                 "--out", str(tmp_path / "d.json")]) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "names no train.init_from; pass --base" in err


def test_test_split_texts_are_the_prepared_test_documents(domain_run, tmp_path):
    """The documents `--data DIR` keeps are exactly those `krmini prepare` wrote to DIR's test split."""
    legal = domain_run.parent / "text" / "legal.jsonl"
    tokenizer = KoTokenizer.load(domain_run.parent / "tokenizer")
    config = PrepareConfig(val_fraction=0.2, test_fraction=0.2, workers=1,
                           filters=FilterConfig(strip_boilerplate=True, scrub_pii=True))
    manifest = prepare([legal], tokenizer, str(domain_run.parent / "tokenizer"), tmp_path / "data", config,
                       progress=False)
    assert manifest["documents"] == {"read": 120, "kept": 120}  # nothing filtered: every document has a split
    kept = list(texts_in_split((d.text for d in read_documents([legal], "text")), manifest["config"], "test"))
    test = manifest["splits"]["test"]
    assert len(kept) == test["documents"] > 10
    assert sum(len(t.encode("utf-8")) for t in kept) == test["bytes"]
    assert sum(map(len, tokenizer.encode_batch(kept))) + 2 * len(kept) == test["tokens"]  # each wrapped BOS … EOS
