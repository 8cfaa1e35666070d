"""Channel importance criteria: a registry by name; each one scores the channels of a whole coupled group.

An importance is one call, `criterion(ctx, group) -> [scores per part]`: a tensor of `group.size` scores for each part
of the group, higher meaning more important. Which channels survive is then the top-k of each part.

Scores combine every member of a group: the output rows of its producers, their BatchNorm gammas and the input
columns of its consumers (a transposed conv's weight, stored (in, out, kh, kw), is read as (out, in, kh, kw):
`conv_layout`). Removing channel k of a part removes all of them at once.

The criteria, and what their scores mean across groups (what the `global` strategy thresholds; see
`autoprune.strategies`):

- `l1`, `l2`: the p-norm of each member's slice. Members differ in scale (a 3x3 conv with 256 inputs has larger
  norms than a 1x1 conv with 16), so each member's scores are divided by their mean before members are averaged:
  every part's scores have mean 1, and a global threshold t removes the channels below t times their part's mean
  (Torch-Pruning's default `normalizer="mean"`).
- `bn_scale`: network slimming (Liu et al. 2017): |gamma| of the producers' BatchNorms, summed over the producers of
  a residual part. Raw, so a global threshold compares gammas directly, as the paper does after sparse training.
- `lamp`: LAMP (Lee et al. 2021) on the squared `l2` scores s: with the group's channels (all parts) sorted
  ascending, `s_k / sum(s_j for s_j >= s_k)`. Within a group it ranks like `l2`; across groups it is
  layer-adaptive: every group's strongest channel scores 1.
- `fpgm`: FPGM (He et al. 2019): each channel's summed Euclidean distance to the other channels of its part, per
  member (producer rows, consumer columns), mean-normalised and averaged like `l1`. A channel close to the
  geometric median is replaceable by the others and goes first.
- `taylor` (data): first-order Taylor (Molchanov et al. 2019, eq. 8): removing a channel zeroes the set S of its
  parameters (producer rows, gammas, consumer columns), which changes the loss by about -sum_S w * dL/dw; the score
  is the square of that sum, averaged over the calibration batches (each batch's own gradient, as the paper
  accumulates it over mini-batches). Squared loss units, comparable across groups. (The elementwise |w * dL/dw| of
  the mean gradient, Torch-Pruning's variant, averages the signal away on a converged model: at 40% of the demo's
  GFLOPs its global plan cut the P3 class branch to 8 channels and finetuned to 0.14 mAP50-95 against 0.42.)
- `hessian` (data): OBD's diagonal second-order saliency (LeCun et al. 1990), sum of 0.5 * H_ii * w_i^2 over the same
  parameters, with H_ii the empirical Fisher: the mean over calibration batches of the squared batch gradient of
  the (per-image mean) detection loss. Raw, loss units.
- `random`: uniform scores from a generator seeded by `ctx.extra["seed"]` (default 0) and the group id, so a
  group's ranking is the same whatever other groups are scored. A baseline.

Data criteria read gradients from `ScoringContext.grads` / `extra["fisher"]`, which `accumulate_gradients`
fills from calibration batches; without them they raise a `UserError` that says to pass data.

Example:
    >>> from autoprune.importance import CRITERIA
    >>> sorted(CRITERIA)
    ['bn_scale', 'fpgm', 'hessian', 'l1', 'l2', 'lamp', 'random', 'taylor']
"""

from __future__ import annotations

import zlib
from collections.abc import Callable, Iterable, Sequence
from copy import deepcopy
from dataclasses import dataclass, field

import torch
from torch import nn

from autoprune.channels import ChannelGraph, ChannelGroup
from autoprune.errors import UserError
from autoprune.progress import progress
from autoprune.wrappers import detection_model


