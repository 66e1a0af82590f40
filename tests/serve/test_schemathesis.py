"""Schemathesis fuzzes the live server from its own /openapi.json (`make test-integration`).

Every operation, every check (no 5xx; statuses, content types, headers and bodies as documented,
server-sent events included; schema-invalid requests rejected, schema-valid ones accepted; 405 with
`Allow`; 401 without the key), a fixed seed and a bounded number of cases: about two minutes on
2 cores. One rejection of a schema-valid request is expected and documented: a prompt longer than
the model's context (400 `context_length_exceeded`), which no JSON Schema can express in tokens.
"""

from __future__ import annotations

import base64
import collections
import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

SEED = 20260501
MAX_EXAMPLES = 200  # per operation and phase
OPERATIONS = ["GET /", "GET /health", "GET /v1/models", "POST /tokenize", "POST /v1/chat/completions",
              "POST /v1/completions", "POST /v1/embeddings"]


def body_of(data: dict | None) -> object:
    if not data or "$base64" not in data:
        return data
    try:
        return json.loads(base64.b64decode(data["$base64"]))
    except ValueError:
        return None


def too_long(interaction: dict) -> bool:
    answer = body_of((interaction.get("response") or {}).get("content"))
    return isinstance(answer, dict) and (answer.get("error") or {}).get("code") == "context_length_exceeded"


def summarise(report: Path) -> dict:
    """Cases, statuses and failed checks from schemathesis's NDJSON event log."""
    cases, statuses, operations = 0, collections.Counter(), set()
    failures, expected, errors = [], 0, []
    for line in report.read_text(encoding="utf-8").splitlines():
        (kind, event), = json.loads(line).items()
        if kind in ("NonFatalError", "FatalError", "Interrupted"):
            errors.append(f"{kind}: {json.dumps(event)[:2000]}")
        recorder = event.get("recorder") if isinstance(event, dict) else None
        if not recorder:
            continue
        operations.add(recorder["label"])
        cases += len(recorder.get("cases", {}))
        interactions = recorder.get("interactions", {})
        for interaction in interactions.values():
            if interaction.get("response"):
                statuses[interaction["response"]["status_code"]] += 1
        for case_id, checks in recorder.get("checks", {}).items():
            for check in checks:
                if check["status"] == "success":
                    continue
                interaction = interactions.get(case_id, {})
                if check["name"] == "positive_data_acceptance" and too_long(interaction):
                    expected += 1
                    continue
                request = interaction.get("request", {})
                failures.append(f"{check['name']} ({check['status']}): {request.get('method')} {request.get('uri')} "
                                f"{body_of(request.get('body'))!r:.500} -> {interaction.get('response', {}).get('status_code')} "
                                f"{body_of((interaction.get('response') or {}).get('content'))!r:.500}")
    return {"operations": sorted(operations), "cases": cases, "statuses": dict(sorted(statuses.items())),
            "server_errors": sum(n for status, n in statuses.items() if status >= 500),
            "failures": failures, "too_long": expected, "errors": errors}


@pytest.mark.integration
def test_schemathesis_finds_no_server_error_and_no_schema_violation(chat_server, tmp_path):
    pytest.importorskip("schemathesis", reason="schemathesis is in the dev extra: pip install -e '.[dev]'")
    cmd = [sys.executable, "-m", "schemathesis.cli", "run", f"{chat_server.url}/openapi.json",
           "--header", f"Authorization: Bearer {chat_server.key}", "--checks", "all", "--continue-on-failure",
           "--seed", str(SEED), "--max-examples", str(MAX_EXAMPLES), "--workers", "1", "--request-timeout", "120",
           "--generation-database", "none", "--no-color", "--report", "ndjson", "--report-dir", str(tmp_path)]
    start = time.monotonic()
    proc = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=900)
    wall = time.monotonic() - start
    reports = list(tmp_path.glob("ndjson-*.ndjson"))
    assert len(reports) == 1, f"schemathesis wrote no report (exit {proc.returncode}):\n{proc.stdout[-4000:]}{proc.stderr[-4000:]}"
    run = summarise(reports[0])
    print(f"schemathesis: {len(run['operations'])} operations, {run['cases']} cases, statuses {run['statuses']}, "
          f"{run['server_errors']} server errors, {len(run['failures'])} violations, {run['too_long']} prompts "
          f"longer than the context, {wall:.0f} s")
    assert run["operations"] == OPERATIONS
    assert not run["errors"], "\n".join(run["errors"])
    assert run["server_errors"] == 0 and not run["failures"], "\n".join(run["failures"]) + proc.stdout[-4000:]
    assert {200, 400, 401, 404, 405} <= set(run["statuses"])
    assert run["cases"] >= 3 * MAX_EXAMPLES  # the two generating operations, each in two phases
    # schemathesis fails the run for the context-length rejections too; nothing else may fail it
    assert proc.returncode == (1 if run["too_long"] else 0), proc.stdout[-4000:] + proc.stderr[-4000:]
