"""`krmini eval domain RUN`: what domain adaptation bought and what it cost, before (the base) against after.

For the base run and the adapted run, on domain and on general held-out text:

    bits per byte     the tokenizer-independent loss (`krmini.eval.ppl`): domain should fall, general
                      should stay (a rise there is forgetting)
    chars per token   how much text each token carries: an extended tokenizer raises it on domain text
    generations       the same domain prompts, greedy, from both models

The base defaults to the run's `train.init_from` (config.yaml). With `--data DIR` only the documents
that DIR's `krmini prepare` put in its test split are scored — text the run never trained on.
Results: `<run>/eval/domain.json`, a Markdown table on stdout (and in `krmini report`), and a PNG
beside the JSON.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import matplotlib
import yaml

from krmini.data.shards import read_manifest
from krmini.data.split import texts_in_split
from krmini.errors import KrminiError
from krmini.eval.ppl import perplexity, read_eval_texts
from krmini.infer.generate import SamplingConfig, generate_text
from krmini.infer.load import LoadedModel
from krmini.runs import CONFIG_FILE, resolve_checkpoint, run_dir

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

DEFAULT_PROMPTS = ["원고의 청구를", "피고인은", "이 법은"]  # legal openings: a judgment, a sentence, a statute
SETS = ("domain", "general")


@dataclass
class DomainTexts:
    domain: list[str]
    general: list[str]


def default_base(run: str | Path) -> str:
    """The run a domain run started from: its config.yaml's train.init_from."""
    ckpt = resolve_checkpoint(run)
    config = run_dir(ckpt) / CONFIG_FILE
    init_from = ((yaml.safe_load(config.read_text(encoding="utf-8")) or {}).get("train") or {}).get("init_from") \
        if config.is_file() else None
    if not init_from:
        raise KrminiError(f"{run}: its {CONFIG_FILE} names no train.init_from; pass --base BASE_RUN")
    return init_from


def read_texts(domain: list[str], general: list[str], text_field: str, limit: int | None,
               data_dir: str | None) -> DomainTexts:
    """Held-out texts of both kinds; with `data_dir`, only those its prepare put in the test split."""
    config = read_manifest(data_dir)["config"] if data_dir else None
    found = {what: read_eval_texts(paths, text_field, None if config else limit)  # every file read first
             for what, paths in (("domain", domain), ("general", general))}
    if config:
        for what, paths in (("domain", domain), ("general", general)):
            found[what] = list(texts_in_split(found[what], config, "test"))[:limit]
            if not found[what]:
                raise KrminiError(f"{', '.join(map(str, paths))}: no {what} document falls in {data_dir}'s test split")
    return DomainTexts(**found)


def measure(loaded: LoadedModel, texts: DomainTexts, prompts: list[str], max_new_tokens: int,
            stride: int | None, batch_tokens: int) -> dict:
    """Bits per byte and characters per token on each set, and greedy generations, for one model."""
    out: dict = {"checkpoint": str(loaded.path), "vocab_size": loaded.tokenizer.vocab_size}
    for name in SETS:
        docs = getattr(texts, name)
        result = perplexity(loaded.model, loaded.tokenizer, docs, stride, batch_tokens, progress=False)
        chars = sum(map(len, docs))
        out[name] = {"bits_per_byte": result.bits_per_byte, "loss": result.loss, "tokens": result.tokens,
                     "chars": chars, "chars_per_token": chars / result.tokens, "documents": result.documents}
    greedy = SamplingConfig(max_new_tokens=max_new_tokens, temperature=0.0, top_k=0, top_p=1.0)
    out["generations"] = {p: generate_text(loaded.model, loaded.tokenizer, p, greedy) for p in prompts}
    return out


ROWS = (("bits/byte", "bits_per_byte"), ("chars/token", "chars_per_token"))


def format_domain(record: dict) -> str:
    """The before/after table and the generations, as Markdown."""
    before, after = record["before"], record["after"]
    lines = [f"before `{before['checkpoint']}` ({before['vocab_size']} tokens) → after `{after['checkpoint']}` "
             f"({after['vocab_size']} tokens)", "",
             "| measure | text | before | after | change |", "|---|---|---:|---:|---:|"]
    for label, key in ROWS:
        for name in SETS:
            b, a = before[name][key], after[name][key]
            lines.append(f"| {label} | {name} ({after[name]['documents']} docs) | {b:.4f} | {a:.4f} | {a / b - 1:+.1%} |")
    lines += ["", "| prompt | before | after |", "|---|---|---|"]
    for prompt in before["generations"]:
        cells = [record[w]["generations"][prompt].replace("\n", " ").replace("|", "\\|") for w in ("before", "after")]
        lines.append(f"| {prompt} | {cells[0]} | {cells[1]} |")
    return "\n".join(lines)


def plot_domain(record: dict, png: Path) -> Path:
    """Two bar charts, bits per byte and characters per token: domain and general, before and after."""
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.6), dpi=120)
    for ax, (label, key) in zip(axes, ROWS, strict=True):
        for j, which in enumerate(("before", "after")):
            values = [record[which][name][key] for name in SETS]
            bars = ax.bar([i + 0.38 * j for i in range(len(SETS))], values, width=0.36, label=which, color=f"C{j}")
            ax.bar_label(bars, fmt="%.3f", fontsize=8)
        ax.set_xticks([i + 0.19 for i in range(len(SETS))], list(SETS))
        ax.set(title=label + (" (lower is better)" if key == "bits_per_byte" else " (higher is better)"))
        ax.grid(axis="y", alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(png)
    plt.close(fig)
    return png
