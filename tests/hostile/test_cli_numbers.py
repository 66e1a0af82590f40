"""Every numeric option of every command against hostile values: a refusal is one line naming the option
(exit 1 or 2, nothing printed, nothing run); a value the option's documented rule allows gets past every
check (and, where it is cheap, the command succeeds).

The options come from the parser (`walk.numeric_options`); each needs its documented rule in `RULES`, so a
new option fails `test_every_numeric_option_has_a_rule` until someone states what it accepts.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.hostile.walk import Option, commands, number_kind, numeric_options, one_error_line, parser, run_cli

CORES = os.cpu_count() or 1
HOSTILE = ["nan", "inf", "-inf", "0", "-1", "1e-300", "1e300", str(2**64), "abc", "True", "[1]"]
MIN_VOCAB = 335  # specials + 256 byte tokens + 64 merges (KoTokenizer.train)


@dataclass(frozen=True)
class Rule:
    """A finite number of the option's type within [low, high] (an `_open` bound is excluded)."""

    low: float | None = None
    high: float | None = None
    low_open: bool = False
    high_open: bool = False

    def accepts(self, kind: type, text: str) -> bool:
        try:
            value = kind(text)
        except ValueError:
            return False
        if not math.isfinite(value):
            return False
        if self.low is not None and (value <= self.low if self.low_open else value < self.low):
            return False
        return self.high is None or (value < self.high if self.high_open else value <= self.high)


ANY = Rule()
COUNT = Rule(1)
NON_NEGATIVE = Rule(0)
POSITIVE = Rule(0, low_open=True)
FRACTION = Rule(0, 1, high_open=True)
THREADS = Rule(1, CORES)
SEED = Rule(0, 2**64 - 1)
VOCAB = Rule(MIN_VOCAB, 2**32)
SAMPLING = {"--max-new-tokens": COUNT, "--temperature": ANY, "--top-k": NON_NEGATIVE,
            "--top-p": Rule(0, 1, low_open=True), "--seed": SEED, "--repetition-penalty": POSITIVE,
            "--frequency-penalty": ANY, "--presence-penalty": ANY}

