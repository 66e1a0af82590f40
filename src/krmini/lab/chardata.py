"""Character-level text for the lab's language models: read, index, cut into training windows.

Reads plain text or JSONL (one object per line, text in a named field), so the same code trains
on Tiny Shakespeare and on the Korean corpora under shared/data. Every distinct character is a
token: no tokenizer to learn, which keeps the models' step about the model alone.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from krmini.errors import KrminiError

# A short passage written for the lab, so the NumPy LM can train without any data files.
KOREAN_SAMPLE = (
    "봄이 오면 강가의 버드나무에 연두색 잎이 돋는다. 아이들은 학교가 끝나면 강둑으로 달려가 "
    "물수제비를 뜨고, 할머니는 그늘에 앉아 나물을 다듬는다. 해가 지면 마을에 밥 짓는 연기가 "
    "피어오르고, 개 짖는 소리가 멀리서 들려온다. 여름이 오면 강물은 불어나고 논에는 벼가 자란다. "
    "가을이 오면 들판은 누렇게 익고 사람들은 바쁘게 추수를 한다. 겨울이 오면 강은 얼어붙고 "
    "아이들은 얼음 위에서 썰매를 탄다. 그리고 다시 봄이 오면 강가의 버드나무에 연두색 잎이 돋는다. "
)


def load_text(path: Path, field: str = "text", max_chars: int | None = None) -> str:
    """The file's text; for .jsonl the `field` of each line joined by blank lines."""
    if not path.is_file():
        raise KrminiError(f"{path}: expected a text or JSONL file, found nothing there")
    if path.suffix != ".jsonl":
        return path.read_text(encoding="utf-8")[:max_chars]
    parts, total = [], 0
    with path.open(encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, start=1):
            if not line.strip():
                continue
            try:
                value = json.loads(line)[field]
            except (json.JSONDecodeError, KeyError, TypeError) as exc:
                raise KrminiError(
                    f"{path}:{lineno}: expected a JSON object with a string field {field!r}"
                ) from exc
            parts.append(value)
            total += len(value) + 2
            if max_chars is not None and total >= max_chars:
                break
    return "\n\n".join(parts)[:max_chars]


class CharVocab:
    def __init__(self, text: str) -> None:
        if not text:
            raise KrminiError("text: expected at least one character to build a vocabulary")
        self.chars = sorted(set(text))
        self.index = {ch: i for i, ch in enumerate(self.chars)}

    def __len__(self) -> int:
        return len(self.chars)

    def encode(self, text: str) -> np.ndarray:
        return np.array([self.index[ch] for ch in text], dtype=np.int64)

    def decode(self, ids) -> str:
        return "".join(self.chars[int(i)] for i in ids)


def random_windows(
    data: np.ndarray, block: int, batch: int, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """`batch` random windows of `block` tokens and the same windows shifted by one (the targets)."""
    if len(data) <= block:
        raise KrminiError(f"text: expected more than {block} characters, got {len(data)}")
    starts = rng.integers(0, len(data) - block, batch)
    x = np.stack([data[s : s + block] for s in starts])
    y = np.stack([data[s + 1 : s + 1 + block] for s in starts])
    return x, y
