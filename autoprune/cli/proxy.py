"""Score one candidate with the search's proxy: BN recalibration, a short finetune, mAP on a fixed val subset.

    autoprune proxy --model best.pt --data data.yaml --keep 0.7 --steps 50

Prints mAP50 and mAP50-95 on the validation subset and the seconds each stage took. It is the number a search
optimises, so running it on a single candidate shows what the search will see.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from autoprune.errors import UserError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Declare the flags of `autoprune proxy`."""
    parser.add_argument("--model", default=None, help="a .pt checkpoint or model YAML (default: the demo model)")
    parser.add_argument("--data", default=None, help="detection data YAML (default: the demo dataset)")
    which = parser.add_mutually_exclusive_group()
    which.add_argument("--keep", type=float, default=1.0, help="uniform keep ratio in (0, 1] (default 1.0)")
    which.add_argument("--genome", default=None, metavar="FILE",
                       help="a YAML/JSON genome {gene name: keep ratio} of the search space (see --space)")
    parser.add_argument("--space", default="fine",
                        help="search space of --genome (default fine, as autoprune search; family: the model family's)")
    parser.add_argument("--criterion", default="hessian",
                        help="channel ranking of --keep and --genome, as in autoprune search (default hessian)")
    parser.add_argument("--calib-batches", type=int, default=20,
                        help="calibration batches: BN recalibration, data criteria, --reconstruct (0: none)")
    parser.add_argument("--reconstruct", action="store_true",
                        help="refit the convs that lost inputs by least squares on the calibration batches first, "
                             "as autoprune search --reconstruct does")
    parser.add_argument("--steps", type=int, default=50, help="finetune steps on the detection loss (0: none)")
    parser.add_argument("--imgsz", type=int, default=320, help="input size, a multiple of 32 (default 320)")
    parser.add_argument("--batch", type=int, default=8, help="images per calibration / finetune batch (default 8)")
    parser.add_argument("--lr", type=float, default=3e-4, help="finetune learning rate (AdamW, default 3e-4)")
    parser.add_argument("--distill", type=float, default=0.0, metavar="W",
                        help="weight of head distillation from the unpruned model in the finetune, as autoprune search "
                             "--proxy-distill (default 0: off)")
    parser.add_argument("--val-images", type=int, default=200, help="size of the seeded val subset (default 200)")
    parser.add_argument("--threads", type=int, default=1,
                        help="CPU threads during the evaluation (default 1, see ProxySettings.threads; 0: torch's)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the image subsets and batch order")
    from autoprune.cli._common import add_device_argument

    add_device_argument(parser, "device of the proxy and the latency")
    parser.add_argument("--no-latency", action="store_true", help="skip the latency measurement (GFLOPs only)")


def _prepare_candidate(args: argparse.Namespace, loaded_model, evaluator):
    """Return the candidate model to score: `loaded_model.model` pruned as `--keep` / `--genome` say.

    - `--keep 1.0`: the model itself (the proxy modifies the model it scores; this one is ours alone);
    - `--keep K`: K of every channel group (`pruner.keep_counts`);
    - `--genome FILE`: the genome's kept channel counts in the search space (`--space`, default `fine` as in
      `autoprune search`).

    Channels are ranked by `--criterion` as a search ranks them (data criteria on `evaluator`'s calibration batches,
    the images a search with the same proxy settings uses), so a trial's genome gives back that trial's model;
    `--reconstruct` refits it on the same batches, as such a search does.
    """
    model = loaded_model.model
    if args.genome is None and args.keep == 1.0:
        return model
    from autoprune.candidate import build, rank
    from autoprune.channels import analyze
    from autoprune.importance import DATA_CRITERIA
    from autoprune.pruner import keep_counts
    from autoprune.space import load_space

    genome = _read_genome(args.genome) if args.genome is not None else None
    graph = analyze(model)
    space = load_space(args.space, graph, model) if genome is not None else None
    counts = keep_counts(graph, args.keep) if space is None else space.counts(genome)
    batches = evaluator.calibration_batches() if args.criterion in DATA_CRITERIA else None
    ranking = rank(model, graph, args.criterion, batches=batches, kpt_oks_sigmas=evaluator.data.kpt_oks_sigmas)
    if space is not None and space.depth_genes:  # the elements a search removes: measured on the same images
        from autoprune.depth import rank_elements

        driven = {u for g in space.depth_genes for u in g.units}
        ranking.update(rank_elements(model, evaluator.calibration_batches(),
                                     [u for u in space.units if u.id in driven]))
    if args.reconstruct:  # refit where the proxy runs: the model is ours alone, and only the candidate is used next
        return build(model.to(evaluator.device), counts, graph=graph, ranking=ranking,
                     batches=evaluator.calibration_batches(), seed=evaluator.settings.seed).model
    swaps = space is not None and space.swap_genes and evaluator.settings.calib_batches > 0  # as a search fits them
    swap_batches = evaluator.calibration_batches() if swaps else None
    return build(model, counts, graph=graph, ranking=ranking, swap_batches=swap_batches,
                 seed=evaluator.settings.seed).model


def _read_genome(path: str) -> dict:
    """A genome file: a YAML/JSON mapping {gene name: keep ratio} (or one under a top-level `genome` key)."""
    import yaml

    try:
        data = yaml.safe_load(Path(path).read_text(encoding="utf-8"))  # YAML is a superset of JSON
    except yaml.YAMLError as e:
        raise UserError(f"cannot parse genome file {path}: {str(e).splitlines()[0]}") from e
    except (OSError, UnicodeDecodeError) as e:
        raise UserError(f"cannot read genome file {path}: {e}") from e
    if isinstance(data, dict) and isinstance(data.get("genome"), dict):
        data = data["genome"]
    if not isinstance(data, dict) or not data:
        raise UserError(f"genome file {path} must map gene names to keep ratios, e.g. {{backbone: 0.5}}")
    return data


