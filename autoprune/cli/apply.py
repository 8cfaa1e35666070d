"""Rebuild a search trial's pruned model, finetune it (distilled from the unpruned model) and report before/after.

    autoprune apply --trial 7                                     # the latest search; runs/apply/exp1-trial7/
    autoprune apply --study exp1 --trial 7                        # the same for the search named exp1
    autoprune apply --study exp1 --trial 7 --epochs 30 --export onnx --name small     # runs/apply/small/
    autoprune apply --storage postgresql://user@host/db --study exp1 --trial 7 --no-distill

The trial's stored kept channel counts and criterion rebuild exactly the model the search scored (same GFLOPs), from
the model the study was made with (its fingerprint is checked). Ultralytics' trainer then finetunes that pruned
object itself, with the unpruned model as the teacher (`autoprune.finetune`). A trial of a search made with
--reconstruct is refit the same way (least squares on the search's calibration images) before the finetune. Outputs
in PROJECT/NAME/ (default runs/apply/STUDY-trialN/, or STUDY-trialN-2, ... when that exists):
pruned.pt (a stock Ultralytics checkpoint), report.md and report.json (mAP50, mAP50-95, params, GFLOPs, latency and
file size, before and after), finetune_curve.png (the validation mAP after every epoch against the unpruned model's),
pruned.onnx with --export onnx, args.yaml, and the trainer's folder train/ (train-step1/, ... with --steps).
"""

from __future__ import annotations

import argparse

from autoprune.apply import EXPORT_FORMATS, check_lr_scale, check_warmup_bias_lr
from autoprune.cli._common import add_deprecated_out, add_run_arguments, add_study_argument
from autoprune.cli.trials import default_study
from autoprune.errors import UserError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--trial", type=int, required=True, metavar="N", help="the trial to apply (`autoprune trials`)")
    add_study_argument(parser)
    parser.add_argument("--model", default=None, help="the unpruned model (default: the one the study was made with; "
                                                      "its fingerprint must match either way)")
    parser.add_argument("--data", default=None, help="data YAML to finetune and validate on (default: the study's)")
    parser.add_argument("--epochs", type=int, default=20, help="finetune epochs (default 20)")
    parser.add_argument("--imgsz", type=int, default=None,
                        help="finetune and mAP image size (default: the study's proxy image size); GFLOPs and "
                             "latency stay at the study's budget size")
    parser.add_argument("--batch", type=int, default=16, help="training batch size (default 16)")
    parser.add_argument("--distill", action=argparse.BooleanOptionalAction, default=True,
                        help="distil from the unpruned model (default on)")
    parser.add_argument("--kd-weight", type=float, default=1.0,
                        help="weight of the head distillation (class logits, box distributions) (default 1.0)")
    parser.add_argument("--kd-temperature", type=float, default=2.0, help="distillation temperature (default 2)")
    parser.add_argument("--kd-neck", type=float, default=0.0,
                        help="weight of the neck feature distillation through a 1x1 projector (default 0: off)")
    parser.add_argument("--kd-features", type=float, default=0.0, metavar="W",
                        help="weight of the channel-matched feature distillation: the student's feature maps against "
                             "the same channels of the teacher's, no projector (default 0: off)")
    parser.add_argument("--kd-levels", default=None, metavar="L[:W],...",
                        help="layers the feature distillation compares, each with an optional weight, e.g. 15,18,21:2 "
                             "(default: the Detect head's inputs, weight 1 each)")
    parser.add_argument("--schedule", choices=["short", "ultralytics"], default=None,
                        help="finetune schedule: short (warm-up a tenth of --epochs, AdamW, cosine decay; picked "
                             "from --epochs) or ultralytics (its defaults: 3 warm-up epochs, linear decay; the biases warm "
                             "up from --warmup-bias-lr) (default ultralytics)")
    parser.add_argument("--lr0", type=float, default=None, help="starting learning rate of the short schedule "
                                                                "(default: Ultralytics' AdamW fit to the classes)")
    parser.add_argument("--lrf", type=float, default=None,
                        help="final learning rate of the short schedule, as a share of --lr0 (default 0.01)")
    parser.add_argument("--lr-scale", type=float, default=None, metavar="K",
                        help="multiply the starting learning rate Ultralytics fits to the classes by K, in either "
                             "schedule (default 1; measured in docs/BENCHMARKS.md, issue 21)")
    parser.add_argument("--warmup-bias-lr", type=float, default=None, metavar="LR",
                        help="learning rate the biases start the warm-up at, falling to the schedule's (Ultralytics' "
                             "argument; default 0.1, Ultralytics' own, which its optimizer=auto sets to 0; 0 in the "
                             "short schedule; measured in docs/BENCHMARKS.md, issue 21)")
    parser.add_argument("--warmup-epochs", type=float, default=None,
                        help="warm-up of the short schedule in epochs (default: a tenth of --epochs, 0.1 to 3)")
    parser.add_argument("--steps", type=int, default=1, metavar="K",
                        help="prune in K steps from the unpruned model to the trial's channels, finetuning after "
                             "each (--epochs shared among them) (default 1)")
    parser.add_argument("--reconstruct", action=argparse.BooleanOptionalAction, default=None,
                        help="refit the convs that lost inputs by least squares before finetuning, on the search's "
                             "calibration images (default: as the search did, i.e. on for a search with --reconstruct)")
    parser.add_argument("--amp", action=argparse.BooleanOptionalAction, default=True,
                        help="mixed precision on CUDA (default on; the CPU always trains in float32)")
    parser.add_argument("--export", choices=EXPORT_FORMATS, default=None, help="also export pruned.pt to this format")
    from autoprune.cli._common import add_device_argument

    add_device_argument(parser, "device of the finetune and the measurements")
    parser.add_argument("--latency-backend", default=None, metavar="BACKEND",
                        help="the runtime the report's latencies are measured in: torch, onnxruntime, openvino (CPU) "
                             "or tensorrt (CUDA) (default: the one the search used)")
    parser.add_argument("--latency-batch", type=int, default=None,
                        help="images per timed forward pass (default: the search's)")
    parser.add_argument("--latency-precision", default=None, choices=["fp32", "fp16"],
                        help="fp32 or fp16 (default: the search's; with --latency-backend, the device's default)")
    parser.add_argument("--workers", type=int, default=2, help="data loader workers on CUDA (the CPU uses 0)")
    parser.add_argument("--seed", type=int, default=0, help="training seed (data order, augmentation) (default 0)")
    add_run_arguments(parser, "apply", name_default="STUDY-trialN, or STUDY-trialN-2, ... when that exists")
    add_deprecated_out(parser)


