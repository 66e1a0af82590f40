"""What `krmini bench speedrun` reports: the table, the JSON record, the curves' PNG, and the time each
entry took to reach the baseline's final held-out bits per byte (interpolated on its curve)."""

from __future__ import annotations

from pathlib import Path

from krmini.bench.speedrun_entries import BASELINE, OURS_DEFAULT


def time_to_reach(curve: list[dict], target: float, key: str = "heldout_bpb", x: str = "seconds") -> float | None:
    """The first `x` at which the curve is at or below `target`, linear between evaluation points;
    None if it never gets there. `curve` is in order of `x`, starting at the untrained model."""
    for i, point in enumerate(curve):
        if point[key] <= target:
            if i == 0:
                return point[x]
            before = curve[i - 1]
            drop = before[key] - point[key]
            return before[x] + (point[x] - before[x]) * (before[key] - target) / drop
    return None


def summary(states: list, peaks: dict[str, float], counts: dict, flops: dict[str, float]) -> dict:
    """Per entry: parameters, what it used of its budget, MFU and its bits per byte at the budget;
    then, for every other entry, the share of the baseline's time it needed to reach the baseline's final
    held-out bits per byte, and the same against ours_default."""
    entries = {}
    for s in states:
        last = s.curve[-1]
        tok_s = s.tokens / s.seconds if s.seconds else 0.0
        entries[s.entry.name] = {
            "config": s.entry.source, "params": counts[s.entry.name]["matmul"],
            "params_total": counts[s.entry.name]["total"], "steps": s.step, "tokens": s.tokens,
            "seconds": s.seconds, "tokens_per_s": tok_s, "precision": s.precision,
            "mfu": tok_s * flops[s.entry.name] / peaks[s.precision] if peaks.get(s.precision) else None,
            "heldout_bpb": last["heldout_bpb"], "val_bpb": last["val_bpb"], "curve": s.curve,
        }
    record: dict = {"entries": entries}
    if BASELINE in entries:
        record["target_heldout_bpb"] = entries[BASELINE]["heldout_bpb"]
        record["time_to_baseline_bpb"] = shares_of(entries, BASELINE)
        for name, share in record["time_to_baseline_bpb"].items():
            entries[name]["seconds_to_baseline_bpb"] = None if share is None else share * entries[BASELINE]["seconds"]
    if OURS_DEFAULT in entries:
        record["time_to_default_bpb"] = shares_of(entries, OURS_DEFAULT)
    return record


def shares_of(entries: dict, reference: str) -> dict[str, float | None]:
    """For every entry but `reference`: the share of the reference's seconds it needed to reach the
    reference's final held-out bits per byte (None where it never did)."""
    ref = entries[reference]
    shares = {}
    for name, e in entries.items():
        if name != reference:
            seconds = time_to_reach(e["curve"], ref["heldout_bpb"])
            shares[name] = None if seconds is None else seconds / ref["seconds"]
    return shares


def table(record: dict) -> str:
    head = (f"{'entry':<16}{'params':>11}{'total':>11}{'steps':>7}{'tokens':>12}{'seconds':>9}{'tok/s':>9}"
            f"{'MFU':>6}{'heldout':>9}{'val':>8}{'→base':>8}{'→default':>10}")
    lines = [head, "-" * len(head)]
    def reach(shares: dict, name: str) -> str:
        return "" if name not in shares else ("never" if shares[name] is None else f"{shares[name]:.0%}")

    ttb, ttd = record.get("time_to_baseline_bpb", {}), record.get("time_to_default_bpb", {})
    for name, e in record["entries"].items():
        mfu = "" if e["mfu"] is None else f"{e['mfu']:.1%}"
        lines.append(f"{name:<16}{e['params']:>11,}{e['params_total']:>11,}{e['steps']:>7,}{e['tokens']:>12,}"
                     f"{e['seconds']:>9.1f}{e['tokens_per_s']:>9,.0f}{mfu:>6}{e['heldout_bpb']:>9.4f}"
                     f"{e['val_bpb']:>8.4f}{reach(ttb, name):>8}{reach(ttd, name):>10}")
    return "\n".join(lines)


def plot(record: dict, path: Path) -> Path:
    """Held-out and validation bits per byte against training seconds and tokens, one line per entry."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from krmini.lab.plotting import korean_font

    family = korean_font() or "sans-serif"
    fig, axes = plt.subplots(2, 2, figsize=(11, 8), sharey="row")
    for row, (key, label) in enumerate((("heldout_bpb", "KorQuAD held-out"), ("val_bpb", "validation"))):
        for col, (x, xlabel) in enumerate((("seconds", "training seconds"), ("tokens", "training tokens"))):
            ax = axes[row][col]
            for name, e in record["entries"].items():
                ax.plot([p[x] for p in e["curve"]], [p[key] for p in e["curve"]], marker=".", label=name)
            ax.set_xlabel(xlabel)
            ax.set_ylabel(f"{label} bits/byte")
            ax.grid(alpha=0.3)
    if "target_heldout_bpb" in record:
        for ax in axes[0]:
            ax.axhline(record["target_heldout_bpb"], color="grey", linestyle=":", linewidth=1)
    axes[0][0].legend(prop={"family": family})
    fig.suptitle("speedrun: bits per byte at equal parameters and budget")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
