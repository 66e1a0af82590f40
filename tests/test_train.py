"""Training: it learns, it resumes exactly, and it refuses bad configs and damaged checkpoints."""

from __future__ import annotations

import json
import math
import shutil

import numpy as np
import pytest

from krmini.cli import main
from krmini.config import load_yaml
from krmini.data.prepare import PrepareConfig, prepare
from krmini.data.shards import FORMAT_VERSION, write_manifest
from krmini.errors import KrminiError
from krmini.runs import read_state, resolve_checkpoint
from krmini.tokenizer import KoTokenizer
from krmini.train.config import TrainConfig, load_run_config
from krmini.train.metrics import read_metrics
from krmini.train.optim import lr_at
from krmini.train.trainer import train
from tests.conftest import read_jsonl_texts, shared_file

MICRO = ["model.vocab_size=1024", "model.hidden_size=64", "model.intermediate_size=128", "model.num_hidden_layers=2",
         "model.num_attention_heads=4", "model.num_key_value_heads=2", "model.max_position_embeddings=64",
         "train.seq_len=32", "train.batch_size=4", "train.device=cpu", "train.precision=fp32", "train.log_interval=1"]


@pytest.fixture(scope="module")
def korean_data(tmp_path_factory):
    """A few Korean novel excerpts, tokenized with a 1024-token vocabulary."""
    root = tmp_path_factory.mktemp("korean")
    texts = read_jsonl_texts(shared_file("pretrain/koconovel_novels.jsonl"), limit=40)
    corpus = root / "corpus.jsonl"
    corpus.write_text("".join(json.dumps({"text": t[:1500]}, ensure_ascii=False) + "\n" for t in texts), "utf-8")
    tok = KoTokenizer.train([t[:1500] for t in texts], vocab_size=1024, show_progress=False)
    tok.save(root / "tok")
    prepare([corpus], tok, str(root / "tok"), root / "data", PrepareConfig(val_fraction=0.1, test_fraction=0.1),
            progress=False)
    return root


def run(korean_data, out, *extra, resume=False):
    cfg = load_run_config("tiny", [*MICRO, f"train.data_dir={korean_data / 'data'}", f"train.out_dir={out}", *extra])
    return train(cfg, resume=resume, progress=False)


def train_losses(out) -> list[float]:
    return [r["loss"] for r in read_metrics(out / "metrics.jsonl") if r["kind"] == "train"]


def single_document_data(root, text: str, tok: KoTokenizer, tok_dir) -> None:
    """The same document as train and val split, to measure memorisation."""
    root.mkdir()
    ids = np.asarray([tok.bos_id, *tok.encode(text), tok.eos_id], dtype=np.uint16)
    ids.tofile(root / "train_00000.bin")
    ids.tofile(root / "val_00000.bin")
    split = {"documents": 1, "bytes": len(text.encode()), "tokens": len(ids)}
    write_manifest(root, {"format_version": FORMAT_VERSION, "dtype": "uint16", "vocab_size": tok.vocab_size,
                          "tokenizer": str(tok_dir), "splits": {"train": {**split, "shards": ["train_00000.bin"]},
                                                                "val": {**split, "shards": ["val_00000.bin"]}}})


def test_tiny_model_overfits_a_few_hundred_korean_tokens(tmp_path, korean_data):
    text = read_jsonl_texts(shared_file("pretrain/koconovel_novels.jsonl"), limit=1)[0][:400]
    tok = KoTokenizer.load(korean_data / "tok")
    assert 150 < len(tok.encode(text)) < 450
    single_document_data(tmp_path / "data", text, tok, korean_data / "tok")
    cfg = load_run_config("tiny", [*MICRO, f"train.data_dir={tmp_path / 'data'}", f"train.out_dir={tmp_path / 'run'}",
                                   "train.max_steps=300", "train.lr=3e-3", "train.warmup_steps=10",
                                   "train.eval_interval=300", "train.save_interval=300"])
    result = train(cfg, progress=False)
    assert train_losses(tmp_path / "run")[0] > 6.0  # ≈ ln(1024) at the start
    assert result["loss"] < 0.05
    assert result["val_loss"] < 0.05
    assert result["val_bpb"] < 0.02


def test_resume_reproduces_the_uninterrupted_run_exactly(tmp_path, korean_data):
    common = ["train.max_steps=12", "train.save_interval=6", "train.eval_interval=6", "train.warmup_steps=3"]
    run(korean_data, tmp_path / "straight", *common)
    run(korean_data, tmp_path / "split", *common)
    # Pretend the run died after its step-6 checkpoint: remove everything later, then resume.
    ckpts = tmp_path / "split" / "checkpoints"
    shutil.rmtree(ckpts / "step_00000012")
    (ckpts / "latest").write_text("step_00000006", encoding="utf-8")
    run(korean_data, tmp_path / "split", *common, resume=True)
    straight, resumed = train_losses(tmp_path / "straight"), train_losses(tmp_path / "split")
    assert len(straight) == len(resumed) == 12
    assert straight == resumed  # bit for bit, steps 7-12 recomputed from the checkpoint
    evals = [r for r in read_metrics(tmp_path / "split" / "metrics.jsonl") if r["kind"] == "eval"]
    assert [r["step"] for r in evals] == [6, 12]


