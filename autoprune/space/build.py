"""Building a `SearchSpace` for one model from a shipped name, a YAML file or a stored source, with every mistake a
one-line `UserError` that names the field."""

from __future__ import annotations

import copy
import difflib
from collections.abc import Mapping
from pathlib import Path

from autoprune.errors import UserError
from autoprune.space.gene import Gene
from autoprune.space.schema import (
    DEFAULT_MIN_CHANNELS,
    DEPTH_KEYS,
    DEPTH_SPLITS,
    DEFAULT_RANGE,
    DEFAULT_ROUND_TO,
    FORMAT_VERSION,
    GENE_KEYS,
    NEVER_KEYS,
    RANGE_KEYS,
    REST_KEYS,
    REST_MODES,
    SPLITS,
    STAGES,
    TOP_KEYS,
    Checker,
    parse_bool,
    parse_range,
    read_space_file,
    show,
)
from autoprune.space.search_space import SearchSpace
from autoprune.space.select import Selection, _layer_set, parse_selection, select_groups
from autoprune.space.view import default_space_name, model_view

SPACES_DIR = Path(__file__).parent.parent / "search_spaces"


def shipped_spaces() -> list[str]:
    """Names of the spaces shipped in `autoprune/search_spaces/`."""
    return sorted(p.stem for p in SPACES_DIR.glob("*.yaml"))


def load_space(spec: str | Path | dict | None, graph, model) -> SearchSpace:
    """Bind a search space to `model` (analysed as `graph`).

    `spec` is None or "family" (the default space of the model's family, `default_space_name`), the name of a
    shipped space (`"fine"`, `"yolov8"`, `"generic"`, ...), a path to a YAML file, or the dict such a file loads to
    (a study's stored source). Every mistake is a one-line `UserError` that names the field.

    Example:
        >>> from autoprune.models import load_model
        >>> from autoprune.channels import analyze
        >>> m = load_model("yolo11n.yaml").model
        >>> load_space(None, analyze(m), m).name
        'yolo11'
    """
    if spec is None or spec == "family":
        name = default_space_name(model)
        return _build(read_space_file(SPACES_DIR / f"{name}.yaml"), graph, model, label=name, default_name=name)
    if isinstance(spec, Mapping):
        return _build(copy.deepcopy(dict(spec)), graph, model, label="(dict)", default_name="custom")
    if isinstance(spec, (str, Path)):
        text = str(spec)
        path = Path(text).expanduser()
        if path.is_file():
            return _build(read_space_file(path), graph, model, label=text, default_name=path.stem)
        if text in shipped_spaces():
            return _build(read_space_file(SPACES_DIR / f"{text}.yaml"), graph, model, label=text, default_name=text)
        if text.endswith((".yaml", ".yml")) or "/" in text or path.suffix:
            raise UserError(f"search space file not found: {text}")
        hint = difflib.get_close_matches(text, shipped_spaces(), n=1)
        more = f" (did you mean {hint[0]!r}?)" if hint else ""
        raise UserError(
            f"unknown search space {text!r}{more}; give a YAML file or one of: {', '.join(['family', *shipped_spaces()])}"
        )
    raise TypeError(f"spec must be None, a name, a path or a dict, got {type(spec).__name__}")


def space_from_source(source: dict, graph, model) -> SearchSpace:
    """Rebuild a space from the `source` a study stored (`SearchSpace.source`); same genes for the same model."""
    return load_space(dict(source), graph, model)


