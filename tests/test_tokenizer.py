"""Tokenizer: lossless on real Korean text, byte fallback instead of <unk>, loadable by transformers."""

from __future__ import annotations

import random
import unicodedata

import pytest
from tokenizers import Tokenizer, pre_tokenizers

from krmini.data.clean import clean_text
from krmini.errors import KrminiError
from krmini.tokenizer import CHAT_TOKENS, SPECIAL_TOKENS, KoTokenizer, word_cache
from krmini.tokenizer.tokenizer import PRETOKENIZERS
from krmini.tokenizer.word_cache import WordCachedEncoder
from tests.conftest import read_jsonl_texts, shared_file

PRETRAIN_FILES = ["koconovel_novels.jsonl", "laws_acts_sample.jsonl", "nsmc_reviews_sample.jsonl",
                  "petitions.jsonl", "precedents_sample.jsonl"]
TRICKY = ["ㅋㅋㅋㅋ 진짜 웃기닼ㅋ 😂👍🏻", "漢字와 한글을 섞어 쓴 國漢文", "Café naïve — “따옴표” ‘작은’ …",
          "줄\n바꿈\t탭  두 칸", "  앞뒤 공백  ", "𠀀 희귀 한자, 똠방각하 뷁", "١٢٣ عربى 日本語 ภาษาไทย"]

# Where splitting at spaces could go wrong: runs of spaces, spaces at either end, digits (their own
# pieces), a "▁" already in the text, special-token strings, decomposed Hangul (the NFC normalizer).
WORD_EDGES = ["", " ", "  ", "끝 ", " 앞", "두  칸   세 칸", "2026년 11월 23일, ① ½", "이미 ▁ 있는▁메타 문자",
              "<|bos|> 특수 토큰<|end|> <|user|>", "줄\n 바꿈 \n\t탭", "\u1112\u1161\u11ab \u1100\u1173\u11af 자모"]


@pytest.fixture(scope="module")
def corpus_sample() -> dict[str, list[str]]:
    """Up to 150 documents from each pretraining file, spread through the file."""
    rng = random.Random(0)
    sample = {}
    for name in PRETRAIN_FILES:
        texts = read_jsonl_texts(shared_file(f"pretrain/{name}"))
        sample[name] = rng.sample(texts, min(150, len(texts)))
    return sample


@pytest.fixture(scope="module")
def tokenizer(corpus_sample) -> KoTokenizer:
    texts = [clean_text(t)[:3000] for docs in corpus_sample.values() for docs_t in [docs] for t in docs_t[:60]]
    return KoTokenizer.train(texts, vocab_size=3000, show_progress=False)


def test_special_token_layout(tokenizer):
    assert [tokenizer.token_id(t) for t in SPECIAL_TOKENS] == list(range(len(SPECIAL_TOKENS)))
    assert (tokenizer.pad_id, tokenizer.bos_id, tokenizer.eos_id) == (0, 1, 2)
    assert tokenizer.token_id("<0x00>") == len(SPECIAL_TOKENS)
    assert tokenizer.vocab_size <= 3000
    assert tokenizer.encode("<|user|>") == [tokenizer.token_id("<|user|>")]


def test_round_trip_is_lossless_on_every_pretraining_file(tokenizer, corpus_sample):
    checked = 0
    for name, docs in corpus_sample.items():
        for text in docs:
            text = clean_text(text)
            assert tokenizer.decode(tokenizer.encode(text)) == text, name
            checked += 1
    assert checked >= 5 * 150 - 10


@pytest.mark.parametrize("text", TRICKY)
def test_round_trip_on_tricky_text(tokenizer, text):
    assert tokenizer.decode(tokenizer.encode(text)) == text


def test_unseen_characters_fall_back_to_bytes_not_unk(tokenizer):
    ids = tokenizer.encode("𠀀")  # U+20000, 4 UTF-8 bytes, surely not in a 3k vocabulary
    assert [tokenizer.tok.id_to_token(i) for i in ids] == ["<0xF0>", "<0xA0>", "<0x80>", "<0x80>"]
    assert tokenizer.tok.token_to_id("<unk>") is None


def test_korean_words_become_few_tokens(tokenizer):
    text = "대한민국 헌법 제1조 국민의 권리와 의무"
    assert len(text) / len(tokenizer.encode(text)) > 1.5


def test_save_load_and_transformers_encode_identically(tokenizer, tmp_path, corpus_sample):
    transformers = pytest.importorskip("transformers")
    tokenizer.save(tmp_path)
    again = KoTokenizer.load(tmp_path)
    hf = transformers.AutoTokenizer.from_pretrained(tmp_path)
    texts = TRICKY + [clean_text(t)[:500] for t in corpus_sample["nsmc_reviews_sample.jsonl"][:30]]
    for text in texts:
        ids = tokenizer.encode(text)
        assert again.encode(text) == ids
        assert hf(text)["input_ids"] == ids
        assert hf.decode(ids) == text
    assert hf.bos_token == "<|bos|>" and hf.eos_token == "<|eos|>" and hf.pad_token == "<|pad|>"
    assert set(CHAT_TOKENS) <= set(hf.all_special_tokens)


