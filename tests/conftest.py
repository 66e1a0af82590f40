"""Shared test fixtures.

Tests run torch and BLAS on one thread: on a busy 2-core machine, OpenMP threads competing with
other processes can make a 3-second training take minutes; one thread is slower only slightly.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from filelock import FileLock
from threadpoolctl import threadpool_limits

SHARED_DATA = Path(__file__).resolve().parents[1] / ".." / "shared" / "data"


@contextlib.contextmanager
def single_thread():
    """torch and BLAS on one thread. Module and session fixtures are built before the per-test
    `one_thread` applies, so a reference run compared bit for bit with a test's own runs uses this:
    a matmul split over two threads can round differently in the last bit."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with threadpool_limits(limits=1):
            yield
    finally:
        torch.set_num_threads(previous)


@pytest.fixture(autouse=True)
def one_thread():
    with single_thread():
        yield


def shared_file(relative: str) -> Path:
    """A file under ../shared/data, or skip the test with the reason."""
    path = SHARED_DATA / relative
    if not path.exists():
        pytest.skip(f"shared test data not present: {path}")
    return path


def read_jsonl_texts(path: Path, limit: int | None = None, field: str = "text") -> list[str]:
    texts = []
    with open(path, encoding="utf-8") as fh:
        for line in fh:
            texts.append(json.loads(line)[field])
            if limit and len(texts) >= limit:
                break
    return texts


def built_once(tmp_path_factory, name: str, build) -> Path:
    """`build(out)` run once per test session, however many xdist workers ask: the first builds under
    a file lock, the others wait for it and read the same directory. Each worker building its own
    copy cost every worker the same 30-60 s of training before its first test. The result is
    read-only for tests."""
    if "PYTEST_XDIST_WORKER" not in os.environ:
        return build(tmp_path_factory.mktemp(name))
    root = tmp_path_factory.getbasetemp().parent / f"shared-{name}"
    done = root / ".built"
    with FileLock(f"{root}.lock"):
        if not done.exists():
            shutil.rmtree(root, ignore_errors=True)
            root.mkdir()
            result = build(root)
            done.write_text(str(result.relative_to(root)), encoding="utf-8")
    return root / done.read_text(encoding="utf-8")


def _build_tiny_run(out: Path) -> Path:
    from krmini.data.prepare import PrepareConfig, prepare, sample_texts
    from krmini.demo import konlpy_corpus
    from krmini.tokenizer.tokenizer import KoTokenizer
    from krmini.train.config import load_run_config
    from krmini.train.trainer import train

    inputs = konlpy_corpus()
    tok = KoTokenizer.train(sample_texts(inputs, "text", 10**9), vocab_size=2048, show_progress=False)
    tok_dir = tok.save(out / "tokenizer_src")
    prepare(inputs, tok, str(tok_dir), out / "data", PrepareConfig(val_fraction=0.05, test_fraction=0.05),
            progress=False)
    with torch.random.fork_rng():
        cfg = load_run_config("tiny", [f"train.data_dir={out / 'data'}", f"train.out_dir={out / 'run'}",
                                       "model.vocab_size=2048", "train.batch_size=8", "train.seq_len=64",
                                       "train.max_steps=40", "train.eval_interval=20", "train.save_interval=20",
                                       "train.device=cpu"])
        train(cfg, progress=False)
    return out / "run"


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory) -> Path:
    """A small trained run (tokenizer + shards + checkpoint) on KoNLPy's bundled corpus, a few seconds.

    Read-only for tests: copy it before changing anything.
    """
    return built_once(tmp_path_factory, "tiny_run", _build_tiny_run)


def write_legal_slices(out: Path) -> dict[str, Path]:
    """JSONL slices of the shared corpora (skip where absent): `legal` (the first 120 judgments, for learning
    tokens and training), `legal_heldout` and `general_heldout` (documents far from those, 12 each)."""
    precedents = shared_file("pretrain/precedents_sample.jsonl")
    petitions = shared_file("pretrain/petitions.jsonl")
    texts = read_jsonl_texts(precedents, 3012)
    slices = {"legal": texts[:120], "legal_heldout": texts[3000:3012],
              "general_heldout": read_jsonl_texts(petitions, 3012)[3000:3012]}
    out.mkdir(parents=True, exist_ok=True)
    for name, docs in slices.items():
        with open(out / f"{name}.jsonl", "w", encoding="utf-8") as fh:
            fh.writelines(json.dumps({"text": t[:2500]}, ensure_ascii=False) + "\n" for t in docs)
    return {name: out / f"{name}.jsonl" for name in slices}


