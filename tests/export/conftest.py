"""The imported open-model checkpoints shared by the tests of this folder (see `open_models.py`)."""

from __future__ import annotations

import itertools

import pytest
import torch

from tests.conftest import single_thread
from tests.export.open_models import BY_NAME, build_tokenizer, write_checkpoint


@pytest.fixture(scope="session")
def imported(tmp_path_factory):
    """name → (HF directory, imported run), built on first use (so `-k qwen3` builds one family).

    Read-only for tests: copy one before changing it."""
    from krmini.data.prepare import sample_texts
    from krmini.demo import konlpy_corpus
    from krmini.export.hf import import_hf

    texts = list(itertools.islice(sample_texts(konlpy_corpus(), "text", 10**9), 1500))
    built = {}

    def get(name: str):
        if name not in built:
            root = tmp_path_factory.mktemp(name)
            with single_thread(), torch.random.fork_rng():
                family = BY_NAME[name]
                hf_dir = write_checkpoint(family, build_tokenizer(family, texts), root / "hf")
                built[name] = hf_dir, import_hf(hf_dir, root / "run")
        return built[name]

    return get
