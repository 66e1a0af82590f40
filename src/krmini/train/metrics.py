"""metrics.jsonl (one JSON object per event) and the loss-curve PNG drawn from it."""

from __future__ import annotations

import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


class MetricsLog:
    def __init__(self, path: Path, truncate_after_step: int | None = None) -> None:
        """Open for append; on resume, drop records past the checkpoint so the log has no repeats."""
        self.path = path
        if truncate_after_step is not None and path.is_file():
            kept = [line for line in path.read_text(encoding="utf-8").splitlines()
                    if line.strip() and json.loads(line).get("step", 0) <= truncate_after_step]
            path.write_text("".join(k + "\n" for k in kept), encoding="utf-8")

    def write(self, record: dict) -> None:
        with open(self.path, "a", encoding="utf-8") as fh:
            fh.write(json.dumps(record, ensure_ascii=False) + "\n")


def read_metrics(path: Path) -> list[dict]:
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def plot_loss(metrics_path: Path, png_path: Path) -> Path:
    records = read_metrics(metrics_path)
    train = [(r["step"], r["loss"]) for r in records if r.get("kind") == "train"]
    val = [(r["step"], r["val_loss"]) for r in records if r.get("kind") == "eval"]
    fig, ax = plt.subplots(figsize=(7, 4), dpi=120)
    if train:
        ax.plot(*zip(*train, strict=True), label="train loss", linewidth=1)
    if val:
        ax.plot(*zip(*val, strict=True), "o-", label="val loss", linewidth=1.5)
    ax.set_xlabel("step")
    ax.set_ylabel("cross-entropy (nats/token)")
    ax.set_title("loss")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(png_path)
    plt.close(fig)
    return png_path


def plot_training(metrics_path: Path, png_path: Path) -> Path:
    """One PNG with the four curves people check on a run: loss, bits per byte, lr, tokens/s."""
    records = read_metrics(metrics_path)
    train = [r for r in records if r.get("kind") == "train"]
    evals = [r for r in records if r.get("kind") == "eval"]
    fig, axes = plt.subplots(2, 2, figsize=(10, 6.5), dpi=110)
    panels = [
        (axes[0, 0], "loss (nats/token)", [("train", train, "loss"), ("val", evals, "val_loss")]),
        (axes[0, 1], "validation bits per byte", [("val", evals, "val_bpb")]),
        (axes[1, 0], "learning rate", [("lr", train, "lr")]),
        (axes[1, 1], "tokens/s", [("throughput", train, "tokens_per_s")]),
    ]
    for ax, title, series in panels:
        for label, rows, key in series:
            points = [(r["step"], r[key]) for r in rows if key in r]
            if points:
                ax.plot(*zip(*points, strict=True), "o-" if rows is evals else "-", label=label,
                        linewidth=1, markersize=3)
        ax.set_title(title)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
        if len(series) > 1:
            ax.legend()
    fig.tight_layout()
    fig.savefig(png_path)
    plt.close(fig)
    return png_path
