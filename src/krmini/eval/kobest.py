"""KoBEST (Korean Balanced Evaluation of Significant Tasks) by log-likelihood over the choices, as
lm-evaluation-harness (0.4.x) scores its `kobest_*` tasks, request for request.

Each example becomes lm-eval's `doc_to_text` (the prompt) and `doc_to_choice` (two to four answers).
A request is (context, continuation) = (prompt, " " + choice), with any whitespace at the end of the
prompt moved to the front of the continuation; the continuation's tokens are those of the whole text
after the prompt's own (both encoded as the model's tokenizer encodes a text, special tokens included:
a BOS only where the tokenizer itself adds one). The answer is the choice with the highest
log-likelihood (`acc`, macro-F1 `f1`), or the highest per character of the choice (`acc_norm`).
Few-shot prompts put K solved train examples, drawn as lm-eval draws them, before the question,
separated by blank lines. The prompts are written out in docs/eval.md.

The TSV files are read as distributed (SKT-LSL/KoBEST_datarepo): columns by header name, because
SentiNeg's dev split orders its columns differently from train; texts as they are (the Hugging Face
copy that lm-eval loads keeps their spaces), labels trimmed.
"""

from __future__ import annotations

import csv
import random
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from krmini.errors import KrminiError
from krmini.eval.loglik import Request, continuation_logprobs
from krmini.model import LlamaModel
from krmini.tokenizer import KoTokenizer

DEFAULT_KOBEST_DIR = Path("../shared/data/eval/kobest")
SPLITS = ("dev", "test", "train")  # lm-eval's validation, test (the one it scores) and training splits
TARGET_DELIMITER = " "  # lm-eval's, between the prompt and a choice
FEWSHOT_SEPARATOR = "\n\n"


@dataclass(frozen=True)
class Example:
    prompt: str
    choices: tuple[str, ...]  # the answers as written, without the delimiter before them
    label: int


def _bool_label(value: str, where: str) -> int:
    value = value.strip().lower()  # WiC writes both False and FALSE
    if value not in ("true", "false"):
        raise KrminiError(f"{where}: expected True or False, got {value!r}")
    return int(value == "true")


def _int_label(value: str, allowed: range, where: str, offset: int = 0) -> int:
    if not value.strip().lstrip("-").isdigit() or int(value) not in allowed:
        raise KrminiError(f"{where}: expected one of {list(allowed)}, got {value!r}")
    return int(value) - offset


def _boolq(row: dict, where: str) -> Example:
    return Example(f"{row['Text']} 질문: {row['Question']} 답변: ", ("아니오", "예"),
                   _bool_label(row["Answer"], f"{where}: Answer"))


def _copa(row: dict, where: str) -> Example:
    # lm-eval's connectors start with a space and follow one: two spaces before them.
    connectors = {"원인": " 왜냐하면", "결과": " 그래서"}
    question = row["question"].strip()
    if question not in connectors:
        raise KrminiError(f"{where}: question: expected 원인 or 결과, got {row['question']!r}")
    choices = (row["1"], row["2"])
    answer = _int_label(row["Answer"], range(1, 3), f"{where}: Answer", offset=1)
    # lm-eval's target is the answer's text, looked up among the choices: the first of two equal ones.
    return Example(f"{row['sentence']} {connectors[question]}", choices, choices.index(choices[answer]))


def _hellaswag(row: dict, where: str) -> Example:
    return Example(f"문장: {row['context']}", tuple(row[f"choice{i}"] for i in range(1, 5)),
                   _int_label(row["label"], range(4), f"{where}: label"))


def _sentineg(row: dict, where: str) -> Example:
    return Example(f"문장: {row['Text']} 긍부정:", ("부정", "긍정"), _int_label(row["Label"], range(2), f"{where}: Label"))


def _wic(row: dict, where: str) -> Example:
    # The sentences mark the target word as [word]; lm-eval keeps the brackets.
    return Example(f"문장1: {row['SENTENCE1']} 문장2: {row['SENTENCE2']} 두 문장에서 {row['Target']}가 같은 뜻으로 쓰였나?",
                   ("아니오", "예"), _bool_label(row["ANSWER"], f"{where}: ANSWER"))


@dataclass(frozen=True)
class Task:
    name: str
    columns: tuple[str, ...]  # header names the builder reads
    build: Callable[[dict, str], Example]


