"""List the prunable channel groups of a model, its depth units and its swappable convs.

Each group is a set of coupled channels that one keep ratio applies to: its id, the layers that produce and consume
its channels, its channel count and the share of the model's conv FLOPs those channels drive. The summary gives the
total GFLOPs, the prunable share of the conv FLOPs and the blocks kept whole as fixed boundaries. The depth units
(`autoprune.depth`: the bottlenecks of a C2f/C3k2, the residual chain of a C3/C3k) are what a space's `depth:` key
and `autoprune prune --depth` drive: their id, block, element count, and the GFLOPs removing all of them saves. The
swappable convs (`autoprune.swap`: k x k Ultralytics Convs, k > 1, one group) are what a space's `swap:` key and
`autoprune prune --swap` drive: their id, layer, kernel, stride, channels, the kinds they can take and the GFLOPs
the cheapest saves.
"""

from __future__ import annotations

import argparse

from autoprune.cli._common import add_imgsz_argument, add_model_argument, percent
from autoprune.imgsz import check_imgsz


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_model_argument(parser)
    add_imgsz_argument(parser)
    parser.add_argument(
        "--space",
        nargs="?",
        const="fine",
        default=None,
        help="also show the genes of a search space: fine (no value: search's default, one gene per channel group), "
             "family (the model family's tied genes), a shipped space's name or a YAML path",
    )


def run(args: argparse.Namespace) -> dict:
    from autoprune.channels import analyze
    from autoprune.cost import count_gflops
    from autoprune.models import load_model
    from autoprune.progress import stage

    imgsz = check_imgsz(args.imgsz)
    with stage(f"loading {args.model or 'the demo model'} and tracing its channel groups"):
        loaded = load_model(args.model)
        graph = analyze(loaded.model, imgsz=imgsz)
    shares = graph.flops_shares()
    from autoprune.depth import conv_channels, conv_gflops, depth_key, find_units

    units = find_units(loaded.model)
    conv_full = graph.conv_gflops()
    result = {
        "model": loaded.source,
        "imgsz": imgsz,
        "gflops": round(count_gflops(loaded.model, imgsz), 4),
        "conv_gflops": round(graph.conv_gflops(), 4),
        "prunable_conv_flops_share": round(graph.prunable_flops_share(), 4),
        "fixed_blocks": graph.fixed_blocks,
        "fixed_why": graph.fixed_why,
        "groups": [
            {
                "id": g.id,
                "layer": g.layer,
                "channels": g.size,
                "parts": len(g.parts),
                "producers": list(g.producers),
                "consumers": list(g.consumers),
                "flops_share": round(shares[g.id], 5),
            }
            for g in graph.groups
        ],
        "depth_units": [
            {
                "id": u.id,
                "layer": u.layer,
                "block": u.block,
                "kind": u.kind,
                "elements": u.n,
                "residual": u.residual,
                "saves_at_zero_gflops": round(conv_full - conv_gflops(
                    graph, conv_channels(graph, units, {depth_key(u.id): 0})), 6),
            }
            for u in units
        ],
        "swap_convs": _swap_rows(loaded.model, graph, imgsz),
    }
    if args.space is not None:
        from autoprune.space import load_space

        space = load_space(args.space, graph, loaded.model)
        result["space"] = {"name": space.name, "round_to": space.round_to, "min_channels": space.min_channels,
                           "never": list(space.never), "genes": space.describe(imgsz)}
    if not args.json:
        _print(result)
    return result


def _swap_rows(model, graph, imgsz: int) -> list[dict]:
    from autoprune.swap import KINDS, cost_delta, find_sites

    sites = find_sites(model)
    channels = graph.conv_channels(None)
    rows = []
    for s in sites:
        kinds = [k for k in KINDS[1:] if s.fits(k)]
        saves = {k: -cost_delta(graph, sites, {s.id: k}, channels, imgsz)[0] for k in kinds}
        rows.append({"id": s.id, "layer": s.layer, "kernel": s.k, "stride": s.s, "channels": [s.c1, s.c2],
                     "kinds": kinds, "saves_gflops": {k: round(v, 6) for k, v in saves.items()}})
    return rows


def _short(paths: list[str], width: int = 34) -> str:
    text = ", ".join(p.removeprefix("model.") for p in paths)
    return text if len(text) <= width else text[: width - 1] + "…"


def _print(r: dict) -> None:
    print(f"{'group':<16} {'layer':>5} {'channels':>8}  {'producers':<34} {'consumers':<34} {'FLOPs':>6}")
    for g in r["groups"]:
        ch = f"{g['parts']}x{g['channels']}" if g["parts"] > 1 else str(g["channels"])
        print(
            f"{g['id']:<16} {g['layer']:>5} {ch:>8}  {_short(g['producers']):<34} {_short(g['consumers']):<34} "
            f"{percent(g['flops_share']):>6}"
        )
    if r["depth_units"]:
        print(f"\n{'depth unit':<16} {'layer':>5} {'block':<6} {'elements':>8}  {'removable':<22} {'saves at 0':>10}")
        for u in r["depth_units"]:
            which = "any (residual)" if u["residual"] else "the last ones first"
            print(f"{u['id']:<16} {u['layer']:>5} {u['block']:<6} {u['elements']:>8}  {which:<22} "
                  f"{u['saves_at_zero_gflops']:>7.3f} GF")
    if r["swap_convs"]:
        print(f"\n{'swappable conv':<16} {'layer':>5} {'k':>2} {'s':>2} {'channels':>10}  {'kinds':<40} "
              f"{'best saves':>10}")
        for c in r["swap_convs"]:
            best = max(c["saves_gflops"].values(), default=0.0)
            print(f"{c['id']:<16} {c['layer']:>5} {c['kernel']:>2} {c['stride']:>2} "
                  f"{str(c['channels'][0]) + '->' + str(c['channels'][1]):>10}  {', '.join(c['kinds']):<40} "
                  f"{best:>7.3f} GF")
    fixed = ", ".join(f"{cls} ({path.removeprefix('model.')})" for path, cls in r["fixed_blocks"].items()) or "none"
    print(
        f"\n{len(r['groups'])} groups | {r['gflops']:.2f} GFLOPs at {r['imgsz']} | "
        f"prunable share of conv FLOPs {percent(r['prunable_conv_flops_share'])} | fixed boundaries: {fixed}"
    )
    for path, why in r.get("fixed_why", {}).items():  # why each is kept whole
        print(f"  kept whole: {path.removeprefix('model.')} ({r['fixed_blocks'].get(path, '?')}): {why}")
    space = r.get("space")
    if space:
        print(f"\nsearch space {space['name']!r}: {len(space['genes'])} genes, round_to {space['round_to']}, "
              f"min_channels {space['min_channels']}, never pruned: {', '.join(space['never']) or 'nothing'}")
        print(f"{'gene':<22} {'range':>12} {'step':>5} {'saves at low':>12}  groups")
        for g in space["genes"]:
            print(f"{g['gene']:<22} {g['low']:>5.2f}-{g['high']:<5.2f} {g['step']:>6.2f} "
                  f"{g['saves_at_low_gflops']:>9.2f} GF  {_short(g['groups'] or g.get('units', []), 60)}")
