"""Where training metrics go: metrics.jsonl always, TensorBoard by default, Weights & Biases on request.

Every record is written to all of them, so the JSONL file (read by the plots and the tests) and the
dashboards never disagree. Only rank 0 of a multi-process run creates a `RunLoggers`.
"""

from __future__ import annotations

import uuid
import warnings
from pathlib import Path

from krmini.errors import KrminiError
from krmini.train.metrics import MetricsLog


class RunLoggers:
    def __init__(self, out: Path, start_step: int, tensorboard: bool, wandb: bool, wandb_project: str,
                 config: dict) -> None:
        self.jsonl = MetricsLog(out / "metrics.jsonl", truncate_after_step=start_step)
        self.tb = _tensorboard_writer(out / "tensorboard", start_step) if tensorboard else None
        self.wandb = _wandb_run(out, wandb_project, config) if wandb else None

    def write(self, record: dict) -> None:
        self.jsonl.write(record)
        scalars = {f"{record['kind']}/{k}": v for k, v in record.items()
                   if k not in ("kind", "step") and isinstance(v, (int, float))}
        if self.tb is not None:
            for tag, value in scalars.items():
                self.tb.add_scalar(tag, value, record["step"])
        if self.wandb is not None:
            self.wandb.log(scalars, step=record["step"])

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()
        if self.wandb is not None:
            self.wandb.finish()


def _tensorboard_writer(logdir: Path, start_step: int):
    """Event files readable by `tensorboard --logdir <out_dir>/tensorboard`; no server runs here."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        warnings.warn("tensorboard is not installed (pip install tensorboard); writing metrics.jsonl only",
                      stacklevel=3)
        return None
    # On resume, TensorBoard hides the stale points past the checkpoint from the killed run.
    return SummaryWriter(str(logdir), purge_step=start_step + 1 if start_step else None)


def _wandb_run(out: Path, project: str, config: dict):
    """A W&B run that continues across resumes (its id is kept in out_dir/wandb_id).

    Set WANDB_MODE=offline to log without network; `wandb sync` uploads later.
    """
    try:
        import wandb
    except ImportError:
        raise KrminiError("train.wandb: wandb is not installed: pip install 'krmini[wandb]'") from None
    id_file = out / "wandb_id"
    run_id = id_file.read_text(encoding="utf-8").strip() if id_file.is_file() else uuid.uuid4().hex[:8]
    id_file.write_text(run_id, encoding="utf-8")
    return wandb.init(project=project, id=run_id, resume="allow", dir=str(out), config=config, name=out.name)
