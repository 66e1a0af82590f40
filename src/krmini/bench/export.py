"""`krmini bench export RUN`: do the exported models compute what ours computes?

For the Hugging Face export: max |logit difference| against our model on Korean text, and whether
greedy generation is identical. For each GGUF type, through llama-cpp-python when installed: whether
llama.cpp tokenizes Korean documents exactly as we do, max |logit difference|, and greedy equality.
"""

from __future__ import annotations

import json
import tempfile
import time
from pathlib import Path

import torch

from krmini.argtypes import POSITIVE_INT, cores
from krmini.eval.ppl import DEFAULT_PPL_DATA, read_eval_texts
from krmini.export.gguf import GGUF_TYPES, export_gguf
from krmini.export.hf import export_hf
from krmini.infer.generate import SamplingConfig, generate_ids
from krmini.infer.load import LoadedModel, load_model
from krmini.runs import check_output, checkpoint_files, resolve_checkpoint, write_json_atomic

PROMPTS = ["대한민국은", "모든 국민은 법 앞에", "국회는 국민의 보통·평등·직접·비밀선거에 의하여"]


def register(subparsers) -> None:
    p = subparsers.add_parser("export", help="export round trips: HF and llama.cpp logits/greedy vs ours",
                              description="Export RUN to Hugging Face and GGUF in a temporary directory and "
                              "compare logits, greedy tokens and tokenization with our model.")
    p.add_argument("model", metavar="RUN_OR_CKPT")
    p.add_argument("--steps", type=POSITIVE_INT, default=32, help="greedy tokens per prompt (default: 32)")
    p.add_argument("--docs", type=POSITIVE_INT, default=200, help=f"documents of {DEFAULT_PPL_DATA.name} for the "
                   "tokenizer check (default: 200; skipped when the file is absent)")
    p.add_argument("--threads", type=cores(), default=1, help="torch / llama.cpp threads, at most the cores "
                   "(default: 1)")
    p.add_argument("--json", help="also write the results here")
    p.set_defaults(func=run)


def _greedy(loaded: LoadedModel, prompt: list[int], steps: int) -> list[int]:
    """Our greedy tokens, up to and including an EOS (where the other runtimes stop)."""
    ids = list(generate_ids(loaded.model, prompt, SamplingConfig(max_new_tokens=steps, temperature=0)))
    eos = loaded.tokenizer.eos_id
    return ids[:ids.index(eos) + 1] if eos in ids else ids


def hf_round_trip(loaded: LoadedModel, out: Path, prompts: list[list[int]], steps: int) -> dict:
    import transformers

    export_hf(loaded, out)
    hf = transformers.AutoModelForCausalLM.from_pretrained(out).eval()
    diff, same = 0.0, 0
    for ids in prompts:
        x = torch.tensor([ids])
        with torch.no_grad():
            diff = max(diff, (loaded.model(x)[0] - hf(x).logits).abs().max().item())
        ours = _greedy(loaded, ids, steps)
        theirs = hf.generate(x, max_new_tokens=len(ours), do_sample=False)[0, len(ids):].tolist()
        same += ours == theirs
    return {"class": type(hf).__name__, "max_abs_logit_diff": diff, "greedy_equal": f"{same}/{len(prompts)}"}


def _logit_gap(llm, ids: list[int], ours) -> float:
    import numpy as np

    llm.reset()
    llm.eval(ids)
    return float(np.abs(ours - np.asarray(llm.scores[: len(ids)])).max())


def gguf_round_trip(loaded: LoadedModel, path: Path, kind: str, prompts: list[list[int]], steps: int,
                    texts: list[str], threads: int) -> dict:
    import llama_cpp

    export_gguf(loaded, path, kind)
    context = loaded.model.config.max_position_embeddings
    llm = llama_cpp.Llama(model_path=str(path), n_ctx=context, n_threads=threads, logits_all=True, verbose=False)
    tok = loaded.tokenizer
    same_tokens = sum(llm.tokenize(t.encode("utf-8"), add_bos=False) == tok.encode(t) for t in texts)
    # llama.cpp keeps its KV cache in f16 by default; an f32 cache shows what the weights alone give.
    llm_f32_kv = llama_cpp.Llama(model_path=str(path), n_ctx=context, n_threads=threads, logits_all=True,
                                 type_k=0, type_v=0, verbose=False)
    diff, diff_f32_kv, same = 0.0, 0.0, 0
    for ids in prompts:
        with torch.no_grad():
            ours_logits = loaded.model(torch.tensor([ids]))[0][0].numpy()
        diff = max(diff, _logit_gap(llm, ids, ours_logits))
        diff_f32_kv = max(diff_f32_kv, _logit_gap(llm_f32_kv, ids, ours_logits))
        ours = _greedy(loaded, ids, steps)
        theirs = []
        for t in llm.generate(ids, temp=0.0, top_k=1, repeat_penalty=1.0, reset=True):
            theirs.append(t)
            if len(theirs) == len(ours):
                break
        same += ours == theirs
    return {"type": kind, "size_mb": round(path.stat().st_size / 1e6, 2), "max_abs_logit_diff": diff,
            "max_abs_logit_diff_f32_kv_cache": diff_f32_kv, "greedy_equal": f"{same}/{len(prompts)}", "tokenization_equal": f"{same_tokens}/{len(texts)}"}


def run(args) -> int:
    if args.json:  # refused before the benchmark runs: a directory, or a file of the checkpoint it reads
        check_output(args.json, "file", checkpoint_files(resolve_checkpoint(args.model)))
    torch.set_num_threads(args.threads)
    loaded = load_model(args.model, torch.device("cpu"))
    tok = loaded.tokenizer
    prompts = [[tok.bos_id, *tok.encode(p)] for p in PROMPTS]
    texts = read_eval_texts([DEFAULT_PPL_DATA], limit=args.docs) if DEFAULT_PPL_DATA.is_file() else PROMPTS
    report: dict = {"model": str(loaded.path), "threads": args.threads, "greedy_steps": args.steps,
                    "tokenizer_docs": len(texts)}
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        report["hf"] = hf_round_trip(loaded, Path(tmp) / "hf", prompts, args.steps)
        print("hf:", json.dumps(report["hf"], ensure_ascii=False))
        try:
            import llama_cpp  # noqa: F401
        except ImportError:
            report["gguf"] = "skipped: llama-cpp-python not installed (pip install 'krmini[gguf]')"
            print("gguf:", report["gguf"])
        else:
            report["gguf"] = []
            for kind in GGUF_TYPES:
                r = gguf_round_trip(loaded, Path(tmp) / f"m-{kind}.gguf", kind, prompts, args.steps, texts,
                                    args.threads)
                report["gguf"].append(r)
                print("gguf:", json.dumps(r, ensure_ascii=False))
    report["seconds"] = round(time.perf_counter() - start, 1)
    if args.json:
        write_json_atomic(args.json, report)
    return 0
