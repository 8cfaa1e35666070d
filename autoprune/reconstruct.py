"""Feature-map reconstruction after pruning: refit each conv that lost input channels by least squares.

After channels are removed, a conv that read them sees fewer inputs. Its weights can be refit so that its output on
calibration images matches the unpruned model's output at the same place (ThiNet, Luo et al. 2017; He et al. 2017,
"Channel Pruning for Accelerating Very Deep Neural Networks"). Here, for every conv whose input channels were pruned
(a "consumer" in `autoprune.channels`; depthwise convs only pass channels through and are left alone):

    min_{W, b}  sum_samples || Y - (X W + b) ||^2 + lam * ||W||^2

- `X`: the conv's input in the PRUNED model, after every earlier conv has been refit (convs are visited in execution
  order), so errors do not compound; for a k x k conv, the k x k patches (`unfold`) at the sampled output positions.
- `Y`: the UNPRUNED model's output of the same conv (before its BatchNorm), restricted to the output channels the
  pruned conv kept.
- `b`: an intercept, not regularised. It subsumes the pruner's folding of removed channels' constants.
- `lam = ridge * trace(Cov(X)) / dim(X)`: ridge scaled to the data, for stability when `X` is rank-deficient.

BatchNorm stays consistent because the fit is done before the BN, in the original conv's output space: with the
BN's gamma, beta and variance unchanged for the kept channels, `BN_pruned(W x) = BN_orig(W x + b)` when the pruned
BN's running mean is set to `mean_orig - b` (+ the conv's own bias, if it has one). That eval-mode function is then
restated with the refit conv's own output statistics as the running mean and variance, gamma and beta compensating
(`_restate_bn`): the least-squares prediction varies less than its target, and training-mode BatchNorm (a finetune)
or BN recalibration, which normalise with the true statistics, would otherwise scale it back up and undo most of
the refit. A conv without a BN (the head's last convs) takes `b` as its bias. Nothing is folded into the conv
weights, so the model keeps its stock structure and BN recalibration or finetuning afterwards work as usual.

Transposed convs that lost inputs (Proto's upsampling, YOLOv6's) are not refit: their stride cell's positions read
the same input pixel through different kernel taps with one shared bias, a fit of another form. They keep the
pruner's weights (with the removed channels' mean folded in) and are listed in `Reconstruction.unfitted`.

Memory: each conv's fit uses at most `max_samples` output positions in all, drawn uniformly (seeded) from all
positions of all calibration batches (`max_samples // batches` per batch); only those patches are gathered, never a
whole unfolded map. A fit holds its samples (`max_samples x (dim + out_channels)` float32, `dim = in_channels * k * k`,
e.g. 1152 for a 3x3 conv reading 128 channels: 45 MB at 8192 samples) and its normal equations (`dim x dim` float64,
10 MB there), one conv at a time. The pass keeps, per calibration batch and per model, the layer
outputs later layers read (what Ultralytics' forward keeps), so memory grows with batches x batch size x image area.

Cost: each top-level layer runs once per batch for the unpruned model, and once per refit conv inside it plus once
more for the pruned model (the layer's input is cached), about 3-4 full forward passes per batch for a yolov8n.

Example:
    >>> graph = analyze(model)
    >>> indices = select_indices(graph, counts, rank_channels(model, graph, "l1"))
    >>> pruned = apply_indices(model, graph, indices)
    >>> result = reconstruct(model, pruned, graph, indices, evaluator.calibration_batches())
    >>> result.model  # a refit copy of `pruned`
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from copy import deepcopy
from dataclasses import dataclass, field

import torch
from torch import nn

from autoprune.channels import ChannelGraph
from autoprune.progress import Progress
from autoprune.pruner import conv_masks
from autoprune.wrappers import detection_model

__all__ = ["LayerFit", "Reconstruction", "feature_errors", "reconstruct"]


TRANSPOSED_UNFITTED = ("a transposed conv: each output position of a stride cell needs its own weights with one bias "
                      "shared by the cell, which this fit does not model; left as the pruner made it")


class _Stop(Exception):
    """Raised by a hook to end a forward pass once the tensor it wanted has been seen."""


def _images(batches: Iterable, device: torch.device) -> list[torch.Tensor]:
    """Float 0..1 image tensors from batches (collated dicts with "img", or tensors)."""
    out = []
    for b in batches:
        img = b["img"] if isinstance(b, dict) else b
        img = img.float() / 255 if img.dtype == torch.uint8 else img.float()
        out.append(img.to(device))
    if not out:
        raise ValueError("reconstruction needs at least one calibration batch")
    return out


@dataclass(frozen=True)
class LayerFit:
    """One refit conv.

    Attributes:
        conv: module path.
        samples: output positions used.
        dim: unknowns per output channel (input channels x kernel area).
        error_before: relative error of its output on the samples before the refit (sum of squared errors over the
            sum of squared deviations of the target from its mean), with earlier convs already refit. Measured in
            the original conv's output space, before the BN: errors of channels with a small BN scale weigh as much
            as others.
        error_after: the same after the refit.
    """

    conv: str
    samples: int
    dim: int
    error_before: float
    error_after: float


@dataclass
class Reconstruction:
    """What `reconstruct` returns: the refit model (a new copy), one `LayerFit` per refit conv, in order, and the
    layers that lost inputs but are left as pruned (`unfitted`: path -> why)."""

    model: nn.Module
    layers: list[LayerFit] = field(default_factory=list)
    unfitted: dict[str, str] = field(default_factory=dict)

    def summary(self) -> dict:
        """Mean relative layer errors before and after, the number of convs refit, and of those left unfitted (when
        any are)."""
        out = {"convs": len(self.layers)}
        if self.layers:
            out["mean_error_before"] = sum(f.error_before for f in self.layers) / len(self.layers)
            out["mean_error_after"] = sum(f.error_after for f in self.layers) / len(self.layers)
        if self.unfitted:
            out["unfitted"] = len(self.unfitted)
        return out


class _Runner:
    """Runs an Ultralytics DetectionModel layer by layer (as `_predict_once` does), keeping what later layers read."""

    def __init__(self, model: nn.Module, img: torch.Tensor):
        self.layers = model.model
        self.save = set(model.save)
        self.y: list = []
        self.x = img

    def input_of(self, i: int):
        f = self.layers[i].f
        if f == -1:
            return self.x
        return self.y[f] if isinstance(f, int) else [self.x if j == -1 else self.y[j] for j in f]

    def step(self, i: int) -> None:
        assert i == len(self.y)
        x = self.layers[i](self.input_of(i))
        self.y.append(x if i in self.save else None)
        self.x = x


def _execution_order(model: nn.Module, img: torch.Tensor, paths: set[str]) -> list[str]:
    """The order in which the convs in `paths` first run in a forward pass."""
    order: list[str] = []
    hooks = []
    modules = dict(model.named_modules(remove_duplicate=False))
    for p in paths:
        hooks.append(modules[p].register_forward_pre_hook(
            lambda m, i, p=p: order.append(p) if p not in order else None))
    try:
        with torch.no_grad():
            model(img[:1])
    finally:
        for h in hooks:
            h.remove()
    return order


def _positions(shape, cap: int, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """At most `cap` distinct output positions (n, y, x) of an (N, C, H, W) output, drawn uniformly."""
    n, _, h, w = shape
    total = n * h * w
    idx = torch.randperm(total, generator=gen)[:cap] if cap < total else torch.arange(total)
    return idx // (h * w), (idx % (h * w)) // w, idx % w


def conv_patches(x: torch.Tensor, conv: nn.Conv2d, pos) -> torch.Tensor:
    """The input patches of `conv` at output positions `pos`: (P, C * kh * kw), in the weight's flattening order."""
    n, oy, ox = (t.to(x.device) for t in pos)
    kh, kw = conv.kernel_size
    sh, sw = conv.stride
    dh, dw = conv.dilation
    ph, pw = conv.padding
    if kh == kw == 1 and ph == pw == 0:
        return x[n, :, oy * sh, ox * sw]
    xp = nn.functional.pad(x, (pw, pw, ph, ph))
    cols = [xp[n, :, oy * sh + i * dh, ox * sw + j * dw] for i in range(kh) for j in range(kw)]  # each (P, C)
    return torch.stack(cols, dim=2).reshape(len(n), -1)  # (P, C, kh*kw) -> C-major like weight.reshape(out, -1)


