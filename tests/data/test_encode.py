"""The word-cached encoder gives exactly the tokenizer's ids."""

from __future__ import annotations

import numpy as np
from tokenizers import Tokenizer, pre_tokenizers

from krmini.data.clean import clean_text
from krmini.data.encode import WordCachedEncoder
from krmini.tokenizer.tokenizer import KoTokenizer
from tests.conftest import read_jsonl_texts, shared_file

EDGE_CASES = ["", "한", "  두 칸  띄움 ", "줄\n바꿈 다음\n\n문단", "숫자 2024년 12,345원", "<|bos|>특수<|eos|> 토큰 a<|end|>b",
              "ㅋㅋㅋㅋ 😀 emoji", "tab\there", "끝 "]


def check(tok: Tokenizer, texts: list[str]) -> None:
    enc = WordCachedEncoder(tok)
    assert enc.by_word
    for _ in range(2):  # cold, then warm cache
        got = enc.encode_batch(texts)
        want = [e.ids for e in tok.encode_batch(texts, add_special_tokens=False)]
        assert [g.tolist() for g in got] == want
        assert all(g.dtype == np.uint32 for g in got)


def test_edge_cases_match_the_tokenizer(tokenizer_dir):
    tok = KoTokenizer.load(tokenizer_dir).tok
    check(tok, EDGE_CASES)
    check(tok, ["한단어", "", "word"])  # no spaces at all
    assert WordCachedEncoder(tok).encode_batch([]) == []


def test_real_korean_text_matches_the_tokenizer(tokenizer_dir):
    texts = [clean_text(t) for t in read_jsonl_texts(shared_file("pretrain/nsmc_reviews_sample.jsonl"), limit=2000)]
    texts += [clean_text(t)[:20000] for t in read_jsonl_texts(shared_file("pretrain/petitions.jsonl"), limit=100)]
    check(KoTokenizer.load(tokenizer_dir).tok, texts)


def test_other_pre_tokenizers_are_encoded_whole(tokenizer_dir):
    tok = KoTokenizer.load(tokenizer_dir).tok
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    enc = WordCachedEncoder(tok)
    assert not enc.by_word
    assert [g.tolist() for g in enc.encode_batch(EDGE_CASES)] == [e.ids for e in tok.encode_batch(EDGE_CASES, add_special_tokens=False)]