def _positive(flag: str, value: int, low: int = 1) -> int:
    if value < low:
        raise UserError(f"{flag} must be an integer >= {low}, got {value}")
    return value


# ------------------------------------------------------------------------------------------------------- the run
def run(args: argparse.Namespace) -> dict:
    from autoprune import report
    from autoprune.apply import apply_study_trial
    from autoprune.report.apply_report import format_report
    from autoprune.imgsz import check_imgsz
    from autoprune.finetune import DistillSettings
    from autoprune.runs import check_run_root, run_dir_path

    # Every check first: nothing is created or trained before all of them pass.
    _positive("--trial", args.trial, 0)
    _positive("--epochs", args.epochs)
    _positive("--batch", args.batch)
    _positive("--workers", args.workers, 0)
    _positive("--seed", args.seed, 0)
    if args.imgsz is not None:
        check_imgsz(args.imgsz)
    check_run_root("apply", args.project)
    if args.name is not None:
        run_dir_path("apply", args.project, args.name, exist_ok=args.exist_ok)
    from autoprune.distill import parse_levels

    levels = parse_levels(args.kd_levels)
    if (args.kd_features > 0 or levels) and not args.distill:
        raise UserError("--kd-features and --kd-levels distil from the unpruned model; drop --no-distill")
    if levels and args.kd_features == 0:
        raise UserError("--kd-levels chooses the layers of the feature distillation; give it a weight with "
                        "--kd-features W")
    distill = DistillSettings(args.kd_weight, args.kd_temperature, args.kd_neck, args.kd_features,
                              levels) if args.distill else None
    tuned = {"lr0": args.lr0, "lrf": args.lrf, "warmup_epochs": args.warmup_epochs}
    schedule = {"name": args.schedule or ("short" if any(v is not None for v in tuned.values()) else None),
                **tuned, "lr_scale": args.lr_scale, "warmup_bias_lr": args.warmup_bias_lr}
    given = [f"--{k.replace('_', '-')}" for k, v in tuned.items() if v is not None]
    if args.schedule == "ultralytics" and given:
        raise UserError(f"{', '.join(given)} set the short schedule; they do not combine with --schedule ultralytics")
    check_lr_scale(args.lr_scale, args.lr0)
    check_warmup_bias_lr(args.warmup_bias_lr)
    if given:  # the values alone, checked before the model loads (each step's schedule is checked again)
        from autoprune.finetune import short_schedule

        short_schedule(args.epochs, **{k: v for k, v in tuned.items() if v is not None})
    from autoprune.devices import resolve_devices

    gpus = len(resolve_devices(args.device))  # every GPU named exists
    if gpus > 1:  # Ultralytics' DDP finetune: the batch splits evenly among them, cloudpickle is installed
        from autoprune.finetune import check_multi_gpu

        check_multi_gpu(args.batch, gpus)
    default_study(args)
    study = report.read_study(args.storage, args.study)  # never creates a database; no study: one line naming those
    verbose = not args.json
    result = apply_study_trial(study, args.trial, run_name=args.name, project=args.project,
                               exist_ok=args.exist_ok, model=args.model, data=args.data,
                               epochs=args.epochs, imgsz=args.imgsz, batch=args.batch, distill=distill,
                               reconstruct=args.reconstruct, amp=args.amp, export=args.export, device=args.device,
                               workers=args.workers, seed=args.seed, args=vars(args),
                               extra={"storage_given": args.storage is not None}, verbose=verbose, log=print,
                               schedule=schedule, steps=args.steps,
                               latency={"backend": args.latency_backend, "batch": args.latency_batch,
                                        "precision": args.latency_precision})
    if verbose:
        print()
        print(format_report(result))
        print(f"saved {result['outputs']['pruned']}" + (f" and {result['outputs']['onnx']}" if args.export else ""))
    return result


__all__ = ["add_arguments", "run"]
