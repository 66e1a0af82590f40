"""`krmini export hf|gguf` and `krmini import hf`."""

from __future__ import annotations

from pathlib import Path

import torch

from krmini.export.gguf import GGUF_TYPES, export_gguf, gguf_path
from krmini.export.hf import export_hf, import_hf
from krmini.export.ollama import modelfile_path, modelfile_text
from krmini.infer.load import load_model
from krmini.runs import check_target, run_dir, staged_file


def register(subparsers) -> None:
    p = subparsers.add_parser("export", help="내보내기 / export a model to Hugging Face or GGUF (llama.cpp, Ollama)")
    sub = p.add_subparsers(dest="export_command", metavar="FORMAT", required=True)
    hf = sub.add_parser("hf", help="Hugging Face directory: config.json, safetensors, tokenizer",
                        description="Write OUT/ so that transformers' AutoModelForCausalLM (LlamaForCausalLM) and "
                        "AutoTokenizer load it without custom code.")
    hf.add_argument("model", metavar="RUN_OR_CKPT")
    hf.add_argument("out", metavar="OUT_DIR")
    hf.add_argument("--force", action="store_true", help="replace OUT_DIR if it is not empty")
    hf.set_defaults(func=run_export_hf)

    gg = sub.add_parser("gguf", help="one GGUF file for llama.cpp / llama-cpp-python / Ollama",
                        description="Write a GGUF file: architecture llama (ours, Llama 3.x, SmolLM2, Mistral), "
                        "qwen2 or qwen3, with the model's tokenizer, stop ids and chat template.")
    gg.add_argument("model", metavar="RUN_OR_CKPT")
    gg.add_argument("out", metavar="OUT.gguf")
    gg.add_argument("--type", default="f16", choices=GGUF_TYPES, help="weight type (default: f16)")
    gg.add_argument("--force", action="store_true", help="replace OUT.gguf (and OUT.Modelfile) if it exists")
    gg.add_argument("--modelfile", action="store_true",
                    help="also write OUT.Modelfile for Ollama (ollama create NAME -f OUT.Modelfile)")
    gg.set_defaults(func=run_export_gguf)

    imp = subparsers.add_parser("import", help="가져오기 / import a Hugging Face checkpoint (Llama, Qwen, Mistral) as a run")
    isub = imp.add_subparsers(dest="import_command", metavar="FORMAT", required=True)
    ih = isub.add_parser("hf", help="HF directory (Llama 3.x/SmolLM2, Qwen2/2.5, Qwen3, Mistral; safetensors) → run",
                         description="Read config.json, the safetensors weights (one file or sharded with its index), "
                         "tokenizer.json and tokenizer_config.json (+ generation_config.json) of a LlamaForCausalLM, "
                         "Qwen2ForCausalLM, Qwen3ForCausalLM or MistralForCausalLM (no sliding window) and write a run "
                         "directory with one checkpoint, usable by generate/chat/eval/quantize/export. The model keeps "
                         "its own tokenizer, chat template and stop ids.")
    ih.add_argument("src", metavar="HF_DIR")
    ih.add_argument("out", metavar="OUT_RUN")
    ih.add_argument("--force", action="store_true", help="replace OUT_RUN if it is not empty")
    ih.set_defaults(func=run_import_hf)


def run_export_hf(args) -> int:
    out = export_hf(load_model(args.model, torch.device("cpu")), Path(args.out), args.force)
    print(f"Hugging Face model → {out}/ (AutoModelForCausalLM.from_pretrained({str(out)!r}))")
    return 0


def run_export_gguf(args) -> int:
    loaded = load_model(args.model, torch.device("cpu"))
    name = Path(args.model).resolve().name
    modelfile = None
    if args.modelfile:  # the chat format is checked, and the target, before the (slow) export
        modelfile = modelfile_path(gguf_path(Path(args.out), name, args.type))
        text = modelfile_text(loaded.tokenizer, gguf_path(Path(args.out), name, args.type).name)
        check_target(modelfile, args.force, [run_dir(loaded.path)], kind="file")
    out = export_gguf(loaded, Path(args.out), args.type, args.force, name=name)
    print(f"GGUF ({args.type}) → {out} ({out.stat().st_size / 1e6:.1f} MB)")
    if modelfile is not None:
        with staged_file(modelfile, args.force, [run_dir(loaded.path)]) as tmp:
            tmp.write_text(text, encoding="utf-8")
        print(f"Ollama Modelfile → {modelfile} (ollama create {name} -f {modelfile})")
    return 0


def run_import_hf(args) -> int:
    out = import_hf(Path(args.src), Path(args.out), args.force)
    print(f"imported {args.src} → run {out}/ (krmini generate {out} --prompt ...)")
    return 0