def _build(src: dict, graph, model, *, label: str, default_name: str) -> SearchSpace:
    ctx = Checker(label)
    source = copy.deepcopy(src)
    ctx.keys("", src, TOP_KEYS)
    if "version" in src and src["version"] != FORMAT_VERSION:
        ctx.fail("version", f"must be {FORMAT_VERSION}, got {show(src['version'])}")
    name = ctx.name("name", src["name"]) if "name" in src else default_name
    if "description" in src and not isinstance(src["description"], str):
        ctx.fail("description", f"must be a string, got {show(src['description'])}")
    round_to = ctx.count("round_to", src["round_to"]) if "round_to" in src else DEFAULT_ROUND_TO
    min_channels = ctx.count("min_channels", src["min_channels"]) if "min_channels" in src else DEFAULT_MIN_CHANNELS
    defaults = dict(DEFAULT_RANGE)
    if "defaults" in src:
        d = ctx.mapping("defaults", src["defaults"])
        ctx.keys("defaults", d, RANGE_KEYS)
        low, high, step = parse_range(ctx, "defaults", d, DEFAULT_RANGE)
        defaults = {"low": low, "high": high, "step": step}
    if "genes" not in src:
        ctx.fail("genes", "is required: a mapping of gene name to its selection and range (see docs/SEARCH_SPACES.md)")
    genes_spec = src["genes"] if src["genes"] is not None else {}
    ctx.mapping("genes", genes_spec)

    view = model_view(graph, model)
    ids = graph.ids
    owner: dict[str, str] = {}  # group id -> gene name

    # never: wins over genes
    never: set[str] = set()
    if "never" in src and src["never"] is not None:
        items = src["never"] if isinstance(src["never"], list) else [src["never"]]
        for i, item in enumerate(items):
            field = "never" if not isinstance(src["never"], list) else f"never[{i}]"
            if isinstance(item, str) and item:
                never |= set(select_groups(ctx, field, Selection(groups=[item]), view, ids, False, pattern_field=field))
            elif isinstance(item, Mapping):
                ctx.keys(field, item, NEVER_KEYS)
                optional = parse_bool(ctx, f"{field}.optional", item.get("optional", False))
                never |= set(select_groups(ctx, field, parse_selection(ctx, field, item), view, ids, optional))
            else:
                ctx.fail(field, f"must be a group id pattern, a selection mapping or a list of them, got {show(item)}")

    genes: list[Gene] = []

    def add_genes(gname: str, field: str, selected: list[str], rng: tuple[float, float, float], split: str,
                  optional: bool):
        selected = [g for g in selected if g not in never]
        if not selected:
            if optional:
                return
            why = "selects no channel group of this model" + (" outside never:" if never else "")
            ctx.fail(field, f"{why}; fix its selection, or mark it optional: true if some models lack it")
        if split == "none":
            parts = [(gname, selected)]
        elif split == "layer":
            by_layer: dict[int, list[str]] = {}
            for g in selected:
                by_layer.setdefault(view.group_layer[g], []).append(g)
            parts = [(f"{gname}.{layer}", gs) for layer, gs in by_layer.items()]
        else:
            parts = [(f"{gname}.{g}", [g]) for g in selected]
        for n, gs in parts:
            for g in gs:
                if g in owner:
                    raise UserError(
                        f"search space {label}: group {g!r} is selected by both gene {owner[g]!r} and gene {n!r}; "
                        "each group may be in one gene only (narrow one with groups:, exclude:, layers:, ...)"
                    )
                owner[g] = n
            if any(x.name == n for x in genes):
                ctx.fail(f"genes.{gname}", f"gene name {n!r} is used twice")
            genes.append(Gene(n, tuple(gs), *rng))

    for gname, spec in genes_spec.items():
        field = f"genes.{gname}"
        ctx.name(f"genes.{gname!s}", gname)
        spec = {} if spec is None else spec
        ctx.mapping(field, spec)
        ctx.keys(field, spec, GENE_KEYS)
        rng = parse_range(ctx, field, spec, defaults)
        split = ctx.choice(f"{field}.split", spec.get("split", "none"), SPLITS)
        optional = parse_bool(ctx, f"{field}.optional", spec.get("optional", False))
        selected = select_groups(ctx, field, parse_selection(ctx, field, spec), view, ids, optional)
        add_genes(gname, field, selected, rng, split, optional)

    rest = src.get("rest", "error")
    uncovered = [g for g in ids if g not in owner and g not in never]
    if isinstance(rest, Mapping):
        ctx.keys("rest", rest, REST_KEYS)
        rname = ctx.name("rest.name", rest.get("name", "rest"))
        rng = parse_range(ctx, "rest", rest, defaults)
        split = ctx.choice("rest.split", rest.get("split", "none"), SPLITS)
        add_genes(rname, "rest", uncovered, rng, split, True)
    else:
        if rest not in REST_MODES:
            hint = difflib.get_close_matches(rest, REST_MODES, n=1) if isinstance(rest, str) else []
            more = f" (did you mean {hint[0]!r}?)" if hint else ""
            ctx.fail("rest", f"must be error, never, or a gene mapping {{name, low, high, step, split}}, "
                             f"got {show(rest)}{more}")
        mode = rest
        if mode == "never":
            never |= set(uncovered)
        elif uncovered:
            shown = ", ".join(uncovered[:8]) + (f", ... ({len(uncovered)} in all)" if len(uncovered) > 8 else "")
            raise UserError(
                f"search space {label}: groups not covered by any gene: {shown}; add them to a gene or to never:, "
                "or set rest: never (keep them whole) or rest: {name: rest} (one more gene)"
            )
    if not genes:
        raise UserError(f"search space {label}: no gene selects any channel group of this model; nothing to search")
    units = []
    if src.get("depth") not in (None, False):
        units, depth_genes = _depth_genes(ctx, src["depth"], view, model, {g.name for g in genes})
        genes += depth_genes
    sites = []
    if src.get("swap") not in (None, False):
        sites, swap_genes = _swap_genes(ctx, src["swap"], view, model, {g.name for g in genes})
        genes += swap_genes

    order = {gid: i for i, gid in enumerate(ids)}
    return SearchSpace(
        name=name,
        genes=tuple(genes),
        round_to=round_to,
        min_channels=min_channels,
        never=tuple(sorted(never, key=order.__getitem__)),
        source=source,
        graph=graph,
        units=tuple(units),
        sites=tuple(sites),
    )