class _Stats:
    """Normal equations of one conv's least-squares fit, accumulated over batches (float64), and the samples
    themselves (float32, at most `max_samples` rows: the memory cap) for measuring the fit's error exactly."""

    def __init__(self, dim: int, out: int):
        self.n = 0
        self.xx = torch.zeros(dim, dim, dtype=torch.float64)
        self.x = torch.zeros(dim, dtype=torch.float64)
        self.xy = torch.zeros(dim, out, dtype=torch.float64)
        self.y = torch.zeros(out, dtype=torch.float64)
        self.samples: list[tuple[torch.Tensor, torch.Tensor]] = []

    def add(self, x: torch.Tensor, y: torch.Tensor) -> None:
        x, y = x.float().cpu(), y.float().cpu()
        self.samples.append((x, y))
        x, y = x.double(), y.double()
        self.n += x.shape[0]
        self.xx += x.T @ x
        self.x += x.sum(0)
        self.xy += x.T @ y
        self.y += y.sum(0)

    def relative_error(self, w: torch.Tensor, b: torch.Tensor) -> float:
        """Sum of squared errors of predicting y by x @ w + b over the sum of squared deviations of y from its mean
        (its total sum of squares when y is constant)."""
        my = self.y / self.n
        sse = dev = total = 0.0
        for x, y in self.samples:
            y = y.double()
            sse += float((y - x.double() @ w - b).pow(2).sum())
            dev += float((y - my).pow(2).sum())
            total += float(y.pow(2).sum())
        denom = dev if dev > 1e-12 * total else total
        return sse / denom if denom > 0 else 0.0

    def input_moments(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(mean, covariance) of the inputs x over the samples."""
        mx = self.x / self.n
        return mx, self.xx / self.n - torch.outer(mx, mx)

    def solve(self, ridge: float) -> tuple[torch.Tensor, torch.Tensor]:
        mx, cxx = self.input_moments()
        my = self.y / self.n
        cxy = self.xy / self.n - torch.outer(mx, my)
        dim = cxx.shape[0]
        lam = ridge * float(torch.trace(cxx)) / dim
        lam = max(lam, 1e-12)
        w = torch.linalg.solve(cxx + lam * torch.eye(dim, dtype=cxx.dtype), cxy)
        return w, my - mx @ w


def reconstruct(
    original: nn.Module,
    pruned: nn.Module,
    graph: ChannelGraph,
    indices: Mapping[str, list[torch.Tensor]],
    batches: Iterable,
    *,
    ridge: float = 1e-3,
    max_samples: int = 8192,
    seed: int = 0,
) -> Reconstruction:
    """Refit the convs of `pruned` that lost input channels so their outputs match `original`'s (see module doc).

    `pruned` must be `apply_indices(original, graph, indices)` (or `prune_to_counts` with the same choice); `batches`
    are calibration images (collated dicts with "img", uint8 or float, or image tensors). Neither model is changed:
    the result holds a refit copy of `pruned`. Runs on `pruned`'s device.

    Example:
        >>> result = reconstruct(model, pruned, graph, indices, evaluator.calibration_batches())
        >>> result.summary()["mean_error_after"] < result.summary()["mean_error_before"]
        True
    """
    if not ridge >= 0 or math.isinf(ridge):
        raise ValueError(f"ridge must be a finite number >= 0, got {ridge}")
    if max_samples < 1:
        raise ValueError(f"max_samples must be at least 1, got {max_samples}")
    orig = detection_model(original)
    model = deepcopy(detection_model(pruned))
    device = next(model.parameters()).device
    imgs = _images(batches, device)
    masks = conv_masks(graph, indices)
    depthwise = {p.conv for p in graph.producers if p.depthwise}
    targets = {path for path, (_, im) in masks.items() if path not in depthwise and not bool(im.all())}
    bn_of = {p.conv: p.bn for p in graph.producers}
    om = dict(orig.named_modules(remove_duplicate=False))
    pm = dict(model.named_modules(remove_duplicate=False))
    result = Reconstruction(model=model)
    for path in list(targets):
        m = pm[path]
        if isinstance(m, nn.ConvTranspose2d):
            targets.discard(path)
            result.unfitted[path] = TRANSPOSED_UNFITTED
        elif not isinstance(m, nn.Conv2d) or m.padding_mode != "zeros" or isinstance(m.padding, str) or m.groups != 1:
            targets.discard(path)  # not a plain dense conv with zero padding (Classify's linear layer): leave it
    if not targets:
        return result

    modes = (orig.training, model.training)
    orig.eval()
    model.eval()
    bar = None
    try:
        with torch.no_grad():
            order = _execution_order(model, imgs[0], targets)
            bar = Progress("refitting the convs that lost inputs", total=len(order), unit="convs")
            by_layer: dict[int, list[str]] = {}
            for path in order:
                by_layer.setdefault(int(path.split(".")[1]), []).append(path)
            cap = max(1, max_samples // len(imgs))  # per batch, so at most max_samples in all
            orig_runs = [_Runner(orig, x) for x in imgs]
            pruned_runs = [_Runner(model, x) for x in imgs]
            for i in range(len(model.model)):
                convs = by_layer.get(i, [])
                if not convs:
                    for r in orig_runs + pruned_runs:
                        r.step(i)
                    continue
                # Targets: the unpruned convs' outputs at sampled positions, in one pass of the layer per batch.
                wanted: dict[str, list] = {c: [] for c in convs}  # conv -> per batch (positions, Y samples)
                for b, r in enumerate(orig_runs):
                    hooks = []
                    for k, c in enumerate(convs):
                        out_mask = masks[c][0]

                        def grab(m, inp, out, c=c, k=k, out_mask=out_mask, b=b):
                            gen = torch.Generator().manual_seed(seed * 1_000_003 + i * 10_007 + k * 101 + b)
                            pos = _positions(out.shape, cap, gen)
                            n, y, x = (t.to(out.device) for t in pos)
                            wanted[c].append((pos, out[n, :, y, x][:, out_mask.to(out.device)]))

                        hooks.append(om[c].register_forward_hook(grab))
                    try:
                        r.step(i)
                    finally:
                        for h in hooks:
                            h.remove()
                for c in convs:
                    result.layers.append(_refit(c, pm, om, bn_of.get(c), masks[c][0], pruned_runs, i, wanted[c], ridge))
                    del wanted[c]
                    bar.update()
                for r in pruned_runs:
                    r.step(i)
        bar.close()
    finally:
        if bar is not None:
            bar.close(ok=False)  # still open: the refit raised, and leaves no line
        orig.train(modes[0])
        model.train(modes[1])
    return result


def _restate_bn(bn: nn.BatchNorm2d, *, mean: torch.Tensor, stats: _Stats, w: torch.Tensor, bias: torch.Tensor):
    """Give `bn` the running mean `mean` (the refit's intercept folded in) as an eval-mode function, stated with the
    refit conv's true output statistics.

    The least-squares prediction `x @ w` varies less than the output it predicts (it is a projection), so its
    variance is below the BN's running variance, which the eval-mode function keeps. BatchNorm in training mode (a
    finetune) or BN recalibration normalises with the true statistics instead and blows the prediction back up:
    on the demo at 50% of the GFLOPs, recalibration took the refit's proxy mAP50-95 from 0.46 to 0.37. So the
    running statistics become the output's own (mean m1, variance v1, over the sampled positions), and gamma and
    beta absorb the change: gamma (z - m0) / s0 + beta == gamma' (z - m1) / s1 + beta' with gamma' = gamma s1 / s0,
    beta' = beta + gamma (m1 - m0) / s0. The eval-mode function is unchanged; training mode now computes it too.
    A BatchNorm without gamma and beta cannot absorb the change and only gets `mean`.
    """
    if not bn.affine:
        bn.running_mean.copy_(mean)
        return
    mx, cxx = stats.input_moments()
    m1 = mx @ w + bias
    v1 = ((cxx @ w) * w).sum(0).clamp_min(0)
    s0 = (bn.running_var.detach().double().cpu() + bn.eps).sqrt()
    s1 = (v1 + bn.eps).sqrt()
    gamma, beta = bn.weight.detach().double().cpu(), bn.bias.detach().double().cpu()
    bn.weight.copy_(gamma * s1 / s0)  # copy_ casts to the parameter's dtype and device
    bn.bias.copy_(beta + gamma * (m1 - mean) / s0)
    bn.running_mean.copy_(m1)
    bn.running_var.copy_(v1)


def _refit(path, pm, om, bn_path, out_mask, runs, layer, wanted, ridge) -> LayerFit:
    conv = pm[path]
    dim = conv.weight[0].numel()
    stats = _Stats(dim, conv.out_channels)
    for r, (pos, y) in zip(runs, wanted):
        seen = {}

        def take(m, inp):
            seen["x"] = inp[0]
            raise _Stop

        h = conv.register_forward_pre_hook(take)
        try:
            r.layers[layer](r.input_of(layer))
        except _Stop:
            pass
        finally:
            h.remove()
        stats.add(conv_patches(seen["x"], conv, pos), y)

    # The pruned layer in the original conv's output space: W0 x + b0 (see the module docstring).
    w0 = conv.weight.detach().double().cpu().reshape(conv.out_channels, -1).T
    bias = (conv.bias.detach().double().cpu() if conv.bias is not None
            else torch.zeros(conv.out_channels, dtype=torch.float64))
    if bn_path is not None:
        bn_p, bn_o = pm[bn_path], om[bn_path]
        m_orig = bn_o.running_mean.detach().double().cpu()[out_mask]
        b0 = bias - bn_p.running_mean.detach().double().cpu() + m_orig
    else:
        b0 = bias
    w, b = stats.solve(ridge)
    before, after = stats.relative_error(w0, b0), stats.relative_error(w, b)
    with torch.no_grad():
        conv.weight.copy_(w.T.reshape(conv.weight.shape).to(conv.weight.dtype))
        if bn_path is not None:
            _restate_bn(bn_p, mean=m_orig + bias - b, stats=stats, w=w, bias=bias)
        elif conv.bias is not None:
            conv.bias.copy_(b.to(conv.bias.dtype))
        else:
            conv.bias = nn.Parameter(b.to(conv.weight.dtype).to(conv.weight.device),
                                     requires_grad=conv.weight.requires_grad)
    return LayerFit(conv=path, samples=stats.n, dim=dim, error_before=before, error_after=after)


# ---------------------------------------------------------------------------------------------------------------------
# Measuring


def _detect_io(model: nn.Module, img: torch.Tensor) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """(The head's input feature maps, its raw outputs: box and class maps per level, or Classify's logits) for one
    batch, in eval mode."""
    head = model.model[-1]
    seen: dict = {}

    def grab(m, inp):
        x = inp[0]
        seen.setdefault("x", [t.clone() for t in x] if isinstance(x, (list, tuple)) else [x.clone()])

    h = head.register_forward_pre_hook(grab)
    try:
        out = model(img)
    finally:
        h.remove()
    preds = out[1] if isinstance(out, tuple) else out
    if isinstance(preds, dict) and "one2many" in preds:
        preds = preds["one2many"]
    raw = [preds["boxes"], preds["scores"]] if isinstance(preds, dict) else [preds] if torch.is_tensor(preds) else []
    return seen["x"], raw


def feature_errors(
    original: nn.Module, pruned: nn.Module, graph: ChannelGraph, indices: Mapping[str, list[torch.Tensor]], batches
) -> dict:
    """Relative MSE of `pruned` against `original` on `batches`: at the Detect inputs and at the head's raw outputs.

    `detect_inputs`: per level, sum of squared differences over the sum of squares of the original, on the channels
    the pruned model kept (removed channels have no counterpart); `detect_inputs_mean` their mean. `head_outputs`:
    the same over the head's raw box and class maps (all channels: they are never pruned).

    Example:
        >>> feature_errors(model, pruned, graph, indices, batches)["detect_inputs_mean"]
        0.21
    """
    orig, model = detection_model(original), detection_model(pruned)
    device = next(model.parameters()).device
    masks = conv_masks(graph, indices)
    head_path = f"model.{len(orig.model) - 1}"
    head = orig.model[-1]  # the first conv reading each head input: its kept input channels are the input's
    first_box = ([f"{head_path}.cv2.{k}.0.conv" for k in range(head.nl)] if hasattr(head, "nl")
                 else [f"{head_path}.conv.conv"])
    modes = (orig.training, model.training)
    orig.eval()
    model.eval()
    num = den = None
    hnum = hden = 0.0
    try:
        with torch.no_grad():
            for img in _images(batches, device):
                xo, ro = _detect_io(orig, img.to(next(orig.parameters()).device))
                xp, rp = _detect_io(model, img)
                if num is None:
                    num, den = [0.0] * len(xo), [0.0] * len(xo)
                for k, (a, p) in enumerate(zip(xo, xp)):
                    keep = masks[first_box[k]][1] if first_box[k] in masks else torch.ones(a.shape[1], dtype=torch.bool)
                    a = a[:, keep.to(a.device)].to(p.device)
                    num[k] += float((p - a).pow(2).sum())
                    den[k] += float(a.pow(2).sum())
                for a, p in zip(ro, rp):
                    hnum += float((p - a.to(p.device)).pow(2).sum())
                    hden += float(a.pow(2).sum())
    finally:
        orig.train(modes[0])
        model.train(modes[1])
    levels = [n / d if d else 0.0 for n, d in zip(num, den)]
    return {
        "detect_inputs": levels,
        "detect_inputs_mean": sum(levels) / len(levels),
        "head_outputs": hnum / hden if hden else 0.0,
    }
