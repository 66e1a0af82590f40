"""`krmini tokenizer extend`: new legal tokens after the old ids, on slices of the shared corpora.

The base is trained on general text (petitions, reviews, novels), extended from judgments and statutes,
and measured on documents of both kinds that neither saw.
"""

from __future__ import annotations

import json
from dataclasses import asdict

import pytest
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

from krmini.cli import main
from krmini.data.clean import clean_text
from krmini.data.prepare import PrepareConfig
from krmini.data.split import texts_in_split
from krmini.errors import KrminiError
from krmini.tokenizer import KoTokenizer
from krmini.tokenizer.extend import EXTENSION_FILE, check_extends, extend, fingerprint, new_token_pieces
from tests.conftest import read_jsonl_texts, shared_file


def texts(name: str, start: int, stop: int, cap: int = 3000) -> list[str]:
    return [clean_text(t)[:cap] for t in read_jsonl_texts(shared_file(f"pretrain/{name}"), stop)[start:stop]]


@pytest.fixture(scope="module")
def corpora() -> dict[str, list[str]]:
    return {"general": texts("petitions.jsonl", 0, 300) + texts("nsmc_reviews_sample.jsonl", 0, 6000)
            + texts("koconovel_novels.jsonl", 0, 100),
            "legal": texts("precedents_sample.jsonl", 0, 200) + texts("laws_acts_sample.jsonl", 0, 20, 20_000),
            "legal_heldout": texts("precedents_sample.jsonl", 3000, 3040) + texts("laws_acts_sample.jsonl", 195, 205),
            "general_heldout": texts("petitions.jsonl", 3000, 3040) + texts("nsmc_reviews_sample.jsonl", 150_000, 151_000)
            + texts("koconovel_novels.jsonl", 800, 820)}


@pytest.fixture(scope="module")
def pair(corpora):
    """(base trained on general text with 3000 tokens, its extension by 600 legal tokens)."""
    base = KoTokenizer.train(corpora["general"], vocab_size=3000, show_progress=False)
    return base, extend(base.tok, corpora["legal"], 600)


def count(tok: Tokenizer, docs: list[str]) -> int:
    return sum(len(e.ids) for e in tok.encode_batch(docs, add_special_tokens=False))


def test_old_ids_keep_their_meaning(pair, corpora):
    base, ext = pair
    new = KoTokenizer(ext.tokenizer)
    assert ext.first_id == base.vocab_size == 3000 and new.vocab_size == 3600 and len(ext.added) == 600
    for i in range(base.vocab_size):
        assert new.tok.id_to_token(i) == base.tok.id_to_token(i)
        assert new.decode([i]) == base.decode([i])
    for doc in corpora["general_heldout"]:
        old_ids = base.encode(doc)
        assert new.decode(old_ids) == doc  # data tokenized with the base stays valid input
        new_ids = new.encode(doc)
        assert new.decode(new_ids) == doc and len(new_ids) <= len(old_ids)
    check_extends(base.tok, new.tok, "base", "extended")
    assert [new.tok.id_to_token(i) for i in range(3000, 3600)] == ext.added


def test_byte_fallback_and_special_tokens_unchanged(pair):
    base, ext = pair
    a, b = json.loads(base.tok.to_str()), json.loads(ext.tokenizer.to_str())
    assert b["model"]["byte_fallback"] is True and a["added_tokens"] == b["added_tokens"]
    assert b["model"]["merges"][: len(a["model"]["merges"])] == a["model"]["merges"]
    extended = KoTokenizer(ext.tokenizer)
    assert (extended.pad_id, extended.bos_id, extended.eos_id) == (base.pad_id, base.bos_id, base.eos_id)
    rare = "𠀀 뷁 😂"  # not in either vocabulary: bytes, as before
    assert extended.encode(rare) == base.encode(rare) and extended.decode(extended.encode(rare)) == rare


def test_figures_on_held_out_text(pair, corpora):
    """Measured: 3000 → 3600 tokens cuts legal held-out text by 16.9% and general by 1.9% (never more tokens)."""
    base, ext = pair
    legal = count(ext.tokenizer, corpora["legal_heldout"]) / count(base.tok, corpora["legal_heldout"]) - 1
    general = count(ext.tokenizer, corpora["general_heldout"]) / count(base.tok, corpora["general_heldout"]) - 1
    assert legal < -0.15, legal
    assert -0.04 < general <= 0.0, general
    # what the extension simulated on its corpus is what the tokenizer really does
    assert ext.tokens_after == count(ext.tokenizer, corpora["legal"]) < ext.tokens_before == count(base.tok, corpora["legal"])


def test_new_rows_come_from_their_pieces(pair):
    base, ext = pair
    pieces = new_token_pieces(base.tok, ext.tokenizer)
    assert sorted(pieces) == list(range(3000, 3600))
    for i, old in pieces.items():
        assert all(p < 3000 for p in old) and base.decode(old) == KoTokenizer(ext.tokenizer).decode([i])


