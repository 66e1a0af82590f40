"""Fixtures for the data pipeline tests: a small tokenizer trained once per session."""

from __future__ import annotations

from pathlib import Path

import pytest

from krmini.tokenizer.tokenizer import KoTokenizer

SAMPLE = [
    "대한민국은 민주공화국이다. 대한민국의 주권은 국민에게 있고, 모든 권력은 국민으로부터 나온다.",
    "서울특별시는 대한민국의 수도이며 최대 도시이다. 한강이 도시를 가로질러 흐른다.",
    "이 영화 정말 재밌어요 ㅋㅋ 배우들 연기가 최고였습니다. 다음 편도 기대됩니다.",
    "법원은 피고인의 상고를 기각한다. 원심판결은 정당하고 법리오해의 위법이 없다.",
    "The quick brown fox jumps over the lazy dog 1234567890.",
]


@pytest.fixture(scope="session")
def tokenizer_dir(tmp_path_factory) -> Path:
    tok = KoTokenizer.train(SAMPLE * 50, vocab_size=600, show_progress=False)
    return tok.save(tmp_path_factory.mktemp("tok"))
