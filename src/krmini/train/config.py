"""The run config: one YAML file with a `model:` and a `train:` section."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from krmini.config import apply_overrides, from_dict, load_yaml
from krmini.device import PRECISIONS
from krmini.errors import KrminiError
from krmini.model.config import ModelConfig
from krmini.train.lora import LoraConfig

STRATEGIES = ("ddp", "fsdp")
OPTIMIZERS = ("adamw", "muon")
SCHEDULES = ("cosine", "wsd")


@dataclass
class TrainConfig:
    data_dir: str = ""  # from `krmini prepare`
    out_dir: str = "runs/default"
    seq_len: int = 256
    batch_size: int = 8  # sequences per micro-batch
    grad_accum: int = 1  # micro-batches per optimizer step
    max_steps: int = 1000
    lr: float = 3e-4  # AdamW's (with optimizer=muon: for the embedding, head, norms and biases)
    min_lr_ratio: float = 0.1  # the schedule decays to lr × this
    warmup_steps: int = 100
    schedule: str = "cosine"  # or "wsd": warmup, constant, linear decay over the last decay_fraction
    decay_fraction: float = 0.2  # wsd: the share of max_steps spent decaying
    optimizer: str = "adamw"  # or "muon": Muon for the decoder blocks' matrices, AdamW for the rest
    muon_lr: float = 0.02
    muon_momentum: float = 0.95  # Nesterov
    muon_momentum_warmup_steps: int = 0  # > 0: momentum ramps from 0.85 to muon_momentum over these steps
    muon_weight_decay: float = 0.0  # decoupled, on the Muon matrices (nanochat: none)
    weight_decay: float = 0.1
    beta1: float = 0.9
    beta2: float = 0.95
    grad_clip: float = 1.0
    eval_interval: int = 100
    eval_tokens: int = 1_000_000  # validation tokens per evaluation (at most)
    save_interval: int = 500
    keep_checkpoints: int = 2
    log_interval: int = 10
    device: str = "auto"
    precision: str = "auto"  # fp32 | bf16 | fp16 (with a gradient scaler) | auto
    compile: bool = False  # torch.compile the model (the first step pays the compile time)
    grad_checkpointing: bool = False  # recompute each block in backward: less memory, ~30% more compute
    strategy: str = "ddp"  # with several processes: ddp (replicate) or fsdp (shard params/grads/optimizer)
    tensorboard: bool = True  # event files in out_dir/tensorboard
    wandb: bool = False  # Weights & Biases (pip install 'krmini[wandb]'); WANDB_MODE=offline works offline
    wandb_project: str = "krmini"
    peak_tflops: float = 0.0  # device peak for MFU; 0 measures a matmul at start
    seed: int = 1337
    init_from: str = ""  # checkpoint or run whose weights start the run (fine-tuning); "" = random init
    tokenizer: str = ""  # the run's tokenizer when it is not the data's: with init_from, an extension to resize to
    new_rows_toward_mean: float = 0.0  # with tokenizer: move each new row this far from its pieces' mean to all rows'

    def validate(self, where: str = "train") -> None:
        for name in ("seq_len", "batch_size", "grad_accum", "max_steps", "eval_interval", "save_interval",
                     "log_interval", "eval_tokens", "keep_checkpoints"):
            if getattr(self, name) <= 0:
                raise KrminiError(f"{where}.{name}: expected a positive integer, got {getattr(self, name)}")
        if self.warmup_steps < 0:
            raise KrminiError(f"{where}.warmup_steps: expected >= 0, got {self.warmup_steps}")
        if not 0 <= self.min_lr_ratio <= 1:
            raise KrminiError(f"{where}.min_lr_ratio: expected a value in [0, 1], got {self.min_lr_ratio}")
        if self.lr <= 0:
            raise KrminiError(f"{where}.lr: expected a positive number, got {self.lr}")
        if self.precision not in PRECISIONS:
            raise KrminiError(f"{where}.precision: expected one of {', '.join(PRECISIONS)}, got {self.precision!r}")
        if self.strategy not in STRATEGIES:
            raise KrminiError(f"{where}.strategy: expected one of {', '.join(STRATEGIES)}, got {self.strategy!r}")
        if not 0 <= self.new_rows_toward_mean <= 1:
            raise KrminiError(f"{where}.new_rows_toward_mean: expected a value in [0, 1], got {self.new_rows_toward_mean}")
        if self.schedule not in SCHEDULES:
            raise KrminiError(f"{where}.schedule: expected one of {', '.join(SCHEDULES)}, got {self.schedule!r}")
        if not 0 < self.decay_fraction <= 1:
            raise KrminiError(f"{where}.decay_fraction: expected a value in (0, 1], got {self.decay_fraction}")
        self._validate_optimizer(where)
        if self.peak_tflops < 0:
            raise KrminiError(f"{where}.peak_tflops: expected >= 0, got {self.peak_tflops}")

    def _validate_optimizer(self, where: str) -> None:
        if self.optimizer not in OPTIMIZERS:
            raise KrminiError(f"{where}.optimizer: expected one of {', '.join(OPTIMIZERS)}, got {self.optimizer!r}")
        if not self.muon_lr > 0:
            raise KrminiError(f"{where}.muon_lr: expected a positive number, got {self.muon_lr}")
        if not 0 <= self.muon_momentum < 1:
            raise KrminiError(f"{where}.muon_momentum: expected a value in [0, 1), got {self.muon_momentum}")
        if self.muon_momentum_warmup_steps < 0:
            raise KrminiError(f"{where}.muon_momentum_warmup_steps: expected >= 0, got "
                              f"{self.muon_momentum_warmup_steps}")
        if not self.muon_weight_decay >= 0:
            raise KrminiError(f"{where}.muon_weight_decay: expected >= 0, got {self.muon_weight_decay}")
        if self.optimizer == "muon" and self.strategy == "fsdp":
            raise KrminiError(f"{where}.optimizer: muon orthogonalises whole matrices and fsdp shards them; "
                              "use train.strategy=ddp with muon")


@dataclass
class RunConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    lora: LoraConfig | None = None  # train LoRA adapters on a frozen model instead of all weights

    def validate(self, where: str = "config") -> None:
        if self.train.seq_len > self.model.max_position_embeddings:
            raise KrminiError(f"{where}: train.seq_len {self.train.seq_len} exceeds "
                              f"model.max_position_embeddings {self.model.max_position_embeddings}")
        if self.lora is not None and self.train.optimizer == "muon":
            # LoRA's A and B are thin (r rows or columns): orthogonalising them would set all r singular
            # values of each update alike, which no Muon recipe has tuned or tested; AdamW is the known case.
            raise KrminiError(f"{where}: train.optimizer=muon is for full training of the block matrices; "
                              "train LoRA adapters with train.optimizer=adamw")


def load_run_config(path: str | Path | None, overrides: list[str] | None = None) -> RunConfig:
    if path:
        path = resolve_config_path(str(path))
    data = load_yaml(path) if path else {}
    apply_overrides(data, overrides or [])
    return from_dict(RunConfig, data, f"{path or 'config'}:")


PRESETS_DIR = Path(__file__).resolve().parent.parent / "presets"


def resolve_config_path(name: str) -> Path:
    """A YAML path, or the name of a bundled preset (tiny, small, medium, large)."""
    path = Path(name)
    if path.suffix in (".yaml", ".yml") or path.exists():
        return path
    preset = PRESETS_DIR / f"{name}.yaml"
    if preset.is_file():
        return preset
    known = sorted(p.stem for p in PRESETS_DIR.glob("*.yaml"))
    raise KrminiError(f"{name}: no such config file or preset (presets: {', '.join(known)})")