def test_tokens_already_present_are_skipped_and_counted():
    """A vocabulary token no merge makes ("ab" here, as in hand-edited or imported vocabularies) is never
    added again, nor given a merge (that could reorder the old ones)."""
    vocab = {c: i for i, c in enumerate(["<unk>", "a", "b", "c", "ab"])}
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    ext = extend(tok, ["ab ab ab ab bc bc bc abc"], 5)  # (a, b) is the most frequent pair: "ab" exists
    assert ext.skipped == 1 and ext.added == ["bc"] and ext.tokenizer.token_to_id("ab") == 4
    assert ext.tokenizer.encode("ab bc").tokens == ["a", "b", "bc"]  # "ab" is made as before (not at all)


def test_byte_level_tokenizer_with_specials_after_the_vocabulary(corpora):
    """Llama 3 / Qwen layout: byte-level BPE, special tokens numbered after the BPE vocabulary."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(corpora["general"][:2000], trainers.BpeTrainer(
        vocab_size=2000, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False))
    tok.add_special_tokens(["<|begin_of_text|>", "<|eot_id|>"])
    ext = extend(tok, corpora["legal"], 300)
    new = ext.tokenizer
    assert ext.first_id == 2002 and new.token_to_id("<|eot_id|>") == 2001 and new.get_vocab_size() == 2302
    check_extends(tok, new, "base", "extended")
    doc = corpora["legal_heldout"][0]
    assert new.decode(new.encode(doc).ids) == doc
    assert count(new, corpora["legal_heldout"]) < 0.9 * count(tok, corpora["legal_heldout"])
    assert new.encode("<|eot_id|>").ids == [2001]


def test_cli_writes_a_loadable_extension_with_its_record(tiny_run, tmp_path, capsys):
    legal = tmp_path / "legal.jsonl"
    legal.write_text("".join(json.dumps({"text": t}, ensure_ascii=False) + "\n"
                             for t in texts("precedents_sample.jsonl", 0, 60)), encoding="utf-8")
    out = tmp_path / "ext"
    assert main(["tokenizer", "extend", str(tiny_run), "--corpus", str(legal), "--add", "50", "--out", str(out),
                 "--heldout", str(legal)]) == 0
    said = capsys.readouterr().out
    assert "added 50 of 50 tokens" in said and "chars/token" in said and "held-out text" in said
    record = json.loads((out / EXTENSION_FILE).read_text(encoding="utf-8"))
    base = KoTokenizer.load(tiny_run / "tokenizer")
    loaded = KoTokenizer.load(out)
    assert record["base_sha256"] == fingerprint(base.tok) and record["sha256"] == fingerprint(loaded.tok)
    assert record["added"] == 50 and loaded.vocab_size == base.vocab_size + 50 == record["vocab_size"]
    assert record["corpus_tokens"]["after"] < record["corpus_tokens"]["before"]
    assert (out / "tokenizer_config.json").read_bytes() == (tiny_run / "tokenizer" / "tokenizer_config.json").read_bytes()
    # an existing output is not replaced without --force
    assert main(["tokenizer", "extend", str(tiny_run), "--corpus", str(legal), "--add", "5", "--out", str(out)]) == 1
    assert "not empty" in capsys.readouterr().err


def test_skip_heldout_learns_only_from_what_prepare_trains_on(tiny_run, tmp_path, capsys):
    docs = texts("precedents_sample.jsonl", 0, 60)
    legal = tmp_path / "legal.jsonl"
    legal.write_text("".join(json.dumps({"text": t}, ensure_ascii=False) + "\n" for t in docs), encoding="utf-8")
    records = {}
    for name, extra in (("all", []), ("train", ["--skip-heldout", "0.3"])):
        out = tmp_path / name
        assert main(["tokenizer", "extend", str(tiny_run), "--corpus", str(legal), "--add", "20", "--out", str(out),
                     *extra]) == 0
        records[name] = json.loads((out / EXTENSION_FILE).read_text(encoding="utf-8"))
    # the documents a prepare with val_fraction + test_fraction = 0.3 keeps in train, and only those
    config = asdict(PrepareConfig.recommended(val_fraction=0.2, test_fraction=0.1))
    train = list(texts_in_split(docs, config, "train"))
    assert 0 < len(train) < len(docs)
    assert records["train"]["corpus_chars"] == sum(map(len, train)) < records["all"]["corpus_chars"]
    assert records["train"]["skip_heldout"] == 0.3 and records["all"]["skip_heldout"] is None


def test_only_bpe_is_extended(tmp_path):
    tok = Tokenizer(models.WordLevel(vocab={"<unk>": 0, "가": 1}, unk_token="<unk>"))
    with pytest.raises(KrminiError, match="WordLevel tokenizer; only BPE"):
        extend(tok, ["가"], 3, where="wl")
