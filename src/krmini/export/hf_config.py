"""Hugging Face config.json ↔ our `ModelConfig`, for the open-model families whose decoder is ours.

    architectures        what differs from our Llama layout          our switch
    LlamaForCausalLM     nothing (Llama 3.x: rescaled RoPE frequencies)  rope_scaling
    MistralForCausalLM   nothing, once the sliding window is off
    Qwen2ForCausalLM     biases on q, k and v (often tied embeddings)  qkv_bias
    Qwen3ForCausalLM     RMSNorm over each q and k head; own head_dim  qk_norm, head_dim

SmolLM2, TinyLlama and most Korean community models are `LlamaForCausalLM`. Anything else that
changes the arithmetic (a sliding window, experts, another RoPE scaling, biases elsewhere, another
activation) is refused with one line naming the field and its value: importing it anyway would give
a model that runs and quietly computes something else.
"""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

from krmini.config import from_dict
from krmini.errors import KrminiError
from krmini.model.config import ModelConfig, RopeScaling

FAMILIES = {"LlamaForCausalLM": "llama", "MistralForCausalLM": "mistral", "Qwen2ForCausalLM": "qwen2",
            "Qwen3ForCausalLM": "qwen3"}
SHARED_FIELDS = ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
                 "num_key_value_heads", "max_position_embeddings", "rope_theta", "rms_norm_eps",
                 "tie_word_embeddings", "initializer_range")
EXPERT_FIELDS = ("num_experts", "num_local_experts", "n_routed_experts", "moe_intermediate_size")
ROPE_FIELDS = ("factor", "low_freq_factor", "high_freq_factor", "original_max_position_embeddings")


def _fail(where: str, field: str, value: Any, expected: str) -> KrminiError:
    return KrminiError(f"{where}: {field}: {value!r} is not supported ({expected})")


def _family(raw: dict, where: str) -> str:
    archs = raw.get("architectures")
    if not (isinstance(archs, list) and len(archs) == 1 and archs[0] in FAMILIES):
        raise _fail(where, "architectures", archs, f"supported: {', '.join(FAMILIES)}")
    family = FAMILIES[archs[0]]
    if raw.get("model_type", family) != family:
        raise _fail(where, "model_type", raw.get("model_type"), f"{archs[0]} has model_type {family!r}")
    return family


def _rope(raw: dict, where: str) -> tuple[float, RopeScaling | None]:
    """rope_theta and the scaling: at the top level and in rope_scaling (transformers 4), or both in
    rope_parameters (transformers 5)."""
    key = "rope_parameters" if raw.get("rope_parameters") else "rope_scaling"
    rope = raw.get(key) or {}
    if not isinstance(rope, dict):
        raise _fail(where, key, rope, "expected a mapping")
    kind = rope.get("rope_type", rope.get("type", "default"))
    theta = float(raw.get("rope_theta") or rope.get("rope_theta") or 10000.0)
    if kind == "default":
        return theta, None
    if kind != "llama3":
        raise _fail(where, f"{key}.rope_type", kind, "supported: default, llama3")
    missing = [f for f in ROPE_FIELDS if not isinstance(rope.get(f), (int, float))]
    if missing:
        raise KrminiError(f"{where}: {key}.{missing[0]}: missing or not a number (llama3 RoPE needs "
                          f"{', '.join(ROPE_FIELDS)})")
    scaling = RopeScaling("llama3", float(rope["factor"]), float(rope["low_freq_factor"]),
                          float(rope["high_freq_factor"]), int(rope["original_max_position_embeddings"]))
    scaling.validate(f"{where}: {key}")
    return theta, scaling


