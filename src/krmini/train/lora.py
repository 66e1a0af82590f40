"""LoRA: train a low-rank update B·A next to each frozen weight matrix instead of the matrix itself.

    y = W x + (alpha / r) · B (A x)        A: (r, in), small random;  B: (out, r), zeros

B starts at zero, so a fresh adapter leaves the model unchanged. Only A and B train (a few percent
of the parameters, or less for larger models); they are saved alone as `adapter.safetensors`, loaded
onto the same base later, or merged into W (W + (alpha / r) · B A) for plain, adapter-free inference.
Parameter names keep the base names (`…q_proj.weight`) and add `…q_proj.lora_A` / `…lora_B`.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from krmini.config import from_dict
from krmini.errors import KrminiError
from krmini.runs import ADAPTER_CONFIG, ADAPTER_FILE, lora_section, read_json, staged_dir, write_json_atomic

TARGETS = {"q": "q_proj", "k": "k_proj", "v": "v_proj", "o": "o_proj",
           "gate": "gate_proj", "up": "up_proj", "down": "down_proj"}


@dataclass
class LoraConfig:
    r: int = 16
    alpha: float = 32.0
    dropout: float = 0.0
    targets: list[str] = field(default_factory=lambda: list(TARGETS))

    def validate(self, where: str = "lora") -> None:
        if self.r <= 0:
            raise KrminiError(f"{where}.r: expected a positive integer, got {self.r}")
        if not 0 <= self.dropout < 1:
            raise KrminiError(f"{where}.dropout: expected a value in [0, 1), got {self.dropout}")
        unknown = [t for t in self.targets if t not in TARGETS]
        if unknown or not self.targets:
            raise KrminiError(f"{where}.targets: expected some of {','.join(TARGETS)}, got {self.targets}")


def parse_lora_spec(spec: str) -> LoraConfig:
    """`r=16,alpha=32,targets=q,k,v,o` → LoraConfig; bare words after `targets=` extend the list."""
    values: dict = {}
    key = None
    for part in (p.strip() for p in spec.split(",") if p.strip()):
        name, sep, value = part.partition("=")
        if sep:
            key = name.strip()
            values[key] = [value.strip()] if key == "targets" else value.strip()
        elif key == "targets":
            values["targets"].append(part)
        else:
            raise KrminiError(f"--lora {spec!r}: {part!r} is not key=value (keys: r, alpha, dropout, targets)")
    try:
        typed = {k: (v if k == "targets" else {"r": int, "alpha": float, "dropout": float}[k](v))
                 for k, v in values.items()}
    except KeyError as exc:
        raise KrminiError(f"--lora: unknown key {exc.args[0]!r} (keys: r, alpha, dropout, targets)") from None
    except ValueError as exc:
        raise KrminiError(f"--lora {spec!r}: {exc}") from None
    return from_dict(LoraConfig, typed, "--lora")


class LoRALinear(nn.Module):
    """A frozen linear layer (the base's own weight tensor, not a copy) plus a trainable B·A."""

    def __init__(self, base: nn.Linear, r: int, alpha: float, dropout: float) -> None:
        super().__init__()
        self.weight = base.weight
        self.bias = base.bias
        self.scaling = alpha / r
        self.lora_A = nn.Parameter(torch.empty(r, base.in_features, device=base.weight.device, dtype=base.weight.dtype))
        self.lora_B = nn.Parameter(torch.zeros(base.out_features, r, device=base.weight.device, dtype=base.weight.dtype))
        nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.weight, self.bias) + (self.dropout(x) @ self.lora_A.T @ self.lora_B.T) * self.scaling

    def merged(self) -> nn.Linear:
        out_f, in_f = self.weight.shape
        linear = nn.Linear(in_f, out_f, bias=self.bias is not None, device=self.weight.device, dtype=self.weight.dtype)
        with torch.no_grad():
            delta = (self.lora_B.float() @ self.lora_A.float()) * self.scaling
            linear.weight.copy_((self.weight.float() + delta).to(self.weight.dtype))
            if self.bias is not None:
                linear.bias.copy_(self.bias)
        return linear


