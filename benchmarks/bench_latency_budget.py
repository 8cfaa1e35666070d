"""At a latency budget, does the search beat one-shot global hessian planned to the same latency? (issue 18, point 2)

    .venv/bin/python benchmarks/bench_latency_budget.py --share 0.5 --backend openvino --seeds 0,1,2 --epochs 3
    .venv/bin/python benchmarks/bench_latency_budget.py --spaces fine,fine-depth,fine-ops \
        --baselines hessian,depth,dws          # issue 19's latency half: depth and operator genes at a latency budget

The budget is `--share` of the unpruned demo model's median latency in `--backend` at 640, batch 1, measured here
first. The models made for it:

- searched (space `fine`), searched-SPACE (each other space of `--spaces`): the trial `autoprune search
  --budget-latency-ms B --latency-backend BACKEND --space SPACE` recommends (the main command's other settings;
  candidates measured end to end, the latency table planning repair and the one-shot trials), rebuilt from the
  study as `apply --trial` does;
- prune-hessian: `autoprune prune --target-latency-ms B --latency-backend BACKEND --strategy global --criterion
  hessian`: one global hessian threshold bisected on the latency model's prediction; prune-depth and prune-dws
  (`--baselines`): the same with `--depth 0.5` (every repeated block keeps half its elements) or `--swap dws`
  (every k x k Conv of backbone and neck depthwise-separable, fitted by least squares), widths filling the rest.

Every latency is timed with `--threads` CPU threads (1 by default: on a shared 2-core machine one thread times alike
from run to run, two do not). Each model is timed end to end in the backend (median at 640, batch 1), then all of
them and the unpruned model again in turn over `--rounds` rounds (`measure_latencies`: median of the rounds'
medians), which keeps their ratios to the unpruned model where this CPU's speed drifts between runs; each is finetuned
alike by `finetune_and_validate` (head distillation from the unpruned model, `--epochs` at 320, batch 16, the whole
demo train split) under every finetune seed, then validated on the whole val split. Prints mean, spread and the
paired difference. Results are cached in runs/bench_latency_budget/NAME/results.json, so an interrupted run
continues. Nothing is asserted.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path

from _common import finetune_and_validate, header, load, results_cache


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--share", type=float, default=0.5)
    parser.add_argument("--backend", default="openvino")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--imgsz", type=int, default=320, help="finetune and validation size")
    parser.add_argument("--trials", type=int, default=None, help="the search's --trials (default: its own)")
    parser.add_argument("--threads", type=int, default=1,
                        help="CPU threads for every latency (the search's and prune's through OMP_NUM_THREADS, "
                             "which their proxy and calibration then use too): 1 thread times alike on a shared CPU")
    parser.add_argument("--spaces", default="fine", help="search spaces, one searched model each (comma-separated)")
    parser.add_argument("--baselines", default="hessian",
                        help="one-shot models: hessian (widths), depth (--depth 0.5), dws (--swap dws)")
    parser.add_argument("--rounds", type=int, default=5,
                        help="time every model again in turn over this many rounds (median of rounds; 0: skip), "
                             "so that their ratios to the unpruned model hold on a CPU whose speed drifts")
    parser.add_argument("--retime", action="store_true", help="redo the interleaved timing even if cached")
    parser.add_argument("--match", default="",
                        help="also make prune-hessian@LABEL for each LABEL (comma-separated): global hessian planned "
                             "to LABEL's interleaved measured latency (the budget scaled by LABEL's over "
                             "prune-hessian's)")
    parser.add_argument("--match-steps", type=int, default=1,
                        help="plans per --match label: the first scaled from prune-hessian, each next one by the "
                             "secant through the last two, labelled prune-hessian@LABEL.K")
    parser.add_argument("--finetune", default="", help="finetune only these labels (default: every model)")
    parser.add_argument("--name", default="lat50")
    args = parser.parse_args()
    header()
    out = Path("runs/bench_latency_budget") / args.name
    results, save = results_cache(out)

    from autoprune.cost import count_gflops, measure_latencies, measure_latency
    from autoprune.data import load_data_config
    from autoprune.models import load_model

    loaded = load_model(None)
    base = loaded.model
    data = load_data_config(None)

    def latency(model) -> float:
        return measure_latency(model, imgsz=640, backend=args.backend, threads=args.threads, cache=False).median_ms

    import os

    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads)}

    if "budget_ms" not in results:
        results["unpruned_ms"] = latency(base)
        results["budget_ms"] = round(args.share * results["unpruned_ms"], 2)
        save()
    budget = results["budget_ms"]
    print(f"unpruned: {results['unpruned_ms']:.2f} ms ({args.backend}, 640, batch 1, {args.threads} thread(s)); "
          f"budget {budget} ms "
          f"({args.share:.0%}); {load()}", flush=True)

    models = {}
    for space in args.spaces.split(","):
        label = "searched" if space == "fine" else f"searched-{space}"
        study_name = f"bench-latency-{args.name}" + ("" if space == "fine" else f"-{space}")
        if f"{label}:trial" not in results:
            cmd = ["autoprune", "search", "--budget-latency-ms", str(budget), "--latency-backend", args.backend,
                   "--space", space, "--name", study_name, "--exist-ok", "--resume", "--json",
                   *(["--trials", str(args.trials)] if args.trials else [])]
            print("$ " + " ".join(cmd), flush=True)
            done = subprocess.run(cmd, stdout=subprocess.PIPE, text=True, check=True, env=env)
            summary = json.loads(done.stdout)
            results[f"{label}:trial"] = summary["recommended"]["number"]
            results[f"{label}:reason"] = summary.get("recommendation_reason")
            save()
        print(f"{label}: trial {results[f'{label}:trial']} ({results[f'{label}:reason']})", flush=True)
        models[label] = searched_model(loaded, study_name, results[f"{label}:trial"])

    def measured(models: dict) -> None:
        for label, model in models.items():
            if f"{label}:ms" not in results:
                results[f"{label}:ms"] = latency(model)
                results[f"{label}:gflops"] = count_gflops(model, 640)
                save()
            print(f"{label}: {results[f'{label}:gflops']:.3f} GFLOPs, {results[f'{label}:ms']:.2f} ms measured "
                  f"({'within' if results[f'{label}:ms'] <= budget else 'over'} the {budget} ms budget)", flush=True)

    def interleaved(models: dict) -> None:
        """Time them all again in turn (and the unpruned model): cached until a model is added or --retime."""
        if not args.rounds:
            return
        ms = results.get("interleaved", {}).get("ms", {})
        if args.retime or not set(models) <= set(ms):
            args.retime = False
            print(f"timing the unpruned model and {len(models)} pruned ones in turn, {args.rounds} rounds; {load()}",
                  flush=True)
            timed = measure_latencies({"unpruned": base, **models}, rounds=args.rounds, imgsz=640,
                                      backend=args.backend, threads=args.threads)
            results["interleaved"] = {"rounds": args.rounds, "load_after": timed["unpruned"].load,
                                      "ms": {label: r.median_ms for label, r in timed.items()},
                                      "p10_p90": {label: [r.p10_ms, r.p90_ms] for label, r in timed.items()}}
            save()
            ms = results["interleaved"]["ms"]
        print(f"interleaved ({results['interleaved']['rounds']} rounds, median of rounds; load after "
              f"{results['interleaved']['load_after']}): unpruned {ms['unpruned']:.2f} ms; " + ", ".join(
                  f"{label} {ms[label]:.2f} ms ({ms[label] / ms['unpruned']:.3f})" for label in models),
              flush=True)

    def one_shot(label: str, target: float, flags: list[str]):
        pruned_pt = out / f"{label}.pt"
        if not pruned_pt.exists():
            cmd = ["autoprune", "prune", "--target-latency-ms", f"{target:.2f}", "--latency-backend", args.backend,
                   "--strategy", "global", "--criterion", "hessian", *flags, "--no-val", "--out", str(pruned_pt),
                   "--json"]
            print("$ " + " ".join(cmd), flush=True)
            subprocess.run(cmd, stdout=subprocess.DEVNULL, check=True, env=env)
        return load_model(str(pruned_pt)).model

    for baseline in args.baselines.split(","):
        models[f"prune-{baseline}"] = one_shot(f"prune-{baseline}", budget, BASELINE_FLAGS[baseline])
    measured(models)
    interleaved(models)
    results.setdefault("prune-hessian:target", budget)
    for match in filter(None, args.match.split(",")):
        # Step 1: the latency table's prediction for prune-hessian was the budget; scale the target by how the
        # measured latencies of the two models compare. Step k > 1: the secant through the last two plans' (target,
        # measured) points. Each step is timed in turn with all the others before the next one is planned.
        tried = ["prune-hessian"]
        for step in range(1, args.match_steps + 1):
            label = f"prune-hessian@{match}" + ("" if step == 1 else f".{step}")
            if f"{label}:target" not in results:
                ms = results["interleaved"]["ms"]
                if step == 1:
                    target = budget * ms[match] / ms["prune-hessian"]
                else:
                    (t0, m0), (t1, m1) = [(results[f"{x}:target"], ms[x]) for x in tried[-2:]]
                    target = t1 + (ms[match] - m1) * (t1 - t0) / (m1 - m0)
                results[f"{label}:target"] = round(target, 2)
                save()
            models[label] = one_shot(label, results[f"{label}:target"], [])
            tried.append(label)
            measured(models)
            interleaved(models)
    seeds = [int(s) for s in args.seeds.split(",") if s]  # --seeds "": build and time only
    chosen = args.finetune.split(",") if args.finetune else list(models)
    for seed in seeds:
        for label in chosen:
            model = models[label]
            key = f"{label}#s{seed}"
            if key in results:
                continue
            m = finetune_and_validate(model, base, data, out / key.replace("#", "-"), epochs=args.epochs,
                                      imgsz=args.imgsz, batch=16, device="cpu", seed=seed, label=label)
            results[key] = m["map50_95"]
            save()
            print(f"{key}: mAP50-95 {m['map50_95']:.4f}", flush=True)
    table(results, list(models), seeds, budget)
    return 0


BASELINE_FLAGS = {"hessian": [], "depth": ["--depth", "0.5"], "dws": ["--swap", "dws"]}


def searched_model(loaded, study_name: str, number: int):
    from autoprune.apply import rebuild
    from autoprune.search import records
    from autoprune.search.storage import open_study

    study = open_study(None, study_name)
    trial = next(t for t in study.trials if t.number == number)
    return rebuild(loaded, records.TrialRecord.from_trial(trial), imgsz=640,
                   ranking=study.user_attrs.get(records.STUDY_RANKING))[0]


def table(results: dict, labels: list[str], seeds: list[int], budget: float) -> None:
    ms = results.get("interleaved", {}).get("ms", {})
    print(f"\n| model | GFLOPs at 640 | measured ms (budget {budget}) | interleaved ms (share of unpruned) | "
          "mAP50-95 mean (per seed) | spread |")
    print("|---|---|---|---|---|---|")
    for label in labels:
        vals = [results[f"{label}#s{s}"] for s in seeds if f"{label}#s{s}" in results]
        if not vals:
            continue
        spread = statistics.stdev(vals) if len(vals) > 1 else 0.0
        trial = f" (trial {results[label + ':trial']})" if f"{label}:trial" in results else ""
        inter = f"{ms[label]:.2f} ({ms[label] / ms['unpruned']:.3f})" if label in ms else "-"
        print(f"| {label}{trial} | {results[f'{label}:gflops']:.3f} | {results[f'{label}:ms']:.2f} | {inter} | "
              f"{statistics.mean(vals):.4f} ({', '.join(f'{v:.4f}' for v in vals)}) | {spread:.4f} |")
    for ref in [label for label in labels if label.startswith("prune-hessian")]:
        for label in labels:
            if label.startswith("prune-hessian"):
                continue
            diffs = [results[f"{label}#s{s}"] - results[f"{ref}#s{s}"] for s in seeds
                     if f"{label}#s{s}" in results and f"{ref}#s{s}" in results]
            if diffs:
                print(f"paired difference {label} - {ref}: {statistics.mean(diffs):+.4f} "
                      f"({', '.join(f'{d:+.4f}' for d in diffs)}); higher on {sum(d > 0 for d in diffs)} of "
                      f"{len(diffs)} seeds")


if __name__ == "__main__":
    sys.exit(main())
