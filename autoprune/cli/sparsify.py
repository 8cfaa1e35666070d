"""Sparse-train a model: an L1 penalty on prunable BN gammas (network slimming), or growing regularisation.

    autoprune sparsify --epochs 50 --l1 1e-2                    # the demo model on the demo data
    autoprune sparsify --model best.pt --data data.yaml --epochs 30 --growing-reg --reg-keep 0.5

Writes PROJECT/NAME/ (default runs/sparsify/expN/): sparse.pt (a stock Ultralytics checkpoint), gamma_hist.png (|gamma| before and after,
with the share below 1e-2), args.yaml and Ultralytics' train/ folder. Prune the result with
`autoprune prune --model runs/sparsify/NAME/sparse.pt --criterion bn_scale --strategy global ...`.
See `autoprune.sparsify` for the exact penalty and its schedule.
"""

from __future__ import annotations

import argparse

from autoprune.errors import UserError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", default=None, help="a .pt checkpoint or model YAML (default: the demo model)")
    parser.add_argument("--data", default=None, help="detection data YAML (default: the demo dataset)")
    parser.add_argument("--epochs", type=int, required=True, help="training epochs (>= 1)")
    parser.add_argument("--l1", type=float, default=1e-2,
                        help="L1 factor on gamma at epoch 0, decaying to 0.1x (default 1e-2); with --growing-reg, "
                             "the growth per epoch of the L2 factor")
    parser.add_argument("--l1-beta", type=float, default=0.0, help="the same on BN beta (default 0: none)")
    parser.add_argument("--growing-reg", action="store_true",
                        help="growing regularisation (GReg-1) on the channels a bn_scale prune at --reg-keep removes")
    parser.add_argument("--reg-keep", type=float, default=0.5, help="keep ratio that --growing-reg targets (0.5)")
    parser.add_argument("--imgsz", type=int, default=320, help="training image size (default 320)")
    parser.add_argument("--batch", type=int, default=16, help="batch size (default 16)")
    from autoprune.cli._common import add_device_argument

    add_device_argument(parser, "training device")
    parser.add_argument("--workers", type=int, default=2, help="dataloader workers (default 2)")
    parser.add_argument("--lr0", type=float, default=None, help="initial learning rate (default: Ultralytics')")
    parser.add_argument("--no-val", action="store_true", help="validate only after the last epoch")
    from autoprune.cli._common import add_run_arguments

    add_run_arguments(parser, "sparsify")


def run(args: argparse.Namespace) -> dict:
    from autoprune.runs import run_dir_path
    from autoprune.sparsify import SparsifySettings, sparsify

    run_dir_path("sparsify", args.project, args.name, exist_ok=args.exist_ok)  # checked before any work
    from autoprune.devices import ultralytics_device

    extra = {}
    if args.lr0 is not None:
        if not 0 < args.lr0 < 1:
            raise UserError(f"--lr0 must lie in (0, 1), got {args.lr0:g}")
        extra["lr0"] = args.lr0
    settings = SparsifySettings(epochs=args.epochs, l1=args.l1, l1_beta=args.l1_beta, growing_reg=args.growing_reg,
                                reg_keep=args.reg_keep, imgsz=args.imgsz, batch=args.batch,
                                device=ultralytics_device(args.device),  # checked: one error line, before any work
                                workers=args.workers, val=not args.no_val, train_args=extra)
    from autoprune.data import check_task, load_data_config
    from autoprune.models import keypoint_shape, load_model, require_task
    from autoprune.runs import new_run_dir, save_args

    data = load_data_config(args.data)  # check data and model before creating the run folder
    loaded = load_model(args.model)
    require_task(loaded, "sparsify")
    check_task(data, loaded.task, keypoint_shape(loaded.model))  # before the run folder is made
    run_dir = new_run_dir("sparsify", args.name, project=args.project, exist_ok=args.exist_ok)
    # the resolved values, not a default's None or auto
    save_args(run_dir, args, model=loaded.source, data=str(data.yaml), device=settings.device,
              project=str(run_dir.parent), name=run_dir.name)
    result = sparsify(loaded, data, run_dir, settings)
    result["run_dir"] = str(run_dir)
    if not args.json:
        s = result["gamma_share_below"]
        print(f"sparse-trained {result['epochs']} epochs ({result['mode']}, l1={args.l1:g}) "
              f"in {result['seconds']:.0f}s: "
              f"|gamma| < 1e-2 for {100 * s['before']:.1f}% -> {100 * s['after']:.1f}% of "
              f"{result['prunable_gammas']} prunable channels")
        print(f"saved {result['checkpoint']}\nhistogram {result['histogram']}")
    return result


__all__ = ["add_arguments", "run"]
