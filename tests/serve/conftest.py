"""A live `krmini serve` process on 127.0.0.1 and a random free port, serving the tuned `chat_run`."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass

import pytest
import torch

from krmini.chat.load import load_chat_model
from krmini.infer.generate import SamplingConfig

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


@pytest.fixture(scope="session")
def server(chat_run):
    port = free_port()
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONIOENCODING": "utf-8"}
    process = subprocess.Popen(
        [sys.executable, "-m", "krmini", "serve", str(chat_run), "--port", str(port), "--api-key", "test-key",
         "--name", "krmini-test", "--max-tokens", str(MAX_TOKENS), "--device", "cpu"],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, encoding="utf-8")
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
            pytest.fail(f"server did not start:\n{process.stdout.read()}")
        time.sleep(0.2)
    yield Server(url, "test-key", process)
    process.terminate()
    try:
        process.wait(timeout=10)
    except subprocess.TimeoutExpired:
        process.kill()


@pytest.fixture(scope="session")
def local(chat_run):
    """The same model in this process, to compute what greedy replies must be."""
    return load_chat_model(chat_run, torch.device("cpu"))


def greedy(n: int = MAX_TOKENS) -> SamplingConfig:
    return SamplingConfig(max_new_tokens=n, temperature=0.0, top_k=0, top_p=1.0)
