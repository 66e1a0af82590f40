"""`krmini report RUN`: one Markdown page about a run, with its figures as PNGs beside it.

Sections: config, data (manifest summary), training curves (loss; bits per byte), evaluation results
(every JSON that `krmini eval` saved under `<run>/eval/`), sample generations.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib
import yaml

from krmini.argtypes import POSITIVE_INT
from krmini.data.shards import read_manifest
from krmini.device import pick_device
from krmini.errors import KrminiError
from krmini.eval.domain import format_domain
from krmini.eval.results import RESULTS_DIR, read_results
from krmini.infer.generate import SamplingConfig, generate_text
from krmini.infer.load import load_model
from krmini.runs import CHECKPOINTS_DIR, check_output, write_text_atomic
from krmini.train.metrics import read_metrics

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

REPORT_FILE = "report.md"
CURVES_FILE = "report_curves.png"
DEFAULT_PROMPTS = ["대한민국은", "모든 국민은", "오늘 날씨가"]


def register_report(subparsers) -> None:
    p = subparsers.add_parser("report", help="결과 페이지 / one Markdown page about a run (config, curves, evals)",
                              description="Write report.md (+ PNG curves) for a run: config, data manifest, "
                              "training curves, `krmini eval` results, sample generations.")
    p.add_argument("run", metavar="RUN", help="run directory (with checkpoints/, metrics.jsonl, eval/)")
    p.add_argument("--out", help="directory for report.md and its PNGs (default: the run directory)")
    p.add_argument("--prompt", action="append", help="prompt(s) for sample generations (default: three Korean)")
    p.add_argument("--max-new-tokens", type=POSITIVE_INT, default=60, help="tokens per sample (default: 60)")
    p.add_argument("--device", default="auto", help="auto (default), cpu, cuda or mps")
    p.set_defaults(func=run_report)


def run_report(args) -> int:
    path = build_report(Path(args.run), Path(args.out) if args.out else None, args.prompt or DEFAULT_PROMPTS,
                        args.max_new_tokens, args.device)
    print(f"report → {path}")
    return 0


def plot_curves(records: list[dict], png: Path) -> Path:
    train = [(r["step"], r["loss"]) for r in records if r.get("kind") == "train"]
    evals = [r for r in records if r.get("kind") == "eval"]
    fig, (ax_loss, ax_bpb) = plt.subplots(1, 2, figsize=(10, 4), dpi=120)
    if train:
        ax_loss.plot(*zip(*train, strict=True), label="train loss", linewidth=1)
    if evals:
        ax_loss.plot([r["step"] for r in evals], [r["val_loss"] for r in evals], "o-", label="val loss")
        ax_bpb.plot([r["step"] for r in evals], [r["val_bpb"] for r in evals], "o-", color="C2", label="val bits/byte")
    ax_loss.set(xlabel="step", ylabel="cross-entropy (nats/token)", title="loss")
    ax_bpb.set(xlabel="step", ylabel="bits per UTF-8 byte", title="bits per byte (tokenizer-independent)")
    for ax in (ax_loss, ax_bpb):
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    fig.savefig(png)
    plt.close(fig)
    return png


def format_kobest(record: dict) -> str:
    """A Markdown table of one `krmini eval kobest` result (macro-F1 first: the figure published tables give)."""
    lines = ["| task | n | macro-F1 | acc | acc_norm |", "|---|---:|---:|---:|---:|"]
    for name, r in record["tasks"].items():
        lines.append(f"| {name} | {r['examples']} | {r['f1']:.3f} | {r['acc']:.3f} | {r['acc_norm']:.3f} |")
    a = record["average"]
    lines.append(f"| **mean** | | **{a['f1']:.3f}** | {a['acc']:.3f} | {a['acc_norm']:.3f} |")
    return "\n".join(lines)


def _data_section(config: dict) -> list[str]:
    data_dir = (config.get("train") or {}).get("data_dir")
    if not data_dir:
        return ["No data directory recorded in config.yaml."]
    try:
        manifest = read_manifest(data_dir)
    except KrminiError as exc:
        return [f"Manifest not readable ({exc})."]
    lines = [f"`{data_dir}` — tokenizer `{manifest.get('tokenizer')}`, vocabulary {manifest.get('vocab_size')}", "",
             "| split | documents | tokens | bytes | bytes/token |", "|---|---:|---:|---:|---:|"]
    for name, s in manifest.get("splits", {}).items():
        per = s["bytes"] / s["tokens"] if s.get("tokens") else 0
        lines.append(f"| {name} | {s.get('documents', 0):,} | {s.get('tokens', 0):,} | {s.get('bytes', 0):,} | {per:.2f} |")
    return lines


def _eval_section(results: list[dict]) -> list[str]:
    if not results:
        return [f"No results yet: run `krmini eval ppl RUN` / `krmini eval kobest RUN` / `krmini eval domain RUN` "
                f"(they save to {RESULTS_DIR}/)."]
    lines = []
    ppl = [r for r in results if r.get("kind") == "ppl"]
    if ppl:
        lines += ["| data | docs | tokens | loss | perplexity | bits/byte |", "|---|---:|---:|---:|---:|---:|"]
        lines += [f"| {', '.join(Path(d).name for d in r['data'])} | {r['documents']} | {r['tokens']:,} | "
                  f"{r['loss']:.4f} | {r['perplexity']:.2f} | {r['bits_per_byte']:.4f} |" for r in ppl]
        lines.append("")
    for r in (r for r in results if r.get("kind") == "kobest"):
        limit = f", first {r['limit']} per task" if r.get("limit") else ""
        lines += [f"KoBEST {r['split']}, {r['shots']}-shot{limit} (`{r['file']}`):", "", format_kobest(r), ""]
    for r in (r for r in results if r.get("kind") == "domain"):
        chart = Path(r["file"]).with_suffix(".png")
        lines += [f"Domain adaptation (`{r['file']}`, chart `{chart}`):", "", format_domain(r), ""]
    return lines


def build_report(run: Path, out: Path | None, prompts: list[str], max_new_tokens: int = 60,
                 device: str = "auto") -> Path:
    if not (run / CHECKPOINTS_DIR).is_dir():
        raise KrminiError(f"{run}: not a run directory (expected checkpoints/ inside)")
    out = out or run
    check_output(out, "dir")
    if out.resolve().is_relative_to((run / CHECKPOINTS_DIR).resolve()):
        raise KrminiError(f"{out}: inside the run's {CHECKPOINTS_DIR}/, among the checkpoints; write the report to "
                          "the run directory (the default) or elsewhere")
    out.mkdir(parents=True, exist_ok=True)
    config_path = run / "config.yaml"
    config = yaml.safe_load(config_path.read_text(encoding="utf-8")) if config_path.is_file() else {}
    records = read_metrics(run / "metrics.jsonl")
    loaded = load_model(run, pick_device(device))

    lines = [f"# {run.name} — 결과 보고서 / run report", "",
             f"Checkpoint `{loaded.path}`, {loaded.model.num_parameters() / 1e6:.2f}M parameters.", "",
             "## 설정 / Config", "", "```yaml", yaml.safe_dump(config, allow_unicode=True, sort_keys=False).strip(),
             "```", "", "## 데이터 / Data", "", *_data_section(config), "", "## 학습 곡선 / Training curves", ""]
    evals = [r for r in records if r.get("kind") == "eval"]
    if records:
        plot_curves(records, out / CURVES_FILE)
        lines.append(f"![loss and bits per byte]({CURVES_FILE})")
        if evals:
            last = evals[-1]
            lines += ["", f"Last validation (step {last['step']}): loss {last['val_loss']:.4f}, "
                      f"bits/byte {last['val_bpb']:.4f}."]
    else:
        lines.append("No metrics.jsonl in the run.")
    lines += ["", "## 평가 / Evaluation", "", *_eval_section(read_results(run / RESULTS_DIR)),
              "", "## 생성 예시 / Sample generations", "",
              f"Sampling: temperature 0.8, top-k 40, top-p 0.95, seed 0, {max_new_tokens} new tokens.", ""]
    sampling = SamplingConfig(max_new_tokens=max_new_tokens, temperature=0.8, top_k=40, top_p=0.95, seed=0)
    for prompt in prompts:
        text = generate_text(loaded.model, loaded.tokenizer, prompt, sampling)
        lines += [f"- **{prompt}**{text.replace(chr(10), ' ')}"]
    return write_text_atomic(out / REPORT_FILE, "\n".join(lines) + "\n")