def _build_domain_run(tiny_run: Path, out: Path) -> Path:
    from krmini.cli import main
    from krmini.data.prepare import PrepareConfig, prepare
    from krmini.tokenizer.tokenizer import KoTokenizer

    files = write_legal_slices(out / "text")
    assert main(["tokenizer", "extend", str(tiny_run), "--corpus", str(files["legal"]), "--add", "100",
                 "--out", str(out / "tokenizer")]) == 0
    prepare([files["legal"]], KoTokenizer.load(out / "tokenizer"), str(out / "tokenizer"), out / "data",
            PrepareConfig(val_fraction=0.1, test_fraction=0.1, workers=1), progress=False)
    with torch.random.fork_rng():
        assert main(["train", "--init-from", str(tiny_run), "--tokenizer", str(out / "tokenizer"), "--data",
                     str(out / "data"), "--out", str(out / "run"), "--device", "cpu", "train.max_steps=4",
                     "train.batch_size=4", "train.seq_len=64", "train.warmup_steps=2", "train.eval_interval=4",
                     "train.save_interval=2", "train.eval_tokens=4000", "train.precision=fp32",
                     "train.tensorboard=false"]) == 0
    return out / "run"


@pytest.fixture(scope="session")
def domain_run(tiny_run, tmp_path_factory) -> Path:
    """`tiny_run` moved to a tokenizer extended with 100 legal tokens and trained 4 steps on judgments
    (`krmini tokenizer extend` → `prepare` → `train --init-from --tokenizer`). Beside it: text/ (the legal and
    general slices), tokenizer/, data/. Read-only for tests; skips without the shared corpora."""
    return built_once(tmp_path_factory, "domain_run", lambda out: _build_domain_run(tiny_run, out))


CHAT_PAIRS = [("안녕하세요", "안녕하세요! 무엇을 도와드릴까요?"), ("오늘 날씨 어때?", "맑고 따뜻한 날이에요."),
              ("배고파", "맛있는 밥을 드세요."), ("고마워", "천만에요."), ("심심해", "산책을 해 보세요."),
              ("잘 자", "좋은 꿈 꾸세요."), ("힘들어", "오늘도 수고 많았어요."), ("뭐 해?", "당신과 이야기하고 있어요.")]


def write_chat_jsonl(path: Path, repeat: int = 6) -> Path:
    """A small Korean chat set: single- and multi-turn conversations, some with a system prompt."""
    with open(path, "w", encoding="utf-8") as fh:
        for r in range(repeat):
            for i, (q, a) in enumerate(CHAT_PAIRS):
                messages = [{"role": "system", "content": "친절한 비서"}] if (r + i) % 3 == 0 else []
                messages += [{"role": "user", "content": q}, {"role": "assistant", "content": a}]
                if r % 2:
                    q2, a2 = CHAT_PAIRS[(i + r) % len(CHAT_PAIRS)]
                    messages += [{"role": "user", "content": q2}, {"role": "assistant", "content": a2}]
                fh.write(json.dumps({"messages": messages, "n": r}, ensure_ascii=False) + "\n")
    return path


@pytest.fixture(scope="session")
def chat_run(tiny_run, tmp_path_factory) -> Path:
    """`tiny_run` instruction-tuned for 40 steps on `write_chat_jsonl` data (read-only for tests)."""
    from krmini.chat.sft import run_sft

    def build(out: Path) -> Path:
        data = write_chat_jsonl(out / "chat.jsonl")
        with torch.random.fork_rng():
            run_sft(tiny_run, [str(data)], out / "run", progress=False, val_fraction=0.2,
                    overrides=["train.max_steps=40", "train.batch_size=8", "train.seq_len=128", "train.lr=2.0e-3",
                               "train.warmup_steps=5", "train.eval_interval=40", "train.save_interval=40",
                               "train.device=cpu"])
        return out / "run"

    return built_once(tmp_path_factory, "chat_run", build)


