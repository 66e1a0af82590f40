"""`krmini bench speedrun` on a 35k-parameter model and KoNLPy's bundled corpus: the protocol's parts
(parameter matching, budgets, interleaving, interpolation) and one whole run's JSON and PNG."""

from __future__ import annotations

import contextlib
import io
import json
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml

from krmini.bench import speedrun_entries as se
from krmini.bench.speedrun import calibrate, interleave, parse_lrs, plan_steps, sweep_entries
from krmini.bench.speedrun_data import prepared_data
from krmini.bench.speedrun_report import summary, time_to_reach
from krmini.data.prepare import load_data_config
from krmini.errors import KrminiError
from tests.hostile.walk import one_error_line, run_cli

TINY_TRAIN = {"seq_len": 32, "batch_size": 4, "max_steps": 100, "warmup_steps": 10, "lr": 3.0e-3, "precision": "fp32"}
OURS = {"model": {"vocab_size": 512, "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2,
                  "num_attention_heads": 4, "num_key_value_heads": 2, "max_position_embeddings": 64,
                  "tie_word_embeddings": True}, "train": TINY_TRAIN}
GPT2 = {"gpt2": {"n_layer": 2, "n_head": 4}, "model": {"vocab_size": 512, "max_position_embeddings": 64},
        "train": TINY_TRAIN}
FLOPS = 4e8


@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> dict[str, Path]:
    from krmini.demo import konlpy_corpus

    root = tmp_path_factory.mktemp("speedrun")
    files = {"data": root / "data.yaml", "heldout": root / "heldout.jsonl", "ours": root / "ours.yaml",
             "gpt2": root / "gpt2.yaml", "out": root / "work"}
    files["data"].write_text(yaml.safe_dump({"sources": [{"name": "ko", "paths": [str(p) for p in konlpy_corpus()]}],
                                             "prepare": {"val_fraction": 0.1, "test_fraction": 0.05, "workers": 1}}))
    texts = ["대한민국은 민주공화국이다. 대한민국의 주권은 국민에게 있고, 모든 권력은 국민으로부터 나온다.",
             "모든 국민은 법 앞에 평등하다. 누구든지 성별·종교 또는 사회적 신분에 의하여 차별을 받지 아니한다."]
    files["heldout"].write_text("".join(json.dumps({"text": t}, ensure_ascii=False) + "\n" for t in texts),
                                encoding="utf-8")
    files["ours"].write_text(yaml.safe_dump(OURS))
    files["gpt2"].write_text(yaml.safe_dump(GPT2))
    return files


def argv(inputs, *more: str) -> list[str]:
    return ["bench", "speedrun", "--data", str(inputs["data"]), "--heldout", str(inputs["heldout"]),
            "--out", str(inputs["out"]), "--threads", "1", "--evals", "2", "--eval-tokens", "64",
            "--entry", f"baseline={inputs['gpt2']}", "--entry", f"ours_default={inputs['ours']}",
            "--entry", f"ours_new={inputs['ours']}:model.tie_word_embeddings=false,model.qk_norm=true",
            "--entry", f"no_qk={inputs['ours']}:model.tie_word_embeddings=false", *more]


@pytest.fixture(scope="module")
def result(inputs) -> tuple[dict, str]:
    from krmini.cli import main

    report = inputs["out"].parent / "speedrun.json"
    stdout = io.StringIO()
    with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(io.StringIO()):
        assert main(argv(inputs, "--flops", str(FLOPS), "--json", str(report))) == 0
    return json.loads(report.read_text(encoding="utf-8")), stdout.getvalue()


def tiny_entry(inputs, name: str, *overrides: str) -> se.Entry:
    return se.load_entry(name, str(inputs["ours"]), list(overrides))


