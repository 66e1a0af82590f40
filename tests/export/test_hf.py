"""Hugging Face export/import: transformers loads our export without custom code and agrees with us."""

from __future__ import annotations

import json
import shutil

import pytest
import torch

from krmini import runs
from krmini.cli import main
from krmini.export.hf import export_hf, import_hf
from krmini.infer.generate import SamplingConfig, generate_ids
from krmini.infer.load import load_model
from krmini.train import checkpoint as ckpt

transformers = pytest.importorskip("transformers", reason="transformers not installed (pip install 'krmini[hf]')")

TEXT = "대한민국의 주권은 국민에게 있고, 모든 권력은 국민으로부터 나온다."


@pytest.fixture(scope="module")
def hf_dir(tiny_run, tmp_path_factory):
    out = tmp_path_factory.mktemp("hf") / "model"
    export_hf(load_model(tiny_run, torch.device("cpu")), out)
    return out


def test_export_layout_and_autoclasses(hf_dir, tiny_run):
    names = {p.name for p in hf_dir.iterdir()}
    assert {"config.json", "model.safetensors", "generation_config.json", "tokenizer.json",
            "tokenizer_config.json"} <= names
    config = json.loads((hf_dir / "config.json").read_text(encoding="utf-8"))
    assert config["model_type"] == "llama" and config["architectures"] == ["LlamaForCausalLM"]
    hf = transformers.AutoModelForCausalLM.from_pretrained(hf_dir)
    assert type(hf).__name__ == "LlamaForCausalLM"
    hf_tok = transformers.AutoTokenizer.from_pretrained(hf_dir)
    ours = load_model(tiny_run, torch.device("cpu"))
    ids = ours.tokenizer.encode(TEXT)
    assert hf_tok(TEXT, add_special_tokens=False)["input_ids"] == ids
    assert hf_tok.decode(ids) == TEXT

    x = torch.tensor([[ours.tokenizer.bos_id, *ids]])
    with torch.no_grad():
        ours_logits, _ = ours.model(x)
        hf_logits = hf(x).logits
    assert (ours_logits - hf_logits).abs().max().item() < 1e-4

    prompt = [ours.tokenizer.bos_id, *ours.tokenizer.encode("모든 국민은")]
    greedy = list(generate_ids(ours.model, prompt, SamplingConfig(max_new_tokens=24, temperature=0)))
    if ours.tokenizer.eos_id in greedy:  # transformers stops after emitting EOS
        greedy = greedy[:greedy.index(ours.tokenizer.eos_id) + 1]
    hf_out = hf.generate(torch.tensor([prompt]), max_new_tokens=len(greedy), do_sample=False)
    assert hf_out[0, len(prompt):].tolist() == greedy


def test_import_round_trip_is_exact(hf_dir, tiny_run, tmp_path):
    run = import_hf(hf_dir, tmp_path / "imported")
    back = load_model(run, torch.device("cpu"))
    original = load_model(tiny_run, torch.device("cpu"))
    a, b = ckpt.model_tensors(original.model), ckpt.model_tensors(back.model)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert back.tokenizer.encode(TEXT) == original.tokenizer.encode(TEXT)


def test_refuses_non_empty_output_unless_forced(tiny_run, tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("x", encoding="utf-8")
    assert main(["export", "hf", str(tiny_run), str(out)]) == 1
    err = capsys.readouterr().err
    assert "not empty" in err and "--force" in err and err.count("\n") == 1
    assert (out / "keep.txt").is_file()  # nothing touched
    assert main(["export", "hf", str(tiny_run), str(out), "--force"]) == 0
    assert not (out / "keep.txt").exists() and (out / "model.safetensors").is_file()


def test_checkpoint_without_tokenizer_is_refused(tiny_run, tmp_path, capsys):
    bare = tmp_path / "ckpt"
    shutil.copytree(runs.resolve_checkpoint(tiny_run), bare)
    shutil.rmtree(bare / "tokenizer")
    assert main(["export", "hf", str(bare), str(tmp_path / "o")]) == 1
    assert "no tokenizer" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_import_refuses_pickled_weights(hf_dir, tmp_path, capsys):
    src = tmp_path / "bin_only"
    shutil.copytree(hf_dir, src)
    (src / "model.safetensors").rename(src / "pytorch_model.bin")
    assert main(["import", "hf", str(src), str(tmp_path / "run")]) == 1
    assert "only safetensors" in capsys.readouterr().err


def test_outputs_never_replace_their_inputs(tiny_run, tmp_path, capsys):
    """`export hf RUN RUN --force` once deleted the training run; exporting into its parent did the same."""
    before = sorted(p.relative_to(tiny_run) for p in tiny_run.rglob("*"))
    for argv in (["export", "hf", str(tiny_run), str(tiny_run), "--force"],
                 ["export", "hf", str(tiny_run), str(tiny_run.parent), "--force"],
                 ["export", "hf", str(tiny_run), str(tiny_run / "hf"), "--force"],
                 ["export", "gguf", str(tiny_run), str(tiny_run / "m.gguf"), "--force"],
                 ["quantize", str(tiny_run), "--int8", "--out", str(tiny_run), "--no-eval"],
                 ["lora", "merge", str(tiny_run), str(tiny_run.parent), "--force"]):
        assert main(argv) == 1, argv
        err = capsys.readouterr().err.strip()
        assert err.count("\n") == 0 and "Traceback" not in err, err
        if argv[0] != "lora":  # (a plain run is refused first: nothing to merge)
            assert "inside" in err or "contains the source" in err, err
    assert sorted(p.relative_to(tiny_run) for p in tiny_run.rglob("*")) == before