# What each option accepts, as its help and docs state it (0 threads, 2^64 processes and NaN never).
RULES = {
    "prepare": {"--min-chars": Rule(0, 1_000_000),  # at most --max-chars (default 1,000,000)
                "--max-chars": COUNT, "--val-fraction": FRACTION,
                "--test-fraction": FRACTION, "--dedup-threshold": Rule(0, 1, True, True),
                "--workers": Rule(0, CORES), "--shard-index": Rule(0, 0), "--num-shards": COUNT},
    "tokenizer train": {"--vocab-size": VOCAB, "--max-mb": POSITIVE},
    "tokenizer extend": {"--add": COUNT, "--min-frequency": COUNT, "--max-mb": POSITIVE,
                         "--skip-heldout": FRACTION},
    "model-info": {"--batch": COUNT, "--seq-len": Rule(1, 256)},  # tiny's context
    "train": {"--nproc": THREADS},
    "generate": SAMPLING,
    "chat": {"--memo-k": COUNT, "--min-coverage": Rule(0, 1), "--dense-weight": NON_NEGATIVE, "--context": Rule(2),
             **SAMPLING},
    "lab autograd": {"--seed": SEED, "--threads": THREADS, "--graphs": COUNT, "--depth": COUNT},
    "lab mlp": {"--seed": SEED, "--threads": THREADS, "--steps": COUNT, "--hidden": COUNT, "--lr": POSITIVE},
    "lab digits": {"--seed": SEED, "--threads": THREADS, "--epochs": COUNT, "--hidden": COUNT},
    "lab attention": {"--seed": SEED, "--threads": THREADS, "--heads": COUNT, "--dim": COUNT},
    "lab transformer": {"--seed": SEED, "--threads": THREADS, "--steps": COUNT, "--length": COUNT},
    "lab numpy-lm": {"--seed": SEED, "--threads": THREADS, "--max-chars": COUNT, "--steps": COUNT},
    "lab char-gpt": {"--seed": SEED, "--threads": THREADS, "--max-chars": COUNT, "--iters": COUNT,
                     "--eval-interval": COUNT, "--eval-batches": COUNT},
    "bench tokenizer": {"--vocab-size": VOCAB, "--max-mb": POSITIVE},
    "bench prepare": {"--workers": THREADS, "--repeats": COUNT},
    "bench export": {"--steps": COUNT, "--docs": COUNT, "--threads": THREADS},
    "bench generate": {"--vocab-size": VOCAB, "--threads": THREADS, "--new-tokens": Rule(2), "--prompt-tokens": COUNT,
                       "--repeats": COUNT},
    "bench train": {"--steps": COUNT, "--rounds": COUNT, "--batch": COUNT, "--seq-len": COUNT, "--threads": THREADS},
    "bench speedrun": {"--minutes": POSITIVE, "--flops": POSITIVE, "--evals": COUNT, "--eval-tokens": COUNT,
                       "--seed": SEED, "--threads": THREADS},
    "bench scaling": {"--evals": COUNT, "--eval-tokens": COUNT, "--seed": SEED, "--threads": THREADS},
    "eval ppl": {"--stride": COUNT, "--limit": COUNT, "--batch-tokens": COUNT},
    "eval kobest": {"--shots": NON_NEGATIVE, "--limit": COUNT, "--seed": SEED, "--batch-tokens": COUNT},
    "eval domain": {"--limit": COUNT, "--stride": COUNT, "--max-new-tokens": COUNT, "--batch-tokens": COUNT},
    "report": {"--max-new-tokens": COUNT},
    "sft": {"--val-fraction": Rule(0, 1, True, True)},
    "serve": {"--port": Rule(1, 65535), "--max-tokens": COUNT},
    "bench memo": {"--notes": COUNT, "--queries": COUNT, "--repeats": COUNT},
    "memo index": {"--max-mb": POSITIVE, "--poll": POSITIVE},
    "memo search": {"-k": COUNT, "--dense-weight": NON_NEGATIVE},
    "memo ask": {"--context": Rule(2), "-k": COUNT, "--min-coverage": Rule(0, 1), "--dense-weight": NON_NEGATIVE,
                 **SAMPLING},
    "memo summarize": {"--context": Rule(2), **SAMPLING},
    "memo eval": {"--limit": COUNT, "--dense-weight": NON_NEGATIVE},
}

OPTIONS = numeric_options()


def base_argv(command: str, tmp) -> list[str]:
    """The command with inputs that do not exist (every name starts with 'missing-'), so a value that
    passes every check stops at the first input and nothing heavy ever runs."""
    m = lambda name: str(tmp / f"missing-{name}")  # noqa: E731
    out = ["--out", str(tmp / "out")]
    argv = {
        "prepare": [m("corpus"), "--tokenizer", m("tokenizer"), *out],
        "tokenizer train": [m("corpus"), *out],
        "tokenizer extend": [m("tokenizer"), "--corpus", m("corpus"), "--add", "10", *out],
        "model-info": ["tiny"],
        "train": ["--config", m("config.yaml")],
        "generate": [m("run"), "--prompt", "대한민국은"],
        "chat": [m("run")],
        "lab numpy-lm": ["--data", m("text.txt")],
        "lab char-gpt": ["--data", m("text.txt"), *out],
        "bench tokenizer": ["--train", m("corpus"), "--heldout", m("heldout.jsonl")],
        "bench prepare": [m("corpus"), "--tokenizer", m("tokenizer")],
        "bench export": [m("run")],
        "bench generate": [m("run")],
        "bench train": ["--preset", m("preset.yaml")],
        "bench speedrun": ["--data", m("data.yaml")],
        "bench scaling": ["--data", m("data.yaml")],
        "eval ppl": [m("run"), "--data", m("heldout.jsonl")],
        "eval kobest": [m("run"), "--data-dir", m("kobest")],
        "eval domain": [m("run"), "--domain", m("legal.jsonl"), "--general", m("general.jsonl")],
        "report": [m("run")],
        "sft": ["--base", m("base"), "--data", m("chat.jsonl"), *out],
        "serve": [m("run")],
        "bench memo": ["--corpus", m("corpus")],
        "memo index": [m("notes"), "--db", m("memo.db")],
        "memo search": ["서울", "--db", m("memo.db")],
        "memo ask": ["서울은?", "--db", m("memo.db"), "--backend", m("run")],
        "memo summarize": [m("notes"), "--db", m("memo.db"), "--backend", m("run")],
        "memo eval": ["--notes", m("notes.jsonl"), "--questions", m("questions.jsonl")],
    }
    if command in argv:
        return [*command.split(), *argv[command]]
    if command.startswith("lab "):  # no inputs: only the parser is asked about valid values
        return [*command.split(), *(out if command == "lab attention" else [])]
    raise AssertionError(f"add `krmini {command}` to base_argv")