TASKS = {t.name: t for t in (
    Task("boolq", ("Text", "Question", "Answer"), _boolq),
    Task("copa", ("sentence", "question", "1", "2", "Answer"), _copa),
    Task("hellaswag", ("context", "choice1", "choice2", "choice3", "choice4", "label"), _hellaswag),
    Task("sentineg", ("Text", "Label"), _sentineg),
    Task("wic", ("Target", "SENTENCE1", "SENTENCE2", "ANSWER"), _wic),
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
                          f"DIR/{task.name}/{split}.tsv as in KoBEST_datarepo; set --data-dir)")
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
        example = task.build(dict(zip(header, row, strict=True)), f"{path}:{lineno}")
        if not all(c.strip() for c in example.choices):
            raise KrminiError(f"{path}:{lineno}: an empty answer choice")
        examples.append(example)
    return examples


def few_shot_prompts(examples: list[Example], shots: list[Example], k: int, seed: int) -> list[str]:
    """Each example's prompt after k solved train examples: `prompt + " " + answer`, drawn per example
    in order from one generator seeded with `seed`, as lm-eval's sampler draws them (its seed: 1234)."""
    if k == 0:
        return [e.prompt for e in examples]
    if k > len(shots):
        raise KrminiError(f"--shots: {k} requested, but the train split has only {len(shots)} examples")
    rng = random.Random(seed)
    prompts = []
    for e in examples:
        solved = [s.prompt + TARGET_DELIMITER + s.choices[s.label] for s in rng.sample(shots, k)]
        prompts.append(FEWSHOT_SEPARATOR.join([*solved, e.prompt]))
    return prompts


def macro_f1(labels: list[int], predictions: list[int]) -> float:
    """The mean F1 over the classes that occur as a label or a prediction (scikit-learn's
    `f1_score(average="macro")`, which lm-eval reports as `f1`)."""
    scores = []
    for c in sorted(set(labels) | set(predictions)):
        tp = sum(1 for y, p in zip(labels, predictions, strict=True) if y == c and p == c)
        fp = sum(1 for y, p in zip(labels, predictions, strict=True) if y != c and p == c)
        fn = sum(1 for y, p in zip(labels, predictions, strict=True) if y == c and p != c)
        scores.append(2 * tp / (2 * tp + fp + fn))
    return sum(scores) / len(scores)


def request_strings(prompt: str, choice: str) -> tuple[str, str]:
    """lm-eval's (context, continuation) for one choice: whitespace ending the prompt moves to the
    front of the continuation, so that it is tokenized with the word after it."""
    context, continuation = prompt, TARGET_DELIMITER + choice
    spaces = len(context) - len(context.rstrip())
    if spaces:
        context, continuation = context[:-spaces], context[-spaces:] + continuation
    return context, continuation


def choice_requests(tokenizer: KoTokenizer, examples: list[Example], prompts: list[str]) -> list[Request]:
    """One request per choice, example after example. Context and context + continuation are encoded
    whole, as the model's tokenizer encodes a text (with the special tokens its post-processor adds:
    Llama 3's and Mistral's BOS; none for ours or Qwen's); the continuation is what follows the
    context's ids, as lm-eval's `HFLM` splits them."""
    pairs = [request_strings(p, c) for e, p in zip(examples, prompts, strict=True) for c in e.choices]
    contexts = tokenizer.encode_batch([c for c, _ in pairs], add_special_tokens=True)
    wholes = tokenizer.encode_batch([c + x for c, x in pairs], add_special_tokens=True)
    return [Request(c, w[len(c):]) for c, w in zip(contexts, wholes, strict=True)]


def score_examples(model: LlamaModel, tokenizer: KoTokenizer, examples: list[Example], prompts: list[str],
                   max_batch_tokens: int = 4096, progress: bool = False, desc: str = "score") -> dict:
    """Accuracy, length-normalised accuracy and macro-F1, and each example's choice log-likelihoods,
    label and pick (by the highest total; the first of equal ones)."""
    requests = choice_requests(tokenizer, examples, prompts)
    logprobs = continuation_logprobs(model, requests, max_batch_tokens, progress, desc=desc)
    labels, raw, norm, samples = [], [], [], []
    first = 0
    for e in examples:
        lp = logprobs[first:first + len(e.choices)]
        first += len(e.choices)
        per_char = [x / len(c) for x, c in zip(lp, e.choices, strict=True)]
        labels.append(e.label)
        raw.append(max(range(len(lp)), key=lp.__getitem__))
        norm.append(max(range(len(per_char)), key=per_char.__getitem__))
        samples.append({"label": e.label, "pick": raw[-1], "loglik": lp})
    n = len(examples)
    return {
        "examples": n,
        "acc": sum(p == y for p, y in zip(raw, labels, strict=True)) / n,
        "acc_norm": sum(p == y for p, y in zip(norm, labels, strict=True)) / n,
        "f1": macro_f1(labels, raw),
        "samples": samples,
    }


METRICS = ("acc", "acc_norm", "f1")


def evaluate_kobest(model: LlamaModel, tokenizer: KoTokenizer, tasks: list[Task], data_dir: str | Path,
                    split: str = "dev", shots: int = 0, limit: int | None = None, seed: int = 1234,
                    max_batch_tokens: int = 4096, progress: bool = False) -> dict:
    """Per-task metrics plus their means over the tasks; macro-F1 (`f1`) is the headline."""
    if shots and split == "train":
        raise KrminiError("--shots: solved examples come from the train split; score dev or test with them")
    # Read every file before scoring anything, so a missing one fails in a second, not after an hour.
    examples = {t.name: read_examples(t, data_dir, split)[:limit] for t in tasks}
    train = {t.name: read_examples(t, data_dir, "train") if shots else [] for t in tasks}
    per_task = {}
    for task in tasks:
        prompts = few_shot_prompts(examples[task.name], train[task.name], shots, seed)
        per_task[task.name] = score_examples(model, tokenizer, examples[task.name], prompts, max_batch_tokens,
                                             progress, desc=task.name)
    mean = {m: sum(r[m] for r in per_task.values()) / len(per_task) for m in METRICS}
    return {"split": split, "shots": shots, "limit": limit, "seed": seed, "tasks": per_task, "average": mean}
