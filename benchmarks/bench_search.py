"""Search quality: at one budget and the same number of proxy evaluations, how good a model each engine finds.

    .venv/bin/python benchmarks/bench_search.py --budget-gflops 5 --trials 24

Runs one search per engine on the same model, data, budget, search space and proxy settings (on the embedded demo
by default): DEAP NSGA-II, Optuna NSGA-II, Optuna TPE, and a random-genome search (Optuna's RandomSampler, every
over-budget genome repaired into the budget exactly as the engines' are). Every search's trial 0 is the uniform
genome that meets the budget, so each also reports it; the proxy is deterministic, so it scores the same in each.
Prints one row per engine: the best feasible proxy mAP50-95 among the searched trials (trial 0 excluded), its
GFLOPs and latency, by how much it beats the uniform genome, and the wall time. Also scored: the uniform ratio
off the space's grid (`round_to` only), which can sit closer to the budget than trial 0. Nothing is asserted.
"""

from __future__ import annotations

import argparse

from _common import header, load

from autoprune.search.driver import Search, SearchSettings
from autoprune.search.records import TrialRecord

ENGINES = {
    "deap": ("deap", None),
    "optuna-nsga2": ("optuna", "nsga2"),
    "optuna-tpe": ("optuna", "tpe"),
    "random": ("optuna", "random"),
}


def run_engine(label: str, args: argparse.Namespace) -> dict:
    engine, sampler = ENGINES[label]
    settings = SearchSettings(
        budget_gflops=args.budget_gflops, model=args.model, data=args.data, engine=engine, sampler=sampler,
        trials=args.trials, population=args.population, proxy_steps=args.proxy_steps, seed=args.seed,
        device=args.device, name=f"{args.prefix}-{label}", resume=True, criterion=args.criterion, space=args.space,
    )
    search = Search(settings, log=lambda *_: None)
    search.run()
    # wall time of the study itself (first trial's start to last trial's end), so a resumed run reports it too
    done = [t for t in search.study.trials if t.datetime_start and t.datetime_complete]
    seconds = (max(t.datetime_complete for t in done) - min(t.datetime_start for t in done)).total_seconds()
    records = [TrialRecord.from_trial(t) for t in search.study.trials]
    uniform = next(r for r in records if r.number == 0)
    searched = [r for r in records if r.feasible and r.number != 0]
    best = max(searched, key=lambda r: (r.map50_95, -r.gflops), default=None)
    return {"label": label, "uniform": uniform, "best": best, "seconds": seconds, "search": search,
            "evaluated": sum(1 for r in records if "seconds" in r.attrs)}


def fine_uniform(search, budget: float) -> tuple[float, float, float]:
    """(keep ratio, GFLOPs, proxy mAP50-95) of the largest uniform ratio within `budget` off the space's grid.

    The search space's genes move in steps (0.05 by default), so its uniform genome (trial 0) can land well under
    the budget; this is the uniform baseline with only `round_to` between it and the budget, scored by the same
    proxy and channel ranking.
    """
    from autoprune.cost import count_gflops
    from autoprune.pruner import prune_to_counts
    from autoprune.strategies import uniform_for_gflops

    model, graph = search.loaded.model, search.graph
    target = graph.conv_gflops() * budget / search.base_gflops
    while True:
        ratio, counts = uniform_for_gflops(graph, target)
        pruned = prune_to_counts(model, counts, graph=graph, ranking=search.ranking)
        gflops = count_gflops(pruned, search.settings.imgsz)
        if gflops <= budget:
            return ratio, gflops, search.evaluator.evaluate(pruned).map50_95
        target *= 0.995


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=None, help="default: the embedded demo model")
    parser.add_argument("--data", default=None, help="default: the embedded demo dataset")
    parser.add_argument("--budget-gflops", type=float, default=5.0)
    parser.add_argument("--trials", type=int, default=24)
    parser.add_argument("--population", type=int, default=8)
    parser.add_argument("--proxy-steps", type=int, default=None, help="default: the search's default")
    parser.add_argument("--criterion", default="l1", help="channel ranking (l1: what docs/BENCHMARKS.md ran)")
    parser.add_argument("--space", default="family", help="search space (family: what docs/BENCHMARKS.md ran)")
    parser.add_argument("--engines", default=",".join(ENGINES), help=f"comma-separated, of {', '.join(ENGINES)}")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--prefix", default="bench-search", help="study names: PREFIX-ENGINE (resumed if present)")
    args = parser.parse_args()
    if args.proxy_steps is None:
        args.proxy_steps = SearchSettings.__dataclass_fields__["proxy_steps"].default
    header()
    print(f"budget {args.budget_gflops:g} GFLOPs at 640, {args.trials} proxy evaluations per engine, proxy steps "
          f"{args.proxy_steps}, population {args.population}, seed {args.seed}\n", flush=True)

    rows = []
    for label in args.engines.split(","):
        rows.append(run_engine(label, args))
        r = rows[-1]
        print(f"  {label}: done in {r['seconds'] / 60:.1f} min ({load()})", flush=True)

    uniform = rows[0]["uniform"]
    print(f"\nuniform genome (trial 0 of every search): mAP50-95 {uniform.map50_95:.4f} at {uniform.gflops:.2f} "
          f"GFLOPs, {uniform.latency_ms:.1f} ms\n")
    ratio, gflops, score = fine_uniform(rows[-1]["search"], args.budget_gflops)
    print(f"uniform ratio off the space's grid (round_to 8 only): keep {ratio:.3f}, mAP50-95 {score:.4f} at "
          f"{gflops:.2f} GFLOPs (vs the grid's uniform: {score - uniform.map50_95:+.4f})\n")
    print("| engine | best searched mAP50-95 | vs uniform | its GFLOPs | its latency (ms) | evaluated | minutes |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        b = r["best"]
        if b is None:
            print(f"| {r['label']} | no feasible trial | - | - | - | {r['evaluated']} | {r['seconds'] / 60:.1f} |")
            continue
        print(f"| {r['label']} | {b.map50_95:.4f} (trial {b.number}) | {b.map50_95 - r['uniform'].map50_95:+.4f} | "
              f"{b.gflops:.2f} | {b.latency_ms:.1f} | {r['evaluated']} | {r['seconds'] / 60:.1f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
