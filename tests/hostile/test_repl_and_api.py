"""Hostile numbers through the chat REPL's commands and the Python API (`SamplingConfig.validate`,
`Engine.prepare`): a refusal is one line (a `KrminiError` naming the field), and the session goes on."""

from __future__ import annotations

import math
from dataclasses import replace

import pytest
import torch

from krmini.chat.backend import LocalBackend
from krmini.chat.load import load_chat_model
from krmini.chat.repl import ChatSession
from krmini.chat.template import stop_ids
from krmini.errors import KrminiError
from krmini.infer.build import build_engine
from krmini.infer.sampling import SamplingConfig

NAN, INF = math.nan, math.inf
# the CLI's hostile values as Python objects: non-finite, zero, negative, tiny, huge, 2^64, wrong types
HOSTILE = [NAN, INF, -INF, 0, -1, 1e-300, 1e300, 2**64, "1", True, [1]]
REPL_VALUES = ["nan", "inf", "-inf", "0", "-1", "1e-300", "1e300", str(2**64), "abc", "True", "[1]", ""]


def finite(x) -> bool:
    return isinstance(x, int | float) and not isinstance(x, bool) and math.isfinite(x)


def integer(x) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


# SamplingConfig's documented rules (its field comments and `validate`), one predicate a field
RULES = {
    "temperature": finite,  # <= 0 is greedy
    "top_p": lambda x: finite(x) and 0 < x <= 1,
    "repetition_penalty": lambda x: finite(x) and x > 0,
    "frequency_penalty": finite,
    "presence_penalty": finite,
    "max_new_tokens": lambda x: integer(x) and x >= 1,  # capped by the context
    "top_k": lambda x: integer(x) and x >= 0,
    "n": lambda x: integer(x) and 1 <= x <= 256,  # MAX_SAMPLES
    "seed": lambda x: x is None or (integer(x) and 0 <= x < 2**64),
    "stop": lambda x: isinstance(x, tuple | list) and all(isinstance(s, str) and s for s in x),
}
API_CASES = [pytest.param(f, v, id=f"{f}={v!r}") for f in RULES for v in HOSTILE]


@pytest.mark.parametrize(("field", "value"), API_CASES)
def test_sampling_config_validate(field, value):
    cfg = SamplingConfig(**{field: value})
    if RULES[field](value):
        cfg.validate()
    else:
        with pytest.raises(KrminiError, match=rf"^{field}: expected ") as exc:
            cfg.validate()
        assert "\n" not in str(exc.value)


def test_every_sampling_field_has_a_rule():
    from dataclasses import fields

    numeric = {f.name for f in fields(SamplingConfig) if f.name not in ("truncate",)}
    assert numeric == set(RULES), "state the rule of each SamplingConfig field in RULES"


@pytest.fixture(scope="module")
def engine(chat_run):
    loaded = load_chat_model(chat_run, torch.device("cpu"))
    return build_engine(loaded, stop_ids=stop_ids(loaded.tokenizer))


GREEDY = SamplingConfig(max_new_tokens=3, temperature=0.0, top_k=0, seed=0)


@pytest.mark.parametrize(("field", "value"), API_CASES)
def test_engine_prepare_checks_before_anything_runs(engine, field, value):
    cfg = replace(GREEDY, **{field: value})
    if not RULES[field](value):
        with pytest.raises(KrminiError, match=rf"^{field}: "):
            engine.prepare("안녕하세요", cfg)
        return
    ids = engine.prepare("안녕하세요", cfg)
    assert ids[0] == engine.tokenizer.bos_id and len(ids) < engine.context
    if field != "max_new_tokens":  # a valid value generates (a 2^64 max_new_tokens stops at the context)
        done = engine.generate_batch([(ids, replace(cfg, max_new_tokens=3))])[0]
        assert len(done.texts) == cfg.n


BAD_IDS = [[-1], [2**64], [10**9], [1.5], ["a"], [True, 5], []]


@pytest.mark.parametrize("ids", BAD_IDS, ids=repr)
def test_engine_prepare_refuses_impossible_token_ids(engine, ids):
    with pytest.raises(KrminiError, match="^prompt: "):
        engine.prepare(ids, GREEDY)


@pytest.mark.parametrize("value", REPL_VALUES)
def test_repl_temp(engine, value, capsys):
    session = ChatSession(LocalBackend(engine), GREEDY)
    assert "".join(session.reply("안녕하세요"))
    capsys.readouterr()
    assert session.command(f"/temp {value}".rstrip())
    line = capsys.readouterr().out
    assert line.count("\n") == 1 and "Traceback" not in line
    try:
        valid = math.isfinite(float(value))
    except ValueError:
        valid = False
    if valid:
        assert session.sampling.temperature == float(value) and "temperature = " in line
    else:
        assert session.sampling.temperature == 0.0 and "/temp 0.7" in line
    list(session.reply("고마워"))
    assert len(session.history) == 4  # the session goes on


@pytest.mark.parametrize("command", ["/top_p", "/top_k", "/max", "/seed", "/n"])
@pytest.mark.parametrize("value", ["nan", "-1", str(2**64), "abc"])
def test_repl_has_no_other_number_commands(engine, command, value, capsys):
    """Only /temp takes a number; any other /word shows the one-line help and changes nothing."""
    session = ChatSession(LocalBackend(engine), GREEDY)
    assert session.command(f"{command} {value}")
    line = capsys.readouterr().out
    assert line.count("\n") == 1 and "/temp" in line
    assert session.sampling == GREEDY