@dataclass
class ScoringContext:
    """What a criterion may look at: the model's modules by path, the graph, and optional per-parameter data.

    `grads` maps a parameter's path (`model.2.cv1.conv.weight`) to the gradient accumulated on calibration batches,
    for data-driven criteria; `extra` holds whatever else such a criterion precomputes.
    """

    modules: dict[str, nn.Module]
    graph: ChannelGraph
    grads: dict[str, torch.Tensor] = field(default_factory=dict)
    extra: dict = field(default_factory=dict)

    @classmethod
    def for_model(cls, model: nn.Module, graph: ChannelGraph) -> ScoringContext:
        return cls(modules=dict(model.named_modules(remove_duplicate=False)), graph=graph)

    def members(self, part_index: int):
        """Yield `(kind, module path, weights)` for every member of a part, channel dimension first.

        kind is "out" (a producer's output rows, depthwise included), "in" (a consumer's input columns) or "bn"
        (a producer's BatchNorm gamma). "in" weights, and a transposed conv's "out" weights, are transposed views:
        reduce them with `channel_norms`, which does not copy.
        """
        for kind, path, w, _ in self.members_with(part_index, {}):
            yield kind, path, w

    def members_with(self, part_index: int, store: dict[str, torch.Tensor], *, as_weights: bool = True):
        """Like `members`, with each member's slice of a per-parameter tensor: `(kind, path, weights, data)`.

        `store` maps parameter paths (`model.2.cv1.conv.weight`) to tensors shaped like the parameter, e.g.
        `self.grads` or `self.extra["fisher"]`; `data` is sliced and viewed exactly like `weights` (None when the
        parameter is absent from `store`). With `as_weights=False` the tensors are laid out output channels first,
        input channels second whatever the layer (`taylor_terms`), and are not turned like a transposed conv's.
        """
        part = self.graph.parts[part_index]
        n = part.size

        def weight(path: str) -> tuple[torch.Tensor, torch.Tensor | None]:
            """The layer's weight and its store entry, both output channels first."""
            layer, t = self.modules[path], store.get(f"{path}.weight")
            return conv_layout(layer, layer.weight.detach()), t if t is None or not as_weights else conv_layout(layer, t)

        for pi in part.producers:
            p = self.graph.producers[pi]
            w, t = weight(p.conv)
            yield "out", p.conv, w[p.offset : p.offset + n], None if t is None else t[p.offset : p.offset + n]
            if p.bn is not None:
                t = store.get(f"{p.bn}.weight")
                yield "bn", p.bn, self.modules[p.bn].weight.detach()[p.offset : p.offset + n], \
                    None if t is None else t[p.offset : p.offset + n]
        for c in part.consumers:
            w, t = weight(c.conv)
            yield "in", c.conv, w[:, c.offset : c.offset + n].transpose(0, 1), \
                None if t is None else t[:, c.offset : c.offset + n].transpose(0, 1)


def conv_layout(layer: nn.Module, t: torch.Tensor) -> torch.Tensor:
    """`t`, a layer's weight or a tensor shaped like it, with output channels first and input channels second: a
    transposed conv's (in, out, kh, kw) is viewed as (out, in, kh, kw); any other weight is returned as it is."""
    return t.transpose(0, 1) if isinstance(layer, nn.ConvTranspose2d) else t


def channel_norms(w: torch.Tensor, p: int) -> torch.Tensor:
    """The p-norm of each slice `w[k]` (channel dimension first), without copying a transposed view."""
    dims = tuple(range(1, w.dim()))
    if p == 1:
        return w.abs().sum(dims)
    return w.pow(2).sum(dims).sqrt() if p == 2 else w.abs().pow(p).sum(dims).pow(1 / p)


Criterion = Callable[[ScoringContext, ChannelGroup], list[torch.Tensor]]
CRITERIA: dict[str, Criterion] = {}
DATA_CRITERIA: set[str] = set()  # criteria that need gradients from calibration batches


def register(name: str, *, needs_data: bool = False):
    """Register an importance criterion under `name` (a decorator)."""

    def deco(fn: Criterion) -> Criterion:
        CRITERIA[name] = fn
        if needs_data:
            DATA_CRITERIA.add(name)
        return fn

    return deco


def get_criterion(name: str) -> Criterion:
    """The criterion registered as `name`; a `UserError` naming the known ones otherwise."""
    try:
        return CRITERIA[name]
    except KeyError:
        raise UserError(f"unknown criterion {name!r}; choose one of: {', '.join(sorted(CRITERIA))}") from None


def check_calibration(criterion: str, calib_batches: int) -> None:
    """A `UserError` when a data criterion would get no calibration batches to take gradients on (checked before
    any work, so nothing is left half made)."""
    if criterion in DATA_CRITERIA and calib_batches == 0:
        raise UserError(f"--criterion {criterion} ranks channels by gradients on the calibration batches, and "
                        f"--calib-batches 0 leaves none: pass --calib-batches N or a criterion that needs no data "
                        f"(l1, l2, lamp, bn_scale, fpgm, random)")


