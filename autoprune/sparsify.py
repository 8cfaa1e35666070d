"""Sparse training: push the BatchNorm gammas of prunable channels towards zero, so pruning them costs little.

Network slimming (Liu et al. 2017) trains with an L1 penalty on BN gammas, `loss + lam * sum |gamma|`; channels
whose gamma reaches ~0 emit a constant that the pruner folds into their consumers, so removing them barely changes
the model, and `bn_scale` (with `--strategy global`) then finds them.

How it runs inside Ultralytics' own trainer: Ultralytics calls no callback between `loss.backward()` and the
optimizer step, so the penalty's subgradient is added by tensor hooks on the BN weights during backward:

    gamma.grad += lam_e * sign(gamma)           (and lam_beta_e * sign(beta) with --l1-beta)

registered in `on_train_start` (after the trainer built its model, EMA and optimizer; the EMA is a copy made before,
so no hook reaches a checkpoint) and removed when training ends; `on_train_epoch_start` sets the epoch's lambda:

    lam_e = l1 * (1 - 0.9 * e / epochs)         e = 0 .. epochs - 1 (from l1 down to about 0.1 l1)

The hook adds to the gradient of Ultralytics' training loss, which sums the per-image loss over the batch (x batch
size), so relative to the per-image mean loss the penalty is `lam / batch`. Only gammas of prunable channels (those
in `autoprune.channels` groups) are penalised: fixed channels (head outputs, boundaries) cannot be pruned.
AMP is off (`amp=False`), and the trainer trains the loaded model itself (a `DetectionTrainer` whose `get_model`
returns it: `Model.train()` would rebuild it from its YAML, which cannot describe a pruned model).

`growing_reg=True` selects growing regularisation (Wang et al. 2021, "Neural Pruning via Growing Regularization",
GReg-1) instead, in this variant: at the start of training the channels to prune are chosen once, as a uniform
`bn_scale` prune at `reg_keep` would choose them (the lowest |gamma| of each group, coupled parts together); only their
gammas (and betas with `l1_beta`) get an L2 penalty, whose factor grows by `l1` every epoch:

    gamma.grad += lam_e * gamma                 lam_e = l1 * (e + 1)     (beta: l1_beta * (e + 1) * beta)

so after 100 epochs at the default l1=1e-2 it reaches GReg's ceiling of 1; other channels are not penalised. Pruning
the result with `--criterion bn_scale --keep <reg_keep>` removes the channels that were driven to zero.

Outputs in the run folder: `sparse.pt` (a stock Ultralytics checkpoint of the trainer's EMA weights, saved by
`autoprune.models.save_checkpoint`; plain data under "autoprune"), `gamma_hist.png` (the |gamma| histogram before and
after, with the share below 1e-2), Ultralytics' own `train/` folder.

Example:
    >>> from autoprune.sparsify import SparsifySettings, sparsify
    >>> result = sparsify(None, None, Path("runs/sparsify/exp1"), SparsifySettings(epochs=50))
    >>> result["gamma_share_below"]["after"]
    0.41
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from torch import nn

from autoprune import _ultralytics  # noqa: F401  (offline, quiet Ultralytics before it is used)
from autoprune.errors import UserError
from autoprune.finetune import offline_ultralytics
from autoprune.imgsz import check_imgsz

GAMMA_THRESHOLD = 1e-2  # "near zero": the share of gammas below this is what sparse training drives up


@dataclass(frozen=True)
class SparsifySettings:
    """Sparse-training settings; validated on construction (a bad value is a `UserError` naming the field).

    Attributes:
        epochs: training epochs (>= 1).
        l1: penalty factor on gamma: the L1 lambda at epoch 0 (decaying), or the growing L2 factor's step per epoch.
        l1_beta: the same for beta (0: no penalty on beta).
        growing_reg: growing regularisation (GReg-1 variant, see the module docstring) instead of L1.
        reg_keep: with growing_reg, the keep ratio whose pruned channels are penalised.
        imgsz: training image size (a multiple of 32).
        batch: images per batch.
        device: Ultralytics device string ("cpu", "0", ...).
        workers: dataloader workers.
        val: validate after every epoch (the last epoch always is).
        train_args: further Ultralytics training arguments (optimizer, lr0, ...); amp is always False.
    """

    epochs: int
    l1: float = 1e-2
    l1_beta: float = 0.0
    growing_reg: bool = False
    reg_keep: float = 0.5
    imgsz: int = 320
    batch: int = 16
    device: str = "cpu"
    workers: int = 2
    val: bool = True
    train_args: dict = field(default_factory=dict)

    def __post_init__(self):
        def is_int(v):
            return isinstance(v, int) and not isinstance(v, bool)

        if not is_int(self.epochs) or self.epochs < 1:
            raise UserError(f"epochs must be an integer >= 1, got {self.epochs!r}")
        for name in ("l1", "l1_beta"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not v >= 0 or math.isinf(v):
                raise UserError(f"{name.replace('_', '-')} must be a number >= 0, got {v!r}")
        if not isinstance(self.reg_keep, (int, float)) or not 0 < self.reg_keep < 1:
            raise UserError(f"reg-keep must lie in (0, 1), got {self.reg_keep!r}")
        check_imgsz(self.imgsz, "imgsz")
        if not is_int(self.batch) or self.batch < 1:
            raise UserError(f"batch must be an integer >= 1, got {self.batch!r}")
        if not is_int(self.workers) or self.workers < 0:
            raise UserError(f"workers must be an integer >= 0, got {self.workers!r}")
        if "amp" in self.train_args and self.train_args["amp"] not in (False, "fp32"):
            raise UserError("sparse training runs without AMP; amp cannot be turned on")


def l1_lambda(l1: float, epoch: int, epochs: int) -> float:
    """The L1 penalty factor of epoch `epoch` (0-based): `l1 * (1 - 0.9 * epoch / epochs)`."""
    return l1 * (1 - 0.9 * epoch / epochs)


def growing_lambda(l1: float, epoch: int) -> float:
    """The growing-regularisation L2 factor of epoch `epoch` (0-based): `l1 * (epoch + 1)`."""
    return l1 * (epoch + 1)


def prunable_bn_masks(model: nn.Module, graph=None) -> dict[str, torch.Tensor]:
    """{BatchNorm path: boolean mask of its channels that belong to prunable groups}, for every such BatchNorm."""
    from autoprune.channels import analyze

    graph = graph or analyze(model)
    modules = dict(model.named_modules(remove_duplicate=False))
    masks: dict[str, torch.Tensor] = {}
    for g in graph.groups:
        for pi in g.parts:
            part = graph.parts[pi]
            for prod in part.producers:
                p = graph.producers[prod]
                if p.bn is None:
                    continue
                m = masks.setdefault(p.bn, torch.zeros(modules[p.bn].num_features, dtype=torch.bool))
                m[p.offset : p.offset + part.size] = True
    return masks


def prunable_gammas(model: nn.Module, masks: dict[str, torch.Tensor] | None = None) -> torch.Tensor:
    """|gamma| of every prunable channel, flattened (float32, CPU)."""
    masks = masks if masks is not None else prunable_bn_masks(model)
    modules = dict(model.named_modules(remove_duplicate=False))
    parts = [modules[path].weight.detach().float().abs().cpu()[m] for path, m in masks.items()]
    return torch.cat(parts) if parts else torch.zeros(0)


def share_below(values: torch.Tensor, threshold: float = GAMMA_THRESHOLD) -> float:
    return float((values < threshold).float().mean()) if values.numel() else 0.0


class SparsityPenalty:
    """Ultralytics trainer callbacks that add the sparsity penalty's gradient through tensor hooks on BN weights.

    Attach with `attach(trainer)`; `history` records (epoch, lambda on gamma, lambda on beta). `penalised` maps BN
    paths to the channel masks the penalty applies to.
    """

    def __init__(self, settings: SparsifySettings, penalised: dict[str, torch.Tensor]):
        self.settings = settings
        self.penalised = penalised
        self.lam = 0.0
        self.lam_beta = 0.0
        self.history: list[tuple[int, float, float]] = []
        self._hooks: list = []

    def lambdas(self, epoch: int, epochs: int) -> tuple[float, float]:
        s = self.settings
        if s.growing_reg:
            return growing_lambda(s.l1, epoch), growing_lambda(s.l1_beta, epoch)
        return l1_lambda(s.l1, epoch, epochs), l1_lambda(s.l1_beta, epoch, epochs)

    def attach(self, trainer) -> None:
        trainer.add_callback("on_train_start", self.on_train_start)
        trainer.add_callback("on_train_epoch_start", self.on_train_epoch_start)
        trainer.add_callback("on_train_end", self.on_train_end)

    def on_train_start(self, trainer) -> None:
        self.remove()
        model = trainer.model.module if hasattr(trainer.model, "module") else trainer.model
        modules = dict(model.named_modules(remove_duplicate=False))
        growing = self.settings.growing_reg
        for path, mask in self.penalised.items():
            bn = modules[path]
            m = mask.to(bn.weight.device, bn.weight.dtype)

            def gamma_hook(grad, w=bn.weight, m=m):
                pen = w.detach() if growing else torch.sign(w.detach())
                return grad + self.lam * pen * m

            self._hooks.append(bn.weight.register_hook(gamma_hook))
            if self.settings.l1_beta > 0:

                def beta_hook(grad, b=bn.bias, m=m):
                    pen = b.detach() if growing else torch.sign(b.detach())
                    return grad + self.lam_beta * pen * m

                self._hooks.append(bn.bias.register_hook(beta_hook))

    def on_train_epoch_start(self, trainer) -> None:
        self.lam, self.lam_beta = self.lambdas(trainer.epoch, trainer.epochs)
        self.history.append((int(trainer.epoch), self.lam, self.lam_beta))

    def on_train_end(self, trainer) -> None:
        self.remove()

    def remove(self) -> None:
        for h in self._hooks:
            h.remove()
        self._hooks = []


def _trainer_class(model: nn.Module, task: str = "detect"):
    """The trainer of `task` (a DetectionTrainer, a SegmentationTrainer: `finetune.TRAINERS`) that trains `model`
    itself instead of building one from its YAML."""
    import importlib

    from autoprune.finetune import TRAINERS

    module, cls = TRAINERS[task]

    class SparsifyTrainer(getattr(importlib.import_module(module), cls)):
        def get_model(self, cfg=None, weights=None, verbose=True):
            return model

    return SparsifyTrainer


def growing_masks(model: nn.Module, graph, keep: float) -> dict[str, torch.Tensor]:
    """BN channel masks of the channels a uniform bn_scale prune at `keep` would remove (coupled parts together)."""
    from autoprune.pruner import conv_masks, keep_counts, rank_channels, select_indices

    indices = select_indices(graph, keep_counts(graph, keep), rank_channels(model, graph, "bn_scale"))
    bn_of = {p.conv: p.bn for p in graph.producers}
    modules = dict(model.named_modules(remove_duplicate=False))
    out = {}
    for conv, (out_mask, _) in conv_masks(graph, indices).items():
        bn = bn_of.get(conv)
        if bn is not None and not bool(out_mask.all()):
            out[bn] = ~out_mask[: modules[bn].num_features]
    return out


def plot_gamma_histogram(before: torch.Tensor, after: torch.Tensor, path: Path, title: str) -> Path:
    """Histogram of |gamma| before and after (log-spaced bins), the 1e-2 line, the share below it; PNG (Agg)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    lo = 1e-6
    hi = max(float(before.max()) if before.numel() else 1.0, float(after.max()) if after.numel() else 1.0, 2e-2) * 1.5
    bins = np.logspace(math.log10(lo), math.log10(hi), 60)
    fig, ax = plt.subplots(figsize=(7, 4), dpi=110)
    for values, label, color in ((before, "before", "#999999"), (after, "after", "#1f77b4")):
        v = values.clamp_min(lo).numpy()
        ax.hist(v, bins=bins, alpha=0.6, label=f"{label}: {100 * share_below(values):.1f}% below 1e-2", color=color)
    ax.axvline(GAMMA_THRESHOLD, color="#d62728", linestyle="--", linewidth=1)
    ax.set_xscale("log")
    ax.set_xlabel("|BN gamma| of prunable channels (values below 1e-6 drawn at 1e-6)")
    ax.set_ylabel("channels")
    ax.set_title(title, fontsize=10)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def sparsify(model, data, run_dir: Path, settings: SparsifySettings) -> dict:
    """Sparse-train `model` (what `--model` takes, None for the demo model, or a `LoadedModel`, which is trained in
    place) on `data` (a data YAML, None for the demo data, or a `DataConfig`) into `run_dir` (which must exist);
    return a summary. The user's files are only read.

    Example:
        >>> sparsify("best.pt", "data.yaml", new_run_dir("sparsify"), SparsifySettings(epochs=30, l1=1e-2))
    """
    from autoprune.channels import analyze
    from autoprune.data import DataConfig, check_task, load_data_config
    from autoprune.models import LoadedModel, head_classes, keypoint_shape, load_model, save_checkpoint

    cfg = data if isinstance(data, DataConfig) else load_data_config(data)
    loaded = model if isinstance(model, LoadedModel) else load_model(model)
    model = loaded.model
    check_task(cfg, loaded.task, keypoint_shape(model))  # e.g. a segment model trains on polygon labels
    nc = head_classes(model)
    if nc != cfg.nc:
        if loaded.ckpt:
            raise UserError(f"the model predicts {nc} classes but {cfg.yaml.name} has {cfg.nc}; use a model "
                            "trained on this dataset, or a model YAML")
        model = _from_yaml(model, cfg.nc)
    run_dir = Path(run_dir).resolve()
    graph = analyze(model)
    all_masks = prunable_bn_masks(model, graph)
    penalised = growing_masks(model, graph, settings.reg_keep) if settings.growing_reg else all_masks
    before = prunable_gammas(model, all_masks)
    penalty = SparsityPenalty(settings, penalised)

    spec = str(loaded.source)
    args = {
        "model": spec if spec.endswith((".yaml", ".yml", ".pt")) else "yolov8n.yaml",
        "data": str(cfg.yaml),
        "epochs": settings.epochs,
        "imgsz": settings.imgsz,
        "batch": settings.batch,
        "device": settings.device,
        "workers": settings.workers,
        "val": settings.val,
        "plots": False,
        "pretrained": False,
        "project": str(run_dir),
        "name": "train",
        "exist_ok": True,
        "verbose": False,
        **settings.train_args,
        "amp": False,
        "task": loaded.task,
    }
    trainer = _trainer_class(model, loaded.task)(overrides=args)
    penalty.attach(trainer)
    threads, deterministic = torch.get_num_threads(), torch.are_deterministic_algorithms_enabled()
    t0 = time.perf_counter()
    try:
        with offline_ultralytics():
            trainer.train()
    except (FileNotFoundError, RuntimeError, ValueError) as e:
        # a missing file, memory, or Ultralytics' refusal of a last batch of one image at a small size (BatchNorm)
        if ("out of memory" in str(e).lower() or isinstance(e, FileNotFoundError)
                or "gives BatchNorm a single value" in str(e)):
            raise UserError(f"training failed: {str(e).splitlines()[0]}") from e
        raise
    finally:
        penalty.remove()
        torch.set_num_threads(threads)
        torch.use_deterministic_algorithms(deterministic)
    seconds = time.perf_counter() - t0

    trained = trainer.ema.ema if trainer.ema is not None else model
    trained = trained.float().cpu().eval()
    after = prunable_gammas(trained, all_masks)
    summary = {
        "epochs": settings.epochs,
        "mode": "growing_reg" if settings.growing_reg else "l1",
        "l1": settings.l1,
        "l1_beta": settings.l1_beta,
        "lambdas": [{"epoch": e, "gamma": lg, "beta": lb} for e, lg, lb in penalty.history],
        "prunable_gammas": int(before.numel()),
        "gamma_share_below": {"threshold": GAMMA_THRESHOLD, "before": share_below(before), "after": share_below(after)},
        "seconds": round(seconds, 1),
    }
    if settings.growing_reg:
        sel = prunable_gammas(model, penalised)  # hooks are gone; `model` is the trained model itself
        summary["penalised_channels"] = int(sel.numel())
        summary["penalised_share_below"] = share_below(prunable_gammas(trained, penalised))
    ckpt = save_checkpoint(trained, run_dir / "sparse.pt", base_ckpt=loaded.ckpt,
                           meta={"source": loaded.source, "source_fingerprint": loaded.fingerprint,
                                 "sparsify": {**_plain(asdict(settings)), "gamma_share_below": summary[
                                     "gamma_share_below"]}})
    title = (f"{Path(spec).name}: {summary['mode']} l1={settings.l1:g}, {settings.epochs} epochs; "
             f"|gamma| < 1e-2: {100 * share_below(before):.1f}% -> {100 * share_below(after):.1f}%")
    plot = plot_gamma_histogram(before, after, run_dir / "gamma_hist.png", title)
    summary.update(checkpoint=str(ckpt), histogram=str(plot), train_dir=str(Path(trainer.save_dir)))
    return summary


def _from_yaml(model: nn.Module, nc: int) -> nn.Module:
    """The model's YAML rebuilt with `nc` classes (reproducible random weights, the same model class), for training
    on other data."""
    state = torch.random.get_rng_state()
    torch.manual_seed(0)
    try:
        return type(model)(dict(model.yaml), nc=nc, verbose=False).float()
    finally:
        torch.random.set_rng_state(state)


def _plain(v):
    if isinstance(v, dict):
        return {str(k): _plain(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_plain(x) for x in v]
    return v if v is None or isinstance(v, (bool, int, float, str)) else str(v)


__all__ = [
    "GAMMA_THRESHOLD",
    "SparsifySettings",
    "SparsityPenalty",
    "growing_lambda",
    "l1_lambda",
    "plot_gamma_histogram",
    "prunable_bn_masks",
    "prunable_gammas",
    "share_below",
    "sparsify",
]
