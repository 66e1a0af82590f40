"""Corpus sources and their mixing weights (the `sources:` list of a data config).

A weight is the expected number of copies of each of the source's documents in train: 0.25 keeps
a quarter of them, 1 keeps all, 2.5 writes every one twice and half of them a third time. Which
documents are kept or repeated is decided by the document's hash, so it is the same on every run
and every machine. Val and test never get repeats (a repeated document would only reweight the
score), but down-weighting applies to them too, so they follow the train mix.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field

from krmini.data.readers import Document, ReadProblems, read_documents
from krmini.errors import KrminiError

SOURCE_TYPES = ("files", "wikipedia", "hf")


@dataclass
class SourceConfig:
    name: str
    type: str = "files"  # files (.txt/.jsonl, optionally .gz/.bz2) | wikipedia (XML dump) | hf (datasets)
    paths: list[str] = field(default_factory=list)  # files and wikipedia
    dataset: str = ""  # hf: Hub name or local directory
    config: str | None = None  # hf: dataset config, e.g. 20231101.ko
    split: str = "train"  # hf: which split to read
    text_field: str = "text"
    weight: float = 1.0

    def validate(self, where: str) -> None:
        if self.type not in SOURCE_TYPES:
            raise KrminiError(f"{where}.type: expected one of {', '.join(SOURCE_TYPES)}, got {self.type!r}")
        if self.type == "hf" and not self.dataset:
            raise KrminiError(f"{where}.dataset: required for an hf source (Hub name or local directory)")
        if self.type != "hf" and not self.paths:
            raise KrminiError(f"{where}.paths: expected at least one file or directory")
        if self.weight < 0:
            raise KrminiError(f"{where}.weight: expected a non-negative number, got {self.weight}")


def copies(digest: bytes, weight: float) -> int:
    """How many times a document goes into train: floor(weight), plus one with probability frac(weight)."""
    whole = int(weight)
    return whole + (int.from_bytes(digest[12:16], "little") / 2**32 < weight - whole)


def read_source(source: SourceConfig, problems: ReadProblems) -> Iterator[Document]:
    if source.type == "files":
        yield from read_documents(source.paths, source.text_field, problems)
    elif source.type == "wikipedia":
        from krmini.data.wikipedia import read_wikipedia

        for path in source.paths:
            yield from read_wikipedia(path, problems)
    else:
        from krmini.data.hf_source import read_hf

        yield from read_hf(source.dataset, source.config, source.split, source.text_field, problems)


def source_from_cli(spec: str, inputs: list[str], text_field: str) -> SourceConfig:
    """`--source` (files, wikipedia or hf:NAME[:CONFIG]) and the positional inputs → one source."""
    if spec.startswith("hf:"):
        from krmini.data.hf_source import parse_hf_source

        if inputs:
            raise KrminiError(f"--source {spec}: reads the dataset itself; drop the input paths {inputs}")
        name, config = parse_hf_source(spec)
        return SourceConfig(name=spec, type="hf", dataset=name, config=config, text_field=text_field)
    if spec not in ("files", "wikipedia"):
        raise KrminiError(f"--source {spec}: expected files, wikipedia or hf:NAME[:CONFIG]")
    if not inputs:
        raise KrminiError(f"--source {spec}: give the input files or directories")
    return SourceConfig(name=spec, type=spec, paths=list(inputs), text_field=text_field)