def _normalized_mean(vectors: list[torch.Tensor]) -> torch.Tensor:
    """Average member score vectors after scaling each to mean 1 (members with all-zero scores are skipped)."""
    acc, count = None, 0
    for v in vectors:
        v = v.float()
        m = v.mean()
        if m <= 0:
            continue
        acc = v / m if acc is None else acc + v / m
        count += 1
    if acc is None:
        return torch.zeros_like(vectors[0], dtype=torch.float32) if vectors else torch.zeros(0)
    return acc / count


def _norm_criterion(p: int) -> Criterion:
    def criterion(ctx: ScoringContext, group: ChannelGroup) -> list[torch.Tensor]:
        out = []
        for pi in group.parts:
            vecs = [channel_norms(w, p) for kind, _, w in ctx.members(pi) if kind in ("out", "in")]
            out.append(_normalized_mean(vecs))
        return out

    return criterion


register("l1")(_norm_criterion(1))
register("l2")(_norm_criterion(2))


@register("bn_scale")
def bn_scale(ctx: ScoringContext, group: ChannelGroup) -> list[torch.Tensor]:
    """Network slimming: |gamma| of the producers' BatchNorms, summed over the producers of a coupled part."""
    out = []
    for pi in group.parts:
        gammas = [w.abs().float() for kind, _, w in ctx.members(pi) if kind == "bn"]
        out.append(torch.stack(gammas).sum(0) if gammas else CRITERIA["l1"](ctx, group)[group.parts.index(pi)])
    return out


@register("lamp")
def lamp(ctx: ScoringContext, group: ChannelGroup) -> list[torch.Tensor]:
    """LAMP (Lee et al. 2021): squared L2 scores normalised by the sum of the scores not below them, over the group.

    The magnitude of a channel is its `l2` score (producer rows and consumer columns, each member scaled to mean 1,
    averaged), squared as LAMP squares weights; the LAMP normalisation then runs over all the group's channels.
    """
    flat = torch.cat(CRITERIA["l2"](ctx, group)).pow(2)
    order = flat.argsort(stable=True)  # ascending
    ranked = flat[order]
    suffix = ranked.flip(0).cumsum(0).flip(0)  # sum of the scores at or above each position
    out = torch.zeros_like(flat)
    out[order] = torch.where(suffix > 0, ranked / suffix.clamp_min(1e-30), torch.zeros_like(ranked))
    return list(out.split(group.size))


@register("fpgm")
def fpgm(ctx: ScoringContext, group: ChannelGroup) -> list[torch.Tensor]:
    """FPGM (He et al. 2019): each channel's summed distance to the other channels of its part, per member.

    A channel near the geometric median of its layer's filters is the most replaceable. Members are producer rows
    (filters) and consumer columns; each member's distances are scaled to mean 1 before members are averaged.
    """
    out = []
    for pi in group.parts:
        vecs = []
        for kind, _, w in ctx.members(pi):
            if kind not in ("out", "in"):
                continue
            f = w.reshape(w.shape[0], -1).float()
            vecs.append(torch.cdist(f.unsqueeze(0), f.unsqueeze(0)).squeeze(0).sum(1))
        out.append(_normalized_mean(vecs))
    return out


@register("random")
def random_scores(ctx: ScoringContext, group: ChannelGroup) -> list[torch.Tensor]:
    """Uniform random scores, reproducible: seeded by `ctx.extra["seed"]` (default 0) and the group id."""
    seed = int(ctx.extra.get("seed", 0))
    gen = torch.Generator().manual_seed((seed * 1_000_003 + zlib.crc32(group.id.encode())) % (2**63))
    return [torch.rand(group.size, generator=gen) for _ in group.parts]


def _require(ctx: ScoringContext, name: str, store: dict | None) -> dict:
    if not store:
        raise UserError(
            f"criterion {name!r} needs gradients of the detection loss on calibration data: pass --data (a detection "
            "data YAML), or batches= to rank_channels / accumulate_gradients in Python"
        )
    return store


@register("taylor", needs_data=True)
def taylor(ctx: ScoringContext, group: ChannelGroup) -> list[torch.Tensor]:
    """Group first-order Taylor: the mean over batches of (sum over the channel's rows, gammas, columns of w * g)^2."""
    grads = _require(ctx, "taylor", ctx.grads)
    terms = ctx.extra.get("taylor_terms") or taylor_terms(ctx.modules, [grads])
    rows, cols = terms["rows"], terms["cols"]
    out = []
    for pi in group.parts:
        total = None
        for (kind, path, _, r), (_, _, _, c) in zip(ctx.members_with(pi, rows, as_weights=False),
                                                    ctx.members_with(pi, cols, as_weights=False)):
            t = c if kind == "in" else r
            if t is None:
                raise KeyError(f"no gradient for {path}.weight; accumulate_gradients on this very model")
            total = t.float() if total is None else total + t.float()
        out.append(total.pow(2).mean(1).cpu())
    return out


