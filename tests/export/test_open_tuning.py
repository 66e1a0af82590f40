"""An imported open model downstream: instruction tuning (full and LoRA) with its own chat template,
a checkpoint of weights alone in the dtype it came in, `eval ppl` and `eval kobest`.

The checkpoints are the small random-weight ones of `open_models.py`; what is checked is which tokens
learn, that training and evaluation run on them, and that scores equal transformers' own.
"""

from __future__ import annotations

import json
import math
import shutil

import pytest
import torch
from safetensors.torch import load_file, save_file

from krmini import runs
from krmini.chat.data import ChatWindows, load_chat_split, load_chat_starts, prepare_chat
from krmini.chat.sft import run_sft
from krmini.chat.template import prompt_ids, stop_ids, training_sequences
from krmini.cli import main
from krmini.errors import KrminiError
from krmini.eval.kobest import TASKS, choice_requests, read_examples
from krmini.eval.loglik import Request, continuation_logprobs
from krmini.export.hf import import_hf
from krmini.export.hf_config import from_hf_config
from krmini.infer.build import build_engine
from krmini.infer.generate import SamplingConfig
from krmini.infer.load import load_model
from krmini.model import LlamaModel
from krmini.model.info import count_parameters
from krmini.train.lora import ADAPTER_FILE, LoraConfig, apply_lora, parameter_counts
from tests.conftest import write_chat_jsonl
from tests.export.open_models import FAMILIES

transformers = pytest.importorskip("transformers", reason="transformers not installed (pip install 'krmini[hf]')")

CPU = torch.device("cpu")
NAMES = [f.name for f in FAMILIES]
CONVERSATIONS = [
    [{"role": "user", "content": "안녕하세요?"}, {"role": "assistant", "content": "반갑습니다. 무엇을 도와드릴까요?"}],
    [{"role": "system", "content": "당신은 친절한 한국어 비서입니다."}, {"role": "user", "content": "오늘 날씨 어때요?"},
     {"role": "assistant", "content": "맑고 따뜻합니다."}, {"role": "user", "content": "고마워요"},
     {"role": "assistant", "content": "천만에요!"}],
    [{"role": "user", "content": "헌법 제1조는?"}, {"role": "assistant", "content": "대한민국은 민주공화국이다."},
     {"role": "user", "content": "제2조는?"}, {"role": "assistant", "content": "국적에 관한 조항입니다."}],
]
# What each family's template writes for a reply, up to its end-of-turn token (as decoded: Mistral's
# template writes ' ' + content, and its decoder drops the leading space of what it decodes).
# Qwen3 writes an empty thinking block before a reply that answers the last question.
REPLY = {
    "llama3": lambda c: c + "<|eot_id|>",
    "smollm2": lambda c: c + "<|im_end|>",
    "qwen2": lambda c: c + "<|im_end|>",
    "qwen3": lambda c: "<think>\n\n</think>\n\n" + c + "<|im_end|>",
    "mistral": lambda c: c + "</s>",
}
TUNE = ["train.max_steps=12", "train.batch_size=4", "train.seq_len=128", "train.lr=5.0e-3", "train.warmup_steps=2",
        "train.eval_interval=12", "train.save_interval=12", "train.log_interval=1", "train.device=cpu"]


def learned_runs(seq) -> list[list[int]]:
    """The ids of each stretch of learned positions."""
    out, current = [], []
    for token, learned in zip(seq.ids, seq.mask, strict=True):
        if learned:
            current.append(token)
        elif current:
            out, current = [*out, current], []
    return out + ([current] if current else [])


@pytest.mark.parametrize("name", NAMES)
def test_learned_tokens_are_the_replies_and_their_end_marker(name, imported):
    hf_dir, run = imported(name)
    tok = load_model(run, CPU).tokenizer
    hf_tok = transformers.AutoTokenizer.from_pretrained(hf_dir)
    for messages in CONVERSATIONS:
        if name == "mistral" and messages[0]["role"] == "system":
            # its template moves the system message into the last user turn: no prefix marks the reply
            with pytest.raises(KrminiError, match="cannot be told apart"):
                training_sequences(tok, messages)
            continue
        sequences = training_sequences(tok, messages)
        replies = [(i, m["content"]) for i, m in enumerate(messages) if m["role"] == "assistant"]
        learned = [run for seq in sequences for run in learned_runs(seq)]
        assert [tok.decode(ids) for ids in learned] == [REPLY[name](c) for _, c in replies]
        if len(sequences) == 1:  # the conversation exactly as transformers' apply_chat_template writes it
            assert sequences[0].ids == hf_tok.apply_chat_template(messages)["input_ids"]
        else:  # Qwen3 rewrites earlier replies: one sequence per reply, its prompt exactly as at inference
            assert name == "qwen3" and len(sequences) == len(replies)
            for seq, (i, _) in zip(sequences, replies, strict=True):
                prompt = seq.ids[:seq.mask.index(1)]
                assert prompt == prompt_ids(tok, messages[:i])
                assert prompt == hf_tok.apply_chat_template(messages[:i], add_generation_prompt=True)["input_ids"]


