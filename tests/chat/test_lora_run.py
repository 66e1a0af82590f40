"""A LoRA run opens everywhere (adapters merged on load) and `krmini lora merge` writes a plain run."""

from __future__ import annotations

import json
import shutil

import pytest
import torch

from krmini.cli import main
from krmini.eval.ppl import perplexity
from krmini.infer.engine import Engine
from krmini.infer.fast.quantize import Int8Linear
from krmini.infer.load import load_model
from krmini.infer.sampling import SamplingConfig
from krmini.model import LlamaModel
from krmini.runs import MODEL_FILE, STATE_FILE, read_state, resolve_checkpoint
from krmini.train.checkpoint import checkpoint_model_config, load_model_weights
from krmini.train.lora import LoRALinear, apply_lora, run_lora_config

CPU = torch.device("cpu")
TEXTS = ["안녕하세요! 무엇을 도와드릴까요?", "오늘 날씨가 맑고 따뜻한 날이에요. 산책을 해 보세요."]


@pytest.fixture(scope="module")
def unmerged(lora_run):
    """The LoRA model as trained: base weights plus separate A/B matrices, nothing merged."""
    path = resolve_checkpoint(lora_run)
    state = read_state(path)
    model = LlamaModel(checkpoint_model_config(path, state))
    apply_lora(model, run_lora_config(state, "state.json"))
    load_model_weights(model, path)
    return model.eval()


@pytest.fixture(scope="module")
def ids():
    return torch.randint(3, 2000, (2, 24), generator=torch.Generator().manual_seed(0))


def _logits(model, ids):
    with torch.no_grad():
        return model(ids)[0]


def test_load_model_merges_a_lora_run_to_the_same_logits(lora_run, unmerged, ids, tiny_run):
    merged = load_model(lora_run, CPU).model
    assert not any(isinstance(m, LoRALinear) for m in merged.modules())
    assert any(isinstance(m, LoRALinear) for m in unmerged.modules())
    torch.testing.assert_close(_logits(merged, ids), _logits(unmerged, ids), atol=1e-5, rtol=0)
    base = _logits(load_model(tiny_run, CPU).model, ids)
    assert not torch.allclose(base, _logits(merged, ids), atol=1e-3)  # the adapters did change the model


def test_generate_cli_on_a_lora_run(lora_run, capsys):
    greedy = SamplingConfig(max_new_tokens=6, temperature=0)
    loaded = load_model(lora_run, CPU)
    expected = Engine(loaded.model, loaded.tokenizer).generate("국회는", greedy)
    assert main(["generate", str(lora_run), "--prompt", "국회는", "--max-new-tokens", "6",
                 "--temperature", "0", "--device", "cpu"]) == 0
    out = capsys.readouterr().out
    assert out == f"국회는{expected}\n" and expected


def test_eval_ppl_cli_on_a_lora_run(lora_run, unmerged, tmp_path, capsys):
    data = tmp_path / "held_out.txt"
    data.write_text("\n\n".join(TEXTS), encoding="utf-8")
    record = tmp_path / "ppl.json"
    assert main(["eval", "ppl", str(lora_run), "--data", str(data), "--device", "cpu", "--out", str(record)]) == 0
    assert "perplexity" in capsys.readouterr().out
    result = json.loads(record.read_text(encoding="utf-8"))
    reference = perplexity(unmerged, load_model(lora_run, CPU).tokenizer, [p for p in TEXTS])
    assert result["tokens"] == reference.tokens
    assert result["loss"] == pytest.approx(reference.loss, rel=1e-4)


def test_export_hf_cli_on_a_lora_run(lora_run, unmerged, ids, tmp_path, capsys):
    transformers = pytest.importorskip("transformers")
    out = tmp_path / "hf"
    assert main(["export", "hf", str(lora_run), str(out)]) == 0
    assert str(out) in capsys.readouterr().out
    hf = transformers.AutoModelForCausalLM.from_pretrained(out).eval()
    with torch.no_grad():
        got = hf(ids).logits
    torch.testing.assert_close(got, _logits(unmerged, ids), atol=1e-4, rtol=0)


def test_export_gguf_cli_on_a_lora_run(lora_run, unmerged, tmp_path, capsys):
    gguf = pytest.importorskip("gguf")
    out = tmp_path / "m.gguf"
    assert main(["export", "gguf", str(lora_run), str(out), "--type", "f32"]) == 0
    assert str(out) in capsys.readouterr().out
    stored = {t.name: t for t in gguf.GGUFReader(out).tensors}["blk.0.ffn_up.weight"]
    up = unmerged.model.layers[0].mlp.up_proj  # a LoRA target: the file must hold W + (alpha/r)·B·A
    with torch.no_grad():
        expected = up.weight + up.scaling * (up.lora_B @ up.lora_A)
    assert not torch.allclose(expected, up.weight, atol=1e-6)
    torch.testing.assert_close(torch.from_numpy(stored.data.copy()).reshape(expected.shape), expected,
                               atol=1e-6, rtol=0)


