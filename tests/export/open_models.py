"""Small random-weight Hugging Face checkpoints of each open-model family, built on the spot.

Nothing is downloaded: each family's checkpoint is made here with transformers' own config and
model classes (2 layers, hidden 64, random weights) and a tokenizer trained in the test on Korean text,
laid out with that family's tokenizer pipeline, special tokens and a chat template written in the
style of the family's own (the constructs their templates use: `raise_exception`, `strftime_now`,
`namespace`, slicing and string methods, `tojson`). The numbers these models produce mean nothing;
what is tested is that our import computes exactly what transformers computes with them.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch
from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers

VOCAB = 1000
# The pre-tokenizer patterns of Llama 3 (tiktoken's cl100k) and of Qwen2 (digits one by one).
LLAMA3_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
                r"|\s*[\r\n]+|\s+(?!\S)|\s+")
QWEN_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
              r"|\s*[\r\n]+|\s+(?!\S)|\s+")

LLAMA3_TEMPLATE = """{{- bos_token }}
{%- if not date_string is defined %}
    {%- set date_string = strftime_now("%d %b %Y") %}
{%- endif %}
{%- if messages[0]['role'] == 'system' %}
    {%- set system_message = messages[0]['content']|trim %}
    {%- set messages = messages[1:] %}
{%- else %}
    {%- set system_message = "" %}
{%- endif %}
{{- "<|start_header_id|>system<|end_header_id|>\\n\\n" }}
{{- "Cutting Knowledge Date: December 2023\\n" }}
{{- "Today Date: " + date_string + "\\n\\n" }}
{{- system_message }}
{{- "<|eot_id|>" }}
{%- for message in messages %}
    {%- if 'tool_calls' in message %}
        {{- raise_exception("This model only supports single tool-calls at once!") }}
    {%- endif %}
    {{- '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n'+ message['content'] | trim + '<|eot_id|>' }}
{%- endfor %}
{%- if add_generation_prompt %}
    {{- '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}
{%- endif %}
"""

SMOLLM2_TEMPLATE = (
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n' }}"
    "{% endif %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

QWEN2_TEMPLATE = """{%- if tools %}
    {{- '<|im_start|>system\\n' }}
    {%- if messages[0]['role'] == 'system' %}
        {{- messages[0]['content'] }}
    {%- else %}
        {{- 'You are Qwen, created by Alibaba Cloud. You are a helpful assistant.' }}
    {%- endif %}
    {{- "\\n\\n# Tools\\n\\n<tools>" }}
    {%- for tool in tools %}
        {{- "\\n" }}
        {{- tool | tojson }}
    {%- endfor %}
    {{- "\\n</tools><|im_end|>\\n" }}
{%- else %}
    {%- if messages[0]['role'] == 'system' %}
        {{- '<|im_start|>system\\n' + messages[0]['content'] + '<|im_end|>\\n' }}
    {%- else %}
        {{- '<|im_start|>system\\nYou are Qwen, created by Alibaba Cloud. You are a helpful assistant.<|im_end|>\\n' }}
    {%- endif %}
{%- endif %}
{%- for message in messages %}
    {%- if (message.role == "user") or (message.role == "system" and not loop.first) or (message.role == "assistant" and not message.tool_calls) %}
        {{- '<|im_start|>' + message.role + '\\n' + message.content + '<|im_end|>' + '\\n' }}
    {%- endif %}
{%- endfor %}
{%- if add_generation_prompt %}
    {{- '<|im_start|>assistant\\n' }}
{%- endif %}
"""

QWEN3_TEMPLATE = """{%- if messages[0].role == 'system' %}
    {{- '<|im_start|>system\\n' + messages[0].content + '<|im_end|>\\n' }}
{%- endif %}
{%- set ns = namespace(multi_step_tool=true, last_query_index=messages|length - 1) %}
{%- for message in messages[::-1] %}
    {%- set index = (messages|length - 1) - loop.index0 %}
    {%- if ns.multi_step_tool and message.role == "user" and message.content is string and not(message.content.startswith('<tool_response>') and message.content.endswith('</tool_response>')) %}
        {%- set ns.multi_step_tool = false %}
        {%- set ns.last_query_index = index %}
    {%- endif %}
{%- endfor %}
{%- for message in messages %}
    {%- if message.content is string %}
        {%- set content = message.content %}
    {%- else %}
        {%- set content = '' %}
    {%- endif %}
    {%- if (message.role == "user") or (message.role == "system" and not loop.first) %}
        {{- '<|im_start|>' + message.role + '\\n' + content + '<|im_end|>' + '\\n' }}
    {%- elif message.role == "assistant" %}
        {%- set reasoning_content = '' %}
        {%- if '</think>' in content %}
            {%- set reasoning_content = content.split('</think>')[0].rstrip('\\n').split('<think>')[-1].lstrip('\\n') %}
            {%- set content = content.split('</think>')[-1].lstrip('\\n') %}
        {%- endif %}
        {%- if loop.index0 > ns.last_query_index and (loop.last or reasoning_content) %}
            {{- '<|im_start|>' + message.role + '\\n<think>\\n' + reasoning_content.strip('\\n') + '\\n</think>\\n\\n' + content.lstrip('\\n') }}
        {%- else %}
            {{- '<|im_start|>' + message.role + '\\n' + content }}
        {%- endif %}
        {{- '<|im_end|>\\n' }}
    {%- endif %}
{%- endfor %}
{%- if add_generation_prompt %}
    {{- '<|im_start|>assistant\\n' }}
    {%- if enable_thinking is defined and enable_thinking is false %}
        {{- '<think>\\n\\n</think>\\n\\n' }}
    {%- endif %}
{%- endif %}
"""

MISTRAL_TEMPLATE = """{%- if messages[0]['role'] == 'system' %}
    {%- set system_message = messages[0]['content'] %}
    {%- set loop_messages = messages[1:] %}
{%- else %}
    {%- set loop_messages = messages %}
{%- endif %}

{{- bos_token }}
{%- for message in loop_messages %}
    {%- if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}
        {{- raise_exception('After the optional system message, conversation roles must alternate user/assistant/user/assistant/...') }}
    {%- endif %}
    {%- if message['role'] == 'user' %}
        {%- if loop.last and system_message is defined %}
            {{- '[INST] ' + system_message + '\\n\\n' + message['content'] + '[/INST]' }}
        {%- else %}
            {{- '[INST] ' + message['content'] + '[/INST]' }}
        {%- endif %}
    {%- elif message['role'] == 'assistant' %}
        {{- ' ' + message['content'] + eos_token}}
    {%- else %}
        {{- raise_exception('Only user and assistant roles are supported, with the exception of an initial optional system message!') }}
    {%- endif %}
{%- endfor %}
"""


@dataclass
class Family:
    """One family's checkpoint recipe: transformers config class and its options, tokenizer layout."""

    name: str
    config_class: str
    config: dict
    tokenizer: str  # "llama3", "gpt2", "qwen" (byte-level pipelines) or "spm" (SentencePiece style)
    specials: list[str]
    tokenizer_config: dict
    generation_eos: list[str]  # generation_config.json's eos_token_id, as tokens
    extra_vocab: int = 0  # config.json's vocab_size beyond the tokenizer's (Qwen pads its embedding)
    shard: bool = False  # save as several safetensors files with an index


FAMILIES = [
    Family("llama3", "LlamaConfig",
           dict(rope_theta=500000.0, max_position_embeddings=256,
                rope_scaling=dict(rope_type="llama3", factor=8.0, low_freq_factor=1.0, high_freq_factor=4.0,
                                  original_max_position_embeddings=64)),
           "llama3", ["<|begin_of_text|>", "<|end_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"],
           dict(tokenizer_class="PreTrainedTokenizerFast", bos_token="<|begin_of_text|>", eos_token="<|eot_id|>",
                chat_template=LLAMA3_TEMPLATE), ["<|end_of_text|>", "<|eot_id|>"], shard=True),
    Family("smollm2", "LlamaConfig", dict(tie_word_embeddings=True, rope_theta=100000.0), "gpt2",
           ["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
           dict(tokenizer_class="GPT2Tokenizer", bos_token="<|im_start|>", eos_token="<|im_end|>",
                unk_token="<|endoftext|>", pad_token="<|im_end|>", chat_template=SMOLLM2_TEMPLATE), ["<|im_end|>"]),
    Family("qwen2", "Qwen2Config", dict(tie_word_embeddings=True, rope_theta=1000000.0, use_sliding_window=False,
                                        sliding_window=32768), "qwen",
           ["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
           dict(tokenizer_class="Qwen2Tokenizer", bos_token=None, eos_token="<|im_end|>", pad_token="<|endoftext|>",
                chat_template=QWEN2_TEMPLATE), ["<|im_end|>", "<|endoftext|>"], extra_vocab=24),
    Family("qwen3", "Qwen3Config", dict(head_dim=32, rope_theta=1000000.0), "qwen",
           ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<think>", "</think>"],
           dict(tokenizer_class="Qwen2Tokenizer", bos_token=None, eos_token="<|im_end|>", pad_token="<|endoftext|>",
                chat_template=QWEN3_TEMPLATE), ["<|im_end|>", "<|endoftext|>"]),
    Family("mistral", "MistralConfig", dict(sliding_window=None, rope_theta=1000000.0), "spm",
           ["<unk>", "<s>", "</s>", "[INST]", "[/INST]"],
           dict(tokenizer_class="LlamaTokenizer", bos_token="<s>", eos_token="</s>", unk_token="<unk>",
                add_bos_token=True, add_eos_token=False, chat_template=MISTRAL_TEMPLATE), ["</s>"]),
]
BY_NAME = {f.name: f for f in FAMILIES}


def _byte_level(texts: list[str], kind: str, specials: list[str]) -> Tokenizer:
    tok = Tokenizer(models.BPE())
    if kind == "gpt2":
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    else:
        split = LLAMA3_SPLIT if kind == "llama3" else QWEN_SPLIT
        tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Split(Regex(split), "isolated"),
                                                     pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    if kind == "qwen":
        tok.normalizer = normalizers.NFC()
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=VOCAB, special_tokens=specials, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(texts, trainer)
    if kind == "llama3":  # Llama 3's tokenizer.json adds <|begin_of_text|> itself
        bos = tok.token_to_id(specials[0])
        tok.post_processor = processors.Sequence([
            processors.ByteLevel(trim_offsets=False),
            processors.TemplateProcessing(single=f"{specials[0]} $A", pair=f"{specials[0]} $A {specials[0]} $B",
                                          special_tokens=[(specials[0], bos)])])
    else:
        tok.post_processor = processors.ByteLevel(trim_offsets=False)
    return tok


def _sentencepiece_style(texts: list[str], specials: list[str]) -> Tokenizer:
    """Llama 2 / Mistral layout: <unk> <s> </s> (+ controls), 256 byte tokens, then merges over "▁"-words."""
    byte_tokens = [f"<0x{b:02X}>" for b in range(256)]
    draft = Tokenizer(models.BPE(unk_token="<unk>", byte_fallback=True, fuse_unk=True))
    draft.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="first", split=True)
    draft.train_from_iterator(texts, trainers.BpeTrainer(vocab_size=VOCAB - 256, special_tokens=specials,
                                                         show_progress=False, limit_alphabet=300))
    learned = json.loads(draft.to_str())["model"]
    vocab = {t: i for i, t in enumerate(specials + byte_tokens)}
    for token, _ in sorted(learned["vocab"].items(), key=lambda kv: kv[1]):
        vocab.setdefault(token, len(vocab))
    merges = [tuple(m) if isinstance(m, list) else tuple(m.split(" ")) for m in learned["merges"]]
    tok = Tokenizer(models.BPE(vocab=vocab, merges=merges, unk_token="<unk>", byte_fallback=True, fuse_unk=True))
    # What transformers' LlamaTokenizer builds: no normalizer, "▁" before the first word only, one
    # pre-token for the whole text; decoding strips the leading space that "▁" stands for.
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="first", split=False)
    tok.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse(),
                                     decoders.Strip(content=" ", left=1)])
    tok.post_processor = processors.TemplateProcessing(single="<s> $A", pair="<s> $A <s> $B",
                                                       special_tokens=[("<s>", vocab["<s>"])])
    return tok