def taylor_terms(modules: dict[str, nn.Module], batch_grads: Iterable[dict[str, torch.Tensor]]) -> dict[str, dict]:
    """Per-batch sums of w * g over each weight's output rows and input columns, for `taylor`.

    `{"rows": {path.weight: [out_channels, batches]}, "cols": {path.weight: [batches, in_channels]}}` (a transposed
    conv's too: `conv_layout`), laid out so that `ScoringContext.members_with(..., as_weights=False)` slices them
    like the weights ("out"/"bn" members read rows, "in" members read cols). `batch_grads` yields one gradient dict
    per batch (parameter path -> gradient shaped like it), and is read once: `accumulate_gradients` hands it each
    batch's gradients as they come.
    """
    rows: dict[str, list] = {}
    cols: dict[str, list] = {}
    for grads in batch_grads:
        for name, g in grads.items():
            mod, _, leaf = name.rpartition(".")
            if leaf != "weight" or mod not in modules:
                continue
            wg = conv_layout(modules[mod], modules[mod].weight.detach().float().cpu() * g.float().cpu())
            rows.setdefault(name, []).append(wg.reshape(wg.shape[0], -1).sum(1))
            if wg.dim() >= 2:
                cols.setdefault(name, []).append(wg.transpose(0, 1).reshape(wg.shape[1], -1).sum(1))
    return {"rows": {n: torch.stack(v, 1) for n, v in rows.items()},
            "cols": {n: torch.stack(v, 0) for n, v in cols.items()}}


@register("hessian", needs_data=True)
def hessian(ctx: ScoringContext, group: ChannelGroup) -> list[torch.Tensor]:
    """OBD saliency with the empirical Fisher as the Hessian diagonal: sum of 0.5 * F_ii * w_i^2, loss units."""
    fisher = _require(ctx, "hessian", ctx.extra.get("fisher"))
    out = []
    for pi in group.parts:
        total = torch.zeros(ctx.graph.parts[pi].size)
        for _, path, w, f in ctx.members_with(pi, fisher):
            if f is None:
                raise KeyError(f"no Fisher diagonal for {path}.weight; accumulate_gradients on this very model")
            total += (0.5 * f.float() * w.float().pow(2)).reshape(w.shape[0], -1).sum(1).cpu()
        out.append(total)
    return out


# ---------------------------------------------------------------------------------------------------------------------
# Gradients on calibration data, for the data criteria


def loss_ready_copy(
    model: nn.Module, device: torch.device | str | None = None, kpt_oks_sigmas: Sequence[float] | None = None
) -> nn.Module:
    """A float32 copy of a detection model that `model.loss(batch)` works on, the way the proxy prepares one.

    Ultralytics' criterion reads its gains from `model.args` (a checkpoint stores them as a dict, a YAML model has
    none); the copy gets Ultralytics' defaults with the model's own box/cls/dfl gains, and no cached criterion.
    `kpt_oks_sigmas` (a pose data YAML's) become the keypoint loss's sigmas, as Ultralytics' PoseTrainer sets them;
    without them the loss uses what the model carries.
    """
    from ultralytics.cfg import DEFAULT_CFG_DICT
    from ultralytics.utils import IterableSimpleNamespace

    m = deepcopy(detection_model(model)).float()
    if device is not None:
        m = m.to(device)
    old = getattr(m, "args", None)
    old = old if isinstance(old, dict) else vars(old) if hasattr(old, "__dict__") else {}
    hyp = {**DEFAULT_CFG_DICT, **{k: old[k] for k in ("box", "cls", "dfl") if old.get(k) is not None}}
    m.args = IterableSimpleNamespace(**hyp)
    m.criterion = None
    if kpt_oks_sigmas is not None:
        m.kpt_oks_sigmas = list(kpt_oks_sigmas)
    return m


