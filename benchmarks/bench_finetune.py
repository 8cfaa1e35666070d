"""Does the short-finetune schedule, and channel-matched feature distillation, recover more mAP after pruning?

    .venv/bin/python benchmarks/bench_finetune.py --configs today --seeds 0,1,2 --epochs 3
    .venv/bin/python benchmarks/bench_finetune.py --configs schedule,schedule+features --seeds 0,1,2 --epochs 3

The demo baseline pruned once by global hessian to 50% of its GFLOPs (4.0996 at 640, fvcore's full count; the plan
of `compare_methods.py`'s global-hessian row), then finetuned by `autoprune.finetune.finetune` with head
distillation from the unpruned model (apply's default), `--epochs` at 320, batch 16, on the whole demo train split,
and validated by Ultralytics on the whole val split. Configurations:

- today: Ultralytics' own schedule as apply used it before the short schedule (optimizer auto -> AdamW at its
  fitted lr, 3 warm-up epochs capped at epochs - 1, linear decay to lrf 0.01);
- schedule: `finetune.short_schedule(epochs)` (warm-up scaled to the finetune's length, cosine decay);
- features: today's schedule plus channel-matched feature distillation on the Detect inputs (weight 1);
- schedule+features: both;
- mosaic: today's schedule with mosaic on for the first half of the finetune (`close_mosaic` epochs // 2; with
  Ultralytics' default of 10, any finetune of 10 epochs or fewer runs without mosaic from its first epoch, while
  the baseline trained with it for 90 of its 100 epochs);
- lr2, lr4, ... (lrK): today's schedule at K times the learning rate `optimizer=auto` fits (AdamW, lr0 K x 0.002 *
  5 / (4 + nc), momentum 0.9 as auto sets it);
- scaleK (scale2, ...): `apply --lr-scale K` as built (`finetune(lr_scale=K)`): the rate optimizer=auto picks,
  x K, inside the trainer (so auto's bias warm-up from 0 stays, where lrK warms the biases up from 0.1);
- wbias: `apply --warmup-bias-lr 0.1` as built (`finetune(warmup_bias_lr=0.1)`): today's schedule with the
  biases' warm-up from Ultralytics' default 0.1, which `optimizer=auto` sets to 0 (what lr1 changes, and nothing else);
- steps2: `apply --steps 2`: pruned to halfway (every group loses half of what it loses in all), finetuned for
  epochs // 2, pruned on to the plan by the same ranking, finetuned for the rest (today's schedule in each).

Results (best.pt's mAP, the per-epoch validation curve, wall time) are cached per configuration and seed in
runs/bench_finetune/NAME/results.json, so an interrupted run continues. Prints a table with the paired difference
to `today` over the seeds both have. Nothing is asserted.
"""

from __future__ import annotations

import argparse
import re
import statistics
import time
from pathlib import Path

from _common import header, load, plan_within, results_cache

CONFIGS = ("today", "schedule", "schedule+features", "features", "mosaic", "steps2", "wbias")  # and lrK, scaleK
LR_CONFIG = re.compile(r"lr(\d+(?:\.\d+)?)")  # lrK: K times auto's learning rate
SCALE_CONFIG = re.compile(r"scale(\d+(?:\.\d+)?)")  # scaleK: apply --lr-scale K


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--configs", default="today")
    parser.add_argument("--seeds", default="0")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--imgsz", type=int, default=320)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--share", type=float, default=0.5)
    parser.add_argument("--feature-weight", type=float, default=1.0)
    parser.add_argument("--name", default="e3")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    parser.add_argument("--table-only", action="store_true")
    args = parser.parse_args()
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    header()
    out = Path("runs/bench_finetune") / args.name
    results, save = results_cache(out)
    configs = [c for c in args.configs.split(",") if c]
    for c in configs:
        if c not in CONFIGS and not LR_CONFIG.fullmatch(c) and not SCALE_CONFIG.fullmatch(c):
            raise SystemExit(f"error: unknown config {c!r}; one of {CONFIGS}")
    seeds = [int(s) for s in args.seeds.split(",")]
    if not args.table_only:
        run(args, configs, seeds, out, results, save)
    table(results)
    return 0