def build_tokenizer(family: Family, texts: list[str]) -> Tokenizer:
    if family.tokenizer == "spm":
        tok = _sentencepiece_style(texts, family.specials)
    else:
        tok = _byte_level(texts, family.tokenizer, family.specials)
    tok.add_special_tokens(family.specials)
    return tok


def _randomise(model: torch.nn.Module, seed: int) -> None:
    """transformers initialises biases to 0 and norms to 1; random ones make the test see them."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith(".bias"):
                p.copy_(torch.randn(p.shape, generator=gen) * 0.1)
            elif "norm" in name:
                p.copy_(1 + torch.randn(p.shape, generator=gen) * 0.2)


def write_checkpoint(family: Family, tok: Tokenizer, out: Path, seed: int = 0, shape: dict | None = None,
                     dtype: torch.dtype = torch.float32) -> Path:
    """A Hugging Face directory as the Hub has it: config.json, safetensors (sharded with an index
    where `family.shard`), generation_config.json, tokenizer.json, tokenizer_config.json.

    `shape` overrides the config (a real model's sizes, for a benchmark); the weights are saved in `dtype`."""
    import transformers as tf

    ids = {t: tok.token_to_id(t) for t in family.specials}
    cfg = family.tokenizer_config
    bos = ids.get(cfg.get("bos_token"))
    eos = [ids[t] for t in family.generation_eos]
    options = {"max_position_embeddings": 128, "vocab_size": tok.get_vocab_size() + family.extra_vocab,
               "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4,
               "num_key_value_heads": 2, "rms_norm_eps": 1e-6, "initializer_range": 0.1, **family.config, **(shape or {})}
    config = getattr(tf, family.config_class)(
        bos_token_id=bos, eos_token_id=eos if len(eos) > 1 else eos[0], **options)
    torch.manual_seed(seed)
    model = tf.AutoModelForCausalLM.from_config(config)
    _randomise(model, seed)
    model.to(dtype)
    model.generation_config = tf.GenerationConfig(bos_token_id=bos, eos_token_id=eos,
                                                  pad_token_id=ids.get(cfg.get("pad_token")))
    model.save_pretrained(out, max_shard_size="100KB" if family.shard else "1GB")
    tok.save(str(out / "tokenizer.json"))
    config_json = {**cfg, "model_max_length": options["max_position_embeddings"]}
    (out / "tokenizer_config.json").write_text(json.dumps(config_json, ensure_ascii=False), encoding="utf-8")
    return out