def _loss_batch(b, device) -> dict:
    """A calibration batch (collated dict with uint8 or float images) as the float batch `model.loss` reads."""
    if not isinstance(b, dict) or not {"img", "cls"} <= set(b) or ("bboxes" in b) != ("batch_idx" in b):
        raise TypeError("a calibration batch is a dict with img and cls, and bboxes and batch_idx for objects "
                        "(ProxyEvaluator's batches)")
    img = b["img"]
    img = img.float() / 255 if img.dtype == torch.uint8 else img.float()
    out = {"img": img.to(device)}
    from autoprune.batches import TARGETS

    # a classification dataset's batches hold classes only; a segment dataset's masks, a pose dataset's keypoints
    for k in ("cls", "bboxes", "batch_idx", *TARGETS):
        if k in b:
            out[k] = b[k].to(device)
    return out


def accumulate_gradients(
    model: nn.Module,
    batches: Iterable[dict],
    ctx: ScoringContext,
    *,
    device: torch.device | str | None = None,
    kpt_oks_sigmas: Sequence[float] | None = None,
) -> ScoringContext:
    """Fill `ctx.grads` and `ctx.extra["fisher"]` from the task's loss of `model` on calibration `batches`.

    For every parameter: `grads[path]` is the mean over batches of the gradient of the per-image mean loss of the
    model's task (Ultralytics' `model.loss(batch)`, e.g. v8DetectionLoss with the model's box/cls/dfl gains, a
    classify model's cross-entropy; `batches.mean_loss`), and
    `extra["fisher"][path]` the mean of its square (the empirical Fisher at batch granularity, for `hessian`), and
    `extra["taylor_terms"]` each batch's sums of w * g over rows and columns (`taylor_terms`, for `taylor`).
    BatchNorms use their running statistics (the function the pruned model keeps), the head returns its training
    outputs. Works on a copy: `model` (its weights, `.grad`, buffers and attributes) is not changed. Batches are
    the collated dicts `ProxyEvaluator.calibration_batches()` returns; a pose dataset's `kpt_oks_sigmas` weight
    its keypoint loss (`loss_ready_copy`). Returns `ctx`.

    Example:
        >>> ctx = ScoringContext.for_model(model, graph)
        >>> accumulate_gradients(model, evaluator.calibration_batches(), ctx)
        >>> scores = CRITERIA["taylor"](ctx, graph.groups[0])
    """
    if device is None:
        p = next(detection_model(model).parameters())
        device = p.device
    from autoprune.batches import mean_loss
    from autoprune.models import head_classes

    work = loss_ready_copy(model, device, kpt_oks_sigmas)
    nc = head_classes(work)
    work.train()
    for m in work.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.eval()
    named = [(n, p) for n, p in work.named_parameters() if p.dtype.is_floating_point]
    for _, p in named:
        p.requires_grad_(True)
    total = {n: torch.zeros_like(p, device="cpu") for n, p in named}
    square = {n: torch.zeros_like(p, device="cpu") for n, p in named}
    count = 0

    def batch_gradients():
        """Each batch's gradients, summed into `total` and `square` on the way."""
        nonlocal count
        for b in progress(batches, "gradients for the channel ranking", unit="batches"):
            batch = _loss_batch(b, device)
            if batch["cls"].numel():
                data_nc = int(batch["cls"].max()) + 1
                if data_nc > nc:
                    raise UserError(f"the calibration data has class {data_nc - 1} but the model predicts "
                                    f"{nc} classes; use data with the model's classes")
            loss = mean_loss(work, batch)
            grads = torch.autograd.grad(loss, [p for _, p in named], allow_unused=True)
            got = {n: g.detach().cpu() for (n, _), g in zip(named, grads) if g is not None}
            for n, g in got.items():
                total[n] += g
                square[n] += g * g
            count += 1
            yield got

    terms = taylor_terms(dict(work.named_modules()), batch_gradients())
    if not count:
        raise UserError("no calibration batches to compute gradients from")
    ctx.grads.update({n: t / count for n, t in total.items()})
    ctx.extra["fisher"] = {n: t / count for n, t in square.items()}
    ctx.extra["taylor_terms"] = terms
    ctx.extra["gradient_batches"] = count
    return ctx


def score_groups(
    model: nn.Module, graph: ChannelGraph, groups: list[ChannelGroup], criterion: str = "l1", ctx=None
) -> dict[str, list[torch.Tensor]]:
    """Scores for each part of each group in `groups` with the named criterion: `{group id: [scores per part]}`."""
    fn = get_criterion(criterion)
    ctx = ctx or ScoringContext.for_model(model, graph)
    return {g.id: fn(ctx, g) for g in groups}