def run(args, configs, seeds, out: Path, results: dict, save) -> None:
    import copy

    import torch

    from autoprune.batches import calibration_batches
    from autoprune.channels import analyze
    from autoprune.cost import count_gflops
    from autoprune.data import load_data_config
    from autoprune.finetune import DistillSettings, finetune, validate_checkpoint
    from autoprune.models import load_model
    from autoprune.pruner import channel_scores, select_indices
    from autoprune.proxy import ProxySettings
    from autoprune.schedule import ultralytics_adamw_lr

    loaded = load_model(None)
    data = load_data_config(None)
    base = loaded.model
    graph = analyze(base, imgsz=640)
    budget = args.share * count_gflops(base, 640)
    proxy = ProxySettings(imgsz=args.imgsz, steps=0, device="cpu")
    calib = calibration_batches(data, imgsz=args.imgsz, calib_batches=proxy.calib_batches, batch=proxy.batch,
                                seed=proxy.seed, train_images=proxy.train_images)
    scores = channel_scores(base, graph, "hessian", batches=calib)
    pruned, plan = plan_within(graph, base, "global", budget, scores=scores)
    ranking = {g: [x.argsort(descending=True, stable=True) for x in per] for g, per in scores.items()}
    indices = select_indices(graph, plan.counts, ranking)
    print(f"global hessian at {args.share:.0%}: {count_gflops(pruned, 640):.4f} GFLOPs at 640 (budget {budget:.4f})",
          flush=True)
    for seed in seeds:
        for config in configs:
            key = f"{config}#s{seed}"
            if key in results:
                continue
            extra, feature, schedule = {}, {}, None
            scale = float(SCALE_CONFIG.fullmatch(config).group(1)) if SCALE_CONFIG.fullmatch(config) else 1.0
            if config.startswith("schedule"):
                from autoprune.finetune import short_schedule

                schedule = short_schedule(args.epochs)
            elif config == "mosaic":
                extra = {"close_mosaic": args.epochs // 2}
            elif LR_CONFIG.fullmatch(config):
                k = float(LR_CONFIG.fullmatch(config).group(1))
                extra = {"optimizer": "AdamW", "lr0": k * ultralytics_adamw_lr(data.nc), "momentum": 0.9}
            if "features" in config:
                feature = {"feature_weight": args.feature_weight}
            t0 = time.perf_counter()
            distill = DistillSettings(**feature)
            match = None
            if feature:
                from autoprune.distill import FeatureMatch

                match = FeatureMatch.build(base, graph, indices, distill.feature_levels)
            save_dir = out / key.replace("#", "-")
            if config == "steps2":
                curve, ft = steps2(base, graph, plan.counts, ranking, data, save_dir, distill, args, seed)
            else:
                ft = finetune(copy.deepcopy(pruned), data, save_dir=save_dir, teacher=base, distill=distill,
                              epochs=args.epochs, imgsz=args.imgsz, batch=args.batch, device="cpu", seed=seed,
                              verbose=False, label=config, extra=extra or None, lr_scale=scale,
                              warmup_bias_lr=0.1 if config == "wbias" else None,
                              **({"schedule": schedule} if schedule is not None else {}),
                              **({"features": match} if match is not None else {}))
                curve = epoch_maps(ft.save_dir)
            v = validate_checkpoint(ft.best, data, imgsz=args.imgsz, device="cpu")
            results[key] = {"config": config, "seed": seed, "map50_95": v["map50_95"], "map50": v["map50"],
                            "curve": curve, "minutes": round((time.perf_counter() - t0) / 60, 2),
                            "schedule": schedule.overrides() if schedule is not None else {},
                            "extra": extra, "distill": distill.as_dict(), "threads": torch.get_num_threads()}
            save()
            print(f"  {key}: mAP50-95 {v['map50_95']:.4f} (curve {curve}); {results[key]['minutes']} min; {load()}",
                  flush=True)


def epoch_maps(save_dir: Path) -> list[float]:
    """The trainer's validation mAP50-95 after every epoch (apply's own reading of results.csv)."""
    from autoprune.report.apply_report import epoch_curve

    return [p["map50_95"] for p in epoch_curve(save_dir)]


def steps2(base, graph, counts, ranking, data, save_dir: Path, distill, args, seed: int):
    """`apply --steps 2` on the plan: (the mAP curve over both finetunes, the last finetune's result)."""
    from ultralytics.nn.tasks import load_checkpoint

    from autoprune.apply import prune_further, step_counts
    from autoprune.finetune import finetune
    from autoprune.pruner import select_indices

    sizes = {g: graph.group(g).size for g in counts}
    per = [args.epochs // 2, args.epochs - args.epochs // 2]
    curve, ft, kept_now = [], None, {}
    for k, (c, e) in enumerate(zip(step_counts(sizes, counts, 2), per)):
        before = base if k == 0 else load_checkpoint(ft.best)[0].float()
        student = prune_further(before, kept_now, c, ranking, imgsz=640)
        kept_now = select_indices(graph, c, ranking)
        ft = finetune(student, data, save_dir=save_dir / f"step{k + 1}", teacher=base, distill=distill, epochs=e,
                      imgsz=args.imgsz, batch=args.batch, device="cpu", seed=seed, verbose=False,
                      label=f"steps2 step {k + 1}")
        curve += epoch_maps(ft.save_dir)
    return curve, ft


def table(results: dict) -> None:
    by = {}
    for r in results.values():
        by.setdefault(r["config"], {})[r["seed"]] = r
    print("\n| configuration | mAP50-95, mean ± sd (per seed) | paired difference to today | minutes per run |")
    print("|---|---|---|---|")
    for config in [*CONFIGS, *sorted(c for c in by if c not in CONFIGS)]:
        rows = by.get(config)
        if not rows:
            continue
        vals = [rows[s]["map50_95"] for s in sorted(rows)]
        sd = f" ± {statistics.stdev(vals):.4f}" if len(vals) > 1 else ""
        paired = ""
        if config != "today" and by.get("today"):
            common = sorted(set(rows) & set(by["today"]))
            diffs = [rows[s]["map50_95"] - by["today"][s]["map50_95"] for s in common]
            if diffs:
                paired = f"{statistics.mean(diffs):+.4f} over seeds {common}" + (
                    f" (sd {statistics.stdev(diffs):.4f})" if len(diffs) > 1 else "")
        mins = statistics.mean(rows[s]["minutes"] for s in rows)
        per = ", ".join(f"{v:.4f}" for v in vals)
        print(f"| {config} | {statistics.mean(vals):.4f}{sd} ({per}) | {paired} | {mins:.1f} |")
    for config, rows in by.items():
        for s in sorted(rows):
            print(f"curve {config} seed {s}: {', '.join(f'{x:.4f}' for x in rows[s]['curve'])}")


if __name__ == "__main__":
    raise SystemExit(main())
