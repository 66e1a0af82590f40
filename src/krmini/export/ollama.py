"""An Ollama Modelfile beside a GGUF export: `ollama create NAME -f OUT.Modelfile`.

Ollama formats a conversation with a Go template of its own (it does not run the checkpoint's Jinja),
so the model's chat format is recognised from its chat template and written in Ollama's syntax:

    ours            <|user|>…<|end|><|assistant|>             (BOS: llama.cpp adds it)
    ChatML          <|im_start|>user\\n…<|im_end|>\\n            Qwen2/2.5/3, SmolLM2
    Llama 3         <|start_header_id|>user<|end_header_id|>\\n\\n…<|eot_id|>
    Mistral         [INST] …[/INST] reply</s>                  (a system message is left out)

`PARAMETER stop` lists the model's stop tokens and its end-of-turn token. A template in none of these
formats is refused, naming what was looked for.
"""

from __future__ import annotations

import json
from pathlib import Path

from krmini.errors import KrminiError
from krmini.tokenizer import KoTokenizer
from krmini.tokenizer.tokenizer import CHAT_TOKENS

OURS = "{{- range .Messages }}<|{{ .Role }}|>{{ .Content }}<|end|>{{ end }}<|assistant|>"
CHATML = ("{{- range .Messages }}<|im_start|>{{ .Role }}\n{{ .Content }}<|im_end|>\n{{ end }}"
          "<|im_start|>assistant\n")
LLAMA3 = ("{{- range .Messages }}<|start_header_id|>{{ .Role }}<|end_header_id|>\n\n{{ .Content }}<|eot_id|>"
          "{{ end }}<|start_header_id|>assistant<|end_header_id|>\n\n")
MISTRAL = ('{{- range .Messages }}{{ if eq .Role "user" }}[INST] {{ .Content }}[/INST]'
           '{{ else if eq .Role "assistant" }} {{ .Content }}EOS{{ end }}{{ end }}')
# (marker in the checkpoint's chat template, Ollama template, its end-of-turn token)
FORMATS = (("<|im_start|>", CHATML, "<|im_end|>"), ("<|start_header_id|>", LLAMA3, "<|eot_id|>"),
           ("[INST]", MISTRAL, None))


def chat_format(tokenizer: KoTokenizer) -> tuple[str, list[str]]:
    """(Ollama template, stop strings) for the tokenizer's chat format."""
    stops = [tokenizer.tok.id_to_token(i) for i in sorted(tokenizer.stop_ids)]
    if tokenizer.foreign is None:
        return OURS, [CHAT_TOKENS[-1], *stops]
    template = tokenizer.chat_template
    if template is None:
        raise KrminiError("--modelfile: the checkpoint has no chat template (a base model); Ollama needs one")
    for marker, go_template, end in FORMATS:
        if marker in template:
            eos = tokenizer.tok.id_to_token(tokenizer.eos_id)
            ends = [end] if end is not None and tokenizer.tok.token_to_id(end) is not None else []
            return go_template.replace("EOS", eos), list(dict.fromkeys(ends + stops))
    raise KrminiError("--modelfile: the chat template is none of the formats written for Ollama "
                      "(ChatML <|im_start|>, Llama 3 <|start_header_id|>, Mistral [INST], krmini's own)")


def modelfile_text(tokenizer: KoTokenizer, gguf_name: str) -> str:
    template, stops = chat_format(tokenizer)
    lines = [f"FROM ./{gguf_name}", f'TEMPLATE """{template}"""']
    lines += [f"PARAMETER stop {json.dumps(s, ensure_ascii=False)}" for s in stops]
    return "\n".join(lines) + "\n"


def modelfile_path(gguf: Path) -> Path:
    return gguf.with_suffix(".Modelfile")
