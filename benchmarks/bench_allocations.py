"""Variants of one-shot global pruning at one budget, scored by several proxies and (optionally) finetuned.

    .venv/bin/python benchmarks/bench_allocations.py --criterion hessian --floors 8,16,24,32 --cost-exponents 0.5,1 \
        --proxies 50:0,50:1,150:1 --finetune 8,32 --seeds 0,1

Each variant is one threshold over the criterion's channel scores (`--strategy global`) within `--share` of the
model's full GFLOPs, the largest such plan:

- floor N: no group below N channels (the global strategy's `min_channels`; 8 is the default plan);
- cost exponent g: every group's scores divided by (conv GFLOPs one of its channels costs)^g, a knapsack-style
  threshold on importance per FLOP (`strategies.per_flop_scores`; g 0 is the default plan, g 1 the plan a search
  queues as its trial "global-per-flop").

Scores come from the calibration batches of the default proxy (`ProxySettings(imgsz=...)`), for every variant.
Each proxy `STEPS:DISTILL` scores every variant (distilling from the unpruned model when DISTILL > 0); the seconds
per evaluation are printed beside the scores. `--finetune` (floors) and `--finetune-cost` (cost exponents) pick
variants to finetune like benchmarks/compare_methods.py (epochs, distillation, batch 16, each of `--seeds`),
validated on the whole val split. Results are cached in
runs/bench_allocations/NAME/results.json. Nothing is asserted.
"""

from __future__ import annotations

import argparse
import copy
import time
from pathlib import Path

from _common import finetune_and_validate, header, load, plan_within, results_cache


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=None, help="default: the embedded demo model")
    parser.add_argument("--data", default=None, help="default: the embedded demo dataset")
    parser.add_argument("--criterion", default="hessian")
    parser.add_argument("--share", type=float, default=0.5, help="budget: share of the unpruned model's GFLOPs")
    parser.add_argument("--floors", default="8,16,24,32")
    parser.add_argument("--cost-exponents", default="0.5,1")
    parser.add_argument("--proxies", default="50:0,50:1,150:1", help="comma-separated STEPS:DISTILL")
    parser.add_argument("--finetune", default="", help="comma-separated floors to finetune")
    parser.add_argument("--finetune-cost", default="", help="comma-separated cost exponents to finetune")
    parser.add_argument("--seeds", default="0")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--imgsz", type=int, default=None, help="proxy/finetune size (default: the demo's)")
    parser.add_argument("--name", default="exp")
    parser.add_argument("--device", default="auto")
    args = parser.parse_args()
    header()

    from autoprune.channels import analyze
    from autoprune.cost import count_gflops, count_params
    from autoprune.data import load_data_config
    from autoprune.demo import DEMO_IMGSZ
    from autoprune.devices import resolve_device
    from autoprune.importance import DATA_CRITERIA
    from autoprune.models import load_model
    from autoprune.pruner import channel_scores
    from autoprune.proxy import ProxyEvaluator, ProxySettings
    from autoprune.strategies import per_flop_scores

    out = Path("runs/bench_allocations") / args.name
    results, save = results_cache(out)
    device = resolve_device(args.device)
    imgsz = args.imgsz or DEMO_IMGSZ
    loaded = load_model(args.model)
    base, data = loaded.model, load_data_config(args.data)
    graph = analyze(base, imgsz=640)
    budget = args.share * count_gflops(base, 640)
    from autoprune.batches import calibration_batches

    proxy = ProxySettings(imgsz=imgsz, device=str(device))
    calib = calibration_batches(data, imgsz=imgsz, calib_batches=proxy.calib_batches, batch=proxy.batch, seed=proxy.seed,
                                train_images=proxy.train_images)
    scores = channel_scores(base, graph, args.criterion,
                            batches=calib if args.criterion in DATA_CRITERIA else None)
    ranking = {g: [s.argsort(descending=True, stable=True) for s in per] for g, per in scores.items()}
    print(f"model {loaded.source}; budget {budget:.4f} GFLOPs; criterion {args.criterion}\n", flush=True)

    def within_budget(group_scores, floor):
        return plan_within(graph, base, "global", budget, scores=group_scores, ranking=ranking, min_channels=floor)[0]

    variants = {f"floor {f}": within_budget(scores, int(f)) for f in args.floors.split(",")}
    for e in (float(x) for x in args.cost_exponents.split(",") if x):
        variants[f"cost exponent {e:g}"] = within_budget(per_flop_scores(graph, scores, e), 8)

    proxies = [(int(a), float(b)) for a, b in (p.split(":") for p in args.proxies.split(","))]
    for steps, distill in proxies:
        ev = ProxyEvaluator(data, ProxySettings(imgsz=imgsz, steps=steps, distill=distill, device=str(device)))
        if distill:
            ev.set_teacher(base)
        for name, model in variants.items():
            key = f"{name}|proxy {steps}:{distill:g}"
            if key not in results:
                r = ev.evaluate(copy.deepcopy(model))
                results[key] = {"map50_95": r.map50_95, "seconds": r.seconds}
                save()
            print(f"  {name}, proxy {steps} steps distill {distill:g}: {results[key]['map50_95']:.4f} "
                  f"({results[key]['seconds']:.1f} s)", flush=True)

    to_finetune = [f"floor {f}" for f in args.finetune.split(",") if f]
    to_finetune += [f"cost exponent {float(e):g}" for e in args.finetune_cost.split(",") if e]
    for name in to_finetune:
        model = variants[name]
        for seed in (int(s) for s in args.seeds.split(",")):
            key = f"{name}|finetune e{args.epochs} s{seed}"
            if key not in results:
                t0 = time.perf_counter()
                run = out / f"{name.replace(' ', '')}-e{args.epochs}-s{seed}"
                after = finetune_and_validate(model, base, data, run, epochs=args.epochs, imgsz=imgsz, batch=16,
                                              device=device, seed=seed, label=name.replace(" ", ""))
                results[key] = {"map50_95": after["map50_95"], "minutes": (time.perf_counter() - t0) / 60}
                save()
            print(f"  {name}, finetuned {args.epochs} epochs seed {seed}: {results[key]['map50_95']:.4f} "
                  f"({load()})", flush=True)

    cols = [f"proxy {s}:{d:g}" for s, d in proxies]
    print("\n| variant | GFLOPs | params | " + " | ".join(f"{c} steps:distill" for c in cols) + " |")
    print("|---|---|---|" + "---|" * len(cols))
    for name, model in variants.items():
        cells = " | ".join(f"{results[f'{name}|{c}']['map50_95']:.4f}" for c in cols)
        print(f"| {name} | {count_gflops(model, 640):.4f} | {count_params(model) / 1e6:.2f}M | {cells} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
