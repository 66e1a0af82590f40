"""Korean Wikipedia dumps: MediaWiki XML export (`*-pages-articles.xml.bz2`) → plain-text articles.

Reading streams the dump with `mwxml` (pages one at a time, bz2 decompressed on the fly), so memory
does not grow with the dump. Only articles are kept: the main namespace, no redirects; pages that
are disambiguation lists ({{동음이의}}, {{disambig}} …) are dropped after parsing.

Wikitext becomes text with `mwparserfromhell`: links keep their shown text ([[서울특별시|서울]] →
서울), {{lang|en|Seoul}} keeps its text, and everything that is not prose goes — other templates,
tables, <ref> notes, categories (분류:), files (파일:/File:/그림:), interlanguage links, comments.
Section headings stay as their own lines; the trailing sections that are only lists of links and
sources (각주, 같이 보기, 외부 링크, 참고 문헌 …) are dropped whole.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

from krmini.data.readers import Document, ReadProblems, open_binary
from krmini.errors import KrminiError

ARTICLE_NAMESPACE = 0
DISAMBIGUATION_TEMPLATES = {"동음이의", "동음이의어", "disambig", "disambiguation", "dab", "동명이인", "지명 동음이의"}
# Templates whose last positional argument is prose ({{lang|en|Seoul}} → Seoul).
TEXT_TEMPLATES = re.compile(r"^(lang|llang|lang-[a-z-]+|en|ja|zh|nihongo|한자|漢字)$")
FILE_PREFIXES = {"파일", "file", "그림", "image", "이미지", "media", "미디어"}
CATEGORY_PREFIXES = {"분류", "category"}
DROP_TAGS = {"ref", "references", "gallery", "math", "chem", "timeline", "imagemap", "score", "graph",
             "syntaxhighlight", "source", "templatedata", "noinclude", "mapframe", "maplink", "hiero"}
DROP_SECTIONS = {"각주", "주석", "같이 보기", "함께 보기", "외부 링크", "참고 문헌", "참고문헌", "참고 자료", "관련 항목",
                 "출처", "references", "see also", "external links", "notes"}
_INTERLANGUAGE = re.compile(r"^:?[a-z]{2,3}(-[a-z]+)*:")
_REDIRECT = re.compile(r"^\s*#(redirect|넘겨주기)", re.IGNORECASE)
_EMPTY_BRACKETS = re.compile(r"\(\s*[,;]?\s*\)|（\s*）")


def _template_name(template) -> str:
    return str(template.name).strip().replace("_", " ").lower()


def _link_prefix(title: str) -> str:
    head, sep, _ = title.lstrip(":").partition(":")
    return head.strip().lower() if sep else ""


def _nodes_text(nodes) -> str:
    import mwparserfromhell.nodes as n

    out: list[str] = []
    skip_level = 0  # inside a dropped section: skip until a heading of this level or higher
    for node in nodes:
        if isinstance(node, n.Heading):
            title = _nodes_text(node.title.nodes).strip()
            if skip_level and node.level > skip_level:
                continue
            skip_level = node.level if title.lower() in DROP_SECTIONS else 0
            if not skip_level:
                out.append(f"\n{title}\n")
        elif skip_level:
            continue
        elif isinstance(node, n.Text):
            out.append(node.value)
        elif isinstance(node, n.Wikilink):
            out.append(_link_text(node))
        elif isinstance(node, n.Template):
            out.append(_template_text(node))
        elif isinstance(node, n.Tag):
            out.append(_tag_text(node))
        elif isinstance(node, n.ExternalLink):
            out.append(_nodes_text(node.title.nodes) if node.title else "")
        elif isinstance(node, n.HTMLEntity):
            out.append(node.normalize())
        # Comments, arguments ({{{1}}}) and anything else carry no prose.
    return "".join(out)


def _link_text(link) -> str:
    title = str(link.title).strip()
    prefix = _link_prefix(title)
    if prefix in FILE_PREFIXES or prefix in CATEGORY_PREFIXES or _INTERLANGUAGE.match(title):
        return ""
    return _nodes_text(link.text.nodes) if link.text else title.lstrip(":")


def _template_text(template) -> str:
    if TEXT_TEMPLATES.match(_template_name(template)):
        positional = [p for p in template.params if not p.showkey]
        if positional:
            return _nodes_text(positional[-1].value.nodes)
    return ""


def _tag_text(tag) -> str:
    name = str(tag.tag).strip().lower()
    if tag.wiki_markup == "{|" or name in {"table"} | DROP_TAGS:
        return ""
    if name == "br":
        return "\n"
    if name in ("li", "dt", "dd") or tag.wiki_markup in ("*", "#", ";", ":"):
        return ""  # list bullets: the item's text follows as ordinary nodes
    return _nodes_text(tag.contents.nodes) if tag.contents is not None else ""


def is_disambiguation(wikicode) -> bool:
    return any(_template_name(t) in DISAMBIGUATION_TEMPLATES for t in wikicode.filter_templates(recursive=False))


def wikitext_to_text(wikitext: str) -> str | None:
    """Plain text of an article, or None for a disambiguation page."""
    import mwparserfromhell

    code = mwparserfromhell.parse(wikitext)
    if is_disambiguation(code):
        return None
    text = _EMPTY_BRACKETS.sub("", _nodes_text(code.nodes))
    return "\n".join(line.strip() for line in text.split("\n") if line.strip() not in ("", "*", "#"))


def read_wikipedia(path: str | Path, problems: ReadProblems) -> Iterator[Document]:
    """Articles of a MediaWiki XML dump (.xml or .xml.bz2), as wikitext `Document`s in dump order.

    Pages outside the main namespace and redirects come out with `skip` set, so they are counted.
    A dump cut short or malformed is reported with the number of pages read before the damage.
    """
    try:
        import mwparserfromhell  # noqa: F401 (the workers convert wikitext with it)
        import mwxml
    except ImportError:
        raise KrminiError("Wikipedia dumps need mwxml and mwparserfromhell: pip install 'krmini[wiki]'") from None
    path = Path(path)
    if not path.is_file():
        raise KrminiError(f"{path}: Wikipedia dump not found (get one with `krmini download kowiki`)")
    pages = 0
    try:
        with open_binary(path) as fh:
            for page in mwxml.Dump.from_file(fh):
                pages += 1
                revision = None
                for revision in page:  # noqa: B007 (pages-articles holds the latest revision only)
                    pass
                text = (revision.text if revision is not None else None) or ""
                if page.namespace != ARTICLE_NAMESPACE:
                    yield Document(str(path), pages, "", skip="not_article")
                elif page.redirect or _REDIRECT.match(text):
                    yield Document(str(path), pages, "", skip="redirect")
                else:
                    yield Document(f"{path}#{page.title}", pages, text, wikitext=True)
    except Exception as exc:  # noqa: BLE001 (mwxml and bz2 raise many types for a damaged dump)
        problems.report("malformed_dump", str(path),
                        f"dump unreadable after {pages} pages ({type(exc).__name__}: {str(exc)[:200]})", "rest skipped")
