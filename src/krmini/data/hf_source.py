"""Hugging Face datasets as a corpus source: `--source hf:NAME[:CONFIG]`.

NAME is a Hub dataset (`wikimedia/wikipedia`, config `20231101.ko`), streamed record by record so
nothing is converted or cached whole; or a local directory — one written by `save_to_disk`, or
plain .jsonl/.json/.parquet/.csv files, which `datasets` loads without any script. Needs the
optional extra: pip install 'krmini[datasets]'.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

from krmini.data.readers import Document, ReadProblems
from krmini.errors import KrminiError


def parse_hf_source(spec: str) -> tuple[str, str | None]:
    """`hf:NAME[:CONFIG]` → (NAME, CONFIG or None)."""
    body = spec[len("hf:"):]
    name, _, config = body.partition(":")
    if not name:
        raise KrminiError(f"--source {spec}: expected hf:NAME or hf:NAME:CONFIG, e.g. hf:wikimedia/wikipedia:20231101.ko")
    return name, config or None


def _load(name: str, config: str | None, split: str):
    try:
        import datasets
    except ImportError:
        raise KrminiError("Hugging Face datasets is not installed: pip install 'krmini[datasets]'") from None
    path = Path(name)
    if (path / "state.json").is_file() or (path / "dataset_dict.json").is_file():
        loaded = datasets.load_from_disk(str(path))
        return loaded[split] if isinstance(loaded, datasets.DatasetDict) else loaded
    return datasets.load_dataset(name, config, split=split, streaming=True)


def read_hf(name: str, config: str | None, split: str, text_field: str, problems: ReadProblems) -> Iterator[Document]:
    source = f"hf:{name}" + (f":{config}" if config else "")
    try:
        for i, record in enumerate(_load(name, config, split), 1):
            text = record.get(text_field)
            if not isinstance(text, str):
                problems.report("missing_field", f"{source}[{split}] record {i}", f"expected a string field {text_field!r}",
                                "record skipped")
                continue
            yield Document(source, i, text)
    except KrminiError:
        raise
    except Exception as exc:  # noqa: BLE001 (datasets raises many types: missing dataset, network, bad files)
        message = str(exc).splitlines()[0][:200] if str(exc) else ""
        raise KrminiError(f"{source}: cannot read split {split!r} ({type(exc).__name__}: {message})") from None
