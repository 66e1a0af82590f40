"""`krmini bench generate`: our engine against Hugging Face `transformers` and llama.cpp, same weights.

For fp32, bf16 and int8 (ours; `transformers` runs fp32 and bf16 of the converted model; llama.cpp,
when llama-cpp-python is installed, runs the GGUF export as f32, bf16 and q8_0) we measure prefill
tokens/s and time to first token on a long prompt, decode tokens/s at batch 1 and 8 (greedy, no early
stop; llama-cpp-python decodes one sequence, so batch 1 only), memory (weights + KV cache at batch 8)
and size on disk. All engines run in this process and alternate within each repeat; the median is
reported, so load from other processes on the machine hits every side alike. The bandwidth bound —
weight bytes read per token ÷ memory bandwidth measured here with a large tensor copy (the median of
one copy test per repeat, so it comes from the same phases of the machine as the timings) — shows how
far batch-1 decoding is from the physical limit. Bytes read per token are every weight but an untied
embedding table, of which a token reads one row.
"""

from __future__ import annotations

import copy
import importlib.util
import resource
import statistics
import tempfile
import time
from pathlib import Path

import torch
from safetensors.torch import save_file

from krmini.argtypes import POSITIVE_INT, cores, integer
from krmini.errors import KrminiError
from krmini.infer.engine import DecodeBatch
from krmini.infer.fast.compiled import CompiledDecoder
from krmini.infer.fast.fused import GemvLinear, fuse_for_decoding
from krmini.infer.fast.gemv import kernel_available
from krmini.infer.fast.quantize import int8_tensors, quantize_model
from krmini.infer.sampling import SamplingConfig
from krmini.model import LlamaModel
from krmini.runs import check_output, checkpoint_files, resolve_checkpoint, write_json_atomic
from krmini.tokenizer.tokenizer import VOCAB_SIZE
from krmini.train.checkpoint import model_tensors

GREEDY = dict(temperature=0.0)
OURS_DTYPES = ("fp32", "bf16", "int8")