def _refuse_unsupported(raw: dict, family: str, where: str) -> None:
    if raw.get("hidden_act", "silu") != "silu":
        raise _fail(where, "hidden_act", raw["hidden_act"], "only silu (SwiGLU) imports")
    if raw.get("mlp_bias"):
        raise _fail(where, "mlp_bias", raw["mlp_bias"], "MLP biases are not supported")
    if family != "qwen2" and raw.get("attention_bias"):
        raise _fail(where, "attention_bias", raw["attention_bias"], "biases on o_proj are not supported")
    for field in EXPERT_FIELDS:
        if raw.get(field):
            raise _fail(where, field, raw[field], "mixture-of-experts models are not supported")
    if raw.get("partial_rotary_factor", 1.0) != 1.0:
        raise _fail(where, "partial_rotary_factor", raw["partial_rotary_factor"], "RoPE on every dimension only")
    if raw.get("use_sliding_window"):
        raise _fail(where, "use_sliding_window", raw["use_sliding_window"], "only full attention imports")
    window = raw.get("sliding_window")
    # Qwen configs carry a sliding_window that applies only with use_sliding_window; Mistral's applies
    # as given, and a window at least the context long is full attention.
    if family == "mistral" and window is not None and window < raw.get("max_position_embeddings", 0):
        raise _fail(where, "sliding_window", window, "only full attention imports; null or >= the context")
    layers = raw.get("layer_types") or []
    other = next((t for t in layers if t != "full_attention"), None)
    if other is not None and (family == "mistral" or raw.get("use_sliding_window")):
        raise _fail(where, "layer_types", other, "only full_attention layers import")


def from_hf_config(raw: dict, where: str = "config.json") -> ModelConfig:
    """Our config from a supported family's `config.json` (as a dict), refusing what our model cannot express.
    Types are checked as for our own configs (`from_dict`): a wrong one names the file and the field."""
    family = _family(raw, where)
    _refuse_unsupported(raw, family, where)
    theta, scaling = _rope(raw, where)
    data = {f: raw[f] for f in SHARED_FIELDS if f != "rope_theta" and raw.get(f) is not None}
    data["num_key_value_heads"] = raw.get("num_key_value_heads") or raw.get("num_attention_heads")
    data["tie_word_embeddings"] = raw.get("tie_word_embeddings", False)  # transformers' default for all four
    data |= {"rope_theta": theta, "head_dim": raw.get("head_dim"), "qkv_bias": family == "qwen2",
             "qk_norm": family == "qwen3", "rope_scaling": None if scaling is None else asdict(scaling)}
    return from_dict(ModelConfig, {k: v for k, v in data.items() if v is not None or k == "head_dim"}, f"{where}:")


def export_family(config: ModelConfig) -> str:
    """The transformers class that computes what `config` does: Qwen3 for q/k norms, Qwen2 for q/k/v
    biases, Llama otherwise (a Mistral without a window is a Llama). The recipe's soft-capped logits
    and ReLU² MLP exist in none of them (nor in llama.cpp's matching architectures): refused."""
    if config.logit_softcap:
        raise KrminiError(f"model.logit_softcap: {config.logit_softcap} (soft-capped logits) has no transformers "
                          "or llama.cpp equivalent for this architecture; cannot export")
    if config.mlp_act != "swiglu":
        raise KrminiError(f"model.mlp_act: {config.mlp_act!r} (ReLU² MLP) has no transformers or llama.cpp "
                          "equivalent for this architecture (SwiGLU only); cannot export")
    if config.qk_norm and config.qkv_bias:
        raise KrminiError("model: qk_norm and qkv_bias together match no transformers family; cannot export")
    return "Qwen3ForCausalLM" if config.qk_norm else "Qwen2ForCausalLM" if config.qkv_bias else "LlamaForCausalLM"


def hf_config(config: ModelConfig, bos_id: int = 1, eos_id: int | list[int] = 2, pad_id: int = 0):
    """The transformers config object (of `export_family`'s class) for `config`."""
    try:
        import transformers as tf
    except ImportError:
        raise KrminiError("transformers is not installed: pip install 'krmini[hf]'") from None
    family = export_family(config)
    cls = {"LlamaForCausalLM": tf.LlamaConfig, "Qwen2ForCausalLM": tf.Qwen2Config,
           "Qwen3ForCausalLM": tf.Qwen3Config}[family]
    extra: dict[str, Any] = {"mlp_bias": False} if family == "LlamaForCausalLM" else {"use_sliding_window": False}
    if family != "Qwen2ForCausalLM":
        extra["attention_bias"] = False
    if config.rope_scaling is not None:
        extra["rope_scaling"] = asdict(config.rope_scaling)
    return cls(**{f: getattr(config, f) for f in SHARED_FIELDS}, hidden_act="silu", head_dim=config.head_dim,
               bos_token_id=bos_id, eos_token_id=eos_id, pad_token_id=pad_id, architectures=[family], **extra)
