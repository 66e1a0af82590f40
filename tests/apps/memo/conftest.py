"""Small Korean note folders in tmp dirs, and helpers to index and search them."""

from __future__ import annotations

from pathlib import Path

import pytest

from krmini.apps.memo import indexer
from krmini.apps.memo.search import Searcher
from krmini.apps.memo.store import Store

MEETING = """# 3월 회의

## 예산

올해 마케팅 예산은 1,200만 원으로 확정했다.
집행은 분기별로 나눈다.

## 일정

신제품 출시는 5월 둘째 주로 미뤘다.
"""

NOTES = {
    "회의/3월.md": MEETING,
    "장보기.txt": "장보기 목록\n\n사과, 배, 우유를 산다.\n\n김치찌개 재료: 돼지고기, 두부, 김치.\n",
    "여행.md": "# 제주 여행\n\n숙소는 서귀포의 바다 앞 펜션으로 잡았다.\n\n둘째 날에는 한라산 성판악 코스를 오른다.\n",
    "독서.md": "# 읽은 책\n\n임종석의 회고록을 읽었다. 학생운동 시절 이야기가 많다.\n",
}


def write_notes(root: Path, notes: dict[str, str] = NOTES) -> Path:
    for name, text in notes.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
    return root


@pytest.fixture
def notes_dir(tmp_path) -> Path:
    return write_notes(tmp_path / "notes")


def open_index(db: Path, roots: list[Path] | None = None, units: str | None = None) -> tuple[Store, tuple[str, ...]]:
    store = Store.open(db, create=True)
    kinds = indexer.configure(store, units)
    indexer.add_roots(store, [str(r) for r in roots or []])
    return store, kinds


def reindex(store: Store, kinds, **kw) -> indexer.Summary:
    return indexer.index(store, kinds, progress=False, **kw)


def top(store: Store, query: str, k: int = 3):
    return Searcher(store).search(query, k).hits


@pytest.fixture(scope="session")
def st_models(tmp_path_factory) -> tuple[Path, Path]:
    """(embedder, cross-encoder): tiny random BERTs saved as sentence-transformers models, with a WordPiece
    tokenizer trained here on the notes (nothing downloaded; about a second once the imports are done)."""
    pytest.importorskip("sentence_transformers", reason="sentence-transformers is in the memo extra")
    import torch
    from sentence_transformers import SentenceTransformer
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, trainers
    from transformers import BertConfig, BertForSequenceClassification, BertModel, BertTokenizerFast
    try:
        from sentence_transformers.sentence_transformer.modules import Pooling, Transformer
    except ImportError:  # sentence-transformers 5
        from sentence_transformers.models import Pooling, Transformer

    out = tmp_path_factory.mktemp("st")
    special = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    tok = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tok.normalizer, tok.pre_tokenizer = normalizers.NFC(), pre_tokenizers.Whitespace()
    tok.train_from_iterator(list(NOTES.values()) * 4, trainers.WordPieceTrainer(vocab_size=400, special_tokens=special,
                                                                                  show_progress=False))
    fast = BertTokenizerFast(tokenizer_object=tok, unk_token="[UNK]", pad_token="[PAD]", cls_token="[CLS]",
                             sep_token="[SEP]", mask_token="[MASK]")
    config = BertConfig(vocab_size=fast.vocab_size, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                        intermediate_size=64, max_position_embeddings=128)
    with torch.random.fork_rng():
        torch.manual_seed(0)
        BertModel(config).save_pretrained(out / "bert")
        config.num_labels = 1
        BertForSequenceClassification(config).save_pretrained(out / "rerank")
    fast.save_pretrained(out / "bert")
    fast.save_pretrained(out / "rerank")
    SentenceTransformer(modules=[Transformer(str(out / "bert"), max_seq_length=128), Pooling(32, "mean")]).save(
        str(out / "embed"))
    return out / "embed", out / "rerank"
