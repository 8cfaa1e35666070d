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
from pathlib import Path

import yaml

from autoprune.cli._common import (add_device_argument, add_imgsz_argument, add_latency_calibration_argument,
                                   add_model_argument)
from autoprune.errors import UserError
from autoprune.imgsz import check_imgsz
from autoprune.oneshot import parse_gflops


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
        "latency model predicts it (autoprune.latency_model: per-layer latencies measured once, cached in "
        "runs/latency_lut.json); the pruned model is then timed end to end",
    )
    add_latency_calibration_argument(parser, "with --target-latency-ms: ")
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
    parser.add_argument("--depth", default=None, metavar="SPEC",
                        help="also remove repeated elements (the bottlenecks of C2f/C3k2, residual C3/C3k chains; "
                             "`autoprune groups` lists the units): a share kept per unit such as 0.5 (floor of share "
                             "x n), or UNIT=K[,UNIT=K...]; --keep 1 --depth 0.5 is depth alone")
    parser.add_argument("--swap", action="append", default=None, metavar="KIND[:SELECTION]",
                        help="also replace k x k Convs (k > 1) by a cheaper operator fitted to them by least squares "
                             "on --data: KIND is dws (DWConv + 1x1 Conv), group2/group4/group8 (grouped Conv) or "
                             "factor (k x 1 then 1 x k Conv); SELECTION is a comma list of conv ids or patterns "
                             "(`autoprune groups` lists them), Lnn (a layer), backbone, neck, head or all (default: "
                             "backbone,neck); after widths and --depth; repeatable")
    parser.add_argument("--reconstruct", action="store_true",
                        help="refit the convs that lost input channels by least squares on --data (ThiNet-style)")
    parser.add_argument("--data", default=None, help="data YAML (labels of the model's task: detect, segment, pose "
                                                     "or OBB) for hessian/taylor, --reconstruct and --val (default: "
                                                     "the demo dataset)")
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
    parser.add_argument("--out", default=None,
                        help="output .pt file, instead of pruned.pt in the run folder PROJECT/NAME")
    parser.add_argument("--force", action="store_true", help="overwrite --out if it exists")
    from autoprune.cli._common import add_run_arguments

    add_run_arguments(parser, "prune")
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


def _check_latency_target(args: argparse.Namespace) -> None:
    """--target-latency-ms and its runtime, before the model loads."""
    from autoprune.cost.backends import check_runtime
    from autoprune.devices import resolve_device

    if not (math.isfinite(args.target_latency_ms) and args.target_latency_ms > 0):
        raise UserError(f"--target-latency-ms must be a positive number, got {args.target_latency_ms:g}")
    if isinstance(args.latency_batch, bool) or args.latency_batch < 1:
        raise UserError(f"--latency-batch must be a positive integer, got {args.latency_batch}")
    if args.latency_calibration < 0:
        raise UserError(f"--latency-calibration must be 0 or a positive integer, got {args.latency_calibration}")
    check_runtime(args.latency_backend, resolve_device(args.device), args.latency_precision)


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
        given = [f for f, v in (("--project", args.project), ("--name", args.name), ("--exist-ok", args.exist_ok)) if v]
        if given:
            raise UserError(f"--out names the checkpoint file itself; {'/'.join(given)} place pruned.pt in a run "
                            "folder instead: give one or the other")
    if args.criterion in DATA_CRITERIA or args.reconstruct or args.val is not False:
        from autoprune.devices import resolve_device

        resolve_device(args.device)


def run(args: argparse.Namespace) -> dict:
    from autoprune.models import load_model
    from autoprune.oneshot import OneShotSettings, prune_once
    from autoprune.runs import check_writable, run_dir_path, save_args

    imgsz = check_imgsz(args.imgsz)
    _check_args(args)
    run_dir = None
    if args.out is not None:
        check_writable(args.out, kind="file", what="--out")
    else:
        run_dir = run_dir_path("prune", args.project, args.name, exist_ok=args.exist_ok)
    keep = parse_keep(args.keep) if args.keep is not None else None  # ranges checked before the model loads
    if args.strategy is None:
        args.strategy = "uniform" if isinstance(keep, dict) else "global"
    if isinstance(keep, dict) and args.strategy == "global":
        raise UserError("--strategy global takes one keep share, not a file of per-group ratios")
    if args.target_gflops is not None:
        parse_gflops(args.target_gflops, 1.0)  # its syntax, before the model loads
    if args.target_latency_ms is not None:
        _check_latency_target(args)
    settings = OneShotSettings(
        strategy=args.strategy, criterion=args.criterion, keep=keep, target_gflops=args.target_gflops,
        target_latency_ms=args.target_latency_ms, latency_backend=args.latency_backend,
        latency_batch=args.latency_batch, latency_precision=args.latency_precision,
        latency_calibration=args.latency_calibration, round_to=args.round_to,
        min_channels=args.min_channels, reconstruct=args.reconstruct, val=args.val, val_images=args.val_images,
        calib_batches=args.calib_batches, batch=args.batch, calib_imgsz=args.calib_imgsz, ridge=args.ridge,
        max_samples=args.max_samples, seed=args.seed, device=args.device, depth=args.depth,
        swap=tuple(args.swap or ()))
    data = None
    if settings.wants_data and args.data is not None:
        from autoprune.data import load_data_config

        data = load_data_config(args.data)  # a missing or broken data YAML fails here, before the model loads
    loaded = load_model(args.model)
    done = prune_once(loaded, settings, imgsz=imgsz, data=data, out=args.out, run_dir=run_dir,
                      warn=lambda w: print(f"warning: {w}", file=sys.stderr))
    if done.run_dir is not None:
        # the resolved values, as Ultralytics records them, not the None of a default
        save_args(done.run_dir, args, model=loaded.source, data=None if done.data is None else str(done.data.yaml),
                  out=str(done.out), project=str(done.run_dir.parent), name=done.run_dir.name)
    result = done.summary
    if not args.json:
        _print(done, args)
    return result


