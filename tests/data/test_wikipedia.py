"""Wikipedia dumps in the real export schema (0.10, 0.11), bz2-compressed, built here."""

from __future__ import annotations

import bz2
import random
from xml.sax.saxutils import escape

import pytest

from krmini.cli import main
from krmini.data.shards import read_manifest
from krmini.data.wikipedia import wikitext_to_text

from .test_prepare_pipeline import korean_doc

ARTICLE = """'''서울특별시'''({{lang|en|Seoul}})는 [[대한민국]]의 [[수도 (도시)|수도]]이다.<ref>{{웹 인용|url=http://x.kr|제목=통계}}</ref>
{{정보상자 도시|이름=서울|인구=9,400,000}}
[[파일:Seoul skyline.jpg|섬네일|서울의 스카이라인]]
== 역사 ==
조선의 [[한양]]이었다.<ref name="a"/> 인구는 약 940만 명이다.
{| class="wikitable"
! 구 !! 인구
|-
| 종로구 || 150000
|}
=== 현대 ===
* 1988년 [[하계 올림픽]] 개최
== 각주 ==
<references/>
== 외부 링크 ==
* [http://www.seoul.go.kr 서울특별시청]
[[분류:대한민국의 수도]]
[[en:Seoul]]
[[ja:ソウル特別市]]
"""

EXPECTED = "서울특별시(Seoul)는 대한민국의 수도이다.\n역사\n조선의 한양이었다. 인구는 약 940만 명이다.\n현대\n1988년 하계 올림픽 개최"


def test_wikitext_becomes_plain_text():
    assert wikitext_to_text(ARTICLE) == EXPECTED
    assert wikitext_to_text("'''머리'''는 다음을 뜻한다.\n* [[머리 (신체)]]\n{{동음이의}}") is None
    assert wikitext_to_text("'''Bank''' may mean:\n{{Disambig}}") is None


def page(title: str, ns: int, text: str, redirect: str | None = None, page_id: int = 1) -> str:
    red = f'    <redirect title="{escape(redirect)}" />\n' if redirect else ""
    return f"""  <page>
    <title>{escape(title)}</title>
    <ns>{ns}</ns>
    <id>{page_id}</id>
{red}    <revision>
      <id>{page_id * 10}</id>
      <timestamp>2024-11-01T00:00:00Z</timestamp>
      <contributor><username>예시</username><id>7</id></contributor>
      <model>wikitext</model>
      <format>text/x-wiki</format>
      <text bytes="{len(text.encode())}" xml:space="preserve">{escape(text)}</text>
      <sha1>0000000000000000000000000000000</sha1>
    </revision>
  </page>
"""


def dump_xml(version: str, pages: list[str]) -> bytes:
    head = f"""<mediawiki xmlns="http://www.mediawiki.org/xml/export-{version}/" version="{version}" xml:lang="ko">
  <siteinfo>
    <sitename>위키백과</sitename>
    <dbname>kowiki</dbname>
    <base>https://ko.wikipedia.org/wiki/</base>
    <generator>MediaWiki 1.43</generator>
    <case>first-letter</case>
    <namespaces>
      <namespace key="0" case="first-letter" />
      <namespace key="6" case="first-letter">파일</namespace>
      <namespace key="14" case="first-letter">분류</namespace>
    </namespaces>
  </siteinfo>
"""
    return (head + "".join(pages) + "</mediawiki>\n").encode("utf-8")


def articles(n: int) -> list[str]:
    rng = random.Random(0)
    return [page(f"문서 {i}", 0, f"{{{{lang|ko|한국어}}}} [[링크 {i}|보이는 글자]]. " + korean_doc(rng, 4), page_id=100 + i)
            for i in range(n)]


@pytest.mark.parametrize("version", ["0.10", "0.11"])
def test_prepare_reads_a_bz2_dump(tmp_path, tokenizer_dir, version):
    pages = [page("서울특별시", 0, ARTICLE), page("서울", 0, "#넘겨주기 [[서울특별시]]", redirect="서울특별시", page_id=2),
             page("머리", 0, "'''머리'''는\n{{동음이의}}", page_id=3), page("파일:Seoul.jpg", 6, "사진", page_id=4),
             *articles(60)]
    dump = tmp_path / "kowiki-20241101-pages-articles.xml.bz2"
    dump.write_bytes(bz2.compress(dump_xml(version, pages)))
    out = tmp_path / "out"
    assert main(["prepare", "--source", "wikipedia", str(dump), "--tokenizer", str(tokenizer_dir), "--out", str(out),
                 "--val-fraction", "0.2", "--workers", "1"]) == 0
    m = read_manifest(out)
    removed = m["sources"]["wikipedia"]["removed"]
    assert m["documents"]["read"] == 64 and m["documents"]["kept"] == 61
    assert removed["redirect"]["documents"] == removed["disambiguation"]["documents"] == 1
    assert removed["not_article"]["documents"] == 1
    assert m["splits"]["train"]["documents"] + m["splits"]["val"]["documents"] + m["splits"]["test"]["documents"] == 61


def test_damaged_dumps_are_reported_not_fatal(tmp_path, tokenizer_dir, capsys):
    xml = dump_xml("0.11", articles(400))
    packed = bz2.compress(xml, compresslevel=1)  # 100 kB blocks: the cut leaves whole blocks before it
    cut = tmp_path / "cut.xml.bz2"
    cut.write_bytes(packed[: len(packed) * 2 // 3])
    broken = tmp_path / "broken.xml"
    at = xml.index(b"<title>\xeb\xac\xb8\xec\x84\x9c 70<")  # page "문서 70"
    broken.write_bytes(xml[:at] + xml[at:].replace(b"</title>", b"</titel>", 1))  # mismatched tag
    for dump in (cut, broken):
        out = tmp_path / dump.name.split(".")[0]
        assert main(["prepare", "--source", "wikipedia", str(dump), "--tokenizer", str(tokenizer_dir), "--out", str(out),
                     "--val-fraction", "0.3", "--workers", "1"]) == 0
        problems = read_manifest(out)["read_problems"]
        assert problems["counts"] == {"malformed_dump": 1}
        assert problems["examples"][0].startswith(f"{dump}: dump unreadable after ")
    capsys.readouterr()
    assert main(["prepare", "--source", "wikipedia", str(cut), "--tokenizer", str(tokenizer_dir), "--out",
                 str(tmp_path / "strict"), "--strict"]) == 1
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith(f"krmini: error: {cut}: dump unreadable after") and "EOFError" in err
