"""Shared test fixtures.

Tests run torch and BLAS on one thread: on a busy 2-core machine, OpenMP threads competing with
other processes can make a 3-second training take minutes; one thread is slower only slightly.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from threadpoolctl import threadpool_limits

SHARED_DATA = Path(__file__).resolve().parents[1] / ".." / "shared" / "data"


@pytest.fixture(autouse=True)
def one_thread():
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    with threadpool_limits(limits=1):
        yield
    torch.set_num_threads(previous)


def shared_file(relative: str) -> Path:
    """A file under ../shared/data, or skip the test with the reason."""
    path = SHARED_DATA / relative
    if not path.exists():
        pytest.skip(f"shared test data not present: {path}")
    return path


def read_jsonl_texts(path: Path, limit: int | None = None, field: str = "text") -> list[str]:
    texts = []
    with open(path, encoding="utf-8") as fh:
        for line in fh:
            texts.append(json.loads(line)[field])
            if limit and len(texts) >= limit:
                break
    return texts


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory) -> Path:
    """A small trained run (tokenizer + shards + checkpoint) on KoNLPy's bundled corpus, a few seconds.

    Read-only for tests: copy it before changing anything.
    """
    from krmini.demo import konlpy_corpus
    from krmini.train.config import load_run_config

    out = tmp_path_factory.mktemp("tiny_run")
    from krmini.data.prepare import PrepareConfig, prepare
    from krmini.tokenizer.cli import sample_texts
    from krmini.tokenizer.tokenizer import KoTokenizer
    from krmini.train.trainer import train

    inputs = konlpy_corpus()
    tok = KoTokenizer.train(sample_texts(inputs, "text", 10**9), vocab_size=2048, show_progress=False)
    tok_dir = tok.save(out / "tokenizer_src")
    prepare(inputs, tok, str(tok_dir), out / "data", PrepareConfig(val_fraction=0.05, test_fraction=0.05),
            progress=False)
    with torch.random.fork_rng():
        cfg = load_run_config("tiny", [f"train.data_dir={out / 'data'}", f"train.out_dir={out / 'run'}",
                                       "model.vocab_size=2048", "train.batch_size=8", "train.seq_len=64",
                                       "train.max_steps=40", "train.eval_interval=20", "train.save_interval=20",
                                       "train.device=cpu"])
        train(cfg, progress=False)
    return out / "run"
