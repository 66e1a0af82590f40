"""`krmini download kowiki` against a local HTTP server on 127.0.0.1: resume after a broken
transfer (HTTP Range), and a checksum mismatch that is reported and not kept."""

from __future__ import annotations

import hashlib
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from krmini.cli import main

DUMP = bytes(range(256)) * 4000  # ~1 MB stands in for the .xml.bz2
NAME = "kowiki-20241101-pages-articles.xml.bz2"


class DumpServer(BaseHTTPRequestHandler):
    files: dict[str, bytes] = {}
    cut_first: bool = False  # break the first transfer of the dump half way
    ranges: list[str] = []

    def log_message(self, *args) -> None:
        pass

    def do_GET(self) -> None:
        body = self.files.get(self.path)
        if body is None:
            self.send_error(404)
            return
        start = 0
        if rng := self.headers.get("Range"):
            type(self).ranges.append(rng)
            start = int(rng.removeprefix("bytes=").rstrip("-"))
        self.send_response(206 if start else 200)
        self.send_header("Content-Length", str(len(body) - start))
        self.end_headers()
        if self.path.endswith(".bz2") and type(self).cut_first:
            type(self).cut_first = False
            self.wfile.write(body[start : start + len(body) // 2])
            return  # connection closes short of Content-Length
        self.wfile.write(body[start:])


@pytest.fixture
def server():
    sha1 = hashlib.sha1(DUMP).hexdigest()
    listing = f"{sha1}  {NAME}\n{'0' * 40}  kowiki-20241101-stub-articles.xml.gz\n".encode()
    DumpServer.files = {f"/kowiki/20241101/{NAME}": DUMP, "/kowiki/20241101/kowiki-20241101-sha1sums.txt": listing,
                        "/kowiki/latest/kowiki-latest-sha1sums.txt": listing}
    DumpServer.ranges = []
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), DumpServer)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()


def test_broken_transfer_resumes_and_is_verified(tmp_path, server):
    DumpServer.cut_first = True
    assert main(["download", "kowiki", "--date", "latest", "--out", str(tmp_path), "--base-url", server]) == 0
    assert (tmp_path / NAME).read_bytes() == DUMP
    assert DumpServer.ranges == [f"bytes={len(DUMP) // 2}-"]
    assert not (tmp_path / (NAME + ".part")).exists()


def test_partial_file_from_an_earlier_run_is_resumed(tmp_path, server):
    (tmp_path / (NAME + ".part")).write_bytes(DUMP[:12345])
    assert main(["download", "kowiki", "--date", "20241101", "--out", str(tmp_path), "--base-url", server]) == 0
    assert (tmp_path / NAME).read_bytes() == DUMP and DumpServer.ranges == ["bytes=12345-"]


def test_checksum_mismatch_is_reported_and_not_kept(tmp_path, server, capsys):
    (tmp_path / (NAME + ".part")).write_bytes(b"x" * 1000)  # a corrupt start the resume builds on
    assert main(["download", "kowiki", "--out", str(tmp_path), "--base-url", server]) == 1
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith(f"krmini: error: {NAME}: SHA-1 ") and "does not match the published" in err
    assert list(tmp_path.iterdir()) == []


def test_missing_dump_is_one_line(tmp_path, server, capsys):
    assert main(["download", "kowiki", "--date", "20990101", "--out", str(tmp_path), "--base-url", server]) == 1
    assert capsys.readouterr().err.strip().endswith("kowiki-20990101-sha1sums.txt: HTTP 404 Not Found")
