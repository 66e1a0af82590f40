"""Every path argument of every command, with the real inputs it reads and its hostile cases.

`SPEC` gives each command a working argv (small settings, so a command that wrongly goes ahead is
quick) in which every path is a `P` slot; `cases()` turns each slot into its hostile cases:

    input   missing · the wrong kind (a directory for a file, a file for a directory) · unreadable
    output  the wrong kind · inside what the command reads (with --force where there is one)

`walk.path_arguments()` (what the parser has) must equal what `SPEC` names, so a new path argument
needs its slot here before the suite passes.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path

from krmini.runs import CHECKPOINTS_DIR, CONFIG_FILE, LATEST, MODEL_FILE, TOKENIZER_DIR, resolve_checkpoint


@dataclass(frozen=True)
class P:
    """A path slot: the argument's dest, the input it holds in the working argv, its kind
    (file, dir, any = file or directory, config = YAML file or preset name, into = an output file or
    an existing directory to write it in, which has no wrong kind) and role (in, out)."""

    dest: str
    source: str  # a key of Inputs, or new_dir / new_file for an output that does not exist yet
    kind: str
    role: str = "in"


@dataclass(frozen=True)
class Case:
    command: str
    dest: str
    what: str  # missing, wrong-kind, unreadable, inside-input
    template: tuple

    @property
    def id(self) -> str:
        return f"{self.command}:{self.dest}:{self.what}"


CPU = ("--device", "cpu")
TINY_TRAIN = ("train.max_steps=1", "train.eval_interval=1", "train.save_interval=1", "train.batch_size=2",
              "train.seq_len=16", "train.device=cpu")
OUT_DIR, OUT_FILE = P("out", "new_dir", "dir", "out"), P("out", "new_file", "file", "out")
JSON = P("json", "new_file", "file", "out")

SPEC: dict[str, list[tuple]] = {
    "demo": [("--corpus", P("corpus", "corpus", "any"), "--out", OUT_DIR, "--config", P("config", "config", "config"),
              *CPU, *TINY_TRAIN)],
    "prepare": [(P("inputs", "corpus", "any"), "--tokenizer", P("tokenizer", "tokenizer", "dir"), "--out", OUT_DIR,
                 "--workers", "1"),
                ("--config", P("config", "data_config", "file"), "--tokenizer", "{tokenizer}", "--out", "{new_dir}",
                 "--workers", "1")],
    "download": [("kowiki", "--out", OUT_DIR, "--base-url", "http://127.0.0.1:9")],
    "tokenizer train": [(P("inputs", "corpus", "any"), "--out", OUT_DIR, "--vocab-size", "400")],
    "tokenizer extend": [(P("base", "tokenizer", "dir"), "--corpus", P("corpus", "corpus", "any"), "--add", "5",
                          "--out", OUT_DIR, "--heldout", P("heldout", "heldout", "any"))],
    "model-info": [(P("config", "config", "config"),)],
    "train": [("--config", P("config", "config", "config"), "--data", P("data", "data", "dir"), "--out", OUT_DIR,
               *TINY_TRAIN),
              ("--init-from", P("init_from", "run", "dir"), "--tokenizer", P("tokenizer", "tokenizer", "dir"),
               "--data", "{data}", "--out", "{new_dir}", *TINY_TRAIN)],
    "generate": [(P("model", "run", "dir"), "--prompt", "안녕", "--max-new-tokens", "2", *CPU)],
    "quantize": [(P("model", "run", "dir"), "--int8", "--no-eval", "--out", OUT_DIR)],
    "lab attention": [("--out", OUT_DIR)],
    "lab numpy-lm": [("--data", P("data", "text", "file"), "--steps", "1", "--max-chars", "2000")],
    "lab char-gpt": [("--data", P("data", "text", "file"), "--iters", "1", "--eval-interval", "1", "--eval-batches", "1",
                      "--out", OUT_DIR)],
    "bench tokenizer": [("--train", P("train", "corpus", "any"), "--heldout", P("heldout", "heldout", "file"),
                         "--vocab-size", "1000", "--max-mb", "1", "--json", JSON)],
    "bench prepare": [(P("inputs", "corpus", "any"), "--tokenizer", P("tokenizer", "tokenizer", "dir"),
                       "--workers", "1", "--repeats", "1", "--json", JSON)],
    "bench export": [(P("model", "run", "dir"), "--steps", "1", "--docs", "1", "--json", JSON)],
    "bench generate": [(P("model", "run", "dir"), "--new-tokens", "2", "--prompt-tokens", "4", "--repeats", "1",
                        "--threads", "1", "--no-hf", "--no-llama-cpp", "--no-compile", "--json", JSON),
                       ("--preset", P("preset", "config", "config"), "--new-tokens", "2", "--prompt-tokens", "4",
                        "--repeats", "1", "--threads", "1", "--no-hf", "--no-llama-cpp", "--no-compile")],
    "bench train": [("--preset", P("preset", "config", "config"), "--steps", "1", "--rounds", "1", "--batch", "1",
                     "--seq-len", "8", "--precision", "fp32", "--compile", "off", "--threads", "1", "--json", JSON)],
    "bench speedrun": [("--data", P("data", "data_config", "file"), "--heldout", P("heldout", "heldout", "any"),
                        "--out", OUT_DIR, "--json", JSON, "--flops", "1e6", "--evals", "1", "--eval-tokens", "16",
                        "--threads", "1")],
    "bench scaling": [("--data", P("data", "data_config", "file"), "--heldout", P("heldout", "heldout", "any"),
                       "--out", OUT_DIR, "--config", P("config", "config", "config"), "--json", JSON, "--flops", "1e6",
                       "--depths", "1", "--evals", "1", "--eval-tokens", "16", "--threads", "1")],
    "plan": [("--config", P("config", "config", "config"), "--json", JSON, "--budget", "1e12")],
    "eval ppl": [(P("model", "run", "dir"), "--data", P("data", "heldout", "any"), "--out", OUT_FILE, *CPU)],
    "eval domain": [(P("model", "run", "dir"), "--base", P("base", "run", "dir"), "--domain", P("domain", "heldout", "any"),
                     "--general", P("general", "heldout", "any"), "--data", P("data", "data", "dir"), "--out", OUT_FILE,
                     "--limit", "1", "--max-new-tokens", "2", *CPU)],
    "eval kobest": [(P("model", "run", "dir"), "--tasks", "boolq", "--data-dir", P("data_dir", "kobest", "dir"),
                     "--out", OUT_FILE, *CPU)],
    "report": [(P("run", "run", "dir"), "--out", OUT_DIR, "--max-new-tokens", "2", *CPU)],
    "export hf": [(P("model", "run", "dir"), OUT_DIR, "--force")],
    "export gguf": [(P("model", "run", "dir"), P("out", "new_file", "into", "out"), "--force")],
    "import hf": [(P("src", "hf", "dir"), OUT_DIR, "--force")],
    "sft": [("--base", P("base", "run", "dir"), "--data", P("data", "chat_data", "file"), "--out", OUT_DIR,
             "--config", P("config", "sft_config", "config"), "--val-fraction", "0.3", *TINY_TRAIN)],
    "chat": [(P("model", "chat_run", "dir"), *CPU),
             ("{run}", "--adapter", P("adapter", "adapter", "dir"), *CPU),
             ("{run}", "--memo", P("memo", "memo_db", "file"), *CPU)],
    "serve": [(P("model", "chat_run", "dir"), "--port", "{port}", *CPU),
              ("{run}", "--adapter", P("adapter", "adapter", "dir"), "--port", "{port}", *CPU),
              ("{run}", "--memo", P("memo", "memo_db", "file"), "--port", "{port}", *CPU)],
    "lora merge": [(P("run", "lora_run", "dir"), OUT_DIR, "--force")],
    "bench memo": [("--corpus", P("corpus", "corpus", "any"), "--notes", "10", "--queries", "2", "--repeats", "1",
                    "--json", JSON)],
}

def slots(template: tuple) -> list[P]:
    return [t for t in template if isinstance(t, P)]


def cases() -> list[Case]:
    found, seen = [], set()
    for command, templates in SPEC.items():
        for template in templates:
            for slot in slots(template):
                if (command, slot.dest) in seen:
                    continue
                seen.add((command, slot.dest))
                kinds = (["missing", "wrong-kind", "unreadable"] if slot.role == "in" else
                         ["wrong-kind"] * (slot.kind != "into") + (["inside-input"] if any(s.source in ("run", "lora_run", "hf", "corpus")
                                                                 for s in slots(template)) else []))
                found += [Case(command, slot.dest, what, template) for what in kinds]
    return found


def copy_run(run: Path, dest: Path) -> Path:
    """The parts of a run a command reads (config, tokenizer, the latest checkpoint), as a new directory."""
    ckpt = resolve_checkpoint(run)
    dest.mkdir(parents=True)
    for name in (CONFIG_FILE, TOKENIZER_DIR, "adapter"):
        if (run / name).is_dir():
            shutil.copytree(run / name, dest / name)
        elif (run / name).is_file():
            shutil.copy2(run / name, dest / name)
    (dest / CHECKPOINTS_DIR).mkdir()
    shutil.copy2(run / CHECKPOINTS_DIR / LATEST, dest / CHECKPOINTS_DIR / LATEST)
    shutil.copytree(ckpt, dest / CHECKPOINTS_DIR / ckpt.name)
    return dest


def argv_for(case: Case, inputs: dict[str, Path], work: Path, port: int) -> tuple[list[str], Path, list[Path]]:
    """(argv, the hostile path, the inputs that must be unchanged afterwards) for one case, with the
    hostile path and any input it lives in made fresh under `work`."""
    values = dict(inputs)
    values["new_dir"], values["new_file"] = work / "new-out", work / "new-out.json"
    watched = []
    target = next(s for s in slots(case.template) if s.dest == case.dest)
    if case.what == "missing":
        hostile = work / f"missing-{case.dest}{'.yaml' if target.kind == 'config' else ''}"
    elif case.what == "wrong-kind":
        if target.kind in ("file", "config") or (target.role == "out" and target.kind == "file"):
            hostile = work / f"dir-{case.dest}"
            hostile.mkdir()
            (hostile / "keep.txt").write_text("남겨 둘 파일\n", encoding="utf-8")
            watched.append(hostile)
        elif target.kind == "any":
            hostile = work / f"empty-{case.dest}"
            hostile.mkdir()
        else:
            hostile = work / f"file-{case.dest}.txt"
            hostile.write_text("디렉터리가 아닌 파일\n", encoding="utf-8")
            watched.append(hostile)
    elif case.what == "unreadable":
        source = inputs[target.source]
        hostile = work / f"unreadable-{source.name}"
        if source.is_dir() and (source / CHECKPOINTS_DIR).is_dir():
            copy_run(source, hostile)
        elif source.is_dir():
            shutil.copytree(source, hostile)
        else:
            shutil.copy2(source, hostile)
        watched.append(hostile)
    else:  # inside-input: the first run (or corpus) the command reads, copied so a failure harms no fixture
        reads = next(s for s in slots(case.template) if s.source in ("run", "lora_run", "hf", "corpus"))
        source = inputs[reads.source]
        holder = work / "input"
        if (source / CHECKPOINTS_DIR).is_dir():
            copy = copy_run(source, holder)
            ckpt = resolve_checkpoint(copy)
            hostile = ckpt if target.kind == "dir" else ckpt / MODEL_FILE
        elif source.is_dir():  # an HF directory: itself, or its weights
            copy = Path(shutil.copytree(source, holder))
            hostile = copy if target.kind == "dir" else copy / MODEL_FILE
        else:  # a corpus file: the directory holding it, or the file itself
            holder.mkdir()
            copy = Path(shutil.copy2(source, holder / source.name))
            hostile = holder if target.kind == "dir" else copy
        values[reads.source] = copy
        watched.append(holder)
    argv = list(case.command.split())
    for token in case.template:
        if isinstance(token, P):
            argv.append(str(hostile if token.dest == case.dest else values[token.source]))
        else:
            argv.append(token.format(port=port, **{k: str(v) for k, v in values.items()}))
    watched += [values[s.source] for s in slots(case.template) if s.role == "in" and s.dest != case.dest]
    return argv, hostile, watched


def write_inputs(root: Path, tiny_run: Path, chat_run: Path, lora_run: Path) -> dict[str, Path]:
    """Small real inputs for every command (the runs are the session fixtures, read-only)."""
    from krmini.demo import konlpy_corpus
    from krmini.train.config import PRESETS_DIR
    from tests.conftest import write_chat_jsonl

    corpus = root / "corpus"
    corpus.mkdir()
    text = "\n".join(p.read_text(encoding="utf-8") for d in konlpy_corpus() for p in sorted(d.iterdir()))[:60_000]
    (corpus / "ko.txt").write_text(text, encoding="utf-8")
    heldout = root / "heldout.jsonl"
    heldout.write_text("".join(json.dumps({"text": t}, ensure_ascii=False) + "\n"
                               for t in ("대한민국은 민주공화국이다.", "모든 국민은 법 앞에 평등하다.")), encoding="utf-8")
    kobest = root / "kobest" / "boolq"
    kobest.mkdir(parents=True)
    (kobest / "dev.tsv").write_text("Text\tQuestion\tAnswer\n대한민국은 민주공화국이다.\t민주공화국인가?\t1\n"
                                    "하늘은 파랗다.\t하늘은 빨간가?\t0\n", encoding="utf-8")
    config = root / "tiny.yaml"
    shutil.copy2(PRESETS_DIR / "tiny.yaml", config)
    sft_config = root / "sft.yaml"
    shutil.copy2(PRESETS_DIR / "sft.yaml", sft_config)
    data_config = root / "data.yaml"
    data_config.write_text(f"sources:\n  - name: ko\n    paths: [{corpus / 'ko.txt'}]\n", encoding="utf-8")
    import torch

    from krmini.export.hf import export_hf
    from krmini.infer.load import load_model

    hf = export_hf(load_model(tiny_run, torch.device("cpu")), root / "hf")
    return {"run": tiny_run, "chat_run": chat_run, "lora_run": lora_run, "adapter": lora_run / "adapter",
            "corpus": corpus / "ko.txt", "text": corpus / "ko.txt", "heldout": heldout, "kobest": kobest.parent,
            "tokenizer": tiny_run / TOKENIZER_DIR, "data": tiny_run.parent / "data", "config": config,
            "sft_config": sft_config, "data_config": data_config, "chat_data": write_chat_jsonl(root / "chat.jsonl", 2),
            "hf": hf, "memo_db": memo_index(corpus, root / "memo.db")}


def memo_index(notes: Path, db: Path) -> Path:
    from krmini.cli import main

    assert main(["memo", "index", str(notes), "--db", str(db), "--quiet"]) == 0
    return db
