"""Search per-group keep ratios for the best accuracy within a compute budget (the main command).

Every candidate is a trial in one Optuna study (a SQLite file in the run folder PROJECT/NAME, default
runs/search/expN, or --storage URL for many workers). Start every extra worker, on this machine or another, with the
same --storage, --name (or --study) and --resume.
"""

from __future__ import annotations

import argparse
import os

from autoprune.cli._common import (add_device_argument, add_latency_calibration_argument, add_model_argument,
                                   add_run_arguments)
from autoprune.errors import UserError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_model_argument(parser)
    parser.add_argument("--data", default=None, help="data YAML (default: the embedded demo dataset)")
    parser.add_argument("--budget-gflops", type=float, default=None,
                        help="GFLOPs budget at --imgsz (this, --budget-latency-ms, or both)")
    parser.add_argument("--budget-latency-ms", type=float, default=None,
                        help="latency budget on --device, in --latency-backend at --latency-batch; alone, candidates "
                             "are repaired, filled and planned toward it by the latency model (latency_model), and each "
                             "evaluated one is measured end to end")
    parser.add_argument("--latency-backend", default="torch", metavar="BACKEND",
                        help="the runtime latency is measured in: torch (default), onnxruntime, openvino (CPU) or "
                             "tensorrt (CUDA); each candidate is exported as Ultralytics exports it for that runtime")
    parser.add_argument("--latency-batch", type=int, default=1, help="images per timed forward pass (default 1)")
    parser.add_argument("--latency-precision", default=None, choices=["fp32", "fp16"],
                        help="fp32 or fp16 (default: fp16 on a CUDA device, else fp32)")
    parser.add_argument("--latency-model", default="measured", metavar="MODEL",
                        help="measured (default): time every candidate end to end; predicted: price candidates with "
                             "the per-layer latency model (measured once per runtime, cached) and time only the final "
                             "front and the recommended trial end to end. The model's ranking is not yet reliable "
                             "enough to be the default: Kendall tau 0.86-0.93 against measured latency, below 0.9 on "
                             "three of six model/runtime rows (docs/BENCHMARKS.md)")
    add_latency_calibration_argument(parser)
    parser.add_argument("--budget-floor", type=float, default=0.8,
                        help="share of the GFLOPs budget under which a candidate is filled up toward the budget "
                             "before it is scored (default 0.8; 0 scores every candidate as proposed)")
    parser.add_argument("--engine", default="deap", help="deap (NSGA-II with DEAP, default) or optuna")
    parser.add_argument("--sampler", default=None, help="with --engine optuna: nsga2 (default), tpe or random")
    parser.add_argument("--trials", type=int, default=None, help="candidates to evaluate (default: 3 generations)")
    parser.add_argument("--generations", type=int, default=None, help="NSGA-II generations (x --population)")
    parser.add_argument("--population", type=int, default=8, help="NSGA-II population size (default 8)")
    parser.add_argument("--proxy-steps", type=int, default=50, help="finetune steps in each candidate's proxy")
    parser.add_argument("--proxy-distill", type=float, default=0.0, metavar="W",
                        help="weight of head distillation from the unpruned model in each candidate's proxy finetune "
                             "(as apply finetunes; 1.0 weighs it like the ground truth; default 0: off)")
    parser.add_argument("--calib-batches", type=int, default=20,
                        help="calibration batches in the proxy: BN recalibration, data criteria, --reconstruct")
    parser.add_argument("--reconstruct", action="store_true",
                        help="refit each candidate's convs that lost inputs by least squares on the calibration "
                             "batches before its proxy finetune (ThiNet-style; apply then does the same)")
    parser.add_argument("--confirm", type=int, default=0, metavar="N",
                        help="at the end, re-score the best N feasible trials and the one-shot trials 1 and 2 under "
                             "more proxy seeds and recommend the best by their mean (default 0: off)")
    parser.add_argument("--confirm-seeds", type=int, default=2, metavar="K",
                        help="with --confirm: how many more proxy seeds (default 2)")
    parser.add_argument("--no-auto-confirm", dest="auto_confirm", action="store_false",
                        help="without --confirm, a searched leader within noise of the one-shot plans is re-scored "
                             "with them under 2 more proxy seeds (at most 6 scores); this turns that off")
    parser.add_argument("--proxy-imgsz", type=int, default=320, help="image size of the proxy (default 320)")
    parser.add_argument("--val-images", type=int, default=200, help="validation images the proxy scores on")
    parser.add_argument("--imgsz", type=int, default=640, help="image size of GFLOPs and latency (default 640)")
    parser.add_argument("--criterion", default="hessian",
                        help="channel importance criterion: hessian (default), taylor, l1, l2, lamp, bn_scale, fpgm "
                             "or random")
    parser.add_argument("--space", default="fine",
                        help="search space: fine (default: one gene per channel group), family (the model "
                             "family's space of tied genes), a shipped space's name (yolov8, yolo11, yolov5, generic) "
                             "or a YAML path")
    parser.add_argument("--storage", default=None, metavar="URL",
                        help="Optuna storage URL (default: the run folder's SQLite file PROJECT/NAME/study.db)")
    add_run_arguments(parser, "search", name_default="--study, else the next free expN")
    parser.add_argument("--study", default=None, metavar="NAME",
                        help="the Optuna study's name (default: the run folder's name, as trials, plot and apply "
                             "find it in runs/search/NAME)")
    parser.add_argument("--resume", action="store_true",
                        help="continue (or join) the search --name (or --study): its folder and study exist")
    parser.add_argument("--seed", type=int, default=0,
                        help="seed of the sampler, the proxy's image subsets and batch order (default 0)")
    add_device_argument(parser, "device of the proxy and the latency")


