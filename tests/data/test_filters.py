"""Quality filters, PII scrubbing, boilerplate stripping, and MinHash estimates against exact Jaccard."""

from __future__ import annotations

import random

import numpy as np

from krmini.data.dedup import NGRAM, DedupConfig, MinHasher, ngram_hashes, repeated_ngram_ratio
from krmini.data.filters import (
    FilterConfig,
    hangul_ratio,
    repeated_line_ratio,
    scrub_pii,
    strip_boilerplate,
    text_reason,
)


def test_pii_patterns():
    text = ("문의: hong.gildong@example.co.kr 또는 010-1234-5678, 02-123-4567, 01098765432. "
            "주민등록번호 900101-1234567 (가짜 991332-1234567 은 날짜가 아님). 사건 2020다12345, 2010. 1. 1. 선고.")
    out, n = scrub_pii(text)
    assert n == 5
    assert out == ("문의: [이메일] 또는 [전화번호], [전화번호], [전화번호]. "
                   "주민등록번호 [주민번호] (가짜 991332-1234567 은 날짜가 아님). 사건 2020다12345, 2010. 1. 1. 선고.")


def test_boilerplate_lines_are_stripped_not_prose():
    text = "오늘 서울에 첫눈이 내렸다.\n무단 전재 및 재배포 금지\n저작권자 ⓒ 한국일보\n▶ 네이버에서 구독하기 클릭\n공유하기"
    out, removed = strip_boilerplate(text)
    assert out == "오늘 서울에 첫눈이 내렸다." and removed == len(text) - len(out)
    prose = "기사의 무단 전재 및 재배포 금지 조항은 저작권법에 근거한다고 법원은 판단했다. " * 5  # long line: kept
    assert strip_boilerplate(prose) == (prose, 0)


def test_ratios():
    assert hangul_ratio("한국어 text") == 3 / 7
    assert hangul_ratio("1234 !!") == 0.0
    assert hangul_ratio("ㅋㅋㅋ 재밌다") == 1.0
    assert repeated_line_ratio("가\n나\n가\n가") == 2 / 7
    cfg = FilterConfig(min_hangul_ratio=0.5, max_repeated_line_ratio=0.3)
    assert text_reason("", cfg) == "empty" and text_reason("가나", cfg, min_chars=3) == "too_short"
    assert text_reason("가나다라", cfg, max_chars=3) == "too_long"
    assert text_reason("mostly English 한글", cfg) == "hangul_ratio"
    assert text_reason("같은 줄\n같은 줄\n같은 줄", cfg) == "repeated_lines"
    assert text_reason("좋은 문서입니다.", cfg) is None


def test_repeated_ngram_ratio():
    a = np.arange(100, dtype=np.uint32)  # no repeats
    b = np.tile(np.arange(10, dtype=np.uint32), 10)  # period 10: all but the first 10 windows repeat
    h, d = ngram_hashes(np.concatenate([a, b]), np.array([100, 100]))
    assert np.bincount(d).tolist() == [100 - NGRAM + 1] * 2  # no window crosses the document boundary
    ratio = repeated_ngram_ratio(h, d, 2)
    assert ratio[0] == 0.0 and abs(ratio[1] - (96 - 10) / 96) < 1e-9


def test_minhash_estimates_jaccard():
    rng = random.Random(0)
    hasher = MinHasher(DedupConfig(num_perm=256))
    base = [rng.randrange(30000) for _ in range(2000)]
    for changed in (0, 100, 400, 1000):
        other = list(base)
        for i in rng.sample(range(len(base)), changed):
            other[i] = rng.randrange(30000, 60000)
        ids = np.array(base + other, np.uint32)
        h, d = ngram_hashes(ids, np.array([2000, 2000]))
        sa, sb = set(h[d == 0].tolist()), set(h[d == 1].tolist())
        true = len(sa & sb) / len(sa | sb)
        sig = hasher.signatures(h, d, 2)
        estimate = float((sig[0] == sig[1]).mean())
        assert abs(estimate - true) < 0.08, (changed, true, estimate)
        same_bands = (hasher.band_keys(sig)[0] == hasher.band_keys(sig)[1]).sum()
        if true == 1.0:
            assert same_bands == hasher.bands
        if true < 0.2:
            assert same_bands == 0


def test_minhash_signature_is_each_documents_minimum_per_permutation():
    """The blocked computation equals the definition, for documents within, across and between blocks."""
    rng = np.random.default_rng(1)
    hasher = MinHasher(DedupConfig(num_perm=16))
    sizes = [3, 1, 700, 40, 0, 1500, 2]  # shingles per document; 0: a document without any
    doc = np.repeat(np.arange(len(sizes)), sizes)
    hashes = rng.integers(0, 2**64, len(doc), dtype=np.uint64)
    sig = hasher.signatures(hashes, doc, len(sizes))
    for j, size in enumerate(sizes):
        if size == 0:
            assert (sig[j] == np.iinfo(np.uint32).max).all()
            continue
        values = np.multiply.outer(hashes[doc == j], hasher.a) + hasher.b  # wraps mod 2**64, as intended
        assert (sig[j] == (values.min(axis=0) >> np.uint64(32)).astype(np.uint32)).all()
