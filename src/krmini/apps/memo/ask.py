"""Answers from the notes: retrieve, a prompt that fits the context, a streamed answer, numbered citations.

    search        the question's best chunks (search.py); if the best holds less than `min_coverage`
                  of the question's units, nothing is asked: the notes do not answer it, and we say so
                  instead of letting the model guess (on KorQuAD dev, 0.5 lets 97% of answerable
                  questions through and stops 95% of questions about notes that are not there)
    prompt        one user message: the sources as `[n] file:lines — heading` blocks, the question and
                  the rules (answer from the sources, cite [n], say 메모에 없습니다 otherwise), rendered
                  with the backend's chat template; sources are added best first
                  while the prompt stays within `prompt_budget(context, max_new_tokens)` (the REPL's
                  rule), the one that no longer fits is cut to what does, the rest are left out
    citations     after the answer, each source given with its file, lines and heading, marked where
                  the answer cites it ([1], [2])

`summarize` packs a file's (or a period's) chunks into prompts the same way; more than one prompt's
worth is summarised in parts, then the parts are summarised together.
"""

from __future__ import annotations

import re
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace

from krmini.apps.memo.search import Hit
from krmini.chat.template import prompt_budget
from krmini.errors import KrminiError
from krmini.infer.sampling import SamplingConfig

MIN_COVERAGE = 0.5
MIN_SOURCE_CHARS = 80  # a source cut shorter than this is left out instead
ANSWER_RULES = ("위 자료에 있는 내용으로만 짧게 답하고, 근거로 쓴 자료의 번호를 [1]처럼 붙여라. "
                "자료에 답이 없으면 '메모에 없습니다'라고 답하라.")
SUMMARY_RULES = "위 메모의 핵심 사실, 날짜, 숫자를 한국어로 간결하게 요약하라."
_CITED = re.compile(r"\[(\d+)\]")


@dataclass(frozen=True)
class Source:
    number: int
    hit: Hit
    text: str  # the chunk's text, or the part of it that fitted

    @property
    def cut(self) -> bool:
        return len(self.text) < len(self.hit.text)

    def block(self) -> str:
        label = f"[{self.number}] {self.hit.where}" + (f" — {self.hit.heading}" if self.hit.heading else "")
        return f"{label}\n{self.text}" + (" …" if self.cut else "")

    def citation(self, cited: bool) -> str:
        heading = f" — {self.hit.heading}" if self.hit.heading else ""
        notes = [n for n, on in (("인용 / cited", cited), ("일부만 / cut to fit", self.cut)) if on]
        return f"[{self.number}] {self.hit.where}{heading}" + (f"  ({', '.join(notes)})" if notes else "")


def fit_sources(count: Callable[[list[dict]], int], budget: int, render: Callable[[list[Source]], list[dict]],
                hits: list[Hit]) -> tuple[list[dict], list[Source]]:
    """The messages with as many sources as fit in `budget` tokens (best first, the last one cut to fit)."""
    sources: list[Source] = []
    if count(render(sources)) > budget:
        raise KrminiError(f"the question alone is more than the {budget} prompt tokens this model has room for; "
                          "ask a shorter one (or lower --max-new-tokens)")
    for hit in hits:
        whole = Source(len(sources) + 1, hit, hit.text)
        if count(render([*sources, whole])) <= budget:
            sources.append(whole)
            continue
        low, high = 0, len(hit.text)  # the longest prefix that fits: binary search on characters
        while low < high:
            mid = (low + high + 1) // 2
            if count(render([*sources, replace(whole, text=hit.text[:mid])])) <= budget:
                low = mid
            else:
                high = mid - 1
        if low >= MIN_SOURCE_CHARS:
            sources.append(replace(whole, text=hit.text[:low]))
        break
    return render(sources), sources


def answer_messages(question: str, prefix: list[dict] = ()) -> Callable[[list[Source]], list[dict]]:
    """`prefix` (a system prompt) then one user message: the sources, the question and the rules."""
    def render(sources: list[Source]) -> list[dict]:
        material = "자료:\n\n" + "\n\n".join(s.block() for s in sources) + "\n\n" if sources else ""
        return [*prefix, {"role": "user", "content": f"{material}질문: {question}\n\n{ANSWER_RULES}"}]
    return render


def choose(hits: list[Hit], min_coverage: float) -> list[Hit]:
    """The hits an answer may use: none unless the best passes `min_coverage`; then those passing half of it."""
    if not hits or hits[0].coverage < min_coverage:
        return []
    return [hits[0], *(h for h in hits[1:] if h.coverage >= min_coverage / 2)]


def refusal(hits: list[Hit], min_coverage: float) -> str:
    best = (f"best: {hits[0].where}, {hits[0].coverage:.0%} of the question" if hits else "no chunk shares a unit with it")
    return (f"메모에서 이 질문의 답을 찾지 못해 답하지 않습니다 / the notes do not answer this, so no answer is "
            f"guessed ({best}; --min-coverage {min_coverage:.0%})")


def cited_numbers(answer: str, sources: list[Source]) -> set[int]:
    return {int(n) for n in _CITED.findall(answer)} & {s.number for s in sources}