def memory_bandwidth(mb: int = 512, repeats: int = 5) -> float:
    """Bytes/s of a large tensor copy (each byte read once and written once)."""
    src = torch.ones(mb * 2**20 // 4)
    dst = torch.empty_like(src)
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        dst.copy_(src)
        best = min(best, time.perf_counter() - start)
    return 2 * src.numel() * 4 / best


def _disk_bytes(tensors: dict[str, torch.Tensor]) -> int:
    with tempfile.TemporaryDirectory() as tmp:
        save_file(tensors, Path(tmp) / "model.safetensors")
        return (Path(tmp) / "model.safetensors").stat().st_size


def _weight_bytes(model: torch.nn.Module) -> int:
    seen, total = set(), 0
    for t in [*model.parameters(), *model.buffers()]:
        if t.data_ptr() not in seen and t.dim() >= 1 and t.numel() > 1:
            seen.add(t.data_ptr())
            total += t.numel() * t.element_size()
    rope = model.rope_cos.nbytes + model.rope_sin.nbytes if hasattr(model, "rope_cos") else 0
    return total - rope


def _read_bytes(model: torch.nn.Module) -> int:
    """Weight bytes a decode step reads: all but an untied embedding (ours and HF's share the layout)."""
    embedding = 0 if model.config.tie_word_embeddings else _weight_bytes(model.model.embed_tokens)
    return _weight_bytes(model) - embedding


def _ours(variant: dict, prompts: list[list[int]], new_tokens: int) -> tuple[float, float]:
    """(seconds to the first token, seconds for the remaining new_tokens - 1 steps)."""
    start = time.perf_counter()
    batch = DecodeBatch(variant["model"], prompts, [SamplingConfig(max_new_tokens=new_tokens, **GREEDY)] * len(prompts),
                        decoder=variant.get("decoder"))
    batch.step()
    first = time.perf_counter()
    while batch.running:
        batch.step()
    return first - start, time.perf_counter() - first


def _hf(variant: dict, prompts: list[list[int]], new_tokens: int) -> tuple[float, float]:
    hf = variant["model"]
    ids = torch.tensor(prompts)
    mask = torch.ones_like(ids)
    with torch.inference_mode():
        start = time.perf_counter()
        hf.generate(ids, attention_mask=mask, max_new_tokens=1, do_sample=False)
        first = time.perf_counter()
        hf.generate(ids, attention_mask=mask, max_new_tokens=new_tokens, do_sample=False)
        end = time.perf_counter()
    return first - start, max((end - first) - (first - start), 1e-9)


def _llama_cpp(variant: dict, prompts: list[list[int]], new_tokens: int) -> tuple[float, float]:
    """The same timing split through llama-cpp-python's greedy `generate` (one sequence)."""
    (prompt,), llm = prompts, variant["model"]
    start = time.perf_counter()
    first = None
    for n, _ in enumerate(llm.generate(prompt, temp=0.0, top_k=1, repeat_penalty=1.0, reset=True), 1):
        if first is None:
            first = time.perf_counter()
        if n == new_tokens:
            break
    return first - start, time.perf_counter() - first


RUNNERS = {"ours": _ours, "hf": _hf, "llama.cpp": _llama_cpp}


def _measure(variant: dict, prefill_ids: list[int], decode_ids: list[list[int]], new_tokens: int) -> dict:
    kind = variant["kind"]
    run = RUNNERS[kind]
    ttft, _ = run(variant, [prefill_ids], 1)
    out = {"ttft_ms": ttft * 1e3, "prefill_tok_s": len(prefill_ids) / ttft, "decode_b8_tok_s": None}
    for b in (1,) if kind == "llama.cpp" else (1, 8):
        _, rest = run(variant, decode_ids[:b], new_tokens)
        out[f"decode_b{b}_tok_s"] = b * (new_tokens - 1) / rest
    return out


def placeholder_vocab(vocab_size: int):
    """A GGUF vocabulary for a model without a tokenizer (a random preset): the benchmark feeds ids."""
    import gguf

    from krmini.export.gguf_vocab import GGUFVocab
    from krmini.tokenizer.tokenizer import BYTE_TOKENS

    tokens = ["<|pad|>", "<|bos|>", "<|eos|>", *BYTE_TOKENS]
    tokens += [f"<|id_{i}|>" for i in range(len(tokens), vocab_size)]
    types = [gguf.TokenType.CONTROL] * 3 + [gguf.TokenType.BYTE] * len(BYTE_TOKENS)
    types += [gguf.TokenType.NORMAL] * (vocab_size - len(types))
    return GGUFVocab(tokens[:vocab_size], [0.0] * vocab_size, [int(t) for t in types[:vocab_size]], 1, 2, 0)


def llama_cpp_variants(model: LlamaModel, vocab, threads: int, workdir: Path,
                       dtypes: tuple[str, ...] = OURS_DTYPES) -> dict[str, dict]:
    """The GGUF export at each precision of `dtypes`, loaded by llama-cpp-python."""
    import gguf
    import llama_cpp

    from krmini.export.gguf import write_gguf

    variants = {}
    context = model.config.max_position_embeddings
    for name, kind in (("fp32", "f32"), ("bf16", "bf16"), ("int8", "q8_0")):
        if name not in dtypes:
            continue
        path = write_gguf(model, vocab, workdir / f"model-{kind}.gguf", kind)
        llm = llama_cpp.Llama(model_path=str(path), n_ctx=context, n_batch=context, n_threads=threads,
                              n_threads_batch=threads, verbose=False)
        tensors = {t.name: int(t.n_bytes) for t in gguf.GGUFReader(path).tensors}
        untied = tensors["token_embd.weight"] if "output.weight" in tensors else 0
        variants[f"llama.cpp-{name}"] = {"model": llm, "kind": "llama.cpp", "dtype": name,
                                         "disk": path.stat().st_size, "weights": sum(tensors.values()),
                                         "read": sum(tensors.values()) - untied}
    return variants


def build_variants(model: LlamaModel, with_hf: bool, compiled: tuple[str, ...],
                   dtypes: tuple[str, ...] = OURS_DTYPES) -> dict[str, dict]:
    """name → {"model", "kind" (ours|hf), "dtype", "weights" (bytes in memory), "read" (bytes read per
    token), "disk"} built from one fp32 model; ours are fused for decoding as `krmini generate` fuses
    them, and ours of the dtypes in `compiled` also run with the decode step compiled (`"decoder"`,
    `krmini generate --compile`). Only the precisions in `dtypes` are built (a large model's copies add up)."""
    model = model.float().eval()
    variants = {}
    for name, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16)):
        if name not in dtypes:
            continue
        m = copy.deepcopy(model).to(dtype)
        disk, weights, read = _disk_bytes(model_tensors(m)), _weight_bytes(m), _read_bytes(m)
        variants[f"ours-{name}"] = {"model": fuse_for_decoding(copy.deepcopy(m)), "kind": "ours", "dtype": name,
                                    "disk": disk, "weights": weights, "read": read}
        if name == "bf16" and kernel_available():  # the same model with oneDNN's matmuls instead of our kernel
            variants["ours-bf16-onednn"] = variants["ours-bf16"] | {
                "model": fuse_for_decoding(copy.deepcopy(m), own_kernel=False)}
        if with_hf:
            from krmini.export.hf import to_hf_model

            hf = to_hf_model(m)
            hf.generation_config.eos_token_id = None  # always generate the full length, like ours
            hf.generation_config.pad_token_id = 0
            variants[f"hf-{name}"] = {"model": hf, "kind": "hf", "dtype": name, "disk": disk, "weights": weights,
                                      "read": read}
    if "int8" in dtypes:
        q = quantize_model(copy.deepcopy(model)).to(torch.bfloat16)
        variants["ours-int8"] = {"model": fuse_for_decoding(q), "kind": "ours", "dtype": "int8",
                                 "disk": _disk_bytes(int8_tensors(q)), "weights": _weight_bytes(q), "read": _read_bytes(q)}
    for dtype in (d for d in compiled if d in dtypes):
        plain = variants[f"ours-{dtype}"]
        variants[f"ours-{dtype}-compile"] = plain | {"decoder": CompiledDecoder(plain["model"])}
    return variants