@pytest.fixture(scope="module")
def chat_data(tmp_path_factory):
    return write_chat_jsonl(tmp_path_factory.mktemp("chat") / "chat.jsonl", repeat=2)


@pytest.mark.parametrize("name", ["qwen2", "llama3"])
def test_only_reply_positions_get_gradient(name, imported, chat_data, tmp_path):
    _, run = imported(name)
    loaded = load_model(run, CPU)
    tok = loaded.tokenizer
    manifest = prepare_chat([chat_data], tok, str(run / "tokenizer"), tmp_path / "data", 0.2, progress=False)
    ids, mask = load_chat_split(tmp_path / "data", "train")
    starts = load_chat_starts(tmp_path / "data", "train", len(ids))
    assert len(starts) == manifest["splits"]["train"]["documents"]  # one sequence per conversation
    windows = ChatWindows(ids, mask, loaded.model.config.max_position_embeddings, 7, tok.bos_id, tok.pad_id, starts)
    x, y = windows.batch_in_order(0, 2, CPU)
    model = loaded.model.train()
    logits = model(x)[0]
    logits.retain_grad()
    loss = torch.nn.functional.cross_entropy(logits.view(-1, logits.size(-1)), y.reshape(-1), ignore_index=-100)
    assert loss.item() == pytest.approx(model(x, y)[1].item(), rel=1e-5)
    loss.backward()
    per_position = logits.grad.abs().sum(-1)
    assert torch.all(per_position[y == -100] == 0) and torch.all(per_position[y != -100] > 0)
    assert int((y != -100).sum()) > 0
    # every learned stretch of a row ends with the end-of-turn token the reply stops at
    end = tok.token_id("<|im_end|>" if name == "qwen2" else "<|eot_id|>")
    for row in y.tolist():
        assert all(b != -100 or a == end for a, b in zip(row, row[1:], strict=False) if a != -100)


def test_sft_of_an_imported_model_learns_and_chats_in_its_template(imported, chat_data, tmp_path, capsys):
    _, run = imported("qwen2")
    out = tmp_path / "sft"
    run_sft(run, [str(chat_data)], out, overrides=TUNE, progress=False, val_fraction=0.2)
    metrics = [json.loads(line) for line in (out / "metrics.jsonl").read_text(encoding="utf-8").splitlines()]
    train = [m["loss"] for m in metrics if m["kind"] == "train"]
    assert train[-1] < 0.7 * train[0]
    tuned = load_model(out, CPU)
    assert tuned.tokenizer.chat_template == load_model(run, CPU).tokenizer.chat_template
    assert (runs.resolve_checkpoint(out) / "optimizer.safetensors").is_file()  # a training checkpoint resumes
    # a reply of the data, in the template: far likelier after tuning (the base has random weights)
    prompt = prompt_ids(tuned.tokenizer, [{"role": "user", "content": "고마워"}])
    reply = Request(prompt, tuned.tokenizer.encode("천만에요.<|im_end|>"))
    before, after = (continuation_logprobs(m, [reply])[0] for m in (load_model(run, CPU).model, tuned.model))
    assert after > before + 10, (before, after)
    done = build_engine(tuned, stop_ids=stop_ids(tuned.tokenizer)).generate_batch(
        [(prompt, SamplingConfig(max_new_tokens=24, temperature=0))])[0]
    assert done.finish_reasons == ["stop"]  # ends at <|im_end|>, as the tuning taught it


