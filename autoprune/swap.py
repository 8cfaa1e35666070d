"""Operator swaps: a k x k Ultralytics `Conv` replaced by a cheaper operator made of stock modules, fitted to it.

A **swap site** is an Ultralytics `Conv` (the class itself, not a subclass) with a square k x k kernel, k > 1, one
group, dilation 1 and the usual `k // 2` padding. Its id is its module path without `model.` (`"1"`, `"2.m.0.cv1"`).
The kinds (`KINDS`, each with an integer code, its index):

- `keep`: the conv as it is.
- `dws` (depthwise-separable): `nn.Sequential(DWConv(c1, c1, k, s, act=False), Conv(c1, c2, 1))`.
- `group2`, `group4`, `group8`: `Conv(c1, c2, k, s, g=G)`; only where c1 and c2 divide by G (after width pruning:
  a site whose pruned channels do not divide keeps its conv, and the costs count it so).
- `factor`: `nn.Sequential(Conv(c1, cm, (k, 1), (s, 1), act=False), Conv(cm, c2, (1, k), (1, s)))` with
  `cm = min(c1, c2)`; Ultralytics' `autopad` pads a (k, 1) kernel by (k // 2, 0), so the output has the original
  size, and the stride is split between the two convs.

The first stage of `dws` and `factor` has no activation (`act=False`, an `nn.Identity`), so a replacement is linear up
to its last activation, which is the original's: it can represent the original exactly when the original has that
structure (a rank-1 kernel per input channel for `dws`, a block-diagonal one for `group`, a separable one of rank at
most `cm` for `factor`).

**Initialization** (`swap_convs`), never a weight copy. From the weights alone (`W`, the conv with its BatchNorm
folded, the pre-activation the replacement must reproduce): `dws` takes per input channel the rank-1 SVD of
`W[:, i]` (the depthwise kernel is the first right singular vector, the pointwise column the scaled left one);
`group` the block-diagonal of `W`; `factor` the rank-`cm` SVD of `W` rearranged as a (c1 k) x (c2 k) matrix
(Jaderberg et al.'s separable scheme). Each is the least-squares fit of `W` itself. With calibration batches the
last stage (the pointwise conv, each group, the 1 x k conv) is then refit by least squares on the original layer's
real output (pre-activation, `reconstruct`'s ridge normal equations on sampled positions); the better of the two on
the calibration samples is kept, so the refit never loses to the SVD. Each stage's BatchNorm is restated on the
measured statistics of its conv's output, so BatchNorm recalibration afterwards leaves the fit in place.

**Plans** travel inside kept counts as `{"swap:<site id>": code}` (`swap_key`, `split_counts`), next to the channel
and depth entries, so a trial's `kept_channels` replays them. Order of operations (`candidate.build`): widths, then
depth, then swaps on the pruned model (a site inside a removed depth element is gone and skipped).

Example:
    >>> from autoprune.models import load_model
    >>> m = load_model("yolov8n.yaml").model
    >>> [s.id for s in find_sites(m)][:3]
    ['0', '1', '2.m.0.cv1']
    >>> swapped, report = swap_convs(m, {"1": "dws"})  # a new model; `m` is unchanged
"""

from __future__ import annotations

import copy
import fnmatch
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import torch
from torch import nn

from autoprune.errors import UserError

SWAP_PREFIX = "swap:"
KINDS = ("keep", "dws", "group2", "group4", "group8", "factor")  # the integer code of a kind is its index
GENE_ORDER = ("dws", "group8", "group4", "group2", "factor", "keep")  # a swap gene's values, cheapest first
GROUPS = {"group2": 2, "group4": 4, "group8": 8}