def test_run_json_table_and_png(result, inputs):
    record, stdout = result
    assert list(record["entries"]) == ["baseline", "ours_default", "ours_new", "no_qk"]
    assert set(record["time_to_baseline_bpb"]) == {"ours_default", "ours_new", "no_qk"}
    base = record["entries"]["baseline"]
    assert record["target_heldout_bpb"] == base["heldout_bpb"]
    for name, e in record["entries"].items():
        entry = se.load_entry(name, *se.parse_entry(f"{name}={e['config']}")[1:])
        tokens_per_step = 4 * 32
        if entry.gpt2 is None:  # (the GPT-2's width is fitted in the run)
            assert e["steps"] == int(FLOPS // (se.flops_per_token(entry) * tokens_per_step))
        assert e["tokens"] == e["steps"] * tokens_per_step
        assert len(e["curve"]) == 3 and e["curve"][0]["seconds"] == 0 and e["curve"][-1]["tokens"] == e["tokens"]
        assert e["curve"][-1]["heldout_bpb"] == e["heldout_bpb"] and e["curve"][-1]["val_bpb"] == e["val_bpb"]
        assert e["seconds"] == e["curve"][-1]["seconds"] > 0
        assert 0 < e["heldout_bpb"] < e["curve"][0]["heldout_bpb"]  # it learned something
        assert 0 < e["val_bpb"] < e["curve"][0]["val_bpb"]
        if name != "baseline":
            fraction, seconds = record["time_to_baseline_bpb"][name], e["seconds_to_baseline_bpb"]
            assert (fraction is None) == (seconds is None)
            assert fraction is None or fraction == pytest.approx(seconds / base["seconds"])
    # the GPT-2 was sized to ours_default: 2 layers × 28 wide, 33,656 matmul weights against 34,816
    assert base["params"] == 33_656 and record["entries"]["ours_default"]["params"] == 34_816
    assert record["entries"]["ours_new"]["params"] == 34_816 < record["entries"]["ours_new"]["params_total"]
    lines = stdout.splitlines()
    header = next(i for i, line in enumerate(lines) if line.startswith("entry") and "heldout" in line)
    assert [line.split()[0] for line in lines[header + 2:header + 6]] == list(record["entries"])
    assert "GPT-2 2 layers × 28 wide" in stdout
    assert (inputs["out"] / "speedrun.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_data_is_reused_and_a_foreign_directory_refused(result, inputs, tmp_path, capsys):
    config = load_data_config(inputs["data"])
    tokenizer, data_dir = prepared_data(inputs["data"], config, inputs["out"], 512)
    assert "reusing" in capsys.readouterr().out and tokenizer.vocab_size == 512 and data_dir == inputs["out"] / "data"
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(KrminiError, match="holds no data.json"):
        prepared_data(inputs["data"], config, tmp_path, 512)
    # what the benchmarks write themselves is not foreign: another vocabulary's data, the curves
    (tmp_path / "notes.txt").unlink()
    (tmp_path / "vocab-384").mkdir()
    (tmp_path / "speedrun.png").write_bytes(b"")
    assert prepared_data(inputs["data"], config, tmp_path, 512)[1] == tmp_path / "data"


def test_gpt2_is_sized_within_five_percent_of_ours_default():
    entries = se.load_entries([])  # the real configs/speedrun/*.yaml
    counts = se.match_parameters(entries)
    target = counts["ours_default"]["matmul"]
    assert target == 4_997_120  # the chat-demo size
    assert entries[0].gpt2.n_embd == 248 and counts["baseline"]["matmul"] == 4_945_120
    assert all(abs(c["matmul"] / target - 1) <= 0.05 for c in counts.values())
    # untied: one more 8000 × 256 table, but no more matmul weights
    assert counts["ours_new"]["matmul"] == target
    assert counts["ours_new"]["total"] == counts["ours_default"]["total"] + 8000 * 256


def test_an_entry_of_another_size_is_refused(inputs):
    entries = [tiny_entry(inputs, "ours_default"), tiny_entry(inputs, "wide", "model.hidden_size=64")]
    with pytest.raises(KrminiError, match=r"within ±5%; off: wide "):
        se.match_parameters(entries)


def test_flops_budget_and_calibrated_time_budget(result, inputs):
    from krmini.data.loader import split_windows

    windows = split_windows(inputs["out"] / "data", "train", 32, 0)[0]
    e, slow = tiny_entry(inputs, "ours_default"), tiny_entry(inputs, "slow", "train.grad_accum=4")
    plan_steps(e, None, 3e8)
    assert e.max_steps == int(3e8 // (se.flops_per_token(e) * 128)) and e.warmup_steps == round(e.max_steps / 10)
    step_times = calibrate([e, slow], 4.0, 0, {"ours_default": windows, "slow": windows}, se.torch.device("cpu"),
                           {"ours_default": "fp32", "slow": "fp32"})
    assert step_times["slow"] > 1.5 * step_times["ours_default"]  # four micro-batches a step, timed alike
    plan_steps(e, 4.0, None, step_times["ours_default"])
    assert e.max_steps == max(1, round(4.0 / step_times["ours_default"]))
    assert e.warmup_steps == min(e.max_steps - 1, round(e.max_steps * 10 / 100))


def test_turns_interleave_and_only_training_time_counts(result, inputs):
    from krmini.data.loader import split_windows

    train = split_windows(inputs["out"] / "data", "train", 32, 0)[0]
    # b: an ablation row with the newer switches (Muon + AdamW, WSD schedule, ReLU² MLP at 1.5× width: same count)
    a, b = tiny_entry(inputs, "a"), tiny_entry(inputs, "b", "model.qk_norm=true", "train.optimizer=muon",
                                                 "train.schedule=wsd", "model.mlp_act=relu2", "model.intermediate_size=96")
    assert se.matmul_count(b) == se.matmul_count(a)
    a.max_steps, b.max_steps = 4, 7
    cpu = se.torch.device("cpu")
    states = [se.start_entry(e, 0, cpu, "fp32") for e in (a, b)]
    pause = 0.2

    class Score:
        seconds, count = 0.0, 0

        def __call__(self, state):
            time.sleep(pause)
            self.seconds += pause
            self.count += 1
            return {"step": state.step, "tokens": state.tokens, "seconds": state.seconds, "heldout_bpb": 1.0,
                    "val_bpb": 1.0}

    start = time.perf_counter()
    score = Score()
    order = interleave(states, {"a": train, "b": train}, {"a": score, "b": score}, 3, cpu, progress=False)
    wall = time.perf_counter() - start
    assert order == [("a", 1), ("b", 2), ("a", 1), ("b", 2), ("a", 2), ("b", 3)]
    assert [len(s.optimizers) for s in states] == [1, 2]
    assert [s.step for s in states] == [4, 7] and [s.tokens for s in states] == [4 * 128, 7 * 128]
    assert [p["step"] for p in states[1].curve] == [0, 2, 4, 7]
    assert sum(s.seconds for s in states) <= wall - 8 * pause  # the 8 evaluations are not counted
    assert all(s.seconds > 0 for s in states)


def test_time_to_reach_interpolates_on_the_curve():
    curve = [{"seconds": 0.0, "heldout_bpb": 3.0}, {"seconds": 10.0, "heldout_bpb": 2.0},
             {"seconds": 20.0, "heldout_bpb": 1.5}, {"seconds": 30.0, "heldout_bpb": 1.6}]
    assert time_to_reach(curve, 1.75) == pytest.approx(15.0)
    assert time_to_reach(curve, 2.0) == 10.0
    assert time_to_reach(curve, 2.5) == pytest.approx(5.0)
    assert time_to_reach(curve, 3.5) == 0.0
    assert time_to_reach(curve, 1.4) is None


def test_summary_gives_the_share_of_the_baseline_time():
    def state(name, seconds, bpbs):
        curve = [{"seconds": t, "tokens": 100 * t, "heldout_bpb": b, "val_bpb": b + 0.1} for t, b in zip(seconds, bpbs, strict=True)]
        return SimpleNamespace(entry=SimpleNamespace(name=name, source=f"{name}.yaml"), curve=curve, tokens=curve[-1]["tokens"],
                               seconds=seconds[-1], step=10, precision="fp32")

    states = [state("baseline", [0, 50, 100], [3.0, 2.0, 1.8]), state("ours_default", [0, 40, 80], [3.0, 1.9, 1.7]),
              state("ours_new", [0, 50, 100], [3.0, 2.5, 2.0])]
    counts = dict.fromkeys(["baseline", "ours_default", "ours_new"], {"matmul": 10, "total": 12})
    record = summary(states, {"fp32": 1e9}, counts, dict.fromkeys(counts, 60.0))
    # ours_default passes 1.8 between (40 s, 1.9) and (80 s, 1.7): at 60 s, 60% of the baseline's 100 s
    assert record["time_to_baseline_bpb"] == {"ours_default": pytest.approx(0.6), "ours_new": None}
    # against ours_default's 1.7 at 80 s: the baseline and ours_new never get there
    assert record["time_to_default_bpb"] == {"baseline": None, "ours_new": None}
    assert record["entries"]["ours_default"]["seconds_to_baseline_bpb"] == pytest.approx(60)
    assert record["entries"]["ours_default"]["mfu"] == pytest.approx(100 * 60 / 1e9)
    assert record["entries"]["baseline"]["heldout_bpb"] == 1.8
    assert record["entries"]["baseline"]["val_bpb"] == pytest.approx(1.9)


@pytest.mark.parametrize("spec", ["oops", "=x.yaml", "a=", "a=x.yaml:train.lr", "a=x.yaml:=1", "a b=x.yaml"])
def test_bad_entry_is_one_clear_line(spec, inputs, capsys, monkeypatch):
    code, out, err = run_cli(argv(inputs, "--entry", spec), capsys, monkeypatch)
    line = one_error_line(code, err)
    assert "expected NAME=CONFIG[:key=value,key=value,...]" in line and out == ""


def test_unknown_override_and_duplicate_names_are_one_line(inputs, capsys, monkeypatch):
    code, _, err = run_cli(argv(inputs, "--entry", f"x={inputs['ours']}:model.flavour=1"), capsys, monkeypatch)
    assert "flavour" in one_error_line(code, err)
    code, _, err = run_cli(argv(inputs, "--entry", f"no_qk={inputs['ours']}"), capsys, monkeypatch)
    assert "names must be unique" in one_error_line(code, err)
    code, _, err = run_cli(argv(inputs, "--entry", f"x={inputs['ours']}:train.compile=true"), capsys, monkeypatch)
    assert "train.compile: not used by the speedrun" in one_error_line(code, err)


def test_sweep_entries_and_learning_rates(inputs):
    assert parse_lrs("1e-3,2e-3") == [1e-3, 2e-3]
    for bad in ("", "1e-3,,2", "0", "-1e-3", "nan", "inf"):
        with pytest.raises(KrminiError, match="--sweep-baseline-lr"):
            parse_lrs(bad)
    entries = [se.load_entry("baseline", str(inputs["gpt2"]), []), tiny_entry(inputs, "ours_default")]
    swept = sweep_entries(entries, [1e-3, 4e-3])
    assert [e.name for e in swept] == ["baseline@lr=0.001", "baseline@lr=0.004", "ours_default"]
    assert [e.cfg.train.lr for e in swept[:2]] == [1e-3, 4e-3] and entries[0].cfg.train.lr == 3e-3


def test_vocabulary_sizes_each_get_their_tokenizer_and_the_same_heldout_text(inputs, tmp_path):
    from krmini.cli import main

    report = tmp_path / "vocab.json"
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        assert main(argv(inputs, "--flops", str(FLOPS), "--vocab-sizes", "384,640", "--json", str(report))) == 0
    record = json.loads(report.read_text(encoding="utf-8"))
    assert list(record["entries"]) == ["vocab=384", "vocab=640"]
    assert record["protocol"]["vocab_sizes"] == {"vocab=384": 384, "vocab=640": 640}
    small, large = record["entries"].values()
    assert large["params"] - small["params"] == (640 - 384) * 32  # only the head grows (untied ours_new)
    assert large["steps"] < small["steps"]  # the same FLOPs buy fewer steps of the bigger head
    for v in (384, 640):
        marker = json.loads((inputs["out"] / f"vocab-{v}" / "data.json").read_text(encoding="utf-8"))
        assert marker["vocab_size"] == v
    assert all(0 < e["heldout_bpb"] < e["curve"][0]["heldout_bpb"] for e in (small, large))
    with pytest.raises(KrminiError, match="--vocab-sizes"):
        from krmini.bench.speedrun import parse_vocab_sizes
        parse_vocab_sizes("8000,8000")


def test_pretokenization_rules_each_get_their_tokenizer(inputs, tmp_path):
    from krmini.bench.speedrun import parse_pretokenizers
    from krmini.cli import main

    report = tmp_path / "pretok.json"
    rules = "spaces,spaces-digits-punct"
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        assert main(argv(inputs, "--flops", str(FLOPS), "--pretokenizers", rules, "--json", str(report))) == 0
    record = json.loads(report.read_text(encoding="utf-8"))
    assert list(record["entries"]) == ["pretok=spaces", "pretok=spaces-digits-punct"]
    assert record["protocol"]["pretokenizers"] == {"pretok=spaces": "spaces",
                                                    "pretok=spaces-digits-punct": "spaces-digits-punct"}
    for rule in rules.split(","):
        sub = inputs["out"] / f"pretok-{rule}"
        assert json.loads((sub / "data.json").read_text(encoding="utf-8"))["pretokenizer"] == rule
        pre = json.loads((sub / "tokenizer" / "tokenizer.json").read_text(encoding="utf-8"))["pre_tokenizer"]
        assert ("Punctuation" in json.dumps(pre)) == (rule == "spaces-digits-punct")
        assert ("Digits" in json.dumps(pre)) == (rule != "spaces")
    a, b = record["entries"].values()
    assert a["params"] == b["params"]  # the same vocabulary size: the same model
    assert all(0 < e["heldout_bpb"] < e["curve"][0]["heldout_bpb"] for e in (a, b))
    for bad in ("words", "spaces,spaces", ""):
        with pytest.raises(KrminiError, match="--pretokenizers"):
            parse_pretokenizers(bad)
    err = io.StringIO()
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(err):
        assert main(argv(inputs, "--flops", str(FLOPS), "--pretokenizers", "spaces", "--vocab-sizes", "384")) == 1
    assert "--vocab-sizes and --pretokenizers: give one of them" in err.getvalue()


def test_scaling_runs_depths_and_budgets_and_fits(inputs, tmp_path):
    from krmini.bench.scaling import fit
    from krmini.cli import main

    report, fit_out = tmp_path / "scaling.json", tmp_path / "fit.json"
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        assert main(["bench", "scaling", "--data", str(inputs["data"]), "--heldout", str(inputs["heldout"]),
                     "--out", str(inputs["out"]), "--config", str(inputs["ours"]), "--depths", "1,2",
                     "--flops", "4e8,8e8,1.6e9", "--threads", "1", "--evals", "1", "--eval-tokens", "64",
                     "--json", str(report), "--fit-out", str(fit_out)]) == 0
    record = json.loads(report.read_text(encoding="utf-8"))
    points = record["points"]
    assert [(p["depth"], p["flops"]) for p in points] == [(d, c) for d in (1, 2) for c in (4e8, 8e8, 1.6e9)]
    for p in points:
        assert p["tokens"] == int(p["flops"] // (p["flops_per_token"] * 128)) * 128
    from krmini.train.plan import load_fits

    fits = load_fits(fit_out)
    assert set(fits) == {"heldout_bpb", "val_bpb"} and fits["val_bpb"].n_range == [min(p["params"] for p in points),
                                                                                 max(p["params"] for p in points)]
    assert (inputs["out"] / "scaling.png").read_bytes()[:4] == b"\x89PNG"
    # the fit recovers a known law from exact points
    truth = {"E": 1.2, "A": 50.0, "alpha": 0.35, "B": 80.0, "beta": 0.3}
    synthetic = [{"params": n, "tokens": d, "bpb": truth["E"] + truth["A"] / n**0.35 + truth["B"] / d**0.3}
                 for n in (1e5, 4e5, 2e6, 8e6) for d in (1e5, 1e6, 1e7)]
    got = fit(synthetic, "bpb", "synthetic")
    assert (got.alpha, got.beta) == (0.35, 0.3) and got.rmse < 1e-9
    assert pytest.approx((1.2, 50.0, 80.0)) == (got.E, got.A, got.B)


@pytest.mark.parametrize(("flag", "value"), [("--depths", "0"), ("--depths", "2,x"), ("--depths", "2,2"),
                                             ("--flops", "1e13,-1"), ("--flops", "nan")])
def test_bad_scaling_lists_are_one_line(flag, value, inputs, capsys, monkeypatch):
    code, out, err = run_cli(["bench", "scaling", "--data", str(inputs["data"]), "--heldout", str(inputs["heldout"]),
                              "--out", str(inputs["out"]), flag, value], capsys, monkeypatch)
    assert f"{flag} {value!r}: expected" in one_error_line(code, err) and out == ""


def test_nonnegative_least_squares_clamps_what_would_go_negative():
    import numpy as np

    from krmini.bench.scaling import nonnegative_lstsq

    x = np.array([[1.0, 1.0], [1.0, 2.0], [1.0, 3.0]])
    assert nonnegative_lstsq(x, np.array([3.0, 5.0, 7.0])) == pytest.approx([1.0, 2.0])  # inside: plain least squares
    assert nonnegative_lstsq(x, np.array([3.0, 2.0, 1.0])) == pytest.approx([2.0, 0.0])  # the slope would be -1