def _check_args(args: argparse.Namespace) -> None:
    if not (0.0 < args.keep <= 1.0):
        raise UserError(f"--keep must lie in (0, 1], got {args.keep:g}")
    if args.genome is not None and not Path(args.genome).is_file():
        raise UserError(f"genome file not found: {args.genome}")
    if args.genome is not None or args.keep < 1.0:  # channels are ranked only when something is pruned
        from autoprune.importance import check_calibration, get_criterion

        get_criterion(args.criterion)
        check_calibration(args.criterion, args.calib_batches)
        if args.reconstruct and args.calib_batches == 0:
            raise UserError("--reconstruct refits convs on the calibration batches, and --calib-batches 0 leaves "
                            "none: pass --calib-batches N")


def _cost(model, args: argparse.Namespace, device) -> dict:
    """GFLOPs and measured latency (batch 1, at the proxy's imgsz) through `autoprune.cost`; empty without it."""
    try:
        from autoprune.cost import count_gflops, measure_latency
    except ImportError:
        return {}
    out = {"gflops": round(count_gflops(model, args.imgsz), 4)}
    if not args.no_latency:
        r = measure_latency(model, imgsz=args.imgsz, device=str(device))  # deployment threads, as the search does
        out.update(latency_ms=round(r.median_ms, 3), latency_device=f"{r.device} ({r.device_name}, {r.precision}, "
                   f"{r.threads} threads)")
    return out


def run(args: argparse.Namespace) -> dict:
    """Score one candidate with the proxy and return its mAPs, cost figures and timings."""
    _check_args(args)
    from autoprune.proxy import ProxySettings  # noqa: I001 - heavy imports only once the command runs

    try:
        settings = ProxySettings(imgsz=args.imgsz, calib_batches=args.calib_batches, steps=args.steps,
                                 batch=args.batch, lr=args.lr, val_images=args.val_images, seed=args.seed,
                                 device=args.device, threads=args.threads, distill=args.distill)
    except UserError as e:
        raise UserError(f"{e} (see --help)") from None
    from autoprune.data import load_data_config
    from autoprune.models import load_model, require_task
    from autoprune.proxy import ProxyEvaluator

    t0 = time.perf_counter()
    data = load_data_config(args.data)  # checks the YAML and its images before any heavy work
    loaded = load_model(args.model, seed=args.seed)
    require_task(loaded, "proxy")
    evaluator = ProxyEvaluator(data, settings, task=loaded.task)
    if settings.distill:
        evaluator.set_teacher(loaded.model)  # a private copy: the candidate may be this very model
    model = _prepare_candidate(args, loaded, evaluator)
    cost = _cost(model, args, evaluator.device)  # before evaluate, which modifies the model (same architecture)
    result = evaluator.evaluate(model)
    out = {
        "model": loaded.source,
        "data": str(data.yaml),
        "keep": args.keep if args.genome is None else None,
        "genome": args.genome,
        "reconstruct": bool(args.reconstruct),
        "map50": result.map50,
        "map50_95": result.map50_95,
        "precision": result.precision,
        "recall": result.recall,
        **({"metric": result.metric} if loaded.task != "detect" else {}),  # what the figures above measure
        **({"box_map50": result.box_map50, "box_map50_95": result.box_map50_95}
           if result.box_map50_95 is not None else {}),  # segment, pose: the box figures beside their own
        "val_images": result.val_images,
        **cost,
        "seconds": round(result.seconds, 3),
        "setup_seconds": round(evaluator.setup_seconds, 3),
        "breakdown": result.breakdown,
        "cpu_seconds": result.cpu_seconds,
        "precision_mode": evaluator.precision,
        "train_loss": list(result.train_loss),
        "settings": {k: getattr(settings, k) for k in settings.__dataclass_fields__},
        "device": str(evaluator.device),
        "total_seconds": round(time.perf_counter() - t0, 3),
    }
    if not args.json:
        stages = ", ".join(f"{k} {v:.2f}s" for k, v in result.breakdown.items())
        print(f"proxy  {loaded.source}  on {data.yaml.name} ({result.val_images} val images, imgsz {args.imgsz})")
        from autoprune.proxy import figure_names

        name50, name = figure_names(loaded.task)  # 'mAP50', 'mask mAP50-95', 'top-1 accuracy'...
        print(f"  {name50} {result.map50:.4f}   {name} {result.map50_95:.4f}   "
              f"(P {result.precision:.3f}, R {result.recall:.3f})")
        if result.box_map50_95 is not None:
            print(f"  box mAP50 {result.box_map50:.4f}   box mAP50-95 {result.box_map50_95:.4f}")
        if "gflops" in cost:
            lat = f", latency {cost['latency_ms']:.2f} ms ({cost['latency_device']})" if "latency_ms" in cost else ""
            print(f"  {cost['gflops']:.3f} GFLOPs at {args.imgsz}{lat}")
        print(f"  {result.seconds:.2f} s per candidate ({evaluator.precision}): {stages}")
        print(f"  setup (once per process) {evaluator.setup_seconds:.2f} s on {evaluator.device}")
    return out