def _target_modules(model: nn.Module, cls: type, names: set[str]):
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, cls) and name in names:
                yield parent, name, child


def apply_lora(model: nn.Module, cfg: LoraConfig) -> tuple[int, int]:
    """Wrap the target projections and freeze everything else; returns (trainable, total) parameters."""
    names = {TARGETS[t] for t in cfg.targets}
    wrapped = 0
    for parent, name, child in _target_modules(model, nn.Linear, names):
        setattr(parent, name, LoRALinear(child, cfg.r, cfg.alpha, cfg.dropout))
        wrapped += 1
    if not wrapped:
        raise KrminiError(f"lora.targets: no layer named {sorted(names)} in this model")
    for pname, p in model.named_parameters():
        p.requires_grad_(".lora_" in pname)
    return parameter_counts(model)


def parameter_counts(model: nn.Module) -> tuple[int, int]:
    """(trainable, total), counting tied tensors once."""
    unique = {id(p): p for p in model.parameters()}.values()
    return sum(p.numel() for p in unique if p.requires_grad), sum(p.numel() for p in unique)


def merge_lora(model: nn.Module) -> nn.Module:
    """Fold every adapter into its weight; the model is then a plain model again (all trainable)."""
    for parent, name, child in _target_modules(model, LoRALinear, set(TARGETS.values())):
        setattr(parent, name, child.merged())
    for p in model.parameters():
        p.requires_grad_(True)
    return model


def adapter_tensors(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v.detach().contiguous().cpu() for k, v in state.items() if ".lora_" in k}


def save_adapter(tensors: dict[str, torch.Tensor], cfg: LoraConfig, out_dir: str | Path, base: str = "") -> Path:
    """Write only the adapter (A and B matrices) and its config, as one staged directory (replaced whole)."""
    out = Path(out_dir)
    tensors = adapter_tensors(tensors)
    if not tensors:
        raise KrminiError(f"{out}: no LoRA tensors to save (was the model trained with --lora?)")
    with staged_dir(out, force=True) as tmp:
        save_file(tensors, tmp / ADAPTER_FILE, metadata={"format": "pt"})
        write_json_atomic(tmp / ADAPTER_CONFIG, {**asdict(cfg), "base": base})
    return out


def read_adapter_config(adapter_dir: str | Path) -> LoraConfig:
    path = Path(adapter_dir) / ADAPTER_CONFIG
    data = read_json(path, "not found; expected an adapter directory made by `krmini sft --lora`")
    data.pop("base", None)
    return from_dict(LoraConfig, data, str(path))


def load_adapter(model: nn.Module, adapter_dir: str | Path) -> nn.Module:
    """Apply the adapter's LoRA layout to `model` (a base) and load its A/B matrices."""
    cfg = read_adapter_config(adapter_dir)
    apply_lora(model, cfg)
    path = Path(adapter_dir) / ADAPTER_FILE
    try:
        tensors = load_file(path)
    except (SafetensorError, OSError) as exc:
        raise KrminiError(f"{path}: cannot read adapter ({exc})") from None
    expected = adapter_tensors(model.state_dict())
    if set(tensors) != set(expected):
        missing, unexpected = sorted(set(expected) - set(tensors)), sorted(set(tensors) - set(expected))
        raise KrminiError(f"{path}: adapter does not fit this base (missing {missing[:2]}, unexpected {unexpected[:2]})")
    for k, v in tensors.items():
        if v.shape != expected[k].shape:
            raise KrminiError(f"{path}: {k} has shape {tuple(v.shape)}, the base expects {tuple(expected[k].shape)}")
    model.load_state_dict(tensors, strict=False)
    return model


def run_lora_config(state: dict, where: str) -> LoraConfig | None:
    """The LoraConfig of a LoRA run's state.json (`run_config.lora`), or None for a plain run."""
    section = lora_section(state)
    return None if section is None else from_dict(LoraConfig, section, f"{where}:run_config.lora")