@dataclass(frozen=True)
class SwapSite:
    """One k x k `Conv` that a swap may replace (see the module docstring).

    Attributes:
        id: the Conv's path without `model.` (`"2.m.0.cv1"`).
        layer: the top-level layer it belongs to.
        k: kernel size; s: stride.
        c1, c2: input and output channels in the unpruned model.
        stem: the model's first conv (it reads the image). It takes no `dws`: Ultralytics reads a model's input
            channels from its first parameter (`get_flops`, `warmup`), which would become the depthwise weight.
    """

    id: str
    layer: int
    k: int
    s: int
    c1: int
    c2: int
    stem: bool = False

    @property
    def path(self) -> str:
        return f"model.{self.id}"

    @property
    def conv(self) -> str:
        """The nn.Conv2d's path, as the channel graph names it."""
        return f"model.{self.id}.conv"

    def reason(self, kind: str, c1: int | None = None, c2: int | None = None) -> str | None:
        """Why `kind` does not apply to this site at `c1` -> `c2` channels (default: the unpruned ones), or None."""
        c1, c2 = self.c1 if c1 is None else c1, self.c2 if c2 is None else c2
        g = GROUPS.get(kind)
        if g is not None and (c1 % g or c2 % g):
            return f"its channels {c1} -> {c2} do not divide by {g}"
        if kind == "dws" and self.stem:
            return ("it is the model's first conv (Ultralytics reads the input channels from the first weight, "
                    "which a depthwise conv would change)")
        return None

    def fits(self, kind: str, c1: int | None = None, c2: int | None = None) -> bool:
        """Whether `kind` applies to this site at `c1` -> `c2` channels (default: the unpruned ones)."""
        return self.reason(kind, c1, c2) is None


def swap_key(site_id: str) -> str:
    """The key of a site's swap code inside kept counts (`"swap:2.m.0.cv1"`)."""
    return SWAP_PREFIX + site_id


def split_counts(counts: Mapping) -> tuple[dict, dict[str, str]]:
    """(counts without swap entries, {site id: kind}) of kept counts that may hold swap entries (code 0 omitted)."""
    rest, swaps = {}, {}
    for k, v in counts.items():
        if isinstance(k, str) and k.startswith(SWAP_PREFIX):
            code = int(v)
            if not 0 <= code < len(KINDS):
                raise UserError(f"swap code {v!r} of {k!r} is not one of 0..{len(KINDS) - 1} ({', '.join(KINDS)})")
            if code:
                swaps[k[len(SWAP_PREFIX):]] = KINDS[code]
        else:
            rest[k] = v
    return rest, swaps


