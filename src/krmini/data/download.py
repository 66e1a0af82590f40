"""`krmini download kowiki`: fetch a Korean Wikipedia dump from Wikimedia, resumable and verified.

The file is `{base}/kowiki/{date}/kowiki-{date}-pages-articles.xml.bz2`; Wikimedia publishes its
SHA-1 in `kowiki-{date}-sha1sums.txt` next to it. Bytes go to `NAME.part`; a broken connection is
retried from where it stopped (HTTP Range), as is a later run. Only a file whose SHA-1 matches the
published one is renamed to NAME — a mismatch is reported and the download deleted, never kept.
With `--date latest` the checksum file says which dated dump "latest" is, and that dated file is
fetched, so a resumed download can never mix two dumps.
"""

from __future__ import annotations

import hashlib
import http.client
import re
import urllib.error
import urllib.request
from pathlib import Path

from tqdm import tqdm

from krmini.errors import KrminiError
from krmini.runs import check_output

WIKIMEDIA = "https://dumps.wikimedia.org"
ATTEMPTS = 5
_BLOCK = 1 << 20


def _get(url: str, start: int = 0, timeout: float = 60.0):
    request = urllib.request.Request(url, headers={"User-Agent": "krmini (kr-mini-llm)"})
    if start:
        request.add_header("Range", f"bytes={start}-")
    try:
        return urllib.request.urlopen(request, timeout=timeout)  # noqa: S310 (the URL is http(s) by construction)
    except urllib.error.HTTPError as exc:
        raise KrminiError(f"{url}: HTTP {exc.code} {exc.reason}") from None
    except (urllib.error.URLError, OSError) as exc:
        raise KrminiError(f"{url}: cannot connect ({getattr(exc, 'reason', exc)})") from None


def published_sha1(base_url: str, wiki: str, date: str) -> tuple[str, str]:
    """(file name, SHA-1) of the pages-articles dump listed in the dump's sha1sums file."""
    url = f"{base_url}/{wiki}/{date}/{wiki}-{date}-sha1sums.txt"
    with _get(url) as response:
        listing = response.read().decode("utf-8", "replace")
    pattern = re.compile(rf"^([0-9a-f]{{40}})\s+\*?({re.escape(wiki)}-(\d{{8}}|latest)-pages-articles\.xml\.bz2)$")
    for line in listing.splitlines():
        m = pattern.match(line.strip())
        if m:
            return m.group(2), m.group(1)
    raise KrminiError(f"{url}: lists no {wiki}-{date}-pages-articles.xml.bz2")


def _fetch(url: str, part: Path, progress: bool) -> None:
    """Append the rest of `url` to `part`, resuming after each broken connection."""
    for _ in range(ATTEMPTS):
        have = part.stat().st_size if part.exists() else 0
        try:
            with _get(url, have) as response:
                if have and response.status != 206:
                    have = 0  # the server ignored Range: start over
                length = response.headers.get("Content-Length")
                total = have + int(length) if length else None
                with open(part, "ab" if have else "wb") as fh, tqdm(
                    total=total, initial=have, unit="B", unit_scale=True, desc=part.name.removesuffix(".part"),
                    disable=not progress, dynamic_ncols=True,
                ) as bar:
                    while block := response.read(_BLOCK):
                        fh.write(block)
                        bar.update(len(block))
                if total is None or part.stat().st_size >= total:
                    return
        except (http.client.IncompleteRead, ConnectionError, TimeoutError) as exc:
            print(f"download: connection broken after {part.stat().st_size:,} bytes ({type(exc).__name__}); resuming")
    raise KrminiError(f"{url}: still incomplete after {ATTEMPTS} attempts ({part.stat().st_size:,} bytes in {part}); "
                      "run the command again to resume")


def _sha1(path: Path) -> str:
    digest = hashlib.sha1()  # noqa: S324 (Wikimedia publishes SHA-1; it is a checksum, not security)
    with open(path, "rb") as fh:
        while block := fh.read(_BLOCK):
            digest.update(block)
    return digest.hexdigest()


def download_dump(wiki: str = "kowiki", date: str = "latest", out_dir: str | Path = ".", base_url: str = WIKIMEDIA,
                  progress: bool = True) -> Path:
    base_url = base_url.rstrip("/")
    check_output(out_dir, "dir")  # before anything is fetched
    name, expected = published_sha1(base_url, wiki, date)
    dated = re.search(r"-(\d{8})-", name)
    if dated:
        date = dated.group(1)  # "latest" resolved to the dump it currently points at
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    final = out / name
    if final.exists() and _sha1(final) == expected:
        print(f"{final}: already downloaded and verified")
        return final
    part = out / (name + ".part")
    _fetch(f"{base_url}/{wiki}/{date}/{name}", part, progress)
    actual = _sha1(part)
    if actual != expected:
        part.unlink()
        raise KrminiError(f"{name}: SHA-1 {actual} does not match the published {expected}; "
                          "the download was deleted, run the command again")
    part.replace(final)
    return final


def register(subparsers) -> None:
    p = subparsers.add_parser("download", help="말뭉치 내려받기 / download a corpus (Korean Wikipedia dump)",
                              description=__doc__)
    p.add_argument("corpus", choices=["kowiki"], help="kowiki: Korean Wikipedia pages-articles dump")
    p.add_argument("--date", default="latest", help="dump date YYYYMMDD or latest (default)")
    p.add_argument("--out", default="data/raw", help="directory to save into (default: data/raw)")
    p.add_argument("--base-url", default=WIKIMEDIA, help=f"dump server (default: {WIKIMEDIA}); for mirrors")
    p.set_defaults(func=run)


def run(args) -> int:
    if args.date != "latest" and not re.fullmatch(r"\d{8}", args.date):
        raise KrminiError(f"--date {args.date}: expected YYYYMMDD or latest")
    path = download_dump(args.corpus, args.date, args.out, args.base_url)
    print(f"{path}: verified (SHA-1). Next: krmini prepare --source wikipedia {path} --tokenizer DIR --out DIR")
    return 0
