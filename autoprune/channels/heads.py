"""The channel rules of the task heads: Segment, Pose, OBB (and their YOLO26 forms), Proto and Classify.

Every Detect-style head runs one branch per level and per output: box (`cv2`), class (`cv3`) and the task's own
branch `cv4` (mask coefficients for Segment, keypoints for Pose, angles for OBB), each with a one-to-one copy in
end-to-end heads. The branches' inner channels prune like Detect's; what they output (the mask coefficient count
`nm`, the keypoint values `nk`, the angle `ne`) is fixed. Pose26's `cv4` ends in two 1x1 output convs
(`cv4_kpts`, `cv4_sigma`) that both read its last channels.

Segment's `Proto` turns the first level into the prototypes: `cv1 -> upsample (ConvTranspose2d) -> cv2 -> cv3`.
The transposed conv prunes like a conv: its inputs with `cv1`'s channels, its outputs as a group that `cv2` reads;
`cv2`'s channels prune too, and `cv3`'s output (the `nm` prototypes) is fixed. (A removed input channel's constant
reaches the transposed conv's output as a pattern that repeats every stride; the pruner folds its mean into the
bias, see `autoprune.pruner`.) Proto26 first sums the other levels, refined to the first level's width, into it (a
residual coupling), then fuses them (`feat_fuse`) before the same chain; its training-only semantic branch
(`semseg`) reads the summed features.

Classify is `Conv -> global average pool -> Linear`: the conv's output channels prune and the linear layer's inputs
shrink with them (a removed channel's constant passes the pool unchanged and folds into the linear bias); the class
count is fixed.
"""

from __future__ import annotations

from torch import nn

from autoprune.channels.symbolic import Handler, Opaque, Segment, Sym, Tracer


def _width(x: Sym) -> int:
    return sum(s.size for s in x)


def _branches(tr: Tracer, path: str, m: nn.Module, x: list) -> None:
    """Trace every output branch of a Detect-style head (box, class, task; one-to-many and one-to-one) and fix
    what each emits."""
    why = f"{path} (outputs)"
    for prefix in ("", "one2one_"):
        for name in ("cv2", "cv3", "cv4"):
            branches = getattr(m, prefix + name, None)
            if branches is None:
                continue
            for i, branch in enumerate(branches):
                out = tr(f"{path}.{prefix}{name}.{i}", branch, x[i])
                tails = [t for t in ("_kpts", "_sigma") if getattr(m, f"{prefix}{name}{t}", None) is not None]
                if name != "cv4" or not tails:
                    tr.fix(out, why)
                    continue
                for tail in tails:  # Pose26: the branch's features feed its keypoint and sigma output convs
                    convs = getattr(m, f"{prefix}{name}{tail}")
                    tr.fix(tr(f"{path}.{prefix}{name}{tail}.{i}", convs[i], out), why)


def _levels_ok(m: nn.Module, x) -> bool:
    return isinstance(x, list) and len(x) == m.nl and all(isinstance(t, list) for t in x)


def _detect_task(tr: Tracer, path: str, m: nn.Module, x) -> Opaque:
    """Pose, Pose26, OBB, OBB26: Detect's branches plus the task branch `cv4`."""
    if not _levels_ok(m, x):
        return tr.boundary(path, m, x)
    _branches(tr, path, m, x)
    return Opaque()


def _segment(tr: Tracer, path: str, m: nn.Module, x) -> Opaque:
    """Segment: the branches, and the prototypes from the first level."""
    if not _levels_ok(m, x):
        return tr.boundary(path, m, x)
    _branches(tr, path, m, x)
    tr.fix(tr.child(path, m, "proto", x[0]), f"{path} (prototypes)")
    return Opaque()


def _segment26(tr: Tracer, path: str, m: nn.Module, x) -> Opaque:
    """Segment26: the branches, and the prototypes from all levels."""
    if not _levels_ok(m, x):
        return tr.boundary(path, m, x)
    _branches(tr, path, m, x)
    tr.fix(tr.child(path, m, "proto", list(x)), f"{path} (prototypes)")
    return Opaque()


def _proto(tr: Tracer, path: str, m: nn.Module, x: Sym) -> Sym:
    y = tr.child(path, m, "upsample", tr.child(path, m, "cv1", x))  # an nn.ConvTranspose2d
    return tr.child(path, m, "cv3", tr.child(path, m, "cv2", y))


def _proto26(tr: Tracer, path: str, m: nn.Module, x) -> Sym:
    if not isinstance(x, list) or len(x) != len(m.feat_refine) + 1 or not all(isinstance(t, list) for t in x):
        return tr.boundary(path, m, x)
    feat = x[0]
    for i, refine in enumerate(m.feat_refine):  # nearest upsampling keeps channels
        feat = tr.add(feat, tr(f"{path}.feat_refine.{i}", refine, x[i + 1]), f"{path} (level sum)")
    if getattr(m, "semseg", None) is not None:
        tr.fix(tr.child(path, m, "semseg", feat), f"{path} (semantic outputs)")
    return _proto(tr, path, m, tr.child(path, m, "feat_fuse", feat))


def _classify(tr: Tracer, path: str, m: nn.Module, x) -> Opaque:
    """Classify: conv -> pool -> dropout -> linear; the linear layer consumes the conv's channels."""
    if isinstance(x, list) and x and all(isinstance(t, list) for t in x):  # a list input is concatenated
        x = [s for t in x for s in t]
    if not isinstance(x, list) or not all(isinstance(s, Segment) for s in x):
        return tr.boundary(path, m, x)
    y = tr.child(path, m, "conv", x)
    linear = getattr(m, "linear", None)
    if isinstance(y, Opaque) or not isinstance(linear, nn.Linear) or _width(y) != linear.in_features:
        return tr.boundary(path, m, y)
    tr.consume(f"{path}.linear", y)  # average pooling and dropout act per channel
    return Opaque()


def handlers() -> list[tuple[type, Handler]]:
    """(class, rule) for the task heads; listed before Detect's rule, since Pose and OBB keep Detect's forward."""
    from ultralytics.nn.modules import block, head

    pairs: list[tuple[type, Handler]] = [
        (head.Segment, _segment),
        (head.Pose, _detect_task),
        (head.OBB, _detect_task),
        (head.Classify, _classify),
        (block.Proto, _proto),
    ]
    for cls_name, rule in (("Segment26", _segment26), ("Pose26", _detect_task), ("OBB26", _detect_task)):
        if hasattr(head, cls_name):
            pairs.insert(0, (getattr(head, cls_name), rule))
    if hasattr(block, "Proto26"):
        pairs.insert(0, (block.Proto26, _proto26))
    return pairs