def _heartbeat() -> tuple[int, int]:
    """AUTOPRUNE_HEARTBEAT="interval,grace" (seconds) tunes how fast a dead worker's trial is noticed."""
    text = os.environ.get("AUTOPRUNE_HEARTBEAT", "10,40")
    try:
        interval, grace = (int(x) for x in text.split(","))
        assert 0 < interval < grace
    except (ValueError, AssertionError):
        raise UserError(f"AUTOPRUNE_HEARTBEAT must be 'interval,grace' seconds with interval < grace, got {text!r}") from None
    return interval, grace


def _check_outputs(args: argparse.Namespace) -> None:
    """The run folder (and a SQLite --storage file) must be writable: checked before the model loads."""
    from autoprune.runs import check_run_root, check_writable, run_dir_path
    from autoprune.search.storage import sqlite_file

    if args.name or args.study:  # an existing folder is the driver's to judge (--resume, --exist-ok)
        run_dir_path("search", args.project, args.name or args.study, exist_ok=True)
    else:
        check_run_root("search", args.project)
    db = sqlite_file(args.storage) if args.storage else None
    if db is not None:
        check_writable(db, kind="file", what="--storage")


def _apply_hint(args: argparse.Namespace, result) -> str:
    """The `autoprune apply` command for the recommended trial; a study that `--study` alone does not find (another
    --project, or a study named unlike its folder) is named with its SQLite file."""
    from pathlib import Path

    from autoprune.cli.trials import apply_hint
    from autoprune.runs import RUNS_ROOT
    from autoprune.search.storage import STUDY_FILE

    storage = args.storage
    if storage is None and Path(result.run_dir) != RUNS_ROOT / "search" / result.name:
        storage = f"sqlite:///{Path(result.run_dir) / STUDY_FILE}"
    trial = result.recommended.number if result.recommended is not None else None
    return apply_hint(storage, result.name, trial)


def run(args: argparse.Namespace) -> dict:
    from autoprune.report import format_front_table, study_info, write_reports
    from autoprune.search.driver import Search, SearchSettings

    interval, grace = _heartbeat()
    _check_outputs(args)
    settings = SearchSettings(
        budget_gflops=args.budget_gflops,
        budget_latency_ms=args.budget_latency_ms,
        latency_backend=args.latency_backend,
        latency_batch=args.latency_batch,
        latency_precision=args.latency_precision,
        latency_model=args.latency_model,
        latency_calibration=args.latency_calibration,
        budget_floor=args.budget_floor,
        model=args.model,
        data=args.data,
        engine=args.engine,
        sampler=args.sampler,
        trials=args.trials,
        generations=args.generations,
        population=args.population,
        proxy_steps=args.proxy_steps,
        proxy_distill=args.proxy_distill,
        reconstruct=args.reconstruct,
        calib_batches=args.calib_batches,
        proxy_imgsz=args.proxy_imgsz,
        val_images=args.val_images,
        imgsz=args.imgsz,
        criterion=args.criterion,
        space=args.space,
        storage=args.storage,
        name=args.name,
        project=args.project,
        study=args.study,
        exist_ok=args.exist_ok,
        resume=args.resume,
        seed=args.seed,
        device=args.device,
        heartbeat_interval=interval,
        grace_period=grace,
        confirm=args.confirm,
        confirm_seeds=args.confirm_seeds,
        auto_confirm=args.auto_confirm,
    )
    search = Search(settings)
    result = search.run()
    result.outputs = write_reports(search.study, result.run_dir)
    if not args.json:
        print()
        print(format_front_table(study_info(search.study), apply_hint=_apply_hint(args, result)))
        if result.recommended is not None:
            cost = result.confirm_cost.get("evaluations") or 0
            extra = f" (auto-confirmation: {cost} extra proxy scores, {result.confirm_cost['seconds']:.0f} s)" if cost else ""
            print(f"\nrecommended: trial {result.recommended.number}: {result.recommendation_reason}{extra}")
        if result.remeasure_cost:
            print(f"latency model: predicted for every candidate; {result.remeasure_cost['measured']} trial(s) of the "
                  f"front timed end to end ({result.remeasure_cost['seconds']:.0f} s)")
        print(f"\nreports: {', '.join(str(p) for p in result.outputs.values())}")
    return result.as_dict()
