"""Domain adaptation of imported open models: their tokenizer extended, their data prepared with it, their run
continued on it (Llama 3: byte-level; Qwen2: byte-level with a padded, tied embedding; Mistral: SentencePiece style)."""

from __future__ import annotations

import json

import pytest
import torch

from krmini.cli import main
from krmini.data.clean import clean_text
from krmini.data.prepare import PrepareConfig, prepare
from krmini.infer.load import load_model
from krmini.runs import TOKENIZER_DIR, read_state, resolve_checkpoint
from krmini.tokenizer import KoTokenizer
from krmini.tokenizer.extend import check_extends
from tests.conftest import write_legal_slices

SHORT = ["--device", "cpu", "train.max_steps=2", "train.batch_size=2", "train.seq_len=32", "train.eval_interval=2",
         "train.save_interval=2", "train.eval_tokens=500", "train.tensorboard=false", "train.precision=fp32"]


@pytest.mark.parametrize("name", ["llama3", "qwen2", "mistral"])
def test_extend_and_continue_an_imported_model(name, imported, tmp_path, capsys):
    _, run = imported(name)
    files = write_legal_slices(tmp_path / "text")
    ext = tmp_path / "tokenizer"
    assert main(["tokenizer", "extend", str(run), "--corpus", str(files["legal"]), "--add", "60", "--out", str(ext)]) == 0
    base, new = KoTokenizer.load(run / TOKENIZER_DIR), KoTokenizer.load(ext)
    assert new.foreign is not None and new.vocab_size == base.vocab_size + 60
    check_extends(base.tok, new.tok, "base", "extended")
    assert (new.bos_id, new.eos_id, new.pad_id, new.stop_ids) == (base.bos_id, base.eos_id, base.pad_id, base.stop_ids)
    assert new.chat_template == base.chat_template
    record = json.loads((ext / "extension.json").read_text(encoding="utf-8"))
    legal = [clean_text(json.loads(line)["text"]) for line in files["legal"].read_text(encoding="utf-8").splitlines()]
    for tok, when in ((base, "before"), (new, "after")):  # what the extension counted is what the tokenizer does
        assert record["corpus_tokens"][when] == sum(map(len, tok.encode_batch(legal)))
    assert record["corpus_tokens"]["after"] < 0.95 * record["corpus_tokens"]["before"]
    doc = legal[0]
    assert new.decode(new.encode(doc)) == base.decode(base.encode(doc))

    manifest = prepare([files["legal"]], new, str(ext), tmp_path / "data",
                       PrepareConfig(val_fraction=0.1, test_fraction=0.1, workers=1), progress=False)
    # the shards hold the model's own document markers around the extended tokenizer's ids
    assert sum(s["tokens"] for s in manifest["splits"].values()) == sum(len(ids) + 2 for ids in new.encode_batch(legal))
    capsys.readouterr()
    assert main(["train", "--init-from", str(run), "--tokenizer", str(ext), "--data", str(tmp_path / "data"),
                 "--out", str(tmp_path / "cpt"), *SHORT]) == 0, capsys.readouterr().err
    before = read_state(resolve_checkpoint(run))["model_config"]["vocab_size"]
    loaded = load_model(tmp_path / "cpt", torch.device("cpu"))
    assert loaded.model.config.vocab_size == max(before, new.vocab_size)
    assert loaded.tokenizer.foreign is not None and loaded.tokenizer.vocab_size == new.vocab_size
