"""The chat template: exact layout, the training mask, HF `apply_chat_template` parity, history fitting."""

from __future__ import annotations

import pytest

from krmini.chat.template import fit_history, prompt_ids, render, stop_ids
from krmini.errors import KrminiError
from krmini.tokenizer import KoTokenizer

CONVERSATION = [
    {"role": "system", "content": "너는 친절한 비서야."},
    {"role": "user", "content": "대한민국의 수도는?"},
    {"role": "assistant", "content": "서울입니다."},
    {"role": "user", "content": "고마워 ㅎㅎ 😊"},
]


@pytest.fixture(scope="module")
def tokenizer(tiny_run) -> KoTokenizer:
    return KoTokenizer.load(tiny_run / "tokenizer")


def test_layout_and_mask(tokenizer):
    t = tokenizer.token_id
    rendered = render(tokenizer, CONVERSATION[:3])
    sys_ids, user_ids, bot_ids = (tokenizer.encode(m["content"]) for m in CONVERSATION[:3])
    assert rendered.ids == [tokenizer.bos_id, t("<|system|>"), *sys_ids, t("<|end|>"), t("<|user|>"), *user_ids,
                            t("<|end|>"), t("<|assistant|>"), *bot_ids, t("<|end|>")]
    # learned: exactly the assistant's content and its closing <|end|>
    learned = [i for i, m in zip(rendered.ids, rendered.mask, strict=True) if m]
    assert learned == [*bot_ids, t("<|end|>")]
    assert prompt_ids(tokenizer, CONVERSATION)[-1] == t("<|assistant|>")
    assert t("<|end|>") in stop_ids(tokenizer) and tokenizer.eos_id in stop_ids(tokenizer)


def test_rejects_unknown_role(tokenizer):
    with pytest.raises(KrminiError, match=r"messages\[0\].role"):
        render(tokenizer, [{"role": "bot", "content": "안녕"}])


@pytest.mark.parametrize("add_generation_prompt", [True, False])
def test_transformers_apply_chat_template_gives_the_same_ids(tiny_run, tokenizer, add_generation_prompt):
    transformers = pytest.importorskip("transformers")
    hf = transformers.AutoTokenizer.from_pretrained(str(tiny_run / "tokenizer"))
    messages = CONVERSATION if add_generation_prompt else CONVERSATION[:3]
    ids = hf.apply_chat_template(messages, add_generation_prompt=add_generation_prompt, tokenize=True)
    ids = ids["input_ids"] if not isinstance(ids, list) else ids
    assert ids == render(tokenizer, messages, add_generation_prompt).ids


def test_fit_history_drops_oldest_exchanges_and_keeps_system(tokenizer):
    long_turns = []
    for i in range(6):
        long_turns += [{"role": "user", "content": f"{i}번째 질문입니다 " * 5},
                       {"role": "assistant", "content": f"{i}번째 대답입니다 " * 5}]
    messages = [CONVERSATION[0], *long_turns, {"role": "user", "content": "마지막 질문"}]
    budget = len(prompt_ids(tokenizer, [CONVERSATION[0], *long_turns[-4:], messages[-1]]))
    kept, dropped = fit_history(tokenizer, messages, budget)
    assert dropped == 8
    assert kept == [CONVERSATION[0], *long_turns[-4:], messages[-1]]
    assert len(prompt_ids(tokenizer, kept)) <= budget
    assert fit_history(tokenizer, messages, 10**6) == (messages, 0)
