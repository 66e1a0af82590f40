"""Task presets of `krmini chat --task NAME` and the REPL's `/task NAME`: a Korean system prompt and the
sampling settings that suit the task (summaries and translations keep close to the text, so a low
temperature). Sampling flags given on the command line win over a preset's."""

from __future__ import annotations

from dataclasses import dataclass, replace

from krmini.errors import KrminiError
from krmini.infer.sampling import SamplingConfig


@dataclass(frozen=True)
class Task:
    description: str
    system: str
    sampling: dict  # SamplingConfig fields


TASKS: dict[str, Task] = {
    "summarize": Task(
        "요약 / summarize",
        "너는 한국어 요약 도우미다. 사용자가 준 글의 핵심 내용, 날짜와 숫자를 빠짐없이 3~5문장의 한국어로 간결하게 "
        "요약하라. 글에 없는 내용은 덧붙이지 마라.",
        {"temperature": 0.3, "top_p": 0.9},
    ),
    "translate": Task(
        "번역 / translate",
        "너는 한국어·영어 번역가다. 한국어로 쓴 글은 자연스러운 영어로, 다른 언어로 쓴 글은 자연스러운 한국어로 "
        "번역하라. 번역문만 답하고 설명은 붙이지 마라.",
        {"temperature": 0.1, "top_p": 0.9},
    ),
    "review": Task(
        "검토 / review",
        "너는 꼼꼼한 한국어 검토자다. 사용자가 준 글이나 코드에서 틀린 점, 모호한 점, 고칠 점을 중요한 순서로 "
        "항목마다 한 줄씩 짚고, 고친 예를 보여라. 문제가 없으면 없다고 답하라.",
        {"temperature": 0.2, "top_p": 0.9},
    ),
}
FIELDS = ("temperature", "top_p")  # the settings a preset may set


def task(name: str) -> Task:
    if name not in TASKS:
        raise KrminiError(f"task {name!r}: expected one of {', '.join(TASKS)}")
    return TASKS[name]


def with_task(sampling: SamplingConfig, name: str, keep: frozenset[str] = frozenset()) -> SamplingConfig:
    """`sampling` with the preset's settings, except the fields in `keep` (given on the command line)."""
    return replace(sampling, **{k: v for k, v in task(name).sampling.items() if k not in keep})


def listing() -> str:
    return " · ".join(f"{name} ({t.description}, temperature {t.sampling['temperature']})" for name, t in TASKS.items())
