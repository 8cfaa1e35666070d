"""Prune a model (a keep share or a GFLOPs target, uniform or global) and save it as a stock Ultralytics checkpoint.

    autoprune prune --keep 0.5                                  # global, hessian, on the demo data; its mAP
    autoprune prune --model best.pt --data data.yaml --target-gflops 50%
    autoprune prune --keep 0.5 --strategy uniform --criterion l1 --no-val    # no data read at all

Targets (exactly one):

- `--keep R`: with `--strategy global` (default), keep at most R of all prunable channels, the lowest-scored first;
  with `--strategy uniform`, keep ratio R of every group; a YAML/JSON file of per-group ratios is uniform's.
- `--target-gflops G`: the largest model whose GFLOPs at `--imgsz` are at most G (a number, or a share of the
  unpruned model such as `50%`), counted as `autoprune cost` and `autoprune search --budget-gflops` count them (the
  whole model, fvcore); uniform finds the largest uniform ratio, global the lowest score threshold.

The defaults, `--strategy global --criterion hessian`, are the one-shot method measured best (docs/BENCHMARKS.md
"Methods", and the search's own defaults); uniform l1 pruning at 0.5 leaves the demo model finding no box at all.

Data: `--criterion taylor|hessian` (gradients of the detection loss), `--reconstruct` (least-squares refit of the
convs that lost inputs, see `autoprune.reconstruct`) and `--val` read `--calib-batches` batches of `--batch` train
images at `--calib-imgsz` from `--data` (default: the demo dataset), the proxy's calibration batches. Whenever data is
read, the pruned model's BatchNorm statistics are recalibrated on those batches (as the search does before it scores
a candidate; it only improves an unfinetuned model) and the saved checkpoint has them. `--val` (on by default)
then scores the saved model on `--val-images` images of the val split at `--calib-imgsz` with the proxy's validation
(no finetuning), skipped with a note when the model's classes are not the data's. The pruned model still needs
finetuning before use.

The checkpoint loads with `ultralytics.YOLO(path)` in a process that never imports autoprune.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

import yaml

from autoprune.cli._common import add_device_argument, add_imgsz_argument, add_model_argument
from autoprune.errors import UserError
from autoprune.imgsz import check_imgsz


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_model_argument(parser)
    target = parser.add_mutually_exclusive_group(required=True)
    target.add_argument(
        "--keep",
        help="share of channels to keep, in (0, 1]: per group (uniform) or over the whole model (global); "
        "or, uniform only, a YAML/JSON file mapping group ids to ratios",
    )
    target.add_argument(
        "--target-gflops",
        help="keep the largest model with at most this many GFLOPs at --imgsz (the whole model, as autoprune cost "
        "and search count them), or this share of the unpruned model's (e.g. 50%%)",
    )
    target.add_argument(
        "--target-latency-ms",
        type=float,
        help="keep the largest model whose latency in --latency-backend at --imgsz is at most this many ms, as the "
        "latency model predicts it (autoprune.cost.lut: per-layer latencies measured once, cached in "
        "runs/latency_lut.json)",
    )
    parser.add_argument("--latency-backend", default="onnxruntime", metavar="BACKEND",
                        help="with --target-latency-ms: torch, onnxruntime (default), openvino (CPU) or tensorrt (CUDA)")
    parser.add_argument("--latency-batch", type=int, default=1, help="with --target-latency-ms: images per forward pass")
    parser.add_argument("--latency-precision", default=None, choices=["fp32", "fp16"],
                        help="with --target-latency-ms: fp32 or fp16 (default: fp16 on a CUDA device, else fp32)")
    parser.add_argument("--strategy", default=None,
                        help="global (one score threshold; the default) or uniform (the same ratio in every group; "
                             "the default for a --keep file of per-group ratios)")
    parser.add_argument("--criterion", default="hessian",
                        help="channel importance: hessian (default), taylor, l1, l2, bn_scale, lamp, fpgm, random "
                             "(hessian/taylor rank on --data)")
    parser.add_argument("--round-to", type=int, default=8, help="round kept channel counts to multiples of this")
    parser.add_argument("--min-channels", type=int, default=8, help="never keep fewer channels in a group")
    parser.add_argument("--reconstruct", action="store_true",
                        help="refit the convs that lost input channels by least squares on --data (ThiNet-style)")
    parser.add_argument("--data", default=None, help="detection data YAML for hessian/taylor, --reconstruct and --val "
                                                     "(default: the demo dataset)")
    parser.add_argument("--val", action=argparse.BooleanOptionalAction, default=None,
                        help="score the pruned model's mAP on --data's val split (default: on, skipped with a note "
                             "when the model's classes are not the data's)")
    parser.add_argument("--val-images", type=int, default=200,
                        help="val images scored by --val (a fixed seeded subset; default 200)")
    parser.add_argument("--calib-batches", type=int, default=8, help="calibration batches from --data (default 8)")
    parser.add_argument("--batch", type=int, default=8, help="images per calibration batch (default 8)")
    parser.add_argument("--calib-imgsz", type=int, default=320, help="calibration image size (default 320)")
    parser.add_argument("--ridge", type=float, default=1e-3,
                        help="ridge of the reconstruction, relative to the input variance (default 1e-3)")
    parser.add_argument("--max-samples", type=int, default=8192,
                        help="output positions sampled per refit conv (memory cap, default 8192)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random criterion and the sampling")
    add_device_argument(parser, "device of the gradients, the reconstruction, the recalibration and --val")
    parser.add_argument("--out", default=None, help="output .pt path (default: runs/prune/expN/pruned.pt)")
    parser.add_argument("--force", action="store_true", help="overwrite --out if it exists")
    add_imgsz_argument(parser)


def parse_keep(text: str) -> float | dict[str, float]:
    """`--keep`: a number in (0, 1], or the path of a YAML/JSON mapping {group id: ratio in (0, 1]}. The ranges are
    checked here, before any model is loaded; the group ids need the model and are checked once it is."""
    try:
        ratio = float(text)
    except ValueError:
        pass
    else:
        _check_ratio(ratio)
        return ratio
    path = Path(text)
    if not path.is_file():
        raise UserError(f"--keep must be a ratio in (0, 1] or a YAML/JSON file of per-group ratios; got {text!r}")
    try:
        data = yaml.safe_load(path.read_text())  # YAML is a superset of JSON
    except yaml.YAMLError as e:
        raise UserError(f"cannot parse {path}: {str(e).splitlines()[0]}") from e
    if not isinstance(data, dict) or not all(isinstance(v, (int, float)) for v in data.values()):
        raise UserError(f"{path} must map group ids to keep ratios, e.g. {{'2.cv1': 0.5}}")
    ratios = {str(k): float(v) for k, v in data.items()}
    for gid, r in ratios.items():
        _check_ratio(r, f" for group {gid!r}")
    return ratios


def _check_ratio(r: float, where: str = "") -> None:
    if not (0.0 < r <= 1.0) or math.isnan(r):
        raise UserError(f"keep ratio must lie in (0, 1], got {r:g}{where}")


def parse_gflops(text: str, full: float) -> float:
    """`--target-gflops`: a number of GFLOPs, or a percentage of `full` ("50%")."""
    t = text.strip()
    try:
        value = float(t[:-1]) / 100 * full if t.endswith("%") else float(t)
    except ValueError:
        raise UserError(
            f"--target-gflops must be a number of GFLOPs or a percentage such as 50%, got {text!r}") from None
    if not value > 0 or math.isinf(value):
        raise UserError(f"--target-gflops must be positive, got {text!r}")
    return value


def _full_gflops(model, graph, counts: dict[str, int], imgsz: int) -> float:
    """What `count_gflops` says of `model` pruned to `counts` (which channels go does not change the count)."""
    from autoprune.cost import count_gflops
    from autoprune.pruner import prune_to_counts

    return count_gflops(prune_to_counts(model, counts, graph=graph), imgsz)


def _check_reachable(model, graph, target: float, full: float, args: argparse.Namespace) -> None:
    """A `UserError` naming the smallest model `--min-channels` and `--round-to` allow when `target` is below it."""
    from autoprune.strategies import floor_counts

    lowest = _full_gflops(model, graph, floor_counts(graph, round_to=args.round_to, min_channels=args.min_channels),
                          graph.imgsz)
    if target < lowest:
        raise UserError(
            f"the GFLOPs target {target:.4g} is below the minimum {lowest:.4g} GFLOPs ({100 * lowest / full:.1f}% of "
            f"{full:.4g}) that --min-channels {args.min_channels} and --round-to {args.round_to} allow at --imgsz "
            f"{graph.imgsz}"
        )


def _plan_within(model, graph, target: float, full: float, scores, args: argparse.Namespace):
    """The largest plan of `--strategy` whose whole-model GFLOPs are at most `target` (`strategies.plan_within`, as
    a search finds its one-shot trial), built and counted for each step."""
    from autoprune.strategies import plan_within

    plan, fits = plan_within(graph, args.strategy, target, lambda c: _full_gflops(model, graph, c, graph.imgsz),
                             full_cost=full, scores=scores, round_to=args.round_to, min_channels=args.min_channels)
    if not fits:  # _check_reachable let the target through: the floor plan itself fits
        raise RuntimeError(f"no {args.strategy} plan within {target} GFLOPs although the floor fits")
    return plan


def _check_latency_target(args: argparse.Namespace) -> None:
    """--target-latency-ms and its runtime, before the model loads."""
    from autoprune.cost.backends import check_runtime
    from autoprune.devices import resolve_device

    if not (math.isfinite(args.target_latency_ms) and args.target_latency_ms > 0):
        raise UserError(f"--target-latency-ms must be a positive number, got {args.target_latency_ms:g}")
    if isinstance(args.latency_batch, bool) or args.latency_batch < 1:
        raise UserError(f"--latency-batch must be a positive integer, got {args.latency_batch}")
    check_runtime(args.latency_backend, resolve_device(args.device), args.latency_precision)


def _plan_within_latency(model, graph, imgsz: int, scores, args: argparse.Namespace):
    """(plan, latency summary): the largest plan of `--strategy` whose predicted latency is at most
    --target-latency-ms (`strategies.plan_within` bisecting on the latency model, `cost.lut.LatencyTable`)."""
    from autoprune.cost.lut import LatencyTable
    from autoprune.runs import RUNS_ROOT
    from autoprune.strategies import floor_counts, plan_within

    target = args.target_latency_ms
    table = LatencyTable(model, graph, imgsz=imgsz, batch=args.latency_batch, device=args.device,
                         backend=args.latency_backend, precision=args.latency_precision,
                         path=RUNS_ROOT / "latency_lut.json", round_to=args.round_to,
                         min_channels=args.min_channels).build()
    full = table.predict()
    lowest = table.predict(floor_counts(graph, round_to=args.round_to, min_channels=args.min_channels))
    if target < lowest:
        raise UserError(
            f"--target-latency-ms {target:g} is below the smallest latency reachable: {lowest:.3f} ms "
            f"({args.latency_backend}, at --imgsz {imgsz}, predicted by the latency model; the unpruned model "
            f"{full:.3f} ms) with --min-channels {args.min_channels} and --round-to {args.round_to}")
    plan, fits = plan_within(graph, args.strategy, target, table.predict, full_cost=full, scores=scores,
                             round_to=args.round_to, min_channels=args.min_channels)
    if not fits:
        raise RuntimeError(f"no {args.strategy} plan within {target} ms although the floor fits")
    return plan, {"target_ms": target, "before_ms": round(full, 4), "after_ms": round(table.predict(plan.counts), 4),
                  "predicted": True, "setup": table.setup()}


def _out_path(args: argparse.Namespace) -> tuple[Path, Path | None]:
    """(checkpoint path, run folder or None). Checked before any work, so nothing is written on a bad --out."""
    from autoprune.runs import new_run_dir

    if args.out is None:
        run_dir = new_run_dir("prune")
        return run_dir / "pruned.pt", run_dir
    return _check_out(args), None


def _check_out(args: argparse.Namespace) -> Path:
    out = Path(args.out)
    if out.suffix != ".pt":
        raise UserError(f"--out must end in .pt, got {args.out}")
    if out.exists() and not args.force:
        raise UserError(f"{out} already exists; pass --force to overwrite it")
    if args.model and out.resolve() == Path(args.model).resolve():
        raise UserError("--out must not be the input model; autoprune never modifies the user's files")
    return out


def _check_args(args: argparse.Namespace) -> None:
    from autoprune.importance import DATA_CRITERIA, get_criterion
    from autoprune.strategies import check_strategy

    if args.strategy is not None:
        check_strategy(args.strategy)
    get_criterion(args.criterion)
    if args.round_to < 1 or args.min_channels < 1:
        raise UserError(
            f"--round-to and --min-channels must be at least 1, got {args.round_to} and {args.min_channels}")
    if args.calib_batches < 1 or args.batch < 1:
        raise UserError(f"--calib-batches and --batch must be at least 1, got {args.calib_batches} and {args.batch}")
    if not args.ridge >= 0 or math.isinf(args.ridge):
        raise UserError(f"--ridge must be a number >= 0, got {args.ridge:g}")
    if args.max_samples < 1:
        raise UserError(f"--max-samples must be at least 1, got {args.max_samples}")
    if args.val_images < 1:
        raise UserError(f"--val-images must be at least 1, got {args.val_images}")
    check_imgsz(args.calib_imgsz, "--calib-imgsz")
    if args.out is not None:
        _check_out(args)
    if args.criterion in DATA_CRITERIA or args.reconstruct or args.val is not False:
        from autoprune.devices import resolve_device

        resolve_device(args.device)


def run(args: argparse.Namespace) -> dict:
    from autoprune.channels import analyze
    from autoprune.cost import count_gflops, count_params
    from autoprune.importance import DATA_CRITERIA
    from autoprune.models import load_model, save_checkpoint
    from autoprune.candidate import build, rank
    from autoprune.pruner import channel_scores, keep_counts, score_context
    from autoprune.devices import resolve_device
    from autoprune.runs import save_args
    from autoprune.strategies import check_keep_target, plan_counts

    imgsz = check_imgsz(args.imgsz)
    _check_args(args)
    from autoprune.runs import check_run_root, check_writable

    if args.out is not None:
        check_writable(args.out, kind="file", what="--out")
    else:
        check_run_root("prune")
    keep = parse_keep(args.keep) if args.keep is not None else None  # ranges checked before the model loads
    if args.strategy is None:
        args.strategy = "uniform" if isinstance(keep, dict) else "global"
    if isinstance(keep, dict) and args.strategy == "global":
        raise UserError("--strategy global takes one keep share, not a file of per-group ratios")
    if args.target_gflops is not None:
        parse_gflops(args.target_gflops, 1.0)  # its syntax, before the model loads
    if args.target_latency_ms is not None:
        _check_latency_target(args)
    from autoprune.data import load_data_config

    wants_data = args.criterion in DATA_CRITERIA or args.reconstruct or args.val is not False
    data = None
    if wants_data and args.data is not None:
        data = load_data_config(args.data)  # a missing or broken data YAML fails here, before the model loads
    loaded = load_model(args.model)
    t0 = time.perf_counter()
    graph = analyze(loaded.model, imgsz=imgsz)
    full_gflops = count_gflops(loaded.model, imgsz)
    target_gflops = None
    warnings = []
    if args.target_gflops is not None:
        target_gflops = parse_gflops(args.target_gflops, full_gflops)
        _check_reachable(loaded.model, graph, target_gflops, full_gflops, args)
        if target_gflops >= full_gflops:
            warnings.append(f"--target-gflops {args.target_gflops} ({target_gflops:.4g} GFLOPs) is not below the "
                            f"unpruned model's {full_gflops:.4g} GFLOPs at --imgsz {imgsz}: nothing to prune, the "
                            "checkpoint is an unpruned copy")
            print(f"warning: {warnings[-1]}", file=sys.stderr)
    elif args.target_latency_ms is not None:
        pass  # checked against the latency model once the channel ranking is known (`_plan_within_latency`)
    elif args.strategy == "global":
        check_keep_target(graph, keep, round_to=args.round_to, min_channels=args.min_channels)
    else:
        keep_counts(graph, keep, round_to=args.round_to, min_channels=args.min_channels)  # validates the ratios

    if wants_data and data is None:
        data = load_data_config(None)  # the demo data (generated on first use), once the target is known good
    val_note = _check_data(data, loaded.model, args) if data is not None else None
    do_val = data is not None and args.val is not False and val_note is None
    batches, evaluator = (None, None) if data is None else _calibration(data, args, do_val)
    data_batches = batches if args.criterion in DATA_CRITERIA else None
    ctx = score_context(loaded.model, graph, args.criterion, batches=data_batches, seed=args.seed,
                        device=resolve_device(args.device) if data_batches else None)
    scores = channel_scores(loaded.model, graph, args.criterion, ctx) if args.strategy == "global" else None
    latency = None
    if args.target_latency_ms is not None:
        plan, latency = _plan_within_latency(loaded.model, graph, imgsz, scores, args)
    elif target_gflops is None:
        plan = plan_counts(graph, args.strategy, keep=keep, scores=scores, round_to=args.round_to,
                           min_channels=args.min_channels)
    else:
        plan = _plan_within(loaded.model, graph, target_gflops, full_gflops, scores, args)
    out, run_dir = _out_path(args)
    ranking = rank(loaded.model, graph, args.criterion, ctx=ctx)
    recon = None
    if args.reconstruct:
        recon = _reconstruct(loaded.model, plan.counts, graph, ranking, batches, args)
        pruned = recon.pop("model")
    else:
        pruned = build(loaded.model, plan.counts, graph=graph, ranking=ranking).model
    if batches is not None:
        _recalibrate(pruned, batches, args)
    seconds = time.perf_counter() - t0
    val = _validate(evaluator, pruned, data, args) if evaluator is not None else None
    calibration = None if data is None else {
        "data": str(data.yaml), "demo": args.data is None, "batches": args.calib_batches, "batch": args.batch,
        "imgsz": args.calib_imgsz, "criterion": args.criterion in DATA_CRITERIA, "bn_recalibrated": True,
    }

    meta = {
        "source": loaded.source,
        "source_fingerprint": loaded.fingerprint,
        "criterion": args.criterion,
        "strategy": args.strategy,
        "keep": keep if not isinstance(keep, dict) else dict(keep),
        "target_gflops": target_gflops,
        "threshold": plan.threshold,
        "uniform_ratio": plan.ratio,
        "kept_channels": plan.counts,
        "round_to": args.round_to,
        "min_channels": args.min_channels,
        "reconstructed": bool(args.reconstruct),
        "imgsz": imgsz,
        "gflops": {"before": round(full_gflops, 4), "after": round(count_gflops(pruned, imgsz), 4)},
        "bn_recalibrated": batches is not None,
        "calibration_data": None if data is None else str(data.yaml),
        "val": None if val is None else {k: v for k, v in val.items() if k != "seconds"},
    }
    save_checkpoint(pruned, out, base_ckpt=loaded.ckpt, meta=meta, derived=True)
    if run_dir is not None:
        # the resolved values, as Ultralytics records them, not the None of a default
        save_args(run_dir, args, model=loaded.source, data=None if data is None else str(data.yaml), out=str(out))

    before = {"gflops": full_gflops, "params": count_params(loaded.model)}
    after = {"gflops": count_gflops(pruned, imgsz), "params": count_params(pruned)}
    result = {
        "model": loaded.source,
        "out": str(out),
        "imgsz": imgsz,
        "criterion": args.criterion,
        "strategy": args.strategy,
        "target": ({"latency_ms": args.target_latency_ms} if latency is not None else plan.target
                   if target_gflops is None else {"gflops": round(target_gflops, 4)}),
        "uniform_ratio": plan.ratio,
        "threshold": plan.threshold,
        "conv_gflops": {"before": round(graph.conv_gflops(), 4), "after": round(plan.gflops, 4)},
        "keep_share": round(plan.keep_share, 4),
        "before": {"gflops": round(before["gflops"], 4), "params": before["params"]},
        "after": {"gflops": round(after["gflops"], 4), "params": after["params"]},
        "gflops_ratio": round(after["gflops"] / before["gflops"], 4),
        "params_ratio": round(after["params"] / before["params"], 4),
        "seconds": round(seconds, 3),
        "kept_channels": plan.counts,
        "calibration": calibration,
        "bn_recalibrated": batches is not None,
        "val": val,
        "map50": None if val is None else val["map50"],
        "map50_95": None if val is None else val["map50_95"],
        "needs_finetune": True,
    }
    if val_note:
        result["val_note"] = val_note
    if recon is not None:
        result["reconstruction"] = recon
    if latency is not None:
        result["latency"] = latency
    note = None if latency is not None else _reached_note(graph, plan, keep, target_gflops, after["gflops"], full_gflops, args)
    if note:
        result["note"] = note
    if warnings:
        result["warnings"] = warnings
    if not args.json:
        how = f"{args.strategy}, {args.criterion}"
        how += f", ratio {plan.ratio:.4f}" if plan.ratio is not None and args.target_gflops else ""
        how += f", threshold {plan.threshold:.4g}" if plan.threshold is not None else ""
        print(
            f"pruned {loaded.source} ({how}): {before['gflops']:.2f} -> {after['gflops']:.2f} GFLOPs at {imgsz} "
            f"({100 * result['gflops_ratio']:.1f}%), {before['params']:,} -> {after['params']:,} params "
            f"({100 * result['params_ratio']:.1f}%) in {seconds:.2f}s"
        )
        if recon is not None:
            print(f"reconstructed {recon['convs']} convs; Detect-input relative MSE on the calibration data "
                  f"{recon['detect_input_mse_before']:.4f} -> {recon['detect_input_mse_after']:.4f}")
        if note:
            print(f"note: {note}")
        if latency is not None:
            print(f"latency: {latency['before_ms']:.2f} -> {latency['after_ms']:.2f} ms for a target of "
                  f"{args.target_latency_ms:g} ms, as the latency model predicts it ({latency['setup']['backend']}, "
                  f"{latency['setup']['precision']}, batch {latency['setup']['batch']}, "
                  f"{latency['setup']['threads']} thread(s); `autoprune cost --latency-backend` measures it)")
        for line in _data_lines(calibration, val, val_note, args):
            print(line)
        print(f"saved {out}")
        print("note: a pruned model needs finetuning before use (as `autoprune apply` finetunes a search's trial; "
              "README: 'Training a pruned checkpoint in plain Ultralytics')")
    return result


def _reached_note(graph, plan, keep, target_gflops, gflops, full_gflops, args) -> str | None:
    """One sentence saying what was reached and why, when it is not what was asked: channel counts move in steps of
    --round-to and never go below the --min-channels floor. None when the result is within 2% of the target."""
    from autoprune.strategies import floor_counts

    floors = floor_counts(graph, round_to=args.round_to, min_channels=args.min_channels)
    at_floor = sum(1 for g in graph.groups if plan.counts[g.id] == floors[g.id] < g.size)
    why = f"kept channel counts are multiples of --round-to {args.round_to}"
    if at_floor:
        why += (f", and {at_floor} of {len(graph.groups)} groups are at the floor of --min-channels "
                f"{args.min_channels} (rounded up to --round-to)")
    if target_gflops is not None:
        if gflops >= 0.98 * target_gflops or target_gflops >= full_gflops:
            return None
        return (f"reached {gflops:.4g} GFLOPs ({100 * gflops / full_gflops:.1f}% of {full_gflops:.4g}), under the "
                f"target {target_gflops:.4g} ({100 * target_gflops / full_gflops:.1f}%): the largest {args.strategy} "
                f"plan within it, as {why}")
    if isinstance(keep, dict) or abs(plan.keep_share - keep) <= 0.02:
        return None
    return (f"kept {100 * plan.keep_share:.1f}% of the prunable channels for --keep {keep:g}: {why}")


def _check_data(data, model, args: argparse.Namespace) -> str | None:
    """Whether `data` fits the model, before any work: a `UserError` where the ranking's labels or an explicit --val
    cannot use it; the note that says why the mAP is skipped where only the default --val cannot."""
    from autoprune.importance import DATA_CRITERIA

    head = model.model[-1]
    what = "the demo data" if args.data is None else data.yaml.name
    if data.nc > head.nc and (args.criterion in DATA_CRITERIA or args.reconstruct):
        raise UserError(f"{what} has {data.nc} classes but the model predicts {head.nc}; "
                        "use data with the model's classes (--data)")
    if args.val is not False and data.nc != head.nc:
        why = f"the model predicts {head.nc} classes and {what} has {data.nc}"
        if args.val:
            raise UserError(f"--val needs data with the model's classes: {why} (pass --data, or --no-val)")
        return f"no mAP: {why} (pass --data with the model's classes for one)"
    return None


def _calibration(data, args: argparse.Namespace, val: bool) -> tuple[list[dict], object | None]:
    """The fixed calibration batches (seeded subset of the train split, letterboxed: the proxy's), and with `val`
    the proxy evaluator that drew them and scores the val split (`ProxyEvaluator`, no finetune steps)."""
    train_images = args.calib_batches * args.batch
    if not val:
        from autoprune.batches import calibration_batches

        return calibration_batches(data, imgsz=args.calib_imgsz, calib_batches=args.calib_batches, batch=args.batch,
                                   seed=args.seed, train_images=train_images), None
    from autoprune.proxy import ProxyEvaluator, ProxySettings

    ev = ProxyEvaluator(data, ProxySettings(steps=0, imgsz=args.calib_imgsz, calib_batches=args.calib_batches,
                                            batch=args.batch, seed=args.seed, device=args.device,
                                            val_images=args.val_images, train_images=train_images))
    return ev.calibration_batches(), ev


def _recalibrate(model, batches: list[dict], args: argparse.Namespace) -> None:
    """Recalibrate `model`'s BatchNorm statistics on the calibration batches (in float32 on --device), in place."""
    from autoprune.batchnorm import recalibrate_bn
    from autoprune.devices import resolve_device

    device = resolve_device(args.device)
    recalibrate_bn(model.to(device), batches, device=device)
    model.cpu()


def _validate(evaluator, model, data, args: argparse.Namespace) -> dict:
    """The proxy's validation of a copy of `model` as saved (already recalibrated; no finetune)."""
    import copy

    r = evaluator.evaluate(copy.deepcopy(model), recalibrate=False, steps=0)
    return {"map50": round(r.map50, 4), "map50_95": round(r.map50_95, 4),
            "map50_95_se": None if r.map50_95_se is None else round(r.map50_95_se, 4),
            "images": r.val_images, "imgsz": args.calib_imgsz, "data": str(data.yaml),
            "seconds": round(r.seconds, 3)}


def _data_lines(calibration: dict | None, val: dict | None, val_note: str | None, args) -> list[str]:
    """What the data did: which data ranked the channels and recalibrated BatchNorm, and the mAP of the saved model."""
    if calibration is None:
        return []
    where = f"{calibration['data']}{' (the demo data)' if calibration['demo'] else ''}"
    used = (["ranking"] if calibration["criterion"] else []) + (["reconstruction"] if args.reconstruct else [])
    lines = [f"data: {where}: {args.calib_batches} x {args.batch} train images at {args.calib_imgsz} for the "
             f"{' and '.join(used + ['BatchNorm recalibration'])}; the saved checkpoint has the recalibrated "
             "BatchNorm statistics"]
    if val is not None:
        se = f" ± {val['map50_95_se']:.3f}" if val["map50_95_se"] is not None else ""
        lines.append(f"val: mAP50-95 {val['map50_95']:.4f}{se}, mAP50 {val['map50']:.4f} on {val['images']} val "
                     f"images at {val['imgsz']} (the saved model, before any finetuning)")
    elif val_note:
        lines.append(f"note: {val_note}")
    return lines


def _reconstruct(model, counts, graph, ranking, batches, args) -> dict:
    """The candidate keeping `counts`, refit by least squares on `batches` (`candidate.build`) on --device, with
    the relative errors of the Detect inputs and the head outputs before and after the refit."""
    import torch

    from autoprune.candidate import build
    from autoprune.devices import resolve_device
    from autoprune.pruner import apply_indices
    from autoprune.reconstruct import feature_errors

    device = resolve_device(args.device)
    if device.type != "cpu":
        model = model.to(device)
    c = build(model, counts, graph=graph, ranking=ranking, batches=batches, ridge=args.ridge,
              max_samples=args.max_samples, seed=args.seed)
    before = feature_errors(model, apply_indices(model, graph, c.indices), graph, c.indices, batches)
    after = feature_errors(model, c.model, graph, c.indices, batches)
    out = {
        **c.reconstruction.summary(),
        "detect_input_mse_before": round(before["detect_inputs_mean"], 6),
        "detect_input_mse_after": round(after["detect_inputs_mean"], 6),
        "head_output_mse_before": round(before["head_outputs"], 6),
        "head_output_mse_after": round(after["head_outputs"], 6),
        "model": c.model.cpu() if device.type != "cpu" else c.model,
    }
    if device.type != "cpu":
        model.cpu()
        torch.cuda.empty_cache()
    return out


__all__ = ["add_arguments", "parse_gflops", "parse_keep", "run"]
