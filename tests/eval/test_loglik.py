"""The log-likelihood scorer: batching changes nothing, and a known 2-choice task is scored right."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from krmini.eval.kobest import Example, macro_f1, score_examples
from krmini.eval.loglik import Request, continuation_logprobs
from krmini.infer.load import load_model
from krmini.model import ModelConfig

VOCAB = 64


class PreferOneToken(nn.Module):
    """A stub model: whatever the input, the next token is `favourite` with logit 10, others 0."""

    def __init__(self, favourite: int, context: int = 32) -> None:
        super().__init__()
        self.config = ModelConfig(vocab_size=VOCAB, hidden_size=8, intermediate_size=8, num_hidden_layers=1,
                                  num_attention_heads=1, num_key_value_heads=1, max_position_embeddings=context)
        self.anchor = nn.Parameter(torch.zeros(1))
        self.favourite = favourite

    def forward(self, input_ids):
        logits = torch.zeros(*input_ids.shape, VOCAB)
        logits[..., self.favourite] = 10.0
        return logits, None


class CharTokenizer:
    """One token per character (code point mod VOCAB); id 1 is the BOS it puts first."""

    def encode_batch(self, texts, add_special_tokens=False):
        return [[1] * add_special_tokens + [ord(c) % VOCAB for c in t] for t in texts]


def test_known_two_choice_task_is_scored_right():
    yes = ord("예") % VOCAB
    model = PreferOneToken(favourite=yes)
    examples = [Example("질문", ("아니오", "예"), 1),  # model picks "예": right
                Example("질문", ("예", "아니오"), 0),  # right
                Example("질문", ("아니오", "예"), 0)]  # model still picks "예": wrong
    result = score_examples(model, CharTokenizer(), examples, [e.prompt for e in examples])
    assert result["acc"] == pytest.approx(2 / 3)
    # class 0: tp 1, fp 0, fn 1 → 2/3; class 1: tp 1, fp 1, fn 0 → 2/3
    assert result["f1"] == pytest.approx(2 / 3)
    assert [s["pick"] for s in result["samples"]] == [1, 0, 1]


def test_length_normalisation_can_flip_the_answer():
    model = PreferOneToken(favourite=ord("가") % VOCAB)
    # Every token but "가" costs about 10 nats. Choice 0 "나": " 나", 2 tokens, ~-20 nats over 1 character;
    # choice 1 "나나나": ~-40 nats over 3 characters. Raw picks 0, per character (-20 vs -13.3) picks 1.
    ex = [Example("질문", ("나", "나나나"), 1)]
    result = score_examples(model, CharTokenizer(), ex, [ex[0].prompt])
    assert result["acc"] == 0.0  # raw: -20 > -40 picks choice 0
    assert result["acc_norm"] == 1.0  # per character of the choice (lm-eval's acc_norm) picks choice 1
    assert result["samples"][0]["loglik"] == pytest.approx([-20, -40], abs=0.05)


def test_metric_helpers():
    assert macro_f1([0, 0, 1, 1], [0, 0, 1, 1]) == 1.0
    assert macro_f1([0, 1], [0, 0]) == pytest.approx((2 / 3 + 0) / 2)
    # like scikit-learn's macro average: a class neither labelled nor predicted does not count
    assert macro_f1([1, 1, 2], [1, 1, 1]) == pytest.approx((0.8 + 0) / 2)


def test_batched_scores_equal_one_by_one(tiny_run):
    loaded = load_model(tiny_run, torch.device("cpu"))
    model = loaded.model
    ids = loaded.tokenizer.encode("대한민국은 민주공화국이다. 대한민국의 주권은 국민에게 있고, 모든 권력은 국민으로부터 나온다.")
    requests = [Request([1, *ids[:k]], ids[k:k + n]) for k, n in ((3, 5), (10, 2), (1, 12), (20, 1))]
    batched = continuation_logprobs(model, requests, max_batch_tokens=64)
    for r, got in zip(requests, batched, strict=True):
        full = torch.tensor([[*r.context, *r.continuation]])
        logits, _ = model(full[:, :-1])
        lp = torch.log_softmax(logits.float(), -1)[0, -len(r.continuation):]
        want = lp.gather(-1, torch.tensor(r.continuation)[:, None]).sum().item()
        assert got == pytest.approx(want, abs=1e-4)
    assert all(math.isfinite(s) and s < 0 for s in batched)


def test_long_context_keeps_its_last_tokens(tiny_run):
    model = load_model(tiny_run, torch.device("cpu")).model
    context = model.config.max_position_embeddings
    long_ctx = [5 + i % 50 for i in range(context * 2)]
    cont = [7, 8]
    got = continuation_logprobs(model, [Request(long_ctx, cont)])[0]
    same = continuation_logprobs(model, [Request(long_ctx[-(context - 1):], cont)])[0]
    assert got == pytest.approx(same, abs=1e-5)
