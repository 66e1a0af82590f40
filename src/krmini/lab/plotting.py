"""Attention heat-maps with Hangul labels that either render or say why they do not.

Matplotlib's default font has no Hangul, so Korean labels become empty boxes and only a stream of
"Glyph missing" warnings hints at it. We look for a Korean-capable font (fontconfig's
`fc-list :lang=ko`, then known family names); without one we label tokens by index and warn once.
"""

from __future__ import annotations

import functools
import shutil
import subprocess
import warnings
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib import font_manager  # noqa: E402

KNOWN_KOREAN_FAMILIES = (
    "NanumGothic",
    "Noto Sans CJK KR",
    "Noto Sans KR",
    "UnDotum",
    "Malgun Gothic",
    "AppleGothic",
)


@functools.lru_cache(maxsize=1)
def korean_font() -> str | None:
    """Family name of an installed font with Hangul glyphs, registered with matplotlib; or None."""
    if shutil.which("fc-list"):
        listing = subprocess.run(["fc-list", ":lang=ko", "file"], capture_output=True, text=True, check=False)
        paths = sorted(line.split(":")[0].strip() for line in listing.stdout.splitlines() if line.strip())
        paths.sort(key=lambda p: "Gothic" not in p)
        for path in paths:
            if Path(path).suffix.lower() in (".ttf", ".otf", ".ttc"):
                font_manager.fontManager.addfont(path)
                return font_manager.FontProperties(fname=path).get_name()
    installed = {f.name for f in font_manager.fontManager.ttflist}
    return next((name for name in KNOWN_KOREAN_FAMILIES if name in installed), None)


@functools.lru_cache(maxsize=1)
def warn_no_korean_font() -> None:
    warnings.warn(
        "no Korean font found (try `apt-get install fonts-nanum`); labelling tokens by index",
        stacklevel=3,
    )


def drawable(text: str) -> bool:
    return text.isascii() or korean_font() is not None


def token_labels(tokens: list[str]) -> list[str]:
    """The tokens themselves (spaces shown as "_") where they can be drawn, else their positions."""
    if all(drawable(t) for t in tokens):
        return [t if t.strip() else "_" for t in tokens]
    warn_no_korean_font()
    return [str(i) for i in range(len(tokens))]


def plot_attention(weights: np.ndarray, tokens: list[str], path: Path, title: str) -> Path:
    """Draw one heat-map per head (a single one carries only `title`); `weights` is (heads, T, T),
    rows are queries."""
    labels = token_labels(tokens)
    font = korean_font()
    n_heads = weights.shape[0]
    cols = min(n_heads, 4)
    rows = (n_heads + cols - 1) // cols
    size = max(3.0, 0.2 * len(tokens))  # 20 px a token at 100 dpi: room for an 8-point label
    fig, axes = plt.subplots(rows, cols, figsize=(size * cols, size * rows), squeeze=False)
    for h, ax in enumerate(axes.flat):
        if h >= n_heads:
            ax.axis("off")
            continue
        ax.imshow(weights[h], cmap="viridis", vmin=0.0, vmax=1.0)
        if n_heads > 1:
            ax.set_title(f"head {h}")
        ax.set_xticks(range(len(labels)), labels, fontsize=8, family=font or "sans-serif")
        ax.set_yticks(range(len(labels)), labels, fontsize=8, family=font or "sans-serif")
        ax.set_xlabel("key")
        ax.set_ylabel("query")
    if not drawable(title):
        warn_no_korean_font()
        title = title.encode("ascii", "replace").decode()
    fig.suptitle(title, family=font or "sans-serif")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
