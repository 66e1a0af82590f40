"""Our model ↔ `transformers.LlamaForCausalLM`.

Parameter names already match Hugging Face's Llama layout, so conversion is a config translation
plus a plain state-dict copy. `transformers` is an optional dependency (`pip install krmini[hf]`).
"""

from __future__ import annotations

from krmini.errors import KrminiError
from krmini.model import LlamaModel, ModelConfig

SHARED_FIELDS = ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
                 "num_key_value_heads", "max_position_embeddings", "rope_theta", "rms_norm_eps",
                 "tie_word_embeddings", "initializer_range")


def _transformers():
    try:
        import transformers
    except ImportError:
        raise KrminiError("transformers is not installed: pip install 'krmini[hf]'") from None
    return transformers


def hf_config(config: ModelConfig, bos_id: int = 1, eos_id: int = 2, pad_id: int = 0):
    tf = _transformers()
    return tf.LlamaConfig(
        **{f: getattr(config, f) for f in SHARED_FIELDS},
        hidden_act="silu", attention_bias=False, mlp_bias=False, head_dim=config.head_dim,
        bos_token_id=bos_id, eos_token_id=eos_id, pad_token_id=pad_id,
    )


def to_hf_model(model: LlamaModel, bos_id: int = 1, eos_id: int = 2, pad_id: int = 0):
    """A `LlamaForCausalLM` with our weights (same dtype), in eval mode."""
    tf = _transformers()
    hf = tf.LlamaForCausalLM(hf_config(model.config, bos_id, eos_id, pad_id))
    missing, unexpected = hf.load_state_dict(model.state_dict(), strict=False)
    missing = [k for k in missing if not k.endswith("rotary_emb.inv_freq")]
    if missing or unexpected:
        raise KrminiError(f"HF conversion: missing {missing[:3]}, unexpected {unexpected[:3]}")
    return hf.to(next(model.parameters()).dtype).eval()


def from_hf_config(hf_cfg) -> ModelConfig:
    if getattr(hf_cfg, "model_type", "llama") != "llama":
        raise KrminiError(f"config.json: model_type {hf_cfg.model_type!r}; only Llama-architecture models import")
    return ModelConfig(**{f: getattr(hf_cfg, f) for f in SHARED_FIELDS})