def test_quantize_cli_on_a_lora_run(lora_run, unmerged, ids, tmp_path, capsys):
    out = tmp_path / "q8"
    assert main(["quantize", str(lora_run), "--int8", "--out", str(out)]) == 0
    report = capsys.readouterr().out
    assert f"wrote {out}" in report and "x smaller" in report and "val perplexity" in report
    state = json.loads((out / STATE_FILE).read_text(encoding="utf-8"))
    assert state["quantization"] == "int8" and state["run_config"]["lora"] is None
    loaded = load_model(out, CPU)
    assert isinstance(loaded.model.lm_head, Int8Linear)
    ref = _logits(unmerged, ids)
    assert (_logits(loaded.model, ids) - ref).abs().max() < 0.05 * ref.abs().max()


def test_report_cli_on_a_lora_run(lora_run, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(lora_run, run)
    out = tmp_path / "report"
    assert main(["report", str(run), "--out", str(out), "--prompt", "안녕하세요", "--max-new-tokens", "4",
                 "--device", "cpu"]) == 0
    page = (out / "report.md").read_text(encoding="utf-8")
    assert f"Checkpoint `{resolve_checkpoint(run)}`" in page and "- **안녕하세요**" in page
    assert "lora:" in page  # the config section shows the run's LoRA settings


def test_lora_merge_writes_a_plain_run_with_the_same_logits(lora_run, unmerged, ids, tmp_path, capsys):
    before = {p.relative_to(lora_run): p.stat().st_mtime_ns for p in lora_run.rglob("*")}
    out = tmp_path / "merged"
    assert main(["lora", "merge", str(lora_run), str(out)]) == 0
    assert "plain run" in capsys.readouterr().out
    ckpt = resolve_checkpoint(out)
    assert ckpt.parent == out / "checkpoints" and (out / "tokenizer").is_dir() and (ckpt / "tokenizer").is_dir()
    state = read_state(ckpt)  # checksums verified
    assert set(state["checksums"]) == {MODEL_FILE} and state["run_config"]["lora"] is None
    assert state["model_config"] == read_state(resolve_checkpoint(lora_run))["model_config"]
    loaded = load_model(out, CPU)
    torch.testing.assert_close(_logits(loaded.model, ids), _logits(unmerged, ids), atol=1e-5, rtol=0)
    plain = LlamaModel(loaded.model.config)
    load_model_weights(plain, ckpt)  # loads as a plain model: no adapter tensors left
    assert main(["generate", str(out), "--prompt", "안녕", "--max-new-tokens", "3", "--device", "cpu"]) == 0
    assert before == {p.relative_to(lora_run): p.stat().st_mtime_ns for p in lora_run.rglob("*")}


def test_lora_merge_refuses_to_overwrite_or_touch_the_run(lora_run, tmp_path, capsys):
    out = tmp_path / "taken"
    out.mkdir()
    (out / "keep.txt").write_text("mine", encoding="utf-8")
    assert main(["lora", "merge", str(lora_run), str(out)]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "not empty" in err and "--force" in err
    assert [p.name for p in out.iterdir()] == ["keep.txt"]
    for inside in (lora_run, lora_run / "merged", lora_run.parent):
        assert main(["lora", "merge", str(lora_run), str(inside), "--force"]) == 1
        assert "lies inside the input" in capsys.readouterr().err
    # given one checkpoint, the run around it is protected too
    assert main(["lora", "merge", str(resolve_checkpoint(lora_run)), str(lora_run / "merged"), "--force"]) == 1
    assert "lies inside the input" in capsys.readouterr().err
    assert not (lora_run / "merged").exists() and resolve_checkpoint(lora_run).is_dir()
    assert main(["lora", "merge", str(lora_run), str(out), "--force"]) == 0
    assert not (out / "keep.txt").exists() and resolve_checkpoint(out).is_dir()


def test_lora_merge_of_a_plain_run_is_refused(tiny_run, tmp_path, capsys):
    assert main(["lora", "merge", str(tiny_run), str(tmp_path / "o")]) == 1
    assert "not a LoRA run" in capsys.readouterr().err and not (tmp_path / "o").exists()


def test_adapters_cannot_merge_into_int8_weights_one_line(lora_run, tiny_run, tmp_path, capsys):
    q8 = tmp_path / "q8"
    assert main(["quantize", str(tiny_run), "--int8", "--out", str(q8), "--no-eval"]) == 0
    state = json.loads((q8 / STATE_FILE).read_text(encoding="utf-8"))
    state["run_config"]["lora"] = read_state(resolve_checkpoint(lora_run))["run_config"]["lora"]
    (q8 / STATE_FILE).write_text(json.dumps(state), encoding="utf-8")
    capsys.readouterr()
    assert main(["generate", str(q8), "--prompt", "안녕", "--device", "cpu"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "cannot be merged into int8 weights" in err

    from krmini.chat.load import load_chat_model
    from krmini.errors import KrminiError

    state["run_config"]["lora"] = None
    (q8 / STATE_FILE).write_text(json.dumps(state), encoding="utf-8")
    with pytest.raises(KrminiError, match="int8 checkpoint; --adapter needs the float base"):
        load_chat_model(q8, CPU, adapter=lora_run / "adapter")