def _by_layer(ctx: Checker, field: str, gspec, items, view, optional: bool) -> tuple[list, list[str]]:
    """(the `items` (depth units or swap sites: each has a `.layer`) that a gene's `stage`, `layers` and `modules`
    keys keep, the words naming that selection for error messages)."""
    chosen, named = list(items), []
    if "stage" in gspec:
        stages = gspec["stage"] if isinstance(gspec["stage"], list) else [gspec["stage"]]
        layers = set().union(*(view.stages[ctx.choice(f"{field}.stage", x, STAGES)] for x in stages))
        chosen = [it for it in chosen if it.layer in layers]
        named.append(f"stage {'/'.join(stages)}")
    if "layers" in gspec:
        sel = parse_selection(ctx, field, {"layers": gspec["layers"] if isinstance(gspec["layers"], list)
                                           else [gspec["layers"]]})
        layers = set()
        for it in sel.layers:
            layers |= _layer_set(ctx, field, it, view, optional)
        chosen = [it for it in chosen if it.layer in layers]
        named.append("layers " + ", ".join(f"{i} ({view.layer_types[i]})" for i in sorted(layers)))
    if "modules" in gspec:
        mods = ctx.strings(f"{field}.modules", gspec["modules"], "a layer class name (e.g. C2f)")
        chosen = [it for it in chosen if view.layer_types[it.layer] in mods]
        named.append(f"modules {', '.join(mods)}")
    return chosen, named


def _depth_genes(ctx: Checker, spec, view, model, taken: set[str]):
    """(the model's depth units, the depth genes of the space's `depth:` key): `true` is one gene per unit; a
    mapping gives gene name -> {units, exclude, stage, layers, modules, low, split, optional}."""
    import fnmatch

    from autoprune.depth import find_units

    units = find_units(model)
    listing = ", ".join(f"{u.id} ({u.block}, {u.n})" for u in units) or "none"
    if spec is True:
        spec = {"depth": {}}
    if not isinstance(spec, Mapping):
        ctx.fail("depth", f"must be true, false or a mapping of depth gene name to its selection, got {show(spec)}")
    if not units:
        ctx.fail("depth", "this model has no repeated blocks (C2f, C3k2, or C3/C3k of residual bottlenecks) to "
                          "take depth genes")
    owner: dict[str, str] = {}
    genes = []
    for gname, gspec in spec.items():
        field = f"depth.{gname}"
        ctx.name(field, gname)
        gspec = {} if gspec is None else gspec
        ctx.mapping(field, gspec)
        ctx.keys(field, gspec, DEPTH_KEYS)
        optional = parse_bool(ctx, f"{field}.optional", gspec.get("optional", False))
        chosen, named = _by_layer(ctx, field, gspec, units, view, optional)
        if "units" in gspec:
            pats = ctx.strings(f"{field}.units", gspec["units"], "a depth unit id pattern (fnmatch, e.g. '4.m')")
            for p in pats:
                if not optional and not any(fnmatch.fnmatchcase(u.id, p) for u in units):
                    ctx.fail(f"{field}.units", f"pattern {p!r} matches no depth unit; this model's units: {listing}")
            chosen = [u for u in chosen if any(fnmatch.fnmatchcase(u.id, p) for p in pats)]
            named.append(f"units {', '.join(pats)}")
        if "exclude" in gspec:
            pats = ctx.strings(f"{field}.exclude", gspec["exclude"], "a depth unit id pattern (fnmatch)")
            chosen = [u for u in chosen if not any(fnmatch.fnmatchcase(u.id, p) for p in pats)]
        if not chosen:
            if optional:
                continue
            what = "; ".join(named) or "its selection"
            ctx.fail(field, f"selects no repeated block ({what} has no repeated elements); depth genes need the "
                            f"bottlenecks of C2f, C3k2, C3 or C3k; this model's depth units: {listing}")
        low = gspec.get("low", 0)
        if isinstance(low, bool) or not isinstance(low, int) or low < 0:
            ctx.fail(f"{field}.low", f"must be a whole number of elements kept, 0 or more, got {show(low)}")
        split = ctx.choice(f"{field}.split", gspec.get("split", "unit"), DEPTH_SPLITS)
        parts = [(f"{gname}.{u.id}", [u]) for u in chosen] if split == "unit" else [(gname, chosen)]
        for n, us in parts:
            for u in us:
                if u.id in owner:
                    ctx.fail(field, f"depth unit {u.id!r} is selected by both depth gene {owner[u.id]!r} and "
                                    f"{n!r}; each unit may be in one depth gene only")
                owner[u.id] = n
            if n in taken:
                ctx.fail(field, f"gene name {n!r} is used twice")
            taken.add(n)
            high = max(u.n for u in us)
            if low > high:
                ctx.fail(f"{field}.low", f"{low} is above the {high} element(s) of {', '.join(u.id for u in us)}")
            genes.append(Gene(n, (), float(low), float(high), 1.0, kind="depth", units=tuple(u.id for u in us)))
    return units, genes