def compile_decoders(variants: dict[str, dict], decode_ids: list[list[int]], new_tokens: int) -> None:
    """Compile every decoder for the batch-1 and batch-8 shapes before timing; record the seconds."""
    for v in variants.values():
        if "decoder" in v:
            start = time.perf_counter()
            for b in (1, 8):
                _ours(v, decode_ids[:b], min(3, new_tokens))
            v["compile_s"] = time.perf_counter() - start


def _uses_our_kernels(model: torch.nn.Module) -> bool:
    """Whether any matmul of `model` runs our kernels (`krmini.infer.fast.gemv`): they depend on the CPU and,
    for int8, on the model's size, so the report says where they ran."""
    return any(isinstance(m, GemvLinear) or getattr(m, "own_kernel", False) for m in model.modules())


def _speed_ratios(row: dict, other: dict) -> dict[str, float]:
    return {k: row[k] / other[k] for k in ("prefill_tok_s", "decode_b1_tok_s", "decode_b8_tok_s") if other[k]}


def run_benchmark(model: LlamaModel, label: str, threads: int, new_tokens: int, prompt_tokens: int,
                  repeats: int, with_hf: bool, gguf_vocab=None, bandwidth_mb: int = 512,
                  compiled: tuple[str, ...] = OURS_DTYPES, dtypes: tuple[str, ...] = OURS_DTYPES) -> dict:
    """`gguf_vocab`: the vocabulary for the llama.cpp rows (None: no llama.cpp rows); `dtypes`: the
    precisions measured (every engine's row of each)."""
    torch.set_num_threads(threads)
    cfg = model.config
    context = cfg.max_position_embeddings
    if context < 2 or new_tokens < 2:
        raise KrminiError("--new-tokens: expected >= 2 and a model context of at least 2")
    prefill_len = min(prompt_tokens, context - 1)
    decode_len = min(32, context - new_tokens)
    if decode_len < 1:
        raise KrminiError(f"--new-tokens: {new_tokens} leaves no room for a prompt in the context of {context}")
    gen = torch.Generator().manual_seed(0)
    vocab = range(3, cfg.vocab_size)
    prefill_ids = torch.randint(vocab.start, vocab.stop, (prefill_len,), generator=gen).tolist()
    decode_ids = torch.randint(vocab.start, vocab.stop, (8, decode_len), generator=gen).tolist()

    variants = build_variants(model, with_hf, compiled, dtypes)
    compile_decoders(variants, decode_ids, new_tokens)
    with tempfile.TemporaryDirectory() as tmp:
        if gguf_vocab is not None:
            variants |= llama_cpp_variants(model, gguf_vocab, threads, Path(tmp), dtypes)
        samples: dict[str, list[dict]] = {name: [] for name in variants}
        bandwidths = []  # measured in every repeat too: the machine's bandwidth moves between phases
        for _ in range(repeats):
            bandwidths.append(memory_bandwidth(bandwidth_mb))
            for name, v in variants.items():  # every engine and precision once per repeat: interleaved
                samples[name].append(_measure(v, prefill_ids, decode_ids, new_tokens))
    bandwidth = statistics.median(bandwidths)
    kv_per_token = 2 * cfg.num_hidden_layers * cfg.num_key_value_heads * cfg.head_dim
    rows = {}
    for name, v in variants.items():
        row = {k: None if samples[name][0][k] is None else statistics.median(s[k] for s in samples[name])
               for k in samples[name][0]}
        # ours keeps a bf16 model's cache in fp32 on CPU; llama.cpp's cache is f16
        elem = 4 if v["dtype"] == "fp32" or v["kind"] == "ours" else 2
        kv = kv_per_token * elem * 8 * (decode_len + new_tokens)
        row.update(dtype=v["dtype"], kind=v["kind"], weights_mb=v["weights"] / 1e6, read_mb=v["read"] / 1e6,
                   disk_mb=v["disk"] / 1e6, memory_mb=(v["weights"] + kv) / 1e6, bound_tok_s=bandwidth / v["read"],
                   decode_b1_runs=[round(s["decode_b1_tok_s"], 1) for s in samples[name]], compile_s=v.get("compile_s"))
        row["of_bound"] = row["decode_b1_tok_s"] / row["bound_tok_s"]
        rows[name] = row
    ratios = {}  # "ours-bf16-compile / hf-bf16": each of our rows over the other engines' row of its dtype
    for engine in ("hf", "llama.cpp"):
        for dtype in OURS_DTYPES:
            for ours in (f"ours-{dtype}", f"ours-{dtype}-compile"):
                other = f"{engine}-{dtype}"
                if ours in rows and other in rows:
                    ratios[f"{ours} / {other}"] = _speed_ratios(rows[ours], rows[other])
    if "ours-bf16-onednn" in rows:  # what our kernel gains over oneDNN, within the same run
        ratios["ours-bf16 / ours-bf16-onednn"] = _speed_ratios(rows["ours-bf16"], rows["ours-bf16-onednn"])
    return {"model": label, "parameters": model.num_parameters(), "config": vars(cfg).copy(), "threads": threads,
            "new_tokens": new_tokens, "prefill_tokens": prefill_len, "decode_prompt_tokens": decode_len,
            "repeats": repeats, "bandwidth_gb_s": bandwidth / 1e9,
            "our_kernels": [name for name, v in variants.items() if v["kind"] == "ours" and _uses_our_kernels(v["model"])],
            "bandwidth_runs_gb_s": [round(b / 1e9, 1) for b in bandwidths], "results": rows, "ours_over": ratios,
            "max_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e3,
            "torch": torch.__version__}


