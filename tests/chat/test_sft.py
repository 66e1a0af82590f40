"""Instruction tuning through the pretraining trainer: init from the base, learning, LoRA runs, resume."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from safetensors.torch import load_file

from krmini import runs
from krmini.chat.load import load_chat_model
from krmini.chat.sft import run_sft
from krmini.cli import main
from krmini.infer.load import load_model
from krmini.train.lora import ADAPTER_FILE, LoRALinear, load_adapter, parse_lora_spec
from tests.conftest import write_chat_jsonl


def _metrics(run):
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text(encoding="utf-8").splitlines()]


def test_sft_starts_from_the_base_and_learns(tiny_run, chat_run):
    base = load_model(tiny_run, torch.device("cpu")).model.state_dict()
    tuned = load_model(chat_run, torch.device("cpu")).model.state_dict()
    emb_b, emb_t = base["model.embed_tokens.weight"].flatten(), tuned["model.embed_tokens.weight"].flatten()
    assert not torch.equal(emb_b, emb_t)
    # fine-tuned from the base (a run from a random init would be unrelated: cosine ≈ 0)
    assert torch.cosine_similarity(emb_b, emb_t, dim=0) > 0.6
    train = [m for m in _metrics(chat_run) if m["kind"] == "train"]
    assert train[-1]["loss"] < 0.5 * train[0]["loss"]
    manifest = json.loads((chat_run / "data" / "manifest.json").read_text(encoding="utf-8"))
    assert manifest["kind"] == "chat" and manifest["report"]["skipped"] == {"duplicate conversation": 8}
    saved = json.loads((runs.resolve_checkpoint(chat_run) / "tokenizer" / "tokenizer_config.json").read_text())
    assert "<|assistant|>" in saved["chat_template"]


def _lora_sft(tiny_run, out, data, extra=()):
    return run_sft(tiny_run, [str(data)], out, lora=parse_lora_spec("r=4,alpha=8,targets=q,v,up"), progress=False,
                   val_fraction=0.2, overrides=["train.max_steps=8", "train.batch_size=4", "train.seq_len=96",
                                                "train.lr=5.0e-3", "train.warmup_steps=2", "train.eval_interval=4",
                                                "train.save_interval=4", "train.keep_checkpoints=5",
                                                "train.device=cpu", *extra])


def test_lora_sft_saves_adapter_alone_resumes_exactly_and_merges(tiny_run, tmp_path):
    data = write_chat_jsonl(tmp_path / "chat.jsonl", repeat=2)
    _lora_sft(tiny_run, tmp_path / "full", data)
    adapter = load_file(tmp_path / "full" / "adapter" / ADAPTER_FILE)
    assert adapter and all(".lora_" in k for k in adapter)
    assert {k.split(".")[-2] for k in adapter} == {"q_proj", "v_proj", "up_proj"}
    evals = [m["val_loss"] for m in _metrics(tmp_path / "full") if m["kind"] == "eval"]
    assert evals[-1] < evals[0]

    # interrupted after step 4, then resumed: the same adapter as the uninterrupted run
    shutil.copytree(tmp_path / "full", tmp_path / "cut")
    root = tmp_path / "cut" / "checkpoints"
    shutil.rmtree(root / "step_00000008")
    shutil.rmtree(tmp_path / "cut" / "adapter")
    (root / "latest").write_text("step_00000004", encoding="utf-8")
    run_sft(tiny_run, [str(data)], tmp_path / "cut", resume=True, progress=False)
    resumed = load_file(tmp_path / "cut" / "adapter" / ADAPTER_FILE)
    assert all(torch.equal(resumed[k], adapter[k]) for k in adapter)

    # the LoRA run loads merged; base + adapter loads to the same outputs
    x = torch.randint(3, 2000, (1, 20))
    merged = load_chat_model(tmp_path / "full", torch.device("cpu")).model
    assert not any(isinstance(m, LoRALinear) for m in merged.modules())
    on_base = load_adapter(load_model(tiny_run, torch.device("cpu")).model, tmp_path / "full" / "adapter")
    via_flag = load_chat_model(tiny_run, torch.device("cpu"), adapter=tmp_path / "full" / "adapter").model
    with torch.no_grad():
        expected = on_base(x)[0]
        assert torch.allclose(merged(x)[0], expected, atol=1e-5)
        assert torch.allclose(via_flag(x)[0], expected, atol=1e-5)
        assert not torch.allclose(load_model(tiny_run, torch.device("cpu")).model(x)[0], expected, atol=1e-3)


def test_cli_errors_are_one_line(tiny_run, tmp_path, capsys):
    assert main(["sft", "--base", str(tmp_path / "nope"), "--data", "x.jsonl", "--out", str(tmp_path / "o")]) == 1
    assert "no checkpoint found" in capsys.readouterr().err
    assert main(["sft", "--base", str(tiny_run), "--data", str(tmp_path / "missing.jsonl"),
                 "--out", str(tmp_path / "o")]) == 1
    assert "chat data file not found" in capsys.readouterr().err
    assert main(["sft", "--base", str(tiny_run), "--data", "x", "--out", str(tmp_path / "o"), "--lora", "r=x"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("krmini: error: --lora")


@pytest.mark.parametrize("config_line", ["model:\n  hidden_size: 64\n"])
def test_sft_config_may_not_change_the_model(tiny_run, tmp_path, config_line):
    config = tmp_path / "bad.yaml"
    config.write_text(config_line, encoding="utf-8")
    assert main(["sft", "--base", str(tiny_run), "--data", "x", "--out", str(tmp_path / "o"),
                 "--config", str(config)]) == 1