def _swap_genes(ctx: Checker, spec, view, model, taken: set[str]):
    """(the model's swap sites, the swap genes of the space's `swap:` key): `true` is one gene per k x k Conv
    with every kind it can take; a mapping gives gene name -> {convs, exclude, stage, layers, modules, kinds, split,
    optional}. Kinds named in `kinds:` must fit every selected conv (one error line naming the conv); without
    `kinds:` each conv takes the kinds that fit it."""
    import fnmatch

    from autoprune.space.schema import SWAP_KEYS, SWAP_SPLITS
    from autoprune.swap import GENE_ORDER, KINDS, find_sites, not_a_site

    sites = find_sites(model)
    by_id = {s.id: s for s in sites}
    if spec is True:
        spec = {"swap": {}}
    if not isinstance(spec, Mapping):
        ctx.fail("swap", f"must be true, false or a mapping of swap gene name to its selection, got {show(spec)}")
    if not sites:
        ctx.fail("swap", "this model has no k x k Conv (k > 1, one group) to swap")
    owner: dict[str, str] = {}
    genes = []
    for gname, gspec in spec.items():
        field = f"swap.{gname}"
        ctx.name(field, gname)
        gspec = {} if gspec is None else gspec
        ctx.mapping(field, gspec)
        ctx.keys(field, gspec, SWAP_KEYS)
        optional = parse_bool(ctx, f"{field}.optional", gspec.get("optional", False))
        chosen, named = _by_layer(ctx, field, gspec, sites, view, optional)
        if "convs" in gspec:
            pats = ctx.strings(f"{field}.convs", gspec["convs"], "a conv id or pattern (fnmatch, e.g. '2.m.*')")
            for p in pats:
                if not optional and not any(fnmatch.fnmatchcase(s.id, p) for s in sites):
                    ctx.fail(f"{field}.convs", not_a_site(model, p, by_id))
            chosen = [s for s in chosen if any(fnmatch.fnmatchcase(s.id, p) for p in pats)]
            named.append(f"convs {', '.join(pats)}")
        if "exclude" in gspec:
            pats = ctx.strings(f"{field}.exclude", gspec["exclude"], "a conv id pattern (fnmatch)")
            chosen = [s for s in chosen if not any(fnmatch.fnmatchcase(s.id, p) for p in pats)]
        kinds = None
        if "kinds" in gspec:
            kinds = [ctx.choice(f"{field}.kinds", k, KINDS[1:])
                     for k in ctx.strings(f"{field}.kinds", gspec["kinds"], "a swap kind (dws, group4, factor, ...)")]
            for s in chosen:
                for k in kinds:
                    why = s.reason(k)
                    if why is not None:
                        ctx.fail(f"{field}.kinds", f"conv {s.id!r} (layer {s.layer}) cannot take {k}: {why}; "
                                                   f"leave it out with exclude: or drop {k}")
        if not chosen:
            if optional:
                continue
            what = "; ".join(named) or "its selection"
            ctx.fail(field, f"selects no k x k Conv ({what} has none); swaps need a Conv with a k x k kernel, k > 1, "
                            "one group; `autoprune groups MODEL` lists them")
        split = ctx.choice(f"{field}.split", gspec.get("split", "conv"), SWAP_SPLITS)
        parts = [(f"{gname}.{s.id}", [s]) for s in chosen] if split == "conv" else [(gname, chosen)]
        for n, ss in parts:
            for s in ss:
                if s.id in owner:
                    ctx.fail(field, f"conv {s.id!r} is selected by both swap gene {owner[s.id]!r} and {n!r}; each "
                                    "conv may be in one swap gene only")
                owner[s.id] = n
            if n in taken:
                ctx.fail(field, f"gene name {n!r} is used twice")
            taken.add(n)
            allowed = kinds if kinds is not None else [k for k in KINDS[1:] if all(s.fits(k) for s in ss)]
            choices = tuple(k for k in GENE_ORDER if k in allowed or k == "keep")
            genes.append(Gene(n, (), 0.0, float(len(choices) - 1), 1.0, kind="swap", units=tuple(s.id for s in ss),
                              choices=choices))
    return sites, genes