def test_word_cache_gives_the_tokenizers_own_ids(tokenizer, corpus_sample, monkeypatch):
    tok = tokenizer.tok  # with its NFC normalizer
    encoder = WordCachedEncoder(tok)
    assert encoder.by_words

    def check(batch: list[str]) -> None:
        ids, lengths = encoder.encode_texts(batch)
        expected = [tok.encode(t, add_special_tokens=False).ids for t in batch]
        assert lengths.tolist() == [len(e) for e in expected]
        assert ids.tolist() == [i for e in expected for i in e]

    texts = WORD_EDGES + TRICKY + [clean_text(t) for docs in corpus_sample.values() for t in docs]
    check(texts[:30])
    check(texts[30:300])
    remembered = len(encoder.known)
    check(texts[:300])  # every word remembered: nothing new encoded
    assert len(encoder.known) == remembered
    monkeypatch.setattr(word_cache, "MAX_WORDS", 10)  # past the limit: the next batch starts over
    later = texts[300:]
    check(later)
    assert len(encoder.known) == len({(w,) if k == 0 else w for t in later for k, w in enumerate(t.split(" "))})
    check([])


def test_word_cache_encodes_text_by_text_for_other_pipelines(tokenizer):
    tok = Tokenizer.from_str(tokenizer.tok.to_str())
    tok.pre_tokenizer = pre_tokenizers.Whitespace()  # spaces dropped, not turned into "▁"
    encoder = WordCachedEncoder(tok)
    assert not encoder.by_words
    ids, lengths = encoder.encode_texts(TRICKY)
    expected = [tok.encode(t, add_special_tokens=False).ids for t in TRICKY]
    assert ids.tolist() == [i for e in expected for i in e] and lengths.tolist() == [len(e) for e in expected]


@pytest.fixture(scope="module")
def rule_tokenizers(corpus_sample) -> dict[str, KoTokenizer]:
    texts = [clean_text(t)[:2000] for docs in corpus_sample.values() for t in docs[:30]]
    return {rule: KoTokenizer.train(texts, vocab_size=2000, show_progress=False, pretokenizer=rule)
            for rule in PRETOKENIZERS}


@pytest.mark.parametrize("rule", list(PRETOKENIZERS))
def test_every_pretokenization_rule_is_lossless_cached_and_loads_in_transformers(rule, rule_tokenizers,
                                                                                corpus_sample, tmp_path):
    transformers = pytest.importorskip("transformers")
    tokenizer = rule_tokenizers[rule]
    texts = WORD_EDGES + TRICKY + [clean_text(t)[:800] for t in corpus_sample["petitions.jsonl"][:40]]
    tokenizer.save(tmp_path)
    hf = transformers.AutoTokenizer.from_pretrained(tmp_path)
    encoder = WordCachedEncoder(tokenizer.tok)
    assert encoder.by_words  # every rule cuts at spaces first, so the fast path stays
    ids, lengths = encoder.encode_texts(texts)
    expected = [tokenizer.encode(t) for t in texts]
    assert ids.tolist() == [i for e in expected for i in e] and lengths.tolist() == [len(e) for e in expected]
    for text, e in zip(texts, expected, strict=True):
        # lossless up to NFC, except that a "▁" in the text comes back as a space
        assert tokenizer.decode(e) == unicodedata.normalize("NFC", text) or "▁" in text
        assert hf(text)["input_ids"] == e


def test_pretokenization_rules_cut_where_they_say(rule_tokenizers):
    def pieces(rule: str, text: str) -> list[str]:
        return [p for p, _ in rule_tokenizers[rule].tok.pre_tokenizer.pre_tokenize_str(text)]

    text = "GPU가 2024년에 좋다."
    assert pieces("spaces", text) == ["GPU가", "▁2024년에", "▁좋다."]
    assert pieces("spaces-digits", text) == ["GPU가", "▁", "2", "0", "2", "4", "년에", "▁좋다."]
    assert pieces("spaces-digits-punct", text)[-2:] == ["▁좋다", "."]
    assert pieces("spaces-digits-script", text)[:2] == ["GPU", "가"]
    assert pieces("spaces-digits-script", text)[-2:] == ["▁좋다", "."]  # a full stop is not Hangul
    with pytest.raises(KrminiError, match="pretokenizer: expected one of spaces-digits, spaces, spaces-digits-punct"):
        KoTokenizer.train(["가나다"], vocab_size=2000, pretokenizer="morphemes")
