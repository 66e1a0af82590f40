"""The model's training-recipe switches: zero-initialised projections, soft-capped logits, ReLU² MLP."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from krmini.config import from_dict
from krmini.errors import KrminiError
from krmini.export.gguf import gguf_architecture
from krmini.export.hf_config import export_family
from krmini.model import KVCache, LlamaModel, ModelConfig
from krmini.model.info import count_parameters
from krmini.model.llama import MLP, ReluSquaredMLP
from krmini.train.flops import matmul_parameters


def small_config(**kw) -> ModelConfig:
    base = dict(vocab_size=300, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                num_key_value_heads=2, max_position_embeddings=64)
    return ModelConfig(**{**base, **kw})


def test_switches_are_off_by_default():
    c = ModelConfig()
    assert (c.zero_init_proj, c.logit_softcap, c.mlp_act, c.qk_norm) == (False, 0.0, "swiglu", False)


def test_zero_init_makes_every_block_the_identity_at_start():
    torch.manual_seed(0)
    model = LlamaModel(small_config(zero_init_proj=True, qk_norm=True))
    x = torch.randn(2, 9, 64)
    cos, sin = model.rope_cos[None, :9], model.rope_sin[None, :9]
    for i, layer in enumerate(model.model.layers):
        assert not layer.self_attn.o_proj.weight.any() and not layer.mlp.down_proj.weight.any()
        assert layer.self_attn.q_proj.weight.std() > 0.01  # the rest is initialised as usual
        assert torch.equal(layer(x, cos, sin, None, i, None), x)
    # the zero matrices receive gradient at once (their inputs are not zero), so they do not stay zero
    ids = torch.randint(0, 300, (2, 9))
    model(ids, ids)[1].backward()
    assert model.model.layers[0].self_attn.o_proj.weight.grad.abs().sum() > 0
    assert model.model.layers[1].mlp.down_proj.weight.grad.abs().sum() > 0
    default = LlamaModel(small_config())
    assert default.model.layers[0].self_attn.o_proj.weight.std() > 0


def test_softcap_bounds_logits_and_equals_cap_tanh():
    torch.manual_seed(0)
    capped = LlamaModel(small_config(logit_softcap=2.0)).eval()
    plain = LlamaModel(small_config()).eval()
    plain.load_state_dict(capped.state_dict())
    with torch.no_grad():
        for layer in (capped, plain):
            layer.lm_head.weight.mul_(50)  # logits far beyond the cap
        ids = torch.randint(0, 300, (2, 12))
        z, _ = plain(ids)
        logits, loss = capped(ids, ids)
    assert z.abs().max() > 10
    assert logits.abs().max() <= 2.0
    torch.testing.assert_close(logits, 2.0 * torch.tanh(z / 2.0))
    torch.testing.assert_close(loss, F.cross_entropy(logits.view(-1, 300), ids.view(-1)))


def test_softcap_with_the_kv_cache_decodes_the_no_cache_tokens():
    torch.manual_seed(0)
    model = LlamaModel(small_config(logit_softcap=3.0)).eval()
    with torch.no_grad():
        model.lm_head.weight.mul_(20)  # the cap really bends these logits
        prompt = torch.randint(0, 300, (1, 5))
        seq = prompt.clone()
        for _ in range(10):  # without a cache: the whole sequence every time
            seq = torch.cat([seq, model(seq)[0][:, -1:].argmax(-1)], dim=1)
        cache = KVCache.empty(model.config, 1, 64, torch.device("cpu"), torch.float32)
        logits = model(prompt, cache=cache, last_only=True)[0]
        cached = [int(logits[0, -1].argmax())]
        for _ in range(9):
            logits = model(torch.tensor([[cached[-1]]]), cache=cache)[0]
            assert logits.abs().max() <= 3.0
            cached.append(int(logits[0, -1].argmax()))
    assert cached == seq[0, 5:].tolist()


def test_relu2_mlp_matches_a_hand_computation():
    torch.manual_seed(0)
    model = LlamaModel(small_config(mlp_act="relu2"))
    mlp = model.model.layers[0].mlp
    assert isinstance(mlp, ReluSquaredMLP) and not hasattr(mlp, "gate_proj")
    with torch.no_grad():
        mlp.up_proj.weight.zero_()
        mlp.up_proj.weight[0, 0], mlp.up_proj.weight[1, 0] = 2.0, -1.0  # hidden 0 = 2·x0, hidden 1 = -x0
        mlp.down_proj.weight.zero_()
        mlp.down_proj.weight[0, 0], mlp.down_proj.weight[1, 1] = 1.0, 1.0
        x = torch.zeros(1, 64)
        x[0, 0] = 3.0
        out = mlp(x)
        # relu(6)² = 36 on output 0; relu(-3)² = 0 on output 1
        assert out[0, 0].item() == 36.0 and out[0, 1].item() == 0.0 and not out[0, 2:].any()
        x[0, 0] = -0.5  # now hidden 1 = 0.5 passes: 0.25
        assert mlp(x)[0, 1].item() == 0.25 and mlp(x)[0, 0].item() == 0.0
    assert isinstance(LlamaModel(small_config()).model.layers[0].mlp, MLP)


def test_relu2_counts_two_matrices_per_mlp():
    c, s = small_config(mlp_act="relu2"), small_config()
    built = LlamaModel(c)
    assert count_parameters(c)["total"] == built.num_parameters()
    assert count_parameters(s)["total"] - count_parameters(c)["total"] == 2 * 64 * 128
    assert matmul_parameters(s) - matmul_parameters(c) == 2 * 64 * 128


@pytest.mark.parametrize(("field", "value", "message"), [
    ("logit_softcap", -1.0, "model.logit_softcap: expected 0 .off. or a positive number, got -1.0"),
    ("logit_softcap", float("nan"), "model.logit_softcap"),
    ("mlp_act", "gelu", "model.mlp_act: expected one of swiglu, relu2, got 'gelu'"),
])
def test_bad_switch_values_name_the_field(field, value, message):
    with pytest.raises(KrminiError, match=message):
        small_config(**{field: value}).validate()


def test_switch_types_are_checked_on_load():
    with pytest.raises(KrminiError, match="zero_init_proj"):
        from_dict(ModelConfig, {"zero_init_proj": "maybe"}, "run.yaml:model")


@pytest.mark.parametrize(("kw", "field"), [({"logit_softcap": 30.0}, "model.logit_softcap"),
                                            ({"mlp_act": "relu2"}, "model.mlp_act")])
def test_export_refuses_what_transformers_and_llama_cpp_cannot_compute(kw, field):
    with pytest.raises(KrminiError, match=f"^{field}: .*cannot export$"):
        export_family(small_config(**kw))
    with pytest.raises(KrminiError, match=f"^{field}: "):
        gguf_architecture(LlamaModel(small_config(**kw)))
    # zero_init_proj changes only the starting weights; q/k norms export as Qwen3
    assert export_family(small_config(zero_init_proj=True)) == "LlamaForCausalLM"
    assert export_family(small_config(zero_init_proj=True, qk_norm=True)) == "Qwen3ForCausalLM"


def test_our_qk_norm_model_exports_as_qwen3_with_equal_logits():
    pytest.importorskip("transformers")
    from krmini.export.hf import to_hf_model

    torch.manual_seed(0)
    model = LlamaModel(small_config(qk_norm=True, zero_init_proj=True)).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.02)  # as after training: norms and projections away from their init
        hf = to_hf_model(model)
        ids = torch.randint(0, 300, (2, 12))
        assert type(hf).__name__ == "Qwen3ForCausalLM"
        torch.testing.assert_close(hf(ids).logits, model(ids)[0], atol=1e-5, rtol=1e-5)
