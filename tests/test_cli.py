"""The command line: every command has --help, and bad input is one clear line, never a traceback."""

from __future__ import annotations

import subprocess
import sys

import pytest

from krmini.cli import main
from krmini.tokenizer import KoTokenizer

COMMANDS = [["demo"], ["prepare"], ["tokenizer", "train"], ["model-info"], ["train"], ["generate"], ["lora", "merge"]]


@pytest.mark.parametrize("command", COMMANDS, ids=lambda c: " ".join(c))
def test_every_command_has_help(command, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main([*command, "--help"])
    assert exit_info.value.code == 0
    assert "usage: krmini" in capsys.readouterr().out


def error_of(argv, capsys) -> str:
    assert main(argv) == 1
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and err.startswith("krmini: error: ")
    return err


def test_bad_corpora(tmp_path, capsys):
    assert "missing.txt: corpus file not found" in error_of(
        ["tokenizer", "train", str(tmp_path / "missing.txt"), "--out", str(tmp_path / "t")], capsys)
    empty = tmp_path / "empty.txt"
    empty.write_text("", encoding="utf-8")
    assert "corpus is empty" in error_of(["tokenizer", "train", str(empty), "--out", str(tmp_path / "t")], capsys)
    latin = tmp_path / "latin.txt"
    latin.write_bytes("한국어\n".encode("cp949"))
    assert "latin.txt:1: not valid UTF-8" in error_of(
        ["tokenizer", "train", str(latin), "--out", str(tmp_path / "t"), "--strict"], capsys)
    # without --strict the bad line is skipped and counted; nothing usable is left
    assert main(["tokenizer", "train", str(latin), "--out", str(tmp_path / "t")]) == 1
    err = capsys.readouterr().err
    assert "skipped unreadable records: {'unreadable_invalid_utf8': 1}" in err and "corpus is empty" in err


def test_tokenizer_train_takes_a_pretokenization_rule(tmp_path, capsys):
    corpus = tmp_path / "c.txt"
    corpus.write_text("GPU가 2024년에 나왔다. 좋다, 정말 좋다!\n" * 50, encoding="utf-8")
    assert main(["tokenizer", "train", str(corpus), "--out", str(tmp_path / "t"), "--vocab-size", "400",
                 "--pretokenizer", "spaces-digits-punct"]) == 0
    tok = KoTokenizer.load(tmp_path / "t")
    assert [tok.tok.id_to_token(i) for i in tok.encode(" 좋다!")] == ["▁좋다", "!"]  # never merged across "!"
    with pytest.raises(SystemExit):  # argparse names the choices
        main(["tokenizer", "train", str(corpus), "--out", str(tmp_path / "u"), "--pretokenizer", "morphemes"])
    assert "invalid choice: 'morphemes'" in capsys.readouterr().err


def test_bad_configs(tmp_path, capsys):
    assert "train.learning_rate: unknown key" in error_of(["model-info", "tiny", "train.learning_rate=1"], capsys)
    assert "model.num_hidden_layers: expected int" in error_of(["model-info", "tiny", "model.num_hidden_layers=x"],
                                                               capsys)
    assert "nope: no such config file or preset" in error_of(["model-info", "nope"], capsys)


def test_model_info_prints_counts_and_memory(capsys):
    assert main(["model-info", "small", "--batch", "4", "--seq-len", "512"]) == 0
    out = capsys.readouterr().out
    assert "135,285,504" in out
    assert "batch 4 × 512 tokens" in out and "optimizer" in out


def test_generate_errors(tiny_run, tmp_path, capsys):
    assert "no checkpoint found" in error_of(["generate", str(tmp_path), "--prompt", "안녕"], capsys)
    long_prompt = "대한민국 " * 400
    error = error_of(["generate", str(tiny_run), "--prompt", long_prompt], capsys)
    assert "but the model's context is 256" in error and error.endswith("pass --truncate left to keep its end")
    assert "truncate='left'" not in error
    batch = error_of(["generate", str(tiny_run), "--prompt", "국회는", "--prompt", long_prompt], capsys)
    assert batch.endswith("pass --truncate left to keep its end")


def test_generate_streams_korean(tiny_run, capsys):
    assert main(["generate", str(tiny_run), "--prompt", "대한민국은", "--max-new-tokens", "12", "--seed", "1"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("대한민국은") and len(out) > len("대한민국은") + 3 and "\ufffd" not in out


def test_no_traceback_in_a_real_process(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "krmini", "train", "--config", "tiny", "train.bogus=1"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1
    assert "Traceback" not in proc.stderr
    assert proc.stderr.strip().endswith("train.bogus: unknown key")


def test_python_m_krmini_train_is_krmini_train():
    """What torchrun runs on each rank: train's own parser, the same one-line errors."""
    from krmini.train.cli import main as train_main

    with pytest.raises(SystemExit) as exit_info:
        train_main(["--help"])
    assert exit_info.value.code == 0
    proc = subprocess.run([sys.executable, "-m", "krmini.train", "--config", "tiny", "train.bogus=1"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1
    assert "Traceback" not in proc.stderr
    err = proc.stderr.strip()
    assert "\n" not in err and err.startswith("krmini: error: ") and err.endswith("tiny.yaml: train.bogus: unknown key")