def test_every_numeric_option_has_a_rule():
    missing = [o.id for o in OPTIONS if o.flag not in RULES.get(o.command, {})]
    assert not missing, f"state the documented rule of these options in RULES: {missing}"
    stale = [f"{c} {f}" for c, flags in RULES.items() for f in flags if f"{c} {f}" not in {o.id for o in OPTIONS}]
    assert not stale, f"RULES names options the parser does not have: {stale}"
    assert len(OPTIONS) >= 80  # the walk found the commands (not an empty parser)


def test_every_typed_option_is_found():
    """An option with a type of its own is a number the walk sees (`krmini.argtypes` marks its types);
    a custom type without the mark would slip past every case above."""
    unmarked = [f"{name} {a.option_strings}" for name, p in commands().items() for a in p._actions
                if a.type not in (None, str, Path) and number_kind(a) is None]
    assert not unmarked, f"typed options the walk does not recognise as numbers: {unmarked}"


def rule_of(option: Option) -> Rule:
    rule = RULES.get(option.command, {}).get(option.flag)
    if rule is None:
        pytest.fail(f"no rule for {option.id} (see test_every_numeric_option_has_a_rule)")
    return rule


CASES = [pytest.param(o, v, id=f"{o.id}={v}") for o in OPTIONS for v in HOSTILE]


@pytest.fixture(scope="module")
def empty_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("numbers")


@pytest.fixture
def in_tmp(empty_dir, monkeypatch):
    """Run in an empty directory: a command that wrongly goes ahead writes nowhere that matters."""
    monkeypatch.chdir(empty_dir)
    yield empty_dir
    assert not any(empty_dir.iterdir()), f"the command wrote {sorted(empty_dir.iterdir())}"


@pytest.mark.parametrize(("option", "value"), CASES)
def test_hostile_number(option, value, in_tmp, capsys, monkeypatch):
    valid = rule_of(option).accepts(option.kind, value)
    argv = [*base_argv(option.command, in_tmp), f"{option.flag}={value}"]
    if valid and option.command.startswith("lab ") and option.command not in ("lab numpy-lm", "lab char-gpt"):
        parser().parse_args(argv)  # the lab steps have no input to stop at: the parser must take it
        return
    code, out, err = run_cli(argv, capsys, monkeypatch)
    if option.command == "model-info" and valid:
        assert code == 0, err
        assert "parameters:" in out
        return
    line = one_error_line(code, err)
    if valid:  # got past every check of the value, to the first missing input
        assert "missing-" in line, line
        assert option.flag not in line, line
    else:
        assert out == "", out
        assert any(n in line for n in option.names()), f"{line!r} does not name {option.flag}"
        assert "missing-" not in line, f"the value was not checked before the inputs: {line}"


GENERATE_VALID = [pytest.param(o, v, id=f"{o.flag}={v}") for o in OPTIONS if o.command == "generate"
                  for v in HOSTILE if rule_of(o).accepts(o.kind, v)]


@pytest.mark.parametrize(("option", "value"), GENERATE_VALID)
def test_valid_sampling_values_generate(option, value, tiny_run, capsys, monkeypatch):
    """What the rules allow really samples: 1e300 penalties, a 2^64 top-k, a 1e-300 temperature."""
    argv = ["generate", str(tiny_run), "--prompt", "대한민국은", "--max-new-tokens", "4", f"{option.flag}={value}"]
    code, out, err = run_cli(argv, capsys, monkeypatch)
    assert code == 0, err
    assert out.startswith("대한민국은") and "\ufffd" not in out