def test_existing_run_requires_resume_and_resume_requires_checkpoint(tmp_path, korean_data):
    with pytest.raises(KrminiError, match="no checkpoint to resume from"):
        run(korean_data, tmp_path / "r", "train.max_steps=2", resume=True)
    run(korean_data, tmp_path / "r", "train.max_steps=2")
    with pytest.raises(KrminiError, match="pass --resume"):
        run(korean_data, tmp_path / "r", "train.max_steps=2")


def test_checkpoint_from_another_config_is_refused(tmp_path, korean_data):
    run(korean_data, tmp_path / "r", "train.max_steps=2")
    with pytest.raises(KrminiError, match="different model config"):
        run(korean_data, tmp_path / "r", "train.max_steps=4", "model.num_hidden_layers=3", resume=True)


def test_corrupt_checkpoint_is_detected_with_last_good_one(tmp_path, korean_data):
    run(korean_data, tmp_path / "r", "train.max_steps=4", "train.save_interval=2")
    latest = resolve_checkpoint(tmp_path / "r")
    assert latest.name == "step_00000004"
    weights = latest / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-100])
    with pytest.raises(KrminiError, match=r"step_00000004/model.safetensors: corrupt or truncated.*step_00000002"):
        read_state(latest)


def test_unknown_or_mistyped_config_keys_are_refused(tmp_path):
    with pytest.raises(KrminiError, match=r"tiny.yaml: train.learning_rate: unknown key"):
        load_run_config("tiny", ["train.learning_rate=1e-3"])
    with pytest.raises(KrminiError, match=r"did you mean 'max_steps'"):
        load_run_config("tiny", ["train.max_step=10"])
    with pytest.raises(KrminiError, match=r"train.batch_size: expected int, got 'big'"):
        load_run_config("tiny", ["train.batch_size=big"])
    with pytest.raises(KrminiError, match=r"model.hidden_size: 100 is not divisible"):
        load_run_config("tiny", ["model.hidden_size=100"])
    with pytest.raises(KrminiError, match=r"train.seq_len 512 exceeds"):
        load_run_config("tiny", ["train.seq_len=512"])


@pytest.mark.parametrize(("text", "message"), [
    (b"model: [1, 2\n", ":2: not valid YAML: expected ',' or ']', but got '<stream end>'"),
    (b"train:\n\tmax_steps: 2\n", ":2: not valid YAML: found character '\\t' that cannot start any token "
                                   "(YAML indents with spaces, not tabs)"),
    (b"train:\n  lr: 1\n bad: 2\n", ":3: not valid YAML: expected <block end>, but found '<block mapping start>' "
                                    "(check the indentation)"),
    (b"a: 1\nb: \x00\n", ":2: not valid YAML: unacceptable character #x0000: special characters are not allowed"),
    ("train:\n  name: 한국어\n".encode("cp949"), ":2: not UTF-8 text (byte 0xc7 at offset 15); save the file as UTF-8"),
])
def test_a_malformed_config_names_its_line(tmp_path, capsys, text, message):
    bad = tmp_path / "bad.yaml"
    bad.write_bytes(text)
    with pytest.raises(KrminiError) as caught:
        load_yaml(bad)
    assert str(caught.value) == f"{bad}{message}"
    assert main(["train", "--config", str(bad)]) == 1
    assert capsys.readouterr().err == f"krmini: error: {bad}{message}\n"


def test_an_override_that_is_not_yaml_is_one_line():
    with pytest.raises(KrminiError, match=r"^override 'train.lr=\[1': the value is not valid YAML: expected ','"):
        load_run_config("tiny", ["train.lr=[1"])


def test_lr_schedule_warms_up_then_decays_to_the_floor():
    cfg = TrainConfig(lr=1.0, warmup_steps=10, max_steps=110, min_lr_ratio=0.1)
    assert lr_at(0, cfg) == pytest.approx(0.1)
    assert lr_at(9, cfg) == pytest.approx(1.0)
    assert lr_at(60, cfg) == pytest.approx(0.1 + 0.45 * (1 + math.cos(math.pi * 0.5)))
    assert lr_at(110, cfg) == pytest.approx(0.1)
    lrs = [lr_at(s, cfg) for s in range(10, 111)]
    assert all(a >= b for a, b in zip(lrs, lrs[1:], strict=False))


def test_run_directory_is_complete(tiny_run):
    assert (tiny_run / "loss.png").stat().st_size > 10_000
    assert (tiny_run / "tokenizer" / "tokenizer.json").is_file()
    ckpt = resolve_checkpoint(tiny_run)
    assert {p.name for p in ckpt.iterdir()} >= {"model.safetensors", "optimizer.safetensors", "state.json", "tokenizer"}
    records = read_metrics(tiny_run / "metrics.jsonl")
    evals = [r for r in records if r["kind"] == "eval"]
    assert [r["step"] for r in evals] == [20, 40]
    assert evals[-1]["val_loss"] < evals[0]["val_loss"]
    assert all(r["tokens_per_s"] > 0 for r in records if r["kind"] == "train")