def _print(done, args: argparse.Namespace) -> None:
    """The human-readable view of what `prune_once` did (its unrounded GFLOPs and seconds)."""
    r = done.summary
    how = f"{r['strategy']}, {r['criterion']}"
    how += f", ratio {r['uniform_ratio']:.4f}" if r["uniform_ratio"] is not None and args.target_gflops else ""
    how += f", threshold {r['threshold']:.4g}" if r["threshold"] is not None else ""
    print(
        f"pruned {r['model']} ({how}): {done.gflops_before:.2f} -> {done.gflops_after:.2f} GFLOPs at {r['imgsz']} "
        f"({100 * r['gflops_ratio']:.1f}%), {r['before']['params']:,} -> {r['after']['params']:,} params "
        f"({100 * r['params_ratio']:.1f}%) in {done.seconds:.2f}s"
    )
    recon = r.get("reconstruction")
    if recon is not None:
        unfitted = f" ({recon['unfitted']} transposed left as pruned)" if recon.get("unfitted") else ""
        print(f"reconstructed {recon['convs']} convs{unfitted}; Detect-input relative MSE on the calibration data "
              f"{recon['detect_input_mse_before']:.4f} -> {recon['detect_input_mse_after']:.4f}")
    swaps = r.get("swaps")
    if swaps:
        done_ = {k: v for k, v in swaps["convs"].items() if "skipped" not in v}
        errs = [v["rel_error"] for v in done_.values() if v.get("rel_error") is not None]
        if errs:
            fit = (f"relative output error before finetuning (fit on the calibration output) mean "
                   f"{sum(errs) / len(errs):.4f}, max {max(errs):.4f}")
        else:
            mean = sum(v["weight_error"] for v in done_.values()) / max(len(done_), 1)
            fit = f"fit on the weights (no calibration data): relative weight error mean {mean:.4f}"
        print(f"swapped {len(done_)} convs; {fit}")
        for cid, v in swaps["convs"].items():
            if "skipped" in v:
                what = f"skipped: {v['skipped']}"
            elif v.get("rel_error") is not None:
                what = f"error {v['rel_error']:.4f} (SVD init {v['init_error']:.4f})"
            else:
                what = f"weight error {v['weight_error']:.4f}"
            print(f"  {cid:<14} {v['kind']:<7} {what}")
    if r.get("note"):
        print(f"note: {r['note']}")
    latency = r.get("latency")
    if latency is not None:
        cal = latency["calibration"]
        how = (f"the latency model x {cal['scale']:.3f} {cal['offset_ms']:+.2f} ms, calibrated by {len(cal['steps'])} "
               "end-to-end timing(s) of the plan at the target" if cal else "the latency model")
        print(f"latency: {latency['after_ms']:.2f} ms measured end to end for a target of {args.target_latency_ms:g} "
              f"ms (the unpruned model {latency['before_ms']:.2f} ms as the latency model measured it; "
              f"{latency['setup']['backend']}, {latency['setup']['precision']}, batch {latency['setup']['batch']}, "
              f"{latency['setup']['threads']} thread(s), {latency['setup']['device_name']}); planned by {how}")
    for line in _data_lines(r["calibration"], r["val"], r.get("val_note"), args):
        print(line)
    print(f"saved {r['out']}")
    print("note: a pruned model needs finetuning before use (as `autoprune apply` finetunes a search's trial; "
          "README: 'Training a pruned checkpoint in plain Ultralytics')")


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
        from autoprune.proxy import TASK_METRICS, figure_names

        se = f" ± {val['map50_95_se']:.3f}" if val["map50_95_se"] is not None else ""
        task = next((t for t, (metric, _) in TASK_METRICS.items() if metric == val.get("metric")), "detect")
        name50, name = figure_names(task)  # 'mAP50-95', 'mask mAP50-95', 'top-1 accuracy'...
        lines.append(f"val: {name} {val['map50_95']:.4f}{se}, {name50} {val['map50']:.4f} on {val['images']} val "
                     f"images at {val['imgsz']} (the saved model, before any finetuning)")
    elif val_note:
        lines.append(f"note: {val_note}")
    return lines


__all__ = ["add_arguments", "parse_gflops", "parse_keep", "run"]
