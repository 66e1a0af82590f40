"""Step 7: the char GPT is causal, its plotted attention is the trained attention, and short runs
on Tiny Shakespeare and Korean novels bring the loss below measured thresholds."""

import json
import math
from pathlib import Path

import pytest
import torch
from safetensors import safe_open

from krmini.cli import main
from krmini.errors import KrminiError
from krmini.lab.char_gpt import (
    SETUP_FILE,
    WEIGHTS_FILE,
    CharGPT,
    GPTConfig,
    TrainConfig,
    load_char_gpt,
    lr_at,
    train,
)
from krmini.lab.chardata import KOREAN_SAMPLE, load_text

SHARED = Path(__file__).resolve().parents[2] / ".." / "shared" / "data"
SHAKESPEARE = SHARED / "tinyshakespeare" / "input.txt"
KOREAN = SHARED / "pretrain" / "koconovel_novels.jsonl"


def require(path: Path) -> Path:
    if not path.is_file():
        pytest.skip(f"shared data not present: {path}")
    return path


@torch.no_grad()
def test_causal_and_plotted_weights_equal_fused_attention():
    torch.manual_seed(0)
    model = CharGPT(GPTConfig(vocab=11, block=16, n_layer=2, n_head=2, n_embd=32)).eval()
    idx = torch.randint(0, 11, (2, 16))
    weights: list = []
    fused, explicit = model(idx), model(idx, keep_weights=weights)
    assert (fused - explicit).abs().max() < 1e-5
    assert len(weights) == 2 and weights[0].shape == (2, 2, 16, 16)
    assert torch.allclose(weights[0].sum(-1), torch.ones(2, 2, 16))
    changed = idx.clone()
    changed[:, 10:] = (changed[:, 10:] + 1) % 11
    assert (model(changed)[:, :10] - fused[:, :10]).abs().max() == 0  # the future cannot leak back


def test_the_model_is_saved_as_safetensors_and_json_and_loads_back(tmp_path):
    text = KOREAN_SAMPLE * 3
    cfg = GPTConfig(block=16, n_layer=1, n_head=2, n_embd=32)
    train(text, cfg, TrainConfig(iters=3, eval_interval=3, eval_batches=1), tmp_path, log=lambda _: None)
    assert not list(tmp_path.glob("*.pt"))
    with safe_open(tmp_path / WEIGHTS_FILE, "pt") as weights:  # the tied output matrix is stored once
        tied = [weights.get_tensor(n) for n in ("head.weight", "tok.weight") if n in set(weights.keys())]
        assert [t.shape for t in tied] == [(cfg.vocab, 32)]
    setup = json.loads((tmp_path / SETUP_FILE).read_text(encoding="utf-8"))
    assert setup["model"]["vocab"] == len(set(text)) and "".join(setup["chars"]) == "".join(sorted(set(text)))
    model, vocab = load_char_gpt(tmp_path)
    assert model.cfg == cfg and vocab.chars == sorted(set(text)) and not model.training
    assert model.head.weight is model.tok.weight
    first = torch.tensor(vocab.encode(text[int(0.9 * len(text))]))[None]  # how train() drew sample.txt
    again = vocab.decode(model.generate(first, 300, generator=torch.Generator().manual_seed(0))[0])
    assert again == (tmp_path / "sample.txt").read_text(encoding="utf-8")  # the same weights came back
    (tmp_path / WEIGHTS_FILE).write_bytes(b"not safetensors")
    with pytest.raises(KrminiError, match=rf"{WEIGHTS_FILE}: does not fit"):
        load_char_gpt(tmp_path)


def test_learning_rate_schedule():
    tc = TrainConfig()
    assert lr_at(0, tc) == pytest.approx(1e-5)
    assert lr_at(99, tc) == pytest.approx(1e-3)
    assert lr_at(1050, tc) == pytest.approx(5.5e-4)
    assert lr_at(2000, tc) == pytest.approx(1e-4)


def test_short_run_on_tiny_shakespeare(tmp_path):
    text = load_text(require(SHAKESPEARE))
    metrics = train(
        text, GPTConfig(), TrainConfig(iters=150, eval_interval=150, eval_batches=20), tmp_path, log=print
    )
    assert metrics["vocab"] == 65
    assert metrics["history"][0]["val"] == pytest.approx(math.log(65), abs=0.1)
    assert metrics["val_loss"] < 2.65, metrics["val_loss"]  # measured 2.52 after 150 iterations
    assert len(list(tmp_path.glob("attention_l*_h*.png"))) == 16


def test_cli_on_korean_novels(tmp_path, capsys):
    data = require(KOREAN)
    argv = ["lab", "char-gpt", "--data", str(data), "--max-chars", "100000", "--iters", "100"]
    assert main([*argv, "--eval-interval", "100", "--eval-batches", "10", "--out", str(tmp_path)]) == 0
    metrics = json.loads((tmp_path / "metrics.json").read_text(encoding="utf-8"))
    start, end = metrics["history"][0]["val"], metrics["val_loss"]
    assert start == pytest.approx(math.log(metrics["vocab"]), abs=0.15)
    assert end < start - 2.5, (start, end)  # measured 7.11 → 3.92
    assert (tmp_path / WEIGHTS_FILE).is_file() and (tmp_path / "sample.txt").read_text(encoding="utf-8")
    assert load_char_gpt(tmp_path)[0].cfg.vocab == metrics["vocab"]
    assert "val loss" in capsys.readouterr().out


def test_cli_reports_missing_data_in_one_line(capsys):
    assert main(["lab", "char-gpt", "--data", "no/such/file.txt"]) == 1
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "no/such/file.txt" in err and "Traceback" not in err