def stream_answer(backend, question: str, hits: list[Hit], sampling: SamplingConfig,
                  out=None) -> tuple[str, list[Source]]:
    """Stream the answer to `out` (stdout); then the sources, marked where cited. Returns both."""
    out = out if out is not None else sys.stdout
    budget = prompt_budget(backend.context, sampling.max_new_tokens)
    messages, sources = fit_sources(backend.count, budget, answer_messages(question), hits)
    pieces = []
    for piece in backend.stream(messages, sampling):
        pieces.append(piece)
        out.write(piece)
        out.flush()
    answer = "".join(pieces)
    print_sources(sources, cited_numbers(answer, sources), out)
    return answer, sources


def print_sources(sources: list[Source], cited: set[int], out=None) -> None:
    out = out if out is not None else sys.stdout
    out.write("\n\n출처 / sources:\n")
    for s in sources:
        out.write(s.citation(s.number in cited) + "\n")


def _groups(count, budget: int, render, items: list[Hit]) -> list[list[Source]]:
    """`items` packed in order into prompts that each fit `budget`: whole items while they fit; an item
    too long for a prompt of its own is split, its rest going on to the next."""
    groups, rest = [], list(items)
    while rest:
        _, sources = fit_sources(count, budget, render, rest)
        if not sources:
            raise KrminiError(f"not even {MIN_SOURCE_CHARS} characters of a note fit this model's context")
        if sources[-1].cut and len(sources) > 1:
            sources = sources[:-1]  # it starts the next prompt, whole
            rest = rest[len(sources):]
        elif sources[-1].cut:
            rest = [replace(rest[0], text=rest[0].text[len(sources[0].text):]), *rest[1:]]
        else:
            rest = rest[len(sources):]
        groups.append(sources)
    return groups


def summary_messages(sources: list[Source]) -> list[dict]:
    return [{"role": "user", "content": "메모:\n\n" + "\n\n".join(s.block() for s in sources) + f"\n\n{SUMMARY_RULES}"}]


def summarize(backend, hits: list[Hit], sampling: SamplingConfig, out=None,
              notice: Callable[[str], None] = print) -> str:
    """A summary of `hits` (chunks in reading order), streamed; parts first when they need several prompts."""
    out = out if out is not None else sys.stdout
    budget = prompt_budget(backend.context, sampling.max_new_tokens)
    groups = _groups(backend.count, budget, summary_messages, hits)
    everything = [replace(s, number=i) for i, s in enumerate((s for g in groups for s in g), 1)]
    while len(groups) > 1:
        notice(f"(메모가 문맥보다 길어 {len(groups)}부분으로 나눠 요약합니다 / summarising in {len(groups)} parts)")
        parts = []
        for i, group in enumerate(groups, 1):
            numbered = [replace(s, number=j) for j, s in enumerate(group, 1)]
            text = "".join(backend.stream(summary_messages(numbered), sampling)).strip()
            first, last = group[0].hit, group[-1].hit
            parts.append(Hit(0, first.path, first.root, f"부분 {i}", first.line_start, last.line_end, first.page,
                             None, text or "(빈 요약)", 0.0, 1.0))
        fewer = _groups(backend.count, budget, summary_messages, parts)
        if len(fewer) >= len(groups):
            raise KrminiError(f"the {len(parts)} part summaries do not fit together in this model's context; "
                              "lower --max-new-tokens")
        groups = fewer
    pieces = []
    for piece in backend.stream(summary_messages(groups[0]), sampling):
        pieces.append(piece)
        out.write(piece)
        out.flush()
    out.write("\n\n요약한 메모 / summarised:\n")
    for s in everything:
        out.write(s.citation(False) + "\n")
    return "".join(pieces)


def iter_hits(rows) -> Iterator[Hit]:
    for chunk_id, path, root, heading, start, end, page, note_id, text in rows:
        yield Hit(chunk_id, path, root, heading, start, end, page, note_id, text, 0.0, 1.0)


def memo_command(searcher, k: int, min_coverage: float):
    """`/memo QUESTION` for the chat REPL: the turn is grounded in the notes, kept in the history, and
    followed by its sources. It answers through the session's backend: the local model or a server."""
    def handle(session, question: str) -> None:
        if not question:
            print("(사용법 / usage: /memo 질문 — 메모를 근거로 답합니다 / answers from the notes)")
            return
        results = searcher.search(question, k)
        hits = choose(results.hits, min_coverage)
        print(f"({results.describe()}; {len(hits)} sources)")
        if not hits:
            print(refusal(results.hits, min_coverage))
            return
        backend = session.backend
        prefix = [{"role": "system", "content": session.system}] if session.system else []
        budget = prompt_budget(backend.context, session.sampling.max_new_tokens)
        messages, sources = fit_sources(backend.count, budget, answer_messages(question, prefix), hits)
        pieces = []
        sys.stdout.write("봇> ")
        for piece in session.reply(messages[-1]["content"]):
            pieces.append(piece)
            sys.stdout.write(piece)
            sys.stdout.flush()
        print_sources(sources, cited_numbers("".join(pieces), sources))
    return handle