@pytest.mark.parametrize("name", ["qwen3", "mistral"])
def test_lora_sft_of_an_imported_model(name, imported, chat_data, tmp_path, capsys):
    _, run = imported(name)
    out = tmp_path / "lora"
    assert main(["sft", "--base", str(run), "--data", str(chat_data), "--out", str(out), "--lora", "r=4,alpha=8",
                 "--val-fraction", "0.2", *TUNE]) == 0
    printed = capsys.readouterr().out
    assert "LoRA r=4: training" in printed
    report = json.loads((out / "data" / "manifest.json").read_text(encoding="utf-8"))["report"]
    skipped = {k: v for k, v in report["skipped"].items() if k != "duplicate conversation"}
    if name == "mistral":  # the conversations with a system message: its template cannot mark their replies
        assert list(skipped) == ["chat template: a reply's prompt is not the start of the conversation with the "
                                 "reply, so its tokens cannot be told apart"]
    else:
        assert skipped == {}
    adapter = load_file(out / "adapter" / ADAPTER_FILE)
    assert {k.split(".")[-2] for k in adapter} == {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj",
                                                   "down_proj"}  # the default targets
    merged = load_model(out, CPU).model
    base = load_model(run, CPU).model
    x = torch.tensor([load_model(run, CPU).tokenizer.encode_prompt("대한민국은 민주공화국이다")])
    with torch.no_grad():
        assert not torch.allclose(merged(x)[0], base(x)[0], atol=1e-4)
    assert main(["generate", str(out), "--prompt", "국회는", "--max-new-tokens", "4", "--device", "cpu"]) == 0


def test_import_writes_weights_alone_in_their_dtype(imported, chat_data, tmp_path, capsys):
    """A bf16 checkpoint stays bf16 on disk, with no optimizer file; every reader loads it as asked."""
    hf_dir, fp32_run = imported("llama3")
    src = tmp_path / "bf16"
    shutil.copytree(hf_dir, src)
    for shard in src.glob("model-*.safetensors"):
        save_file({k: v.to(torch.bfloat16) for k, v in load_file(shard).items()}, shard, metadata={"format": "pt"})
    run = import_hf(src, tmp_path / "run")
    ckpt = runs.resolve_checkpoint(run)
    assert sorted(p.name for p in ckpt.iterdir()) == ["model.safetensors", "state.json", "tokenizer"]
    state = runs.read_state(ckpt)
    assert list(state["checksums"]) == ["model.safetensors"] and "optimizer" not in state
    assert {v.dtype for v in load_file(ckpt / "model.safetensors").values()} == {torch.bfloat16}
    weights = sum(shard.stat().st_size for shard in src.glob("model-*.safetensors"))
    assert (ckpt / "model.safetensors").stat().st_size < 1.01 * weights
    fp32 = runs.resolve_checkpoint(fp32_run) / "model.safetensors"
    assert fp32.stat().st_size > 1.9 * (ckpt / "model.safetensors").stat().st_size

    loaded = load_model(run, CPU)
    assert next(loaded.model.parameters()).dtype == torch.float32
    source = {k: v for shard in src.glob("model-*.safetensors") for k, v in load_file(shard).items()}
    assert all(torch.equal(loaded.model.state_dict()[k], v.float()) for k, v in source.items())
    assert next(load_model(run, CPU, torch.bfloat16).model.parameters()).dtype == torch.bfloat16
    assert main(["generate", str(run), "--prompt", "국회는", "--max-new-tokens", "4", "--device", "cpu"]) == 0
    capsys.readouterr()

    # weights alone cannot be resumed: one line saying to start a new run from it
    prepare_chat([chat_data], loaded.tokenizer, str(ckpt / "tokenizer"), tmp_path / "data", 0.2, progress=False)
    assert main(["train", "--config", "tiny", "--resume", f"train.out_dir={run}", f"train.data_dir={tmp_path / 'data'}",
                 "train.device=cpu"]) == 1
    err = capsys.readouterr().err.strip()
    assert "holds weights only" in err and "init_from" in err and err.count("\n") == 0, err


def _loglik(hf, ids: list[int], first: int) -> float:
    """transformers' log-likelihood of ids[first:] given what comes before."""
    with torch.no_grad():
        logprobs = torch.log_softmax(hf(torch.tensor([ids])).logits[0].float(), dim=-1)
    return sum(logprobs[t - 1, ids[t]].item() for t in range(first, len(ids)))


