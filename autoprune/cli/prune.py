"""Prune a model at one keep ratio (or per-group ratios from a file) and save it as a stock Ultralytics checkpoint.

The checkpoint loads with `ultralytics.YOLO(path)` in a process that never imports autoprune.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import yaml

from autoprune.cli._common import add_imgsz_argument, add_model_argument, check_imgsz
from autoprune.errors import UserError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_model_argument(parser)
    parser.add_argument(
        "--keep",
        required=True,
        help="share of channels to keep in every group, in (0, 1]; or a YAML/JSON file mapping group ids to ratios",
    )
    parser.add_argument("--criterion", default="l1", help="channel importance criterion (default l1)")
    parser.add_argument("--round-to", type=int, default=8, help="round kept channel counts to multiples of this")
    parser.add_argument("--min-channels", type=int, default=8, help="never keep fewer channels in a group")
    parser.add_argument("--out", default=None, help="output .pt path (default: runs/prune/expN/pruned.pt)")
    parser.add_argument("--force", action="store_true", help="overwrite --out if it exists")
    add_imgsz_argument(parser)


def parse_keep(text: str) -> float | dict[str, float]:
    """`--keep`: a number, or the path of a YAML/JSON mapping {group id: ratio}."""
    try:
        return float(text)
    except ValueError:
        pass
    path = Path(text)
    if not path.is_file():
        raise UserError(f"--keep must be a ratio in (0, 1] or a YAML/JSON file of per-group ratios; got {text!r}")
    try:
        data = yaml.safe_load(path.read_text())  # YAML is a superset of JSON
    except yaml.YAMLError as e:
        raise UserError(f"cannot parse {path}: {str(e).splitlines()[0]}") from e
    if not isinstance(data, dict) or not all(isinstance(v, (int, float)) for v in data.values()):
        raise UserError(f"{path} must map group ids to keep ratios, e.g. {{'2.cv1': 0.5}}")
    return {str(k): float(v) for k, v in data.items()}


def _out_path(args: argparse.Namespace) -> tuple[Path, Path | None]:
    """(checkpoint path, run folder or None). Checked before any work, so nothing is written on a bad --out."""
    from autoprune.runs import new_run_dir

    if args.out is None:
        run_dir = new_run_dir("prune")
        return run_dir / "pruned.pt", run_dir
    out = Path(args.out)
    if out.suffix != ".pt":
        raise UserError(f"--out must end in .pt, got {args.out}")
    if out.exists() and not args.force:
        raise UserError(f"{out} already exists; pass --force to overwrite it")
    if args.model and out.resolve() == Path(args.model).resolve():
        raise UserError("--out must not be the input model; autoprune never modifies the user's files")
    return out, None


def run(args: argparse.Namespace) -> dict:
    from autoprune.channels import analyze
    from autoprune.cost import count_gflops, count_params
    from autoprune.importance import get_criterion
    from autoprune.models import load_model, save_checkpoint
    from autoprune.pruner import keep_counts, prune_to_counts
    from autoprune.runs import save_args

    imgsz = check_imgsz(args.imgsz)
    keep = parse_keep(args.keep)
    get_criterion(args.criterion)
    loaded = load_model(args.model)
    t0 = time.perf_counter()
    graph = analyze(loaded.model, imgsz=imgsz)
    counts = keep_counts(graph, keep, round_to=args.round_to, min_channels=args.min_channels)
    out, run_dir = _out_path(args)
    pruned = prune_to_counts(loaded.model, counts, criterion=args.criterion, graph=graph)
    seconds = time.perf_counter() - t0

    meta = {
        "source": loaded.source,
        "source_fingerprint": loaded.fingerprint,
        "criterion": args.criterion,
        "keep": keep if isinstance(keep, float) else dict(keep),
        "kept_channels": counts,
        "round_to": args.round_to,
        "min_channels": args.min_channels,
    }
    save_checkpoint(pruned, out, base_ckpt=loaded.ckpt, meta=meta)
    if run_dir is not None:
        save_args(run_dir, args)

    before = {"gflops": count_gflops(loaded.model, imgsz), "params": count_params(loaded.model)}
    after = {"gflops": count_gflops(pruned, imgsz), "params": count_params(pruned)}
    result = {
        "model": loaded.source,
        "out": str(out),
        "imgsz": imgsz,
        "criterion": args.criterion,
        "before": {"gflops": round(before["gflops"], 4), "params": before["params"]},
        "after": {"gflops": round(after["gflops"], 4), "params": after["params"]},
        "gflops_ratio": round(after["gflops"] / before["gflops"], 4),
        "params_ratio": round(after["params"] / before["params"], 4),
        "seconds": round(seconds, 3),
        "kept_channels": counts,
    }
    if not args.json:
        print(
            f"pruned {loaded.source}: {before['gflops']:.2f} -> {after['gflops']:.2f} GFLOPs at {imgsz} "
            f"({100 * result['gflops_ratio']:.1f}%), {before['params']:,} -> {after['params']:,} params "
            f"({100 * result['params_ratio']:.1f}%) in {seconds:.2f}s\nsaved {out}"
        )
    return result


__all__ = ["add_arguments", "parse_keep", "run"]
