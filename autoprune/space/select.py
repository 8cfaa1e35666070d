"""The selection language of a search space: which channel groups a gene's `groups`, `exclude`, `stage`, `layers`,
`modules` and `role` keys pick out of one model."""

from __future__ import annotations

import difflib
import fnmatch
import functools
import re
from collections.abc import Mapping
from dataclasses import dataclass

from autoprune.space.schema import ROLES, SELECT_KEYS, STAGES, Checker, show
from autoprune.space.view import ModelView


@dataclass
class Selection:
    groups: list | None = None
    exclude: list | None = None
    stage: list | None = None
    layers: list | None = None  # parsed layer refs (kept as written for messages)
    modules: list | None = None
    role: list | None = None


_RANGE_RE = re.compile(r"^\s*(-?\d+)\s*-\s*(\d*)\s*$")


def parse_selection(ctx: Checker, field: str, spec: Mapping) -> Selection:
    sel = Selection()
    if "groups" in spec:
        sel.groups = ctx.strings(f"{field}.groups", spec["groups"], "a group id pattern (fnmatch, e.g. '*.cv2')")
    if "exclude" in spec:
        items = spec["exclude"] if isinstance(spec["exclude"], list) else [spec["exclude"]]
        what = "a group id pattern (fnmatch, e.g. '*.m.*'), a selection mapping (e.g. {layers: P3}), or a list of them"
        if not items:
            ctx.fail(f"{field}.exclude", f"must be {what}, got []")
        sel.exclude = []
        for it in items:
            if isinstance(it, str) and it:
                sel.exclude.append(it)
            elif isinstance(it, Mapping):
                ctx.keys(f"{field}.exclude", it, SELECT_KEYS)
                sel.exclude.append(parse_selection(ctx, f"{field}.exclude", it))
            else:
                ctx.fail(f"{field}.exclude", f"must be {what}, got {show(it)}")
    if "stage" in spec:
        items = spec["stage"] if isinstance(spec["stage"], list) else [spec["stage"]]
        sel.stage = [ctx.choice(f"{field}.stage", s, STAGES) for s in items]
    if "role" in spec:
        items = spec["role"] if isinstance(spec["role"], list) else [spec["role"]]
        sel.role = [ctx.choice(f"{field}.role", s, ROLES) for s in items]
    if "modules" in spec:
        sel.modules = ctx.strings(f"{field}.modules", spec["modules"], "a layer class name (e.g. C2f)")
    if "layers" in spec:
        items = spec["layers"] if isinstance(spec["layers"], list) else [spec["layers"]]
        what = "a layer index, a range 'A-B' or 'A-', or a head input level 'P3'"
        if not items:
            ctx.fail(f"{field}.layers", f"must be {what} or a list of them, got []")
        for it in items:
            ok = (isinstance(it, int) and not isinstance(it, bool)) or (
                isinstance(it, str) and (_RANGE_RE.match(it) or re.match(r"^P\d$", it.strip()) or it.strip().isdigit())
            )
            if not ok:
                ctx.fail(f"{field}.layers", f"must be {what} or a list of them, got {show(it)}")
        sel.layers = items
    return sel


def _layer_set(ctx: Checker, field: str, item, view: ModelView, optional: bool) -> set[int]:
    n = view.n_layers
    if isinstance(item, int):
        i = item + n if item < 0 else item
        if not 0 <= i < n:
            if optional:
                return set()
            ctx.fail(f"{field}.layers", f"layer {item} does not exist; the model has layers 0-{n - 1} (-1: the last)")
        return {i}
    s = item.strip()
    if s.isdigit():
        return _layer_set(ctx, field, int(s), view, optional)
    if s.startswith("P"):
        if s not in view.levels:
            if optional:
                return set()
            have = ", ".join(sorted(view.levels)) or "none"
            ctx.fail(f"{field}.layers", f"{s} is not a head input of this model; it has {have}")
        return {view.levels[s]}
    m = _RANGE_RE.match(s)
    a = int(m.group(1))
    b = int(m.group(2)) if m.group(2) else n - 1
    if a < 0 or a > b:
        ctx.fail(f"{field}.layers", f"range {item!r} must be 'A-B' with 0 <= A <= B (or 'A-' to the last layer)")
    found = set(range(a, min(b, n - 1) + 1))
    if not found and not optional:
        ctx.fail(f"{field}.layers", f"range {item!r} selects no layer; the model has layers 0-{n - 1}")
    return found


@functools.lru_cache(maxsize=1)
def _known_modules() -> frozenset[str]:
    """Class names a `modules:` key may name: Ultralytics' blocks and torch.nn's layers."""
    from torch import nn

    names = {n for n in dir(nn) if isinstance(getattr(nn, n), type)}
    try:
        import ultralytics.nn.modules as um

        names |= set(getattr(um, "__all__", ()))
    except ImportError:  # pragma: no cover - Ultralytics is a dependency
        pass
    return frozenset(names)


def select_groups(ctx: Checker, field: str, sel: Selection, view: ModelView, ids: list[str], optional: bool,
            pattern_field: str | None = None) -> list[str]:
    """Group ids (in model order) that satisfy every key of the selection; unmatched patterns are errors."""
    cand = list(ids)
    scope = []
    if sel.stage is not None:
        layers = set().union(*(view.stages[s] for s in sel.stage))
        cand = [g for g in cand if view.group_layer[g] in layers]
        scope.append(f"stage {'/'.join(sel.stage)}")
    if sel.layers is not None:
        layers = set()
        for it in sel.layers:
            layers |= _layer_set(ctx, field, it, view, optional)
        cand = [g for g in cand if view.group_layer[g] in layers]
        scope.append(f"layers {', '.join(str(x) for x in sel.layers)}")
    if sel.modules is not None:
        known = _known_modules() | set(view.layer_types)
        for mod in sel.modules:
            if mod not in known:  # a typo; a real class the model lacks just selects nothing
                hint = difflib.get_close_matches(mod, sorted(known), n=1)
                more = f" (did you mean {hint[0]!r}?)" if hint else ""
                present = ", ".join(sorted(set(view.layer_types)))
                ctx.fail(f"{field}.modules", f"unknown layer class {mod!r}{more}; this model has {present}")
        wanted = set(sel.modules)
        cand = [g for g in cand if 0 <= view.group_layer[g] < view.n_layers
                and view.layer_types[view.group_layer[g]] in wanted]
        scope.append(f"modules {', '.join(sel.modules)}")
    if sel.role is not None:
        cand = [g for g in cand if view.group_role[g] in sel.role]
        scope.append(f"role {'/'.join(sel.role)}")
    if sel.exclude is not None:  # excluding nothing is fine: a variant of the model may lack what is excluded
        drop = set()
        for it in sel.exclude:
            if isinstance(it, str):
                drop |= {g for g in cand if fnmatch.fnmatchcase(g, it)}
            else:
                drop |= set(select_groups(ctx, f"{field}.exclude", it, view, cand, True))
        cand = [g for g in cand if g not in drop]
    if sel.groups is not None:
        matched = []
        for p in sel.groups:
            hits = [g for g in cand if fnmatch.fnmatchcase(g, p)]
            if not hits and not optional:
                within = f" within {'; '.join(scope)}" if scope else ""
                near = difflib.get_close_matches(p, cand, n=1, cutoff=0.5) or cand[:1]
                example = f" (ids look like {near[0]!r}; `autoprune groups` lists them)" if near else ""
                ctx.fail(pattern_field or f"{field}.groups", f"pattern {p!r} matches no channel group{within}{example}")
            matched += hits
        keep = set(matched)
        cand = [g for g in cand if g in keep]
    return cand