@pytest.mark.parametrize("name", ["llama3", "qwen2", "mistral"])
def test_eval_ppl_and_kobest_on_an_imported_model_equal_transformers(name, imported, tmp_path, capsys):
    hf_dir, run = imported(name)
    hf = transformers.AutoModelForCausalLM.from_pretrained(hf_dir).eval()
    hf_tok = transformers.AutoTokenizer.from_pretrained(hf_dir)
    text = "대한민국의 주권은 국민에게 있고, 모든 권력은 국민으로부터 나온다."
    (tmp_path / "doc.jsonl").write_text(json.dumps({"text": text}, ensure_ascii=False) + "\n", encoding="utf-8")
    assert main(["eval", "ppl", str(run), "--data", str(tmp_path / "doc.jsonl"), "--device", "cpu",
                 "--out", str(tmp_path / "ppl.json")]) == 0
    ppl = json.loads((tmp_path / "ppl.json").read_text(encoding="utf-8"))
    assert all(math.isfinite(ppl[k]) for k in ("loss", "perplexity", "bits_per_byte"))
    # the document after the tokenizer's BOS (Llama 3, Mistral) or, with none (Qwen), the token its config names
    ids = hf_tok(text)["input_ids"]
    if hf_tok.bos_token_id is None:
        ids = [hf.generation_config.bos_token_id or hf_tok.eos_token_id, *ids]
    assert ppl["tokens"] == len(ids) - 1
    assert ppl["loss"] * ppl["tokens"] == pytest.approx(-_loglik(hf, ids, 1), abs=1e-4)

    kobest = tmp_path / "kobest" / "sentineg"
    kobest.mkdir(parents=True)
    (kobest / "dev.tsv").write_text("ID\tText\tLabel\n1\t배송이 빨라서 만족합니다\t1\n2\t다시는 안 삽니다\t0\n",
                                    encoding="utf-8")
    assert main(["eval", "kobest", str(run), "--tasks", "sentineg", "--data-dir", str(tmp_path / "kobest"),
                 "--device", "cpu", "--out", str(tmp_path / "kobest.json")]) == 0
    result = json.loads((tmp_path / "kobest.json").read_text(encoding="utf-8"))["tasks"]["sentineg"]
    assert result["examples"] == 2 and 0 <= result["acc"] <= 1 and 0 <= result["f1"] <= 1
    # one choice's request as lm-eval's HFLM builds it: the context as transformers tokenizes it (with the
    # tokenizer's own BOS, if it adds one: none for Qwen), the continuation what follows it in the whole text
    example = read_examples(TASKS["sentineg"], tmp_path / "kobest", "dev")[0]
    request = choice_requests(load_model(run, CPU).tokenizer, [example], [example.prompt])[1]
    context = hf_tok(example.prompt)["input_ids"]
    choice = hf_tok(example.prompt + " " + example.choices[1])["input_ids"][len(context):]
    assert (list(request.context), list(request.continuation)) == (context, choice)
    assert (hf_tok.bos_token_id in context) == (name != "qwen2")
    ours = continuation_logprobs(load_model(run, CPU).model, [request])[0]
    assert ours == pytest.approx(_loglik(hf, context + choice, len(context)), abs=1e-4)


def test_lora_share_of_a_qwen2_5_0_5b_shaped_model():
    """Qwen2.5-0.5B's published shape, on the meta device (shapes only): the default --lora targets
    (r=16 on q, k, v, o, gate, up, down) train 1.75% of the parameters."""
    hf_config = transformers.Qwen2Config(hidden_size=896, num_hidden_layers=24, num_attention_heads=14,
                                         num_key_value_heads=2, intermediate_size=4864, vocab_size=151936,
                                         tie_word_embeddings=True, max_position_embeddings=32768)
    config = from_hf_config({**hf_config.to_dict(), "architectures": ["Qwen2ForCausalLM"]})
    with torch.device("meta"):
        theirs, ours = transformers.Qwen2ForCausalLM(hf_config), LlamaModel(config)
    base = parameter_counts(ours)[1]
    assert base == parameter_counts(theirs)[1] == count_parameters(config)["total"] == 494_032_768
    trainable, total = apply_lora(ours, LoraConfig())
    assert trainable == 24 * 16 * (2 * (896 + 896) + 2 * (896 + 128) + 3 * (896 + 4864)) == 8_798_208
    assert total == base + trainable and 100 * trainable / total == pytest.approx(1.7497, abs=1e-4)
