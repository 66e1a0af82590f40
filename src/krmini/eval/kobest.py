"""KoBEST (Korean Balanced Evaluation of Significant Tasks) by log-likelihood over the choices.

Each example becomes a prompt and two to four candidate continuations; the model's answer is the
choice with the highest log-likelihood given the prompt (`acc`), or the highest per UTF-8 byte of the
choice (`acc_norm`, which does not favour short answers). Prompt formats follow lm-evaluation-harness's
`kobest_*` tasks and are written out in docs/eval.md. Few-shot prompts put K solved examples from the
train split before the question, separated by blank lines.

The TSV files are read as distributed (SKT-LSL/KoBEST_datarepo): columns by header name, because
SentiNeg's dev split orders its columns differently from train.
"""

from __future__ import annotations

import csv
import random
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from krmini.errors import KrminiError
from krmini.eval.loglik import Request, continuation_logprobs
from krmini.model import LlamaModel
from krmini.tokenizer import KoTokenizer

DEFAULT_KOBEST_DIR = Path("../shared/data/eval/kobest")
FEWSHOT_SEPARATOR = "\n\n"


@dataclass(frozen=True)
class Example:
    prompt: str
    choices: tuple[str, ...]  # continuations, each starting with its separating space
    label: int


def _bool_label(value: str, where: str) -> int:
    if value.lower() not in ("true", "false"):  # WiC writes both False and FALSE
        raise KrminiError(f"{where}: expected True or False, got {value!r}")
    return int(value.lower() == "true")


def _int_label(value: str, allowed: range, where: str, offset: int = 0) -> int:
    if not value.strip().lstrip("-").isdigit() or int(value) not in allowed:
        raise KrminiError(f"{where}: expected one of {list(allowed)}, got {value!r}")
    return int(value) - offset


def _boolq(row: dict, where: str) -> Example:
    return Example(f"{row['Text']} 질문: {row['Question']} 답변:", (" 아니오", " 예"),
                   _bool_label(row["Answer"], f"{where}: Answer"))


def _copa(row: dict, where: str) -> Example:
    connectors = {"원인": "왜냐하면", "결과": "그래서"}
    if row["question"] not in connectors:
        raise KrminiError(f"{where}: question: expected 원인 or 결과, got {row['question']!r}")
    return Example(f"{row['sentence']} {connectors[row['question']]}", (f" {row['1']}", f" {row['2']}"),
                   _int_label(row["Answer"], range(1, 3), f"{where}: Answer", offset=1))


def _hellaswag(row: dict, where: str) -> Example:
    return Example(row["context"], tuple(f" {row[f'choice{i}']}" for i in range(1, 5)),
                   _int_label(row["label"], range(4), f"{where}: label"))


def _sentineg(row: dict, where: str) -> Example:
    return Example(f"문장: {row['Text']} 긍부정:", (" 부정", " 긍정"), _int_label(row["Label"], range(2), f"{where}: Label"))


_TARGET_BRACKETS = re.compile(r"\[([^\]]*)\]")


def _wic(row: dict, where: str) -> Example:
    # The sentences mark the target word as [word]; the prompt names it, so the brackets go.
    s1, s2 = (_TARGET_BRACKETS.sub(r"\1", row[c]) for c in ("SENTENCE1", "SENTENCE2"))
    return Example(f"문장1: {s1} 문장2: {s2} 두 문장에서 {row['Target']}가 같은 뜻으로 쓰였나?", (" 아니오", " 예"),
                   _bool_label(row["ANSWER"], f"{where}: ANSWER"))


@dataclass(frozen=True)
class Task:
    name: str
    columns: tuple[str, ...]  # header names the builder reads
    build: Callable[[dict, str], Example]
    num_choices: int
    primary: str = "acc"  # the metric the headline uses

    @property
    def chance(self) -> float:
        return 1.0 / self.num_choices


TASKS = {t.name: t for t in (
    Task("boolq", ("Text", "Question", "Answer"), _boolq, 2),
    Task("copa", ("sentence", "question", "1", "2", "Answer"), _copa, 2),
    # Endings differ a lot in length; like the harness, HellaSwag is judged by length-normalised accuracy.
    Task("hellaswag", ("context", "choice1", "choice2", "choice3", "choice4", "label"), _hellaswag, 4, "acc_norm"),
    Task("sentineg", ("Text", "Label"), _sentineg, 2),
    Task("wic", ("Target", "SENTENCE1", "SENTENCE2", "ANSWER"), _wic, 2),
)}


def parse_tasks(spec: str) -> list[Task]:
    names = [n.strip() for n in spec.split(",") if n.strip()]
    unknown = [n for n in names if n not in TASKS]
    if unknown or not names:
        raise KrminiError(f"--tasks: unknown task {unknown[0] if unknown else spec!r}; "
                          f"expected a comma-separated subset of {','.join(TASKS)}")
    return [TASKS[n] for n in names]