def _is_site(mod: nn.Module) -> bool:
    from ultralytics.nn.modules.conv import Conv

    if type(mod) is not Conv or not isinstance(getattr(mod, "conv", None), nn.Conv2d) or not hasattr(mod, "bn"):
        return False
    c = mod.conv
    kh, kw = c.kernel_size
    return (kh == kw > 1 and c.groups == 1 and c.dilation == (1, 1) and c.padding == (kh // 2, kw // 2)
            and c.stride[0] == c.stride[1])


def find_sites(model: nn.Module) -> list[SwapSite]:
    """Every swap site of `model` (a DetectionModel or a wrapper), in module order."""
    from autoprune.wrappers import detection_model

    net = detection_model(model)
    first = next(net.parameters(), None)
    sites = []
    for path, mod in net.named_modules():
        if path.startswith("model.") and _is_site(mod):
            c = mod.conv
            sites.append(SwapSite(id=path.removeprefix("model."), layer=int(path.split(".")[1]),
                                  k=c.kernel_size[0], s=c.stride[0], c1=c.in_channels, c2=c.out_channels,
                                  stem=c.weight is first))
    return sites


def stages(model: nn.Module) -> dict[str, frozenset[int]]:
    """{backbone, neck, head: layer indices}, as a search space's `stage` selection reads them (`space.view`): the
    backbone is the YAML's `backbone` list, the head the last Detect layer (else the last layer)."""
    from ultralytics.nn.modules import Detect

    from autoprune.wrappers import detection_model

    net = detection_model(model)
    layers = net.model
    heads = [i for i, m in enumerate(layers) if isinstance(m, Detect)] or [len(layers) - 1]
    head = heads[-1]
    cfg = getattr(net, "yaml", None) or {}
    nb = len(cfg.get("backbone", [])) if isinstance(cfg, dict) else 0
    nb = min(nb, head) if nb else head
    return {"backbone": frozenset(range(nb)), "neck": frozenset(range(nb, head)), "head": frozenset({head})}


# ------------------------------------------------------------------------------------------------- costs


def kind_cost(kind: str, site: SwapSite, cin: int, cout: int, out_pixels: int) -> tuple[int, int]:
    """(conv FLOPs, BatchNorm output elements) of `site` made `kind` at `cin` -> `cout` channels, `out_pixels`
    output positions; a group kind the channels do not divide costs what `keep` does (the conv stays).

    `factor`'s first conv runs at the output height and the input width (`out_pixels x s`: Ultralytics' stride-2
    convs read an even width at any image size that is a multiple of 32)."""
    from autoprune.cost.flops import conv_flops

    k, p = site.k, out_pixels
    if kind == "dws":
        return conv_flops(cin, 1, k * k, p) + conv_flops(cout, cin, 1, p), (cin + cout) * p
    if kind in GROUPS and site.fits(kind, cin, cout):
        return conv_flops(cout, cin // GROUPS[kind], k * k, p), cout * p
    if kind == "factor":
        cm, p1 = min(cin, cout), p * site.s
        return conv_flops(cm, cin, k, p1) + conv_flops(cout, cm, k, p), cm * p1 + cout * p
    return conv_flops(cout, cin, k * k, p), cout * p


def cost_delta(graph, sites: Iterable[SwapSite], swaps: Mapping[str, str],
               channels: Mapping[str, tuple[int, int]], imgsz: int | None = None) -> tuple[float, float]:
    """(conv GFLOPs, BatchNorm output elements x 1e-9) that the `swaps` ({site id: kind}) add to the model whose
    convs have `channels` (`depth.conv_channels`) at `imgsz` (negative: saved). Sites absent from `channels`
    (inside a removed depth element) cost nothing."""
    by_id = {s.id: s for s in sites}
    scale = ((imgsz or graph.imgsz) / graph.imgsz) ** 2
    conv = norm = 0
    for sid, kind in swaps.items():
        s = by_id[sid]
        if kind == "keep" or s.conv not in channels:
            continue
        cin, cout = channels[s.conv]
        p = graph.convs[s.conv].out_pixels
        c0, n0 = kind_cost("keep", s, cin, cout, p)
        c1, n1 = kind_cost(kind, s, cin, cout, p)
        conv += c1 - c0
        norm += n1 - n0
    return conv * scale / 1e9, norm * scale / 1e9


# ------------------------------------------------------------------------------------------------- building


def _folded(m: nn.Module) -> tuple[torch.Tensor, torch.Tensor]:
    """(weight, bias) of a Conv's conv with its BatchNorm folded in (float64): its pre-activation output."""
    bn = m.bn
    scale = (bn.weight.detach() / torch.sqrt(bn.running_var + bn.eps)).double()
    w = m.conv.weight.detach().double() * scale[:, None, None, None]
    b = bn.bias.detach().double() - bn.running_mean.double() * scale
    return w, b


def _set_stage(m: nn.Module, weight: torch.Tensor, bias: torch.Tensor | None = None,
               mean: torch.Tensor | None = None, var: torch.Tensor | None = None) -> None:
    """Make Conv `m` compute `weight * x + bias` before its activation: the conv takes `weight`, and the BatchNorm
    is restated so that, with running statistics `mean`/`var` of the conv output (default 0/1), it adds `bias`."""
    conv, bn = m.conv, m.bn
    dev, dt = conv.weight.device, conv.weight.dtype
    conv.weight.data.copy_(weight.to(dev, dt))
    n = weight.shape[0]
    mean = torch.zeros(n, dtype=torch.float64) if mean is None else mean.double().cpu()
    var = torch.ones(n, dtype=torch.float64) if var is None else var.double().cpu().clamp_min(1e-12)
    bias = torch.zeros(n, dtype=torch.float64) if bias is None else bias.double().cpu()
    std = torch.sqrt(var + bn.eps)
    bn.running_mean.data.copy_(mean.to(dev, bn.running_mean.dtype))
    bn.running_var.data.copy_(var.to(dev, bn.running_var.dtype))
    bn.weight.data.copy_(std.to(dev, dt))
    bn.bias.data.copy_((bias + mean).to(dev, dt))


def _new_module(kind: str, c1: int, c2: int, k: int, s: int, act: nn.Module) -> nn.Module:
    """The replacement of a `kind` swap, stock modules only, untrained."""
    from ultralytics.nn.modules.conv import Conv, DWConv

    if kind == "dws":
        new = nn.Sequential(DWConv(c1, c1, k, s, act=False), Conv(c1, c2, 1, 1))
    elif kind in GROUPS:
        new = Conv(c1, c2, k, s, g=GROUPS[kind])
    elif kind == "factor":
        cm = min(c1, c2)
        new = nn.Sequential(Conv(c1, cm, (k, 1), (s, 1), act=False), Conv(cm, c2, (1, k), (1, s)))
    else:
        raise ValueError(f"unknown swap kind {kind!r}")
    last = new[-1] if isinstance(new, nn.Sequential) else new
    last.act = copy.deepcopy(act)
    return new


def _weight_init(kind: str, w: torch.Tensor, cm: int | None = None) -> list[torch.Tensor]:
    """The stages' weights fitted to `w` (c2, c1, k, k) by least squares on the weights (module docstring)."""
    c2, c1, k, _ = w.shape
    if kind == "dws":
        dw = torch.empty(c1, 1, k, k, dtype=w.dtype)
        pw = torch.empty(c2, c1, 1, 1, dtype=w.dtype)
        for i in range(c1):
            u, s, vh = torch.linalg.svd(w[:, i].reshape(c2, k * k), full_matrices=False)
            v, col = vh[0], u[:, 0] * s[0]
            if float(v.sum()) < 0:  # a deterministic sign
                v, col = -v, -col
            dw[i, 0] = v.reshape(k, k)
            pw[:, i, 0, 0] = col
        return [dw, pw]
    if kind in GROUPS:
        g = GROUPS[kind]
        a, b = c1 // g, c2 // g
        out = torch.empty(c2, a, k, k, dtype=w.dtype)
        for j in range(g):
            out[j * b:(j + 1) * b] = w[j * b:(j + 1) * b, j * a:(j + 1) * a]
        return [out]
    if kind == "factor":
        a = w.permute(1, 2, 0, 3).reshape(c1 * k, c2 * k)  # rows (i, y), columns (o, x)
        u, s, vh = torch.linalg.svd(a, full_matrices=False)
        r = min(cm, s.numel())
        root = torch.sqrt(s[:r])
        v1 = torch.zeros(cm, c1, k, 1, dtype=w.dtype)
        h = torch.zeros(c2, cm, 1, k, dtype=w.dtype)
        v1[:r] = (u[:, :r] * root).T.reshape(r, c1, k, 1)
        h[:, :r] = (root[:, None] * vh[:r]).reshape(r, c2, k).permute(1, 0, 2).reshape(c2, r, 1, k)
        return [v1, h]
    raise ValueError(f"unknown swap kind {kind!r}")


def _compose(kind: str, stages: list[torch.Tensor], c1: int) -> torch.Tensor:
    """The single k x k weight that a replacement's linear stages amount to (bias aside)."""
    if kind == "dws":
        dw, pw = stages
        return pw[:, :, 0, 0][:, :, None, None] * dw[:, 0][None]
    if kind in GROUPS:
        (gw,) = stages
        g = GROUPS[kind]
        c2, a, k, _ = gw.shape
        b = c2 // g
        out = torch.zeros(c2, c1, k, k, dtype=gw.dtype)
        for j in range(g):
            out[j * b:(j + 1) * b, j * a:(j + 1) * a] = gw[j * b:(j + 1) * b]
        return out
    v1, h = stages
    return torch.einsum("omx,miy->oiyx", h[:, :, 0], v1[:, :, :, 0])


def weight_error(kind: str, w: torch.Tensor, stages: list[torch.Tensor]) -> float:
    """||W - W'||^2 / ||W||^2 of a replacement's composed weight `W'` against the folded original `W`."""
    diff = _compose(kind, stages, w.shape[1]) - w
    total = float(w.pow(2).sum())
    return float(diff.pow(2).sum()) / total if total > 0 else 0.0


@torch.no_grad()
def _pre_act(m: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """A Conv's (or a replacement's) output before its last activation, in eval mode."""
    if isinstance(m, nn.Sequential):
        for stage in m[:-1]:
            x = stage(x)
        m = m[-1]
    return m.bn(m.conv(x))


def _stage_stats(m: nn.Module, xs: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """(mean, variance) per channel of the conv output of Conv `m` over inputs `xs`."""
    s1 = s2 = None
    n = 0
    for x in xs:
        z = m.conv(x).double()
        s1 = z.sum((0, 2, 3)) if s1 is None else s1 + z.sum((0, 2, 3))
        s2 = z.pow(2).sum((0, 2, 3)) if s2 is None else s2 + z.pow(2).sum((0, 2, 3))
        n += z.numel() // z.shape[1]
    mean = s1 / n
    return mean.cpu(), (s2 / n - mean.pow(2)).clamp_min(0).cpu()


def _sampled(y: torch.Tensor, pos) -> torch.Tensor:
    n, oy, ox = (t.to(y.device) for t in pos)
    return y[n, :, oy, ox]


@torch.no_grad()
def _fit_site(orig: nn.Module, kind: str, xs: list[torch.Tensor] | None, *, ridge: float, max_samples: int,
              seed: int) -> tuple[nn.Module, dict]:
    """(the replacement of Conv `orig`, its report {kind, rel_error, init_error, weight_error, refit})."""
    from autoprune.reconstruct import _positions, _Stats, conv_patches

    c1, c2 = orig.conv.in_channels, orig.conv.out_channels
    k, s = orig.conv.kernel_size[0], orig.conv.stride[0]
    cm = min(c1, c2)
    w, b = _folded(orig)
    new = _new_module(kind, c1, c2, k, s, orig.act).to(orig.conv.weight.device).eval()
    stages = [st for st in (new if isinstance(new, nn.Sequential) else [new])]
    init = _weight_init(kind, w, cm)
    report = {"kind": kind, "channels": [c1, c2], "weight_error": round(weight_error(kind, w, init), 8)}
    if not xs:
        for st, wt in zip(stages, init):
            _set_stage(st, wt, b if st is stages[-1] else None)
        report.update(rel_error=None, init_error=None, refit=False)
        return new, report
    orig = orig.eval()
    # the first stage: its SVD weight, its BatchNorm restated on its output's statistics (no shift)
    feats = xs
    if len(stages) == 2:
        _set_stage(stages[0], init[0])
        mean, var = _stage_stats(stages[0], xs)
        _set_stage(stages[0], init[0], None, mean, var)
        feats = [stages[0](x) for x in xs]
    last = stages[-1]
    gen = torch.Generator().manual_seed(seed)
    cap = max(1, max_samples // len(xs))
    samples = []  # (features after the first stage, sampled positions, target)
    for x, f in zip(xs, feats):
        y = _pre_act(orig, x)
        samples.append((f, _positions(y.shape, cap, gen), y))
    # the target at sampled positions
    targets = [_sampled(y, pos) for _, pos, y in samples]

    def error(wt: torch.Tensor, bias: torch.Tensor) -> float:
        _set_stage(last, wt, bias)
        sse = total = 0.0
        for (f, pos, _), t in zip(samples, targets):
            pred = _sampled(last.bn(last.conv(f)), pos).double()
            sse += float((pred - t.double()).pow(2).sum())
            total += float(t.double().pow(2).sum())
        return sse / total if total > 0 else 0.0

    init_err = error(init[-1], b)
    # least squares of the last stage on the features: per group for a grouped conv, else one fit
    g = GROUPS.get(kind, 1)
    a_in, b_out = last.conv.in_channels // g, c2 // g
    fitted = torch.empty_like(init[-1])
    bias = torch.empty(c2, dtype=torch.float64)
    for j in range(g):
        stats = None
        for (f, pos, _), t in zip(samples, targets):
            patches = conv_patches(f[:, j * a_in:(j + 1) * a_in], last.conv, pos)
            if stats is None:
                stats = _Stats(patches.shape[1], b_out)
            stats.add(patches, t[:, j * b_out:(j + 1) * b_out])
        wj, bj = stats.solve(ridge)
        fitted[j * b_out:(j + 1) * b_out] = wj.T.reshape(b_out, *init[-1].shape[1:])
        bias[j * b_out:(j + 1) * b_out] = bj
    fit_err = error(fitted, bias)
    refit = fit_err <= init_err
    best_w, best_b = (fitted, bias) if refit else (init[-1], b)
    _set_stage(last, best_w, best_b)
    mean, var = _stage_stats(last, feats)
    _set_stage(last, best_w, best_b, mean, var)
    report.update(rel_error=round(min(fit_err, init_err), 8), init_error=round(init_err, 8), refit=bool(refit))
    return new, report


def check_plan(sites: Iterable[SwapSite], swaps: Mapping[str, str], what: str = "the swap plan") -> None:
    """`UserError` for a site the model lacks or a kind that does not fit the site's unpruned channels."""
    by_id = {s.id: s for s in sites}
    for sid, kind in swaps.items():
        site = by_id.get(sid)
        if site is None:
            raise UserError(f"{what} swaps conv {sid!r}, which is no k x k Conv (k > 1) of this model")
        if kind not in KINDS:
            raise UserError(f"{what}: unknown swap kind {kind!r} for conv {sid!r} (kinds: {', '.join(KINDS)})")


def swap_convs(model: nn.Module, swaps: Mapping[str, str], batches: Iterable | None = None, *, inplace: bool = False,
               ridge: float = 1e-6, max_samples: int = 8192, seed: int = 0,
               max_values: int = 1 << 25) -> tuple[nn.Module, dict[str, dict]]:
    """(`model` with each site of `swaps` ({site id: kind}) replaced, {site id: report}); a new model unless
    `inplace`. With calibration `batches` each replacement is refit on its original's output (module docstring);
    the report's `rel_error` is the relative squared error of the replacement's pre-activation output on the
    calibration samples (`init_error`: of the SVD init alone). Sites gone with a depth element, and group swaps
    whose (pruned) channels do not divide, are skipped (reported with `skipped`). Deterministic for the same
    batches and `seed`."""
    from autoprune.wrappers import detection_model

    out = model if inplace else copy.deepcopy(model)
    net = detection_model(out)
    todo = {sid: kind for sid, kind in swaps.items() if kind != "keep"}
    report: dict[str, dict] = {}
    present = {}
    for sid, kind in todo.items():
        path = f"model.{sid}"
        try:
            mod = net.get_submodule(path)
        except AttributeError:
            report[sid] = {"kind": kind, "skipped": "removed with its depth element"}
            continue
        if not _is_site(mod):
            raise ValueError(f"{path} is no k x k Conv (k > 1): {type(mod).__name__}")
        if kind in GROUPS and not (mod.conv.in_channels % GROUPS[kind] == 0 == mod.conv.out_channels % GROUPS[kind]):
            report[sid] = {"kind": kind, "skipped": f"channels {mod.conv.in_channels} -> {mod.conv.out_channels} do "
                                                    f"not divide by {GROUPS[kind]}"}
            continue
        present[sid] = mod
    from autoprune.batches import module_inputs

    inputs = (module_inputs(net, [f"model.{sid}" for sid in present], batches, max_values)
              if batches is not None and present else {})
    for sid in sorted(present, key=lambda x: tuple(int(t) if t.isdigit() else -1 for t in x.split("."))):
        orig = present[sid]
        new, rep = _fit_site(orig, todo[sid], inputs.get(f"model.{sid}"), ridge=ridge, max_samples=max_samples,
                             seed=seed)
        new.train(orig.training)
        parent_path, _, name = f"model.{sid}".rpartition(".")
        parent = net.get_submodule(parent_path)
        if parent is net.model:  # a top-level layer: Ultralytics' forward reads f and i, its listing type and np
            for attr in ("f", "i"):
                setattr(new, attr, getattr(orig, attr))
            new.type = f"{type(new).__module__}.{type(new).__name__}"
            new.np = sum(p.numel() for p in new.parameters())
        parent._modules[name] = new
        report[sid] = rep
    return out, {sid: report[sid] for sid in todo if sid in report}


def apply_swaps(model: nn.Module, swaps: Mapping[str, str], batches: Iterable | None = None, **kw):
    """`swap_convs` after checking the plan against the model's sites; returns the model only."""
    if not swaps:
        return model
    check_plan(find_sites(model), swaps)
    return swap_convs(model, swaps, batches, **kw)[0]


# ------------------------------------------------------------------------------------------------- --swap


def parse_spec(specs: Iterable[str], model: nn.Module, flag: str = "--swap") -> dict[str, str]:
    """A swap plan from `--swap KIND[:SELECTION]` values: SELECTION is a comma list of site ids or fnmatch
    patterns (`2.m.*`), layer numbers (`L5`), or `backbone`/`neck`/`head`/`all`; without it every site outside the
    head. A named site that cannot take the kind is one error; patterns take the sites that can, and must find one.
    Later flags win for a site named twice."""
    import difflib

    from autoprune.wrappers import detection_model

    sites = find_sites(model)
    if not sites:
        raise UserError(f"{flag}: this model has no k x k Conv (k > 1) to swap")
    by_id = {s.id: s for s in sites}
    st = stages(model)
    n_layers = len(detection_model(model).model)
    plan: dict[str, str] = {}
    for spec in specs:
        kind, _, sel = str(spec).partition(":")
        kind = kind.strip()
        if kind not in KINDS[1:]:
            hint = difflib.get_close_matches(kind, KINDS[1:], n=1)
            more = f" (did you mean {hint[0]!r}?)" if hint else ""
            raise UserError(f"{flag}: unknown kind {kind!r}{more}; kinds: {', '.join(KINDS[1:])}")
        chosen: list[SwapSite] = []
        items = [t.strip() for t in sel.split(",") if t.strip()] if sel else ["backbone", "neck"]
        for item in items:
            if item in ("all", "backbone", "neck", "head"):
                found = [s for s in sites if (item == "all" or s.layer in st[item]) and s.fits(kind)]
                if not found:
                    raise UserError(f"{flag} {spec}: no conv of the {item} can take {kind}")
            elif item.upper().startswith("L") and item[1:].isdigit():
                found = [s for s in sites if s.layer == int(item[1:]) and s.fits(kind)]
                if not found:
                    raise UserError(f"{flag} {spec}: layer {item[1:]} has no k x k Conv that can take {kind} "
                                    f"(layers 0..{n_layers - 1})")
            elif any(c in item for c in "*?["):
                found = [s for s in sites if fnmatch.fnmatchcase(s.id, item) and s.fits(kind)]
                if not found:
                    raise UserError(f"{flag} {spec}: pattern {item!r} matches no k x k Conv that can take {kind}")
            else:
                site = by_id.get(item)
                if site is None:
                    raise UserError(f"{flag} {spec}: {not_a_site(model, item, by_id)}")
                if not site.fits(kind):
                    raise UserError(f"{flag} {spec}: conv {item!r} cannot take {kind}: {site.reason(kind)}")
                found = [site]
            chosen += found
        for s in chosen:
            plan[s.id] = kind
    return plan


def not_a_site(model: nn.Module, item: str, by_id: Mapping[str, SwapSite]) -> str:
    """Why `item` names no swap site (a 1 x 1 conv, a grouped conv, no such module: the closest site), as text."""
    import difflib

    from autoprune.wrappers import detection_model

    try:
        mod = detection_model(model).get_submodule(f"model.{item}")
    except AttributeError:
        mod = None
    conv = getattr(mod, "conv", None)
    if isinstance(conv, nn.Conv2d):
        k = "x".join(str(x) for x in conv.kernel_size)
        why = (f"a {k} conv" if conv.kernel_size == (1, 1) else f"a {k} conv with {conv.groups} groups"
               if conv.groups > 1 else f"a {type(mod).__name__}, not a plain k x k Conv")
        return f"conv {item!r} is {why}; swaps need a k x k Conv with k > 1 and one group"
    hint = difflib.get_close_matches(item, list(by_id), n=1)
    more = f" (did you mean {hint[0]!r}?)" if hint else ""
    return f"no conv {item!r}{more}; `autoprune groups MODEL` lists the swappable convs"


__all__ = [
    "GENE_ORDER",
    "KINDS",
    "SWAP_PREFIX",
    "SwapSite",
    "apply_swaps",
    "check_plan",
    "cost_delta",
    "find_sites",
    "kind_cost",
    "not_a_site",
    "parse_spec",
    "stages",
    "split_counts",
    "swap_convs",
    "swap_key",
    "weight_error",
]