def profile_decode_step(model: LlamaModel, steps: int = 5, rows: int = 15, decoder: CompiledDecoder | None = None) -> str:
    """torch.profiler table of the top ops over `steps` batch-1 decode steps (after warm-up)."""
    from torch.profiler import profile

    batch = DecodeBatch(model, [list(range(3, 35))], [SamplingConfig(max_new_tokens=64, **GREEDY)], decoder=decoder)
    for _ in range(10):
        batch.step()
    with profile() as prof:
        for _ in range(steps):
            batch.step()
    return prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=rows)


def format_table(r: dict) -> str:
    lines = [f"{r['model']}: {r['parameters'] / 1e6:.2f}M parameters, {r['threads']} threads, "
             f"prefill {r['prefill_tokens']} tokens, decode {r['new_tokens']} new tokens after "
             f"{r['decode_prompt_tokens']}, median of {r['repeats']}; memory bandwidth {r['bandwidth_gb_s']:.1f} GB/s; "
             f"our matmul kernels in: {', '.join(r['our_kernels']) or 'none (PyTorch kernels throughout)'}",
             f"{'engine':<19}{'prefill t/s':>12}{'TTFT ms':>9}{'decode b1':>10}{'decode b8':>10}"
             f"{'bound b1':>9}{'of bound':>9}{'mem MB':>8}{'disk MB':>8}"]
    for name, x in r["results"].items():
        b8 = "—" if x["decode_b8_tok_s"] is None else f"{x['decode_b8_tok_s']:.1f}"
        lines.append(f"{name:<19}{x['prefill_tok_s']:>12,.0f}{x['ttft_ms']:>9.1f}{x['decode_b1_tok_s']:>10.1f}"
                     f"{b8:>10}{x['bound_tok_s']:>9.0f}{x['of_bound']:>9.0%}{x['memory_mb']:>8.1f}{x['disk_mb']:>8.1f}")
    compiles = [f"{name} {x['compile_s']:.1f} s" for name, x in r["results"].items() if x.get("compile_s")]
    if compiles:
        lines.append("compile time (batch 1 and 8, not in the figures above): " + ", ".join(compiles))
    for pair, ratio in r["ours_over"].items():
        lines.append(f"{pair}: " + ", ".join(f"{k.removesuffix('_tok_s').replace('_', ' ')} {v:.2f}x"
                                             for k, v in ratio.items()))
    return "\n".join(lines)


