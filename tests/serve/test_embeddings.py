"""POST /v1/embeddings: OpenAI's shape, mean-pooled final hidden states of unit length, batch equals single,
the API key, and one clear 400 for each bad request; `Engine.embed` against the model's own forward pass."""

from __future__ import annotations

import base64
import copy

import numpy as np
import pytest
import torch

from krmini.chat.template import stop_ids
from krmini.infer.build import build_engine
from krmini.serve import schema
from tests.serve.http import call

EMBED = "/v1/embeddings"
TEXTS = ["대한민국의 수도는 서울이다.", "오늘 점심은 김치찌개", "가", "헌법 제1조 대한민국은 민주공화국이다. " * 3]


def vectors(server, inputs, **extra) -> tuple[np.ndarray, dict]:
    status, _, body = call(server, "POST", EMBED, {"input": inputs, **extra})
    assert status == 200, body
    return np.array([d["embedding"] for d in body["data"]], dtype=np.float32), body


def test_the_answer_has_openais_shape_and_unit_vectors(chat_server, chat_local):
    rows, body = vectors(chat_server, TEXTS)
    assert body["object"] == "list" and body["model"] == "krmini-test"
    assert [(d["object"], d["index"]) for d in body["data"]] == [("embedding", i) for i in range(len(TEXTS))]
    assert rows.shape == (len(TEXTS), chat_local.model.config.hidden_size)
    assert np.allclose(np.linalg.norm(rows, axis=1), 1.0, atol=1e-5)
    tok = chat_local.tokenizer
    tokens = sum(1 + len(tok.encode(t)) for t in TEXTS)  # BOS + the text's tokens
    assert body["usage"] == {"prompt_tokens": tokens, "total_tokens": tokens}
    schema.EmbeddingList.model_validate(body, strict=True)
    assert not np.allclose(rows[0], rows[1], atol=1e-3)  # different texts, different vectors


def test_a_batch_gives_what_each_input_gives_alone(chat_server):
    batch, _ = vectors(chat_server, TEXTS)
    for i, text in enumerate(TEXTS):
        alone, _ = vectors(chat_server, text)
        assert np.allclose(alone[0], batch[i], atol=1e-5), i


def test_token_ids_base64_and_the_official_client_agree(chat_server, chat_local):
    openai = pytest.importorskip("openai", reason="the openai client is in the dev extra: pip install -e '.[dev]'")
    text, tok = TEXTS[0], chat_local.tokenizer
    floats, _ = vectors(chat_server, text)
    ids = [tok.bos_id, *tok.encode(text)]
    by_ids, _ = vectors(chat_server, ids)
    many, _ = vectors(chat_server, [ids, ids[:3]])
    assert np.allclose(by_ids, floats, atol=1e-6) and np.allclose(many[0], floats[0], atol=1e-5)
    _, body = call(chat_server, "POST", EMBED, {"input": text, "encoding_format": "base64"})[1:]
    decoded = np.frombuffer(base64.b64decode(body["data"][0]["embedding"]), dtype="<f4")
    assert np.array_equal(decoded, floats[0])
    client = openai.OpenAI(base_url=f"{chat_server.url}/v1", api_key=chat_server.key, max_retries=0, timeout=120)
    answer = client.embeddings.create(input=[text, TEXTS[1]], model="krmini-test")  # asks for base64
    assert np.allclose(answer.data[0].embedding, floats[0], atol=1e-6) and answer.usage.total_tokens > len(ids)


def test_an_input_longer_than_the_context_is_cut_to_it(chat_server, chat_local):
    context = chat_local.model.config.max_position_embeddings
    long = "대한민국 헌법 " * context
    rows, body = vectors(chat_server, long)
    ids = [chat_local.tokenizer.bos_id, *chat_local.tokenizer.encode(long)][:context]
    assert body["usage"]["prompt_tokens"] == context
    assert np.allclose(rows, vectors(chat_server, ids)[0], atol=1e-6)


def test_the_key_is_required(chat_server):
    status, _, body = call(chat_server, "POST", EMBED, {"input": "가"}, key=False)
    assert status == 401 and body["error"]["code"] == "invalid_api_key"
    assert call(chat_server, "POST", EMBED, {"input": "가"}, key="wrong")[0] == 401


@pytest.mark.parametrize(("body", "status", "param"), [
    ({"input": ""}, 400, "input"), ({"input": []}, 400, "input"), ({"input": ["가", ""]}, 400, "input.1"),
    ({"input": [[]]}, 400, "input.0"), ({"input": ["가"] * (schema.MAX_INPUTS + 1)}, 400, "input"),
    ({"input": [10**6]}, 400, "input"), ({"input": [-1]}, 400, "input.0"), ({"input": [True]}, 400, "input"),
    ({"input": 5}, 400, "input"), ({}, 400, "input"), ({"input": "가", "encoding_format": "hex"}, 400, "encoding_format"),
    ({"input": "가", "model": "gpt-4"}, 404, "model"),
])
def test_bad_requests_are_one_clear_error(chat_server, body, status, param):
    got, _, answer = call(chat_server, "POST", EMBED, body)
    assert (got, answer["error"]["param"]) == (status, param), answer
    assert "Traceback" not in answer["error"]["message"]


def test_the_document_describes_the_operation(chat_server, chat_local):
    status, _, spec = call(chat_server, "GET", "/openapi.json")
    assert status == 200
    op = spec["paths"][EMBED]["post"]
    assert sorted(op["responses"], key=int) == ["200", "400", "401", "404", "500"]
    request = spec["components"]["schemas"]["EmbeddingRequest"]["properties"]
    assert request["model"]["anyOf"][0] == {"type": "string", "enum": ["krmini-test"]}
    text, texts, ids, many = request["input"]["anyOf"]
    vocab = chat_local.model.config.vocab_size
    assert text == {"type": "string", "minLength": 1} and texts["maxItems"] == schema.MAX_INPUTS
    assert ids["items"]["maximum"] == vocab - 1 and many["items"]["items"]["maximum"] == vocab - 1
    assert request["encoding_format"]["enum"] == ["float", "base64"]


def test_engine_embed_is_the_mean_of_the_final_normed_hidden_states(chat_local):
    """Against the model's own forward pass (a hook on the final norm), for the plain and the fused model."""
    model, tok = chat_local.model, chat_local.tokenizer
    batch = [[tok.bos_id, *tok.encode(t)] for t in TEXTS]
    captured = []
    hook = model.model.norm.register_forward_hook(lambda _m, _i, out: captured.append(out))
    try:
        with torch.inference_mode():
            for ids in batch:
                model(torch.tensor([ids]))
    finally:
        hook.remove()
    expected = torch.nn.functional.normalize(torch.stack([h[0].float().mean(0) for h in captured]), dim=-1)
    engine = build_engine(copy.deepcopy(chat_local), stop_ids=stop_ids(tok))  # fused layers, as served
    assert torch.allclose(engine.embed(batch, batch_size=3), expected, atol=1e-5)
    assert torch.allclose(engine.embed(batch[2:3]), expected[2:3], atol=1e-5)