def read_examples(task: Task, data_dir: str | Path, split: str) -> list[Example]:
    path = Path(data_dir) / task.name / f"{split}.tsv"
    if not path.is_file():
        raise KrminiError(f"{path}: KoBEST {task.name} {split} file not found (expected "
                          f"DIR/{task.name}/{split}.tsv from KoBEST_datarepo; set --data-dir)")
    with open(path, encoding="utf-8", newline="") as fh:
        rows = list(csv.reader(fh, delimiter="\t", quoting=csv.QUOTE_NONE))
    if not rows:
        raise KrminiError(f"{path}: empty file; expected a header line")
    header = [h.strip() for h in rows[0]]
    missing = [c for c in task.columns if c not in header]
    if missing:
        raise KrminiError(f"{path}: no column {missing[0]!r} in the header (found {', '.join(header)})")
    examples = []
    for lineno, row in enumerate(rows[1:], 2):
        if not any(cell.strip() for cell in row):
            continue
        if len(row) != len(header):
            raise KrminiError(f"{path}:{lineno}: {len(row)} fields, the header has {len(header)}")
        examples.append(task.build(dict(zip(header, (c.strip() for c in row), strict=True)), f"{path}:{lineno}"))
    return examples


def few_shot_prompts(examples: list[Example], shots: list[Example], k: int, seed: int) -> list[str]:
    """Each example's prompt after k solved train examples (drawn per example, reproducibly)."""
    if k == 0:
        return [e.prompt for e in examples]
    if k > len(shots):
        raise KrminiError(f"--shots: {k} requested, but the train split has only {len(shots)} examples")
    rng = random.Random(seed)
    prompts = []
    for e in examples:
        solved = [s.prompt + s.choices[s.label] for s in rng.sample(shots, k)]
        prompts.append(FEWSHOT_SEPARATOR.join([*solved, e.prompt]))
    return prompts


def macro_f1(labels: list[int], predictions: list[int], num_classes: int) -> float:
    scores = []
    for c in range(num_classes):
        tp = sum(1 for y, p in zip(labels, predictions, strict=True) if y == c and p == c)
        fp = sum(1 for y, p in zip(labels, predictions, strict=True) if y != c and p == c)
        fn = sum(1 for y, p in zip(labels, predictions, strict=True) if y == c and p != c)
        scores.append(2 * tp / (2 * tp + fp + fn) if tp + fp + fn else 0.0)
    return sum(scores) / num_classes


def centred(score: float, chance: float) -> float:
    """Re-centre on chance: 0 = guessing, 1 = perfect, negative = worse than guessing."""
    return (score - chance) / (1 - chance)


def choice_requests(tokenizer: KoTokenizer, examples: list[Example], prompts: list[str]) -> list[Request]:
    """One request per choice, example after example: BOS and the prompt's ids, then the choice's ids.
    The BOS is the model's own (an imported Llama 3 or Mistral: `<|begin_of_text|>`, `<s>`, as
    transformers' `tokenizer(prompt)` puts it; Qwen, which has none: the token its configuration
    names, as in `krmini.eval.ppl`)."""
    requests = []
    for e, ids in zip(examples, tokenizer.encode_batch(prompts), strict=True):
        requests += [Request([tokenizer.bos_id, *ids], choice) for choice in tokenizer.encode_batch(list(e.choices))]
    return requests


def score_examples(model: LlamaModel, tokenizer: KoTokenizer, task: Task, examples: list[Example],
                   prompts: list[str], max_batch_tokens: int = 4096, progress: bool = False) -> dict:
    requests = choice_requests(tokenizer, examples, prompts)
    logprobs = continuation_logprobs(model, requests, max_batch_tokens, progress, desc=task.name)
    labels, raw, norm = [], [], []
    first = 0
    for e in examples:
        lp = logprobs[first:first + len(e.choices)]
        first += len(e.choices)
        per_byte = [x / len(c.encode("utf-8")) for x, c in zip(lp, e.choices, strict=True)]
        labels.append(e.label)
        raw.append(max(range(len(lp)), key=lp.__getitem__))
        norm.append(max(range(len(per_byte)), key=per_byte.__getitem__))
    n = len(examples)
    result = {
        "examples": n,
        "acc": sum(p == y for p, y in zip(raw, labels, strict=True)) / n,
        "acc_norm": sum(p == y for p, y in zip(norm, labels, strict=True)) / n,
        "f1": macro_f1(labels, raw, task.num_choices),
        "f1_norm": macro_f1(labels, norm, task.num_choices),
        "chance": task.chance,
        "primary": task.primary,
    }
    result["centred"] = centred(result[task.primary], task.chance)
    return result


def evaluate_kobest(model: LlamaModel, tokenizer: KoTokenizer, tasks: list[Task], data_dir: str | Path,
                    split: str = "dev", shots: int = 0, limit: int | None = None, seed: int = 1234,
                    max_batch_tokens: int = 4096, progress: bool = False) -> dict:
    """Per-task metrics plus averages; `centred_mean` is the headline (0 = chance, 1 = perfect)."""
    # Read every file before scoring anything, so a missing one fails in a second, not after an hour.
    examples = {t.name: read_examples(t, data_dir, split)[:limit] for t in tasks}
    train = {t.name: read_examples(t, data_dir, "train") if shots else [] for t in tasks}
    per_task = {}
    for task in tasks:
        prompts = few_shot_prompts(examples[task.name], train[task.name], shots, seed)
        per_task[task.name] = score_examples(model, tokenizer, task, examples[task.name], prompts,
                                             max_batch_tokens, progress)
    mean = {m: sum(r[m] for r in per_task.values()) / len(per_task) for m in ("acc", "acc_norm", "f1", "centred")}
    return {"split": split, "shots": shots, "limit": limit, "seed": seed, "tasks": per_task,
            "average": mean, "centred_mean": mean["centred"]}