def _model_from_args(args) -> tuple[LlamaModel, str, object]:
    """(model, label, GGUF vocabulary or None where the llama.cpp rows are not wanted or possible)."""
    if bool(args.model) == bool(args.preset):
        raise KrminiError("bench generate: give a RUN directory or --preset (one of them)")
    with_llama_cpp = not args.no_llama_cpp and all(importlib.util.find_spec(m) for m in ("gguf", "llama_cpp"))
    if not with_llama_cpp and not args.no_llama_cpp:
        print("llama.cpp: skipped (llama-cpp-python not installed: pip install 'krmini[gguf]')")
    if args.model:
        from krmini.export.gguf_vocab import gguf_vocab
        from krmini.infer.load import load_model

        loaded = load_model(args.model, torch.device("cpu"))
        vocab = gguf_vocab(loaded.tokenizer, loaded.model.config.vocab_size) if with_llama_cpp else None
        return loaded.model, str(loaded.path), vocab
    from krmini.train.config import load_run_config

    overrides = [f"model.vocab_size={args.vocab_size}"] if args.vocab_size else []
    cfg = load_run_config(args.preset, overrides).model
    torch.manual_seed(0)
    vocab = placeholder_vocab(cfg.vocab_size) if with_llama_cpp else None
    return LlamaModel(cfg).eval(), f"preset {args.preset} (random init, vocab {cfg.vocab_size})", vocab


def register(subparsers) -> None:
    p = subparsers.add_parser("generate", help="prefill/decode speed: ours (fp32/bf16/int8) vs transformers "
                              "and llama.cpp",
                              description=__doc__)
    p.add_argument("model", nargs="?", metavar="RUN_OR_CKPT", help="a trained run or checkpoint")
    p.add_argument("--preset", help="benchmark a randomly initialised preset instead (tiny, small, ...)")
    p.add_argument("--vocab-size", type=VOCAB_SIZE, help="override the preset's vocabulary size")
    p.add_argument("--threads", type=cores(), default=2, help="torch threads, at most the cores (default: 2)")
    p.add_argument("--new-tokens", type=integer(2), default=128, help="decode length, >= 2 (default: 128)")
    p.add_argument("--prompt-tokens", type=POSITIVE_INT, default=512, help="prefill length, capped by the context")
    p.add_argument("--repeats", type=POSITIVE_INT, default=3, help="interleaved repeats; medians are reported")
    p.add_argument("--no-hf", action="store_true", help="skip the transformers comparison")
    p.add_argument("--no-llama-cpp", action="store_true", help="skip the llama.cpp comparison")
    p.add_argument("--no-compile", action="store_true", help="skip our rows with the decode step compiled")
    p.add_argument("--dtype", action="append", choices=OURS_DTYPES, dest="dtypes",
                   help="measure only this precision (repeat for several; default: all)")
    p.add_argument("--profile", action="store_true", help="also print the top ops of a bf16 decode step")
    p.add_argument("--json", help="also write the results to this JSON file")
    p.set_defaults(func=run)


def run(args) -> int:
    if args.json:  # refused before the benchmark runs: a directory, or a file of the checkpoint it reads
        check_output(args.json, "file", checkpoint_files(resolve_checkpoint(args.model)) if args.model else [])
    model, label, gguf_vocab = _model_from_args(args)
    results = run_benchmark(model, label, args.threads, args.new_tokens, args.prompt_tokens, args.repeats,
                            not args.no_hf, gguf_vocab, compiled=() if args.no_compile else OURS_DTYPES,
                            dtypes=tuple(args.dtypes or OURS_DTYPES))
    print(format_table(results))
    if args.profile:
        bf16 = fuse_for_decoding(copy.deepcopy(model).to(torch.bfloat16))
        results["profile_bf16_decode"] = profile_decode_step(bf16)
        print(results["profile_bf16_decode"])
        if not args.no_compile:
            results["profile_bf16_compiled_decode"] = profile_decode_step(bf16, decoder=CompiledDecoder(bf16))
            print(results["profile_bf16_compiled_decode"])
    if args.json:
        write_json_atomic(args.json, results)
    return 0
