"""Chat data: record rules and the skip report, masked packing, and that only assistant tokens learn."""

from __future__ import annotations

import json

import pytest
import torch

from krmini import runs
from krmini.chat.data import ChatReport, ChatWindows, load_chat_split, prepare_chat, read_conversations
from krmini.model import LlamaModel
from krmini.tokenizer import KoTokenizer
from krmini.train import checkpoint as ckpt
from tests.conftest import shared_file


def _write(path, lines) -> str:
    path.write_bytes(b"\n".join(x if isinstance(x, bytes) else json.dumps(x, ensure_ascii=False).encode() for x in lines))
    return str(path)


def _msg(role, content):
    return {"role": role, "content": content}


def test_record_rules_and_report(tmp_path):
    ok = {"messages": [_msg("user", "안녕"), _msg("assistant", "반가워요")]}
    path = _write(tmp_path / "c.jsonl", [
        ok,
        b'{"messages": [',                                                           # bad JSON
        b'\xff\xfe not utf-8',                                                        # bad UTF-8
        {"text": "no messages"},
        {"messages": [_msg("narrator", "누구?"), _msg("assistant", "…")]},
        {"messages": [_msg("user", "  "), _msg("assistant", "빈 질문")]},
        {"messages": [_msg("user", "질문만")]},
        {"messages": [_msg("assistant", "먼저 말함"), _msg("user", "응")]},
        # HG-TODS style: the agent's reply under "system", a user message in two parts, a repeated
        # assistant (cut there) and a trailing user turn
        {"messages": [_msg("user", "화면이 어두워"), _msg("user", "밝게 하려면?"), _msg("system", "설정을 여세요."),
                      _msg("user", "고마워"), _msg("assistant", "천만에요."), _msg("assistant", "또 질문?"),
                      _msg("user", "응")]},
        {"messages": [_msg("system", "비서"), _msg("user", "hi"), _msg("assistant", "안녕하세요"), _msg("user", "끝")]},
    ])
    report = ChatReport()
    convs = list(read_conversations([path], report))
    assert report.read == 10
    assert report.skipped == {"not valid JSON": 1, "not valid UTF-8": 1, "no messages list": 1,
                              "unknown role 'narrator'": 1, "empty content": 1, "no assistant reply": 1,
                              "starts with an assistant message": 1}
    assert report.changed == {"later system → assistant": 1, "joined repeated user": 1, "cut at repeated assistant": 1}
    assert report.examples[0].endswith(":2: not valid JSON")
    assert convs[0] == ok["messages"]
    assert convs[1] == [_msg("user", "화면이 어두워\n밝게 하려면?"), _msg("assistant", "설정을 여세요."),
                        _msg("user", "고마워"), _msg("assistant", "천만에요.")]
    assert convs[2] == [_msg("system", "비서"), _msg("user", "hi"), _msg("assistant", "안녕하세요")]


def test_hg_tods_dialogues_are_read_with_the_documented_mapping():
    path = shared_file("chat/hg_tods_manual_dialogues.jsonl")
    report = ChatReport()
    convs = list(read_conversations([path], report))
    # two dialogues are only user messages (no reply at all): the only ones skipped
    assert report.read == 1000 and report.skipped == {"no assistant reply": 2}
    assert report.changed["joined repeated user"] + report.changed["cut at repeated assistant"] >= 24
    assert all(c[0]["role"] == "user" and c[-1]["role"] == "assistant" for c in convs)
    assert sum(len(c) for c in convs) / len(convs) > 6  # multi-turn survives


@pytest.fixture(scope="module")
def packed(tiny_run, tmp_path_factory):
    from tests.conftest import write_chat_jsonl

    out = tmp_path_factory.mktemp("chatdata")
    tokenizer = KoTokenizer.load(tiny_run / "tokenizer")
    manifest = prepare_chat([write_chat_jsonl(out / "c.jsonl")], tokenizer, str(tiny_run / "tokenizer"), out / "data",
                            val_fraction=0.2, progress=False)
    ids, mask = load_chat_split(out / "data", "train")
    return tokenizer, manifest, ChatWindows(ids, mask, 64, 7, tokenizer.bos_id, tokenizer.pad_id)


def test_packing_keeps_whole_conversations_and_masks_all_but_the_assistant(packed):
    tokenizer, manifest, windows = packed
    assert manifest["report"]["kept"] == manifest["splits"]["train"]["documents"] + manifest["splits"]["val"]["documents"]
    assert manifest["report"]["skipped"].get("duplicate conversation", 0) > 0
    assert windows.truncated == 0 and windows.num_windows < manifest["splits"]["train"]["documents"]
    x, y = windows.batch_in_order(0, windows.num_windows, torch.device("cpu"))
    assert x.shape == (windows.num_windows, 64)
    end, assistant = tokenizer.token_id("<|end|>"), tokenizer.token_id("<|assistant|>")
    for row_x, row_y in zip(x.tolist(), y.tolist(), strict=True):
        learned = [t for t in row_y if t != -100]
        assert learned and learned[-1] == end
        # a target is learned exactly when it follows <|assistant|> up to and including its <|end|>
        inside = False
        for prev, target in zip(row_x, row_y, strict=True):
            inside = inside or prev == assistant
            assert (target != -100) == inside
            if prev != assistant and target == end:
                inside = False
            if target == end and inside:
                inside = False
    assert int((y != -100).sum()) == manifest["targets"]["train"]["tokens"]
    # same sample index → same batch (exact resume), and shuffled order differs from stream order
    a, b = windows.batch(5, 4, torch.device("cpu")), windows.batch(5, 4, torch.device("cpu"))
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])


def test_user_and_system_tokens_get_no_gradient(tiny_run, packed):
    tokenizer, _, windows = packed
    path = runs.resolve_checkpoint(tiny_run)
    model = LlamaModel(ckpt.checkpoint_model_config(path, runs.read_state(path)))
    ckpt.load_model_weights(model, path)
    x, y = windows.batch_in_order(0, 2, torch.device("cpu"))
    logits = model.lm_head(model.model.norm(_hidden(model, x)))
    logits.retain_grad()
    loss = torch.nn.functional.cross_entropy(logits.view(-1, logits.size(-1)), y.reshape(-1), ignore_index=-100)
    _, model_loss = model(x, y)
    assert loss.item() == pytest.approx(model_loss.item(), rel=1e-5)
    loss.backward()
    per_position = logits.grad.abs().sum(-1)
    assert torch.all(per_position[y == -100] == 0)
    assert torch.all(per_position[y != -100] > 0)
    # the same rows with user/system targets unmasked give a different loss: the mask is what excludes them
    full = torch.where(y == -100, x.roll(-1, dims=1), y)
    assert model(x, full)[1].item() != pytest.approx(model_loss.item(), rel=1e-3)


def _hidden(model, x):
    cos, sin = model.rope_cos[: x.size(1)].unsqueeze(0), model.rope_sin[: x.size(1)].unsqueeze(0)
    h = model.model.embed_tokens(x)
    for i, layer in enumerate(model.model.layers):
        h = layer(h, cos, sin, None, i, None)
    return h
