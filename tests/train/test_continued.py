"""Continued pretraining: `krmini train --init-from RUN [--tokenizer EXTENDED]`.

Weights only (fresh optimizer, schedule and step), the source run never written, the vocabulary resized
so that the loss at step 0 stays where it was, and bad starts (missing, corrupt or LoRA runs, data of
another tokenizer) refused in one line.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import replace

import pytest
import torch
from safetensors.torch import load_file

from krmini.cli import main
from krmini.errors import KrminiError
from krmini.eval.ppl import perplexity, read_eval_texts
from krmini.export.hf import export_hf, import_hf
from krmini.infer.load import load_model
from krmini.model import LlamaModel
from krmini.runs import OPTIM_FILE, TOKENIZER_DIR, read_state, resolve_checkpoint
from krmini.tokenizer import KoTokenizer
from krmini.tokenizer.extend import fingerprint, new_token_pieces
from krmini.train.checkpoint import read_weights
from krmini.train.config import TrainConfig
from krmini.train.continued import EMBEDDING, resize_vocab
from krmini.train.optim import lr_at
from tests.hostile.walk import snapshot

SHORT = ["--device", "cpu", "train.max_steps=2", "train.batch_size=2", "train.seq_len=32", "train.eval_interval=2",
         "train.save_interval=2", "train.eval_tokens=500", "train.tensorboard=false", "train.precision=fp32"]


def cli(capsys, *argv) -> tuple[int, str]:
    capsys.readouterr()
    code = main([str(a) for a in argv])
    return code, capsys.readouterr().err


def test_resized_model_keeps_the_step_0_loss(tiny_run, domain_run):
    """Measured on 6 held-out judgments (tiny_run, 2048 → 2148 tokens): per-token loss 6.632 with the old model
    and tokenizer, 6.635 (+0.05%) resized with the new one (8.3% fewer tokens), 6.722 (+1.4%) resized with the
    old one (the new head rows take some probability from the old tokens)."""
    old = load_model(tiny_run, torch.device("cpu"))
    new_tok = KoTokenizer.load(domain_run.parent / "tokenizer")
    config = replace(old.model.config, vocab_size=new_tok.vocab_size)
    tensors = resize_vocab(read_weights(old.path), old.tokenizer, new_tok, config.vocab_size, ("old", "new"))
    resized = LlamaModel(config)
    resized.load_state_dict(tensors, strict=False)
    resized.eval()
    weight, embedding = old.model.model.embed_tokens.weight, tensors[EMBEDDING]
    assert torch.equal(embedding[: weight.shape[0]], weight)  # every old row as it was
    for i, pieces in new_token_pieces(old.tokenizer.tok, new_tok.tok).items():
        assert torch.allclose(embedding[i], weight[pieces].mean(0))
    docs = read_eval_texts([domain_run.parent / "text" / "legal_heldout.jsonl"], limit=6)
    before = perplexity(old.model, old.tokenizer, docs, None, 4096, progress=False)
    after = perplexity(resized, new_tok, docs, None, 4096, progress=False)
    same_ids = perplexity(resized, old.tokenizer, docs, None, 4096, progress=False)
    assert after.tokens < 0.95 * before.tokens
    assert abs(after.loss / before.loss - 1) < 0.02, (before.loss, after.loss)
    assert abs(same_ids.loss / before.loss - 1) < 0.02, (before.loss, same_ids.loss)


def test_new_rows_toward_mean_blends_the_pieces_mean_with_all_rows(tiny_run, domain_run):
    """train.new_rows_toward_mean: each new row moves that far from its pieces' mean to the mean of all old rows
    (0 = the pieces' mean, 1 = the plain mean of everything); old rows are never touched; outside [0, 1] refused."""
    old = load_model(tiny_run, torch.device("cpu"))
    new_tok = KoTokenizer.load(domain_run.parent / "tokenizer")
    weight = old.model.model.embed_tokens.weight.detach()
    everything = weight.mean(0)
    for toward in (0.5, 1.0):
        tensors = resize_vocab(read_weights(old.path), old.tokenizer, new_tok, new_tok.vocab_size, ("old", "new"),
                               toward)
        embedding = tensors[EMBEDDING]
        assert torch.equal(embedding[: weight.shape[0]], weight)
        for i, pieces in new_token_pieces(old.tokenizer.tok, new_tok.tok).items():
            own = weight[pieces].mean(0)
            assert torch.allclose(embedding[i], own + toward * (everything - own), atol=1e-6)
    with pytest.raises(KrminiError, match=r"train\.new_rows_toward_mean: expected a value in \[0, 1\], got 1.5"):
        TrainConfig(new_rows_toward_mean=1.5).validate()


def test_init_from_is_weights_only(tiny_run, domain_run):
    """domain_run: 4 steps from tiny_run (40 steps trained): its own steps, optimizer and schedule."""
    ckpt = resolve_checkpoint(domain_run)
    state = read_state(ckpt)
    assert state["step"] == 4 and state["model_config"]["vocab_size"] == 2148
    assert state["run_config"]["train"]["init_from"] == str(resolve_checkpoint(tiny_run))
    moments = load_file(ckpt / OPTIM_FILE)
    assert {float(v) for k, v in moments.items() if k.endswith(".step")} == {4.0}  # not 44: fresh AdamW
    last = [json.loads(line) for line in (domain_run / "metrics.jsonl").read_text(encoding="utf-8").splitlines()]
    train = [r for r in last if r["kind"] == "train"][-1]
    cfg = TrainConfig(**state["run_config"]["train"])
    assert train["step"] == 4 and train["lr"] == pytest.approx(lr_at(3, cfg))  # the cpt schedule, from step 0
    saved = KoTokenizer.load(domain_run / TOKENIZER_DIR)
    assert fingerprint(saved.tok) == fingerprint(KoTokenizer.load(domain_run.parent / "tokenizer").tok)


def test_source_run_is_never_written(tiny_run, domain_run, tmp_path, capsys):
    source = tmp_path / "source"
    shutil.copytree(tiny_run, source)
    before = snapshot(source)
    code, err = cli(capsys, "train", "--init-from", source, "--tokenizer", domain_run.parent / "tokenizer",
                    "--data", domain_run.parent / "data", "--out", tmp_path / "cpt", *SHORT)
    assert code == 0, err
    assert snapshot(source) == before
    assert read_state(resolve_checkpoint(tmp_path / "cpt"))["step"] == 2
    code, err = cli(capsys, "train", "--init-from", source, "--data", tiny_run.parent / "data", "--out",
                    source / "inside", *SHORT)
    assert code == 1 and "lies inside the input" in err and snapshot(source) == before


def test_imported_run_continues(tiny_run, tmp_path, capsys):
    imported = import_hf(export_hf(load_model(tiny_run, torch.device("cpu")), tmp_path / "hf"), tmp_path / "imported")
    code, err = cli(capsys, "train", "--init-from", imported, "--data", tiny_run.parent / "data", "--out",
                    tmp_path / "cpt", *SHORT)
    assert code == 0, err
    assert read_state(resolve_checkpoint(tmp_path / "cpt"))["step"] == 2


def one_line(code: int, err: str) -> str:
    lines = err.strip().splitlines()
    assert code == 1 and len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


def test_data_of_another_tokenizer_is_one_line_naming_both(tiny_run, domain_run, tmp_path, capsys):
    extended, data = domain_run.parent / "tokenizer", domain_run.parent / "data"
    line = one_line(*cli(capsys, "train", "--init-from", tiny_run, "--data", data, "--out", tmp_path / "a", *SHORT))
    assert f"{data}: tokenized with {extended}" in line and str(resolve_checkpoint(tiny_run) / TOKENIZER_DIR) in line
    assert f"--tokenizer {extended}" in line
    line = one_line(*cli(capsys, "train", "--init-from", tiny_run, "--tokenizer", extended, "--data",
                         tiny_run.parent / "data", "--out", tmp_path / "b", *SHORT))
    assert "tokenized with" in line and str(extended) in line
    # the tokenizer file a manifest names, retrained after the data was prepared
    copy = tmp_path / "data"
    shutil.copytree(tiny_run.parent / "data", copy)
    manifest = json.loads((copy / "manifest.json").read_text(encoding="utf-8"))
    manifest["tokenizer"] = str(extended)
    (copy / "manifest.json").write_text(json.dumps(manifest), encoding="utf-8")
    line = one_line(*cli(capsys, "train", "--config", "tiny", "--data", copy, "--out", tmp_path / "c", *SHORT,
                         "model.vocab_size=2148"))
    assert f"tokenized with {extended}" in line and "but the run uses the tokenizer" in line
    assert not any((tmp_path / name).exists() for name in "abc")


def test_bad_starts_are_one_line(tiny_run, lora_run, domain_run, tmp_path, capsys):
    data = tiny_run.parent / "data"
    line = one_line(*cli(capsys, "train", "--init-from", tmp_path / "nothing", "--data", data, "--out", tmp_path / "o"))
    assert "nothing: no checkpoint found" in line
    corrupt = tmp_path / "corrupt"
    shutil.copytree(tiny_run, corrupt)
    weights = resolve_checkpoint(corrupt) / "model.safetensors"
    raw = bytearray(weights.read_bytes())
    raw[-1] ^= 0xFF
    weights.write_bytes(bytes(raw))
    line = one_line(*cli(capsys, "train", "--init-from", corrupt, "--data", data, "--out", tmp_path / "o"))
    assert f"{weights}: corrupt or truncated" in line
    line = one_line(*cli(capsys, "train", "--init-from", lora_run, "--data", data, "--out", tmp_path / "o"))
    assert "is a LoRA run" in line and "krmini lora merge" in line
    line = one_line(*cli(capsys, "train", "--init-from", tiny_run, "--config", "tiny", "--data", data,
                         "--out", tmp_path / "o"))
    assert "has a model section" in line
    line = one_line(*cli(capsys, "train", "--init-from", tiny_run, "--lora", "r=4", "--tokenizer",
                         domain_run.parent / "tokenizer", "--data", data, "--out", tmp_path / "o"))
    assert "LoRA freezes the embedding and head" in line
    line = one_line(*cli(capsys, "train", "--config", "tiny", "--tokenizer", tmp_path, "--data", data,
                         "--out", tmp_path / "o"))
    assert "--tokenizer: only with --init-from" in line
    assert not (tmp_path / "o").exists()


def test_lora_domain_tuning_from_a_run(tiny_run, tmp_path, capsys):
    """The alternative for large models: adapters only, on the base's own tokenizer."""
    code, err = cli(capsys, "train", "--init-from", tiny_run, "--lora", "r=4,alpha=8,targets=q,v", "--data",
                    tiny_run.parent / "data", "--out", tmp_path / "lora", *SHORT)
    assert code == 0, err
    state = read_state(resolve_checkpoint(tmp_path / "lora"))
    assert state["run_config"]["lora"]["r"] == 4
    assert load_model(tmp_path / "lora", torch.device("cpu")).model.config.vocab_size == 2048  # merges on load
