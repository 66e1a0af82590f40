"""`krmini eval kobest` against lm-evaluation-harness itself, on the same exported model and rows.

The first rows of the shared dev (and train) files go to both: as TSV to `krmini eval kobest`, and as the
JSON documents of the Hugging Face copy (`skt/kobest_v1`'s field names) to lm-eval's own `kobest_*` task
configs, with only their dataset pointed at those local files. lm-eval runs in its own process, offline,
on `krmini export hf`'s directory with `HFLM` in fp32 on the CPU. Every choice's log-likelihood must
agree within 1e-4, every pick and every metric exactly, zero-shot on all five tasks and two-shot on two.
"""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from krmini.cli import main
from krmini.eval.kobest import TARGET_DELIMITER, TASKS, few_shot_prompts, read_examples
from tests.conftest import shared_file

pytestmark = pytest.mark.integration

DEV_ROWS, TRAIN_ROWS = 6, 30


def _true(value: str) -> int:
    return int(value.strip().lower() == "true")


# A TSV row as the Hugging Face dataset holds it: the fields lm-eval's kobest configs read.
HF_DOC = {
    "boolq": lambda r: {"paragraph": r["Text"], "question": r["Question"], "label": _true(r["Answer"])},
    "copa": lambda r: {"premise": r["sentence"], "question": r["question"], "alternative_1": r["1"],
                       "alternative_2": r["2"], "label": int(r["Answer"]) - 1},
    "hellaswag": lambda r: {"context": r["context"], **{f"ending_{i}": r[f"choice{i}"] for i in range(1, 5)},
                            "label": int(r["label"])},
    "sentineg": lambda r: {"sentence": r["Text"], "label": int(r["Label"])},
    "wic": lambda r: {"word": r["Target"], "context_1": r["SENTENCE1"], "context_2": r["SENTENCE2"],
                      "label": _true(r["ANSWER"])},
}

# Runs in a fresh interpreter, so that nothing loaded before (or an online setting) reaches lm-eval.
# Runs in a fresh interpreter, so that nothing loaded before (or an online setting) reaches lm-eval.
LM_EVAL = r"""
import json, sys
from lm_eval import simple_evaluate
from lm_eval.models.huggingface import HFLM
from lm_eval.tasks import TaskManager

hf_dir, task_dir, runs, out = sys.argv[1], sys.argv[2], json.loads(sys.argv[3]), sys.argv[4]
lm = HFLM(pretrained=hf_dir, device="cpu", dtype="float32", batch_size=4)
manager = TaskManager(include_path=task_dir)
record = {}
for shots, names in runs:
    result = simple_evaluate(model=lm, tasks=[f"local_kobest_{n}" for n in names], num_fewshot=shots,
                             task_manager=manager, log_samples=True)
    for name in names:
        task = f"local_kobest_{name}"
        metrics = result["results"][task]
        samples = sorted(result["samples"][task], key=lambda s: s["doc_id"])
        record[f"{shots}/{name}"] = {
            "metrics": {m: metrics[f"{m},none"] for m in ("acc", "acc_norm", "f1") if f"{m},none" in metrics},
            "requests": [[list(a) for a in s["arguments"]] for s in samples],
            "loglik": [[r[0] for r in s["filtered_resps"]] for s in samples],
            "label": [s["target"] if isinstance(s["target"], int)  # COPA's is the answer's text
                      else [c[1:] for _, c in s["arguments"]].index(s["target"]) for s in samples]}
json.dump(record, open(out, "w", encoding="utf-8"), ensure_ascii=False)
"""

@pytest.fixture(scope="module")
def lm_eval_kobest_dir():
    try:
        import lm_eval.tasks
    except ImportError:
        pytest.skip("lm-evaluation-harness is not installed: pip install -e '.[lmeval]'")
    return Path(lm_eval.tasks.__file__).parent / "kobest"


def _first_rows(src: Path, dst: Path, n: int) -> list[dict]:
    """The header and first n rows of a TSV, byte for byte, and those rows parsed."""
    with open(src, "rb") as fh:
        lines = [fh.readline() for _ in range(n + 1)]
    dst.parent.mkdir(parents=True, exist_ok=True)
    dst.write_bytes(b"".join(lines))
    with open(dst, encoding="utf-8", newline="") as fh:
        rows = list(csv.reader(fh, delimiter="\t", quoting=csv.QUOTE_NONE))
    header = [h.strip() for h in rows[0]]
    return [dict(zip(header, r, strict=True)) for r in rows[1:]]


