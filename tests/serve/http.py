"""One request to a live test server, without a client library's conveniences."""

from __future__ import annotations

import json
import urllib.error
import urllib.request


def call(server, method: str, path: str, body=None, key: bool | str = True) -> tuple[int, dict, object]:
    """(status, lower-cased headers, parsed JSON or text) of one request to the live server, with its
    API key (True), none (False) or another one (a string)."""
    headers = {"Content-Type": "application/json"}
    if key:
        headers["Authorization"] = f"Bearer {server.key if key is True else key}"
    data = body if isinstance(body, bytes) or body is None else json.dumps(body).encode()
    req = urllib.request.Request(server.url + path, data=data, headers=headers, method=method)
    try:
        with urllib.request.urlopen(req, timeout=120) as r:
            status, head, text = r.status, dict(r.headers), r.read().decode("utf-8")
    except urllib.error.HTTPError as err:
        status, head, text = err.code, dict(err.headers), err.read().decode("utf-8")
    head = {k.lower(): v for k, v in head.items()}
    try:
        return status, head, json.loads(text)
    except json.JSONDecodeError:
        return status, head, text
