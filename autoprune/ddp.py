"""Multi-GPU finetuning with Ultralytics' DDP: what a worker process needs to train the pruned model.

Ultralytics trains on several GPUs by starting one process per GPU, each rebuilding the trainer from its class and
arguments alone; `WorkerState` carries the pruned student and the teacher there as files, `check_multi_gpu` refuses
what cannot start, and the two collectives keep the neck projector (which DDP does not wrap) in step across ranks.
`autoprune.finetune.finetune_trainer` puts it together.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from autoprune.distill import DistillSettings, FeatureMatch
from autoprune.schedule import FinetuneSchedule

__all__ = ["WorkerState", "check_multi_gpu"]

# the schedule as the trainer resolved it
SUMMARY_ARGS = ("optimizer", "lr0", "lrf", "cos_lr", "warmup_epochs", "warmup_bias_lr")


@dataclass(frozen=True)
class WorkerState:
    """What the trainer of a DDP worker needs beyond the `(cfg, overrides, _callbacks)` Ultralytics rebuilds it from.

    Ultralytics trains on several GPUs by starting one process per GPU (`torch.distributed.run`); each unpickles the
    trainer's class, arguments and callbacks (`ultralytics.utils.dist.generate_ddp_file`) and builds a new trainer
    from them, so no object `finetune` was handed reaches it. The models travel as files: `student` and `teacher` are
    `torch.save`s of the modules themselves (the pruned architecture, never a YAML). The rest rides on a per-run
    subclass of the trainer as its `worker_state` (cloudpickle pickles a class made inside a function by value,
    attributes included). Rank 0 writes the training's summary (`PrunedModelTrainer.summary`) to `summary` as JSON
    for the parent, which gets nothing else back.

    Attributes:
        student: the file of the model to train.
        teacher: the file of the teacher, or None (no distillation).
        summary: where rank 0 writes the summary.
        data: the `autoprune.data.DataConfig` to train on.
        distill, schedule, features, lr_scale, warmup_bias_lr: as `finetune` takes them.
    """

    student: str
    teacher: str | None
    summary: str
    data: object
    distill: DistillSettings | None = None
    schedule: FinetuneSchedule | None = None
    features: FeatureMatch | None = None
    lr_scale: float = 1.0
    warmup_bias_lr: float | None = None

    @classmethod
    def write(cls, folder: Path, student: nn.Module, teacher: nn.Module | None, **settings) -> "WorkerState":
        """Save `student` (and `teacher`) into `folder`; the state that names them with `settings`."""
        folder = Path(folder).resolve()
        folder.mkdir(parents=True, exist_ok=True)
        torch.save(student, folder / "student.pt")
        if teacher is not None:
            torch.save(teacher, folder / "teacher.pt")
        return cls(student=str(folder / "student.pt"), teacher=str(folder / "teacher.pt") if teacher is not None
                   else None, summary=str(folder / "summary.json"), **settings)

    def load_models(self) -> tuple[nn.Module, nn.Module | None]:
        """(student, teacher or None), loaded on the CPU."""
        load = functools.partial(torch.load, map_location="cpu", weights_only=False)
        return load(self.student), (load(self.teacher) if self.teacher else None)


def check_multi_gpu(batch: int, gpus: int) -> None:
    """One error line where a finetune on `gpus` GPUs (Ultralytics' DDP) cannot start: a batch that does not split
    evenly among them (each worker trains batch / gpus images per step), or no cloudpickle (Ultralytics sends the
    trainer to its workers with it, and would try to pip-install it at the first launch)."""
    from importlib.metadata import PackageNotFoundError, version

    from autoprune.errors import UserError

    if batch % gpus:
        raise UserError(f"--batch {batch} must be a multiple of the {gpus} GPUs of --device (each trains "
                        f"batch / {gpus} images per step), e.g. --batch {gpus * max(1, round(batch / gpus))}")
    try:
        have = version("cloudpickle")
    except PackageNotFoundError:
        have = None
    from ultralytics.utils.checks import check_version

    if have is None or not check_version(have, ">=3.1.1"):
        raise UserError(f"multi-GPU finetuning needs cloudpickle>=3.1.1 ({'found ' + have if have else 'not installed'}"
                        "; Ultralytics sends the trainer to its DDP workers with it): pip install 'autoprune[ddp]'")


def _distributed() -> bool:
    return torch.distributed.is_available() and torch.distributed.is_initialized()


def _broadcast_parameters(module: nn.Module) -> None:
    """Every DDP rank gets rank 0's values of `module`'s parameters (their random seeds differ)."""
    if _distributed():
        for p in module.parameters():
            torch.distributed.broadcast(p.data, src=0)


def _average_gradients(module: nn.Module, world_size: int) -> None:
    """Average `module`'s gradients over the DDP ranks, as DDP does for the modules it wraps."""
    if _distributed():
        for p in module.parameters():
            if p.grad is None:
                p.grad = torch.zeros_like(p)  # every rank joins every all_reduce
            torch.distributed.all_reduce(p.grad)
            p.grad.div_(world_size)