@pytest.fixture(scope="session")
def lora_run(tiny_run, tmp_path_factory) -> Path:
    """`tiny_run` tuned with LoRA (r=4 on q, v, up) for 8 steps: a run whose weights hold unmerged
    adapters (read-only for tests)."""
    from krmini.chat.sft import run_sft
    from krmini.train.lora import parse_lora_spec

    def build(out: Path) -> Path:
        data = write_chat_jsonl(out / "chat.jsonl", repeat=2)
        with torch.random.fork_rng():
            run_sft(tiny_run, [str(data)], out / "run", lora=parse_lora_spec("r=4,alpha=8,targets=q,v,up"),
                    progress=False, val_fraction=0.2,
                    overrides=["train.max_steps=8", "train.batch_size=4", "train.seq_len=96", "train.lr=5.0e-3",
                               "train.warmup_steps=2", "train.eval_interval=8", "train.save_interval=8",
                               "train.device=cpu"])
        return out / "run"

    return built_once(tmp_path_factory, "lora_run", build)


MAX_TOKENS = 16


@dataclass
class Server:
    url: str
    key: str
    process: subprocess.Popen


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def serve_process(run: Path, log_dir: Path, *more: str):
    """`krmini serve RUN MORE…` as a real process on 127.0.0.1 and a free port, with an API key."""
    port = free_port()
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONIOENCODING": "utf-8"}
    log_path = log_dir / "server.log"
    log = open(log_path, "w", encoding="utf-8")  # noqa: SIM115 (the server writes to it until teardown)
    process = subprocess.Popen(
        [sys.executable, "-m", "krmini", "serve", str(run), "--port", str(port), "--api-key", "test-key",
         "--name", "krmini-test", "--max-tokens", str(MAX_TOKENS), "--device", "cpu", *more],
        env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 90
    while True:
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=2) as r:
                if r.status == 200:
                    break
        except OSError:
            pass
        if process.poll() is not None or time.monotonic() > deadline:
            process.kill()
            pytest.fail(f"server did not start:\n{log_path.read_text(encoding='utf-8')}")
        time.sleep(0.2)
    try:
        yield Server(url, "test-key", process)
    finally:
        stop_process(process, log)


@pytest.fixture(scope="session")
def chat_server(chat_run, tmp_path_factory):
    """`krmini serve chat_run` as a real process on 127.0.0.1 and a free port, with an API key."""
    with serve_process(chat_run, tmp_path_factory.mktemp("serve")) as server:
        yield server


@pytest.fixture(scope="session")
def chat_local(chat_run):
    """The served model loaded in this process, to compute what greedy replies must be."""
    from krmini.chat.load import load_chat_model

    return load_chat_model(chat_run, torch.device("cpu"))


def greedy(n: int = MAX_TOKENS):
    from krmini.infer.generate import SamplingConfig

    return SamplingConfig(max_new_tokens=n, temperature=0.0, top_k=0, top_p=1.0)


@pytest.fixture
def simulated_avx2(monkeypatch):
    """This process sees an x86-64 CPU with AVX2 and no AVX-512 (KRMINI_SIMULATE_CPU=avx2), with fresh
    probe verdicts, so a machine that has AVX-512 still exercises the fallbacks."""
    from krmini import hardware

    monkeypatch.setenv(hardware.SIMULATE_ENV, "avx2")
    monkeypatch.setattr(hardware, "VERDICTS", {})
    monkeypatch.setattr(hardware, "_SAID", set())
    hardware.cpu.cache_clear()
    yield hardware
    hardware.cpu.cache_clear()


def stop_process(process, log) -> None:
    """End a server started by a test, then close the log it wrote to."""
    process.terminate()
    try:
        process.wait(timeout=10)
    except subprocess.TimeoutExpired:
        process.kill()
    log.close()
