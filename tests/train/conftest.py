"""A tokenized corpus and a 50k-parameter model config, small enough for multi-process tests on 2 cores."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def micro_data(tmp_path_factory) -> Path:
    """Shards of KoNLPy's bundled Korean corpus with a 512-token BPE (~4 s)."""
    from krmini.data.prepare import PrepareConfig, prepare, sample_texts
    from krmini.demo import konlpy_corpus
    from krmini.tokenizer.tokenizer import KoTokenizer

    out = tmp_path_factory.mktemp("micro_data")
    inputs = konlpy_corpus()
    tok = KoTokenizer.train(sample_texts(inputs, "text", 10**9), vocab_size=512, show_progress=False)
    tok_dir = tok.save(out / "tokenizer")
    prepare(inputs, tok, str(tok_dir), out / "data", PrepareConfig(val_fraction=0.05, test_fraction=0.05),
            progress=False)
    return out / "data"