def _write_tasks(kobest: Path, tsv: Path, task_dir: Path) -> None:
    task_dir.mkdir()
    for name in TASKS:
        files = {}
        for split, n in (("dev", DEV_ROWS), ("train", TRAIN_ROWS)):
            rows = _first_rows(shared_file(f"eval/kobest/{name}/{split}.tsv"), tsv / name / f"{split}.tsv", n)
            files[split] = task_dir / f"{name}.{split}.jsonl"
            files[split].write_text("".join(json.dumps(HF_DOC[name](r), ensure_ascii=False) + "\n" for r in rows),
                                    encoding="utf-8")
        # lm-eval's own config with its dataset swapped for the local rows; the dev rows stand in for its test split.
        (task_dir / f"local_kobest_{name}.yaml").write_text(
            f"include: {kobest / f'kobest_{name}.yaml'}\ntask: local_kobest_{name}\ndataset_path: json\n"
            f"dataset_name: null\ndataset_kwargs:\n  data_files:\n    test: {files['dev']}\n    train: {files['train']}\n"
            "validation_split: null\n", encoding="utf-8")


def _run_lm_eval(hf_dir: Path, task_dir: Path, runs: list, out: Path) -> dict:
    env = {**os.environ, "HF_DATASETS_OFFLINE": "1", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
           "HF_DATASETS_CACHE": str(out.parent / "hf-datasets"), "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    proc = subprocess.run([sys.executable, "-c", LM_EVAL, str(hf_dir), str(task_dir), json.dumps(runs), str(out)],
                          env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return json.loads(out.read_text(encoding="utf-8"))


# zero-shot on every task; two-shot where the shots carry COPA's double space and SentiNeg's plain prompt
RUNS = [(0, list(TASKS)), (2, ["copa", "sentineg"])]


def test_same_requests_logliks_and_picks_as_lm_eval(lm_eval_kobest_dir, tiny_run, tmp_path):
    hf_dir, tsv = tmp_path / "hf", tmp_path / "tsv"
    assert main(["export", "hf", str(tiny_run), str(hf_dir)]) == 0
    _write_tasks(lm_eval_kobest_dir, tsv, tmp_path / "tasks")
    theirs = _run_lm_eval(hf_dir, tmp_path / "tasks", RUNS, tmp_path / "lm_eval.json")
    for shots, names in RUNS:
        out = tmp_path / f"krmini-{shots}.json"
        assert main(["eval", "kobest", str(tiny_run), "--tasks", ",".join(names), "--data-dir", str(tsv),
                     "--shots", str(shots), "--device", "cpu", "--out", str(out)]) == 0
        ours = json.loads(out.read_text(encoding="utf-8"))["tasks"]
        for name in names:
            mine, ref, where = ours[name], theirs[f"{shots}/{name}"], f"{name} {shots}-shot"
            examples = read_examples(TASKS[name], tsv, "dev")
            prompts = few_shot_prompts(examples, read_examples(TASKS[name], tsv, "train"), shots, 1234)
            assert [[p, TARGET_DELIMITER + c] for e, p in zip(examples, prompts, strict=True) for c in e.choices] == \
                [a for r in ref["requests"] for a in r], where
            assert [s["label"] for s in mine["samples"]] == ref["label"], where
            worst = max(abs(a - b) for s, lls in zip(mine["samples"], ref["loglik"], strict=True)
                        for a, b in zip(s["loglik"], lls, strict=True))
            picks = [max(range(len(lls)), key=lls.__getitem__) for lls in ref["loglik"]]
            same = sum(s["pick"] == p for s, p in zip(mine["samples"], picks, strict=True))
            print(f"{where}: max |Δ loglik| {worst:.2e}, picks {same}/{len(picks)} equal")
            assert worst < 1e-4, where
            assert [s["pick"] for s in mine["samples"]] == picks, where
            for metric, value in ref["metrics"].items():
                assert mine[metric] == pytest.approx(value, abs=1e-9), (where, metric)
