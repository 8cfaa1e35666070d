"""The classic pruning methods against the searched genome, on the demo at about 50% of the GFLOPs.

    .venv/bin/python benchmarks/compare_methods.py --epochs 5

Methods, all from the same unpruned model (the embedded demo by default), each finetuned with the same number of
epochs and the same distillation setting (teacher: the unpruned model), then validated by Ultralytics on the whole
val split:

- uniform: the same keep ratio in every group (L1 ranking), the largest one within the target;
- global-<criterion>: one threshold over all groups' normalized scores, for every criterion
  (l1, l2, bn_scale, lamp, taylor, hessian, fpgm, random);
- slimming: sparse training (L1 on BN gamma, `autoprune sparsify`), then global bn_scale;
- searched: the best feasible trial of an `autoprune search` whose budget is `--share` of the unpruned model's full
  GFLOPs (the global methods land just below it; uniform lower, where rounding to 8 channels stops it), with the
  channel ranking of `--search-criterion` (row `searched-C` for a criterion other than l1).

Targets are conv GFLOPs at 640 (`--share` of the unpruned model's); the table reports full GFLOPs (fvcore,
Ultralytics' convention). Results are cached per method in runs/compare_methods/NAME/results.json, so an
interrupted run continues. Prints a Markdown table and writes a plot (`--plot`). Nothing is asserted.
"""

from __future__ import annotations

import argparse
import copy
import json
import time
from pathlib import Path

from _common import header, load

CRITERIA = ("l1", "l2", "bn_scale", "lamp", "taylor", "hessian", "fpgm", "random")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=None, help="default: the embedded demo model")
    parser.add_argument("--data", default=None, help="default: the embedded demo dataset")
    parser.add_argument("--share", type=float, default=0.5, help="target share of the conv GFLOPs")
    parser.add_argument("--epochs", type=int, default=5, help="finetune epochs for every method")
    parser.add_argument("--distill", action=argparse.BooleanOptionalAction, default=True)
    parser.add_argument("--sparsify-epochs", type=int, default=10)
    parser.add_argument("--sparsify-l1", type=float, default=1e-2)
    parser.add_argument("--search-trials", type=int, default=24)
    parser.add_argument("--search-name", default=None, help="use this finished search's best trial instead")
    parser.add_argument("--search-criterion", default="l1", help="the search's channel criterion (row searched-C "
                                                                 "unless l1)")
    parser.add_argument("--search-space", default=None, help="the search's space (default: the model family's)")
    parser.add_argument("--methods", default=None, help="comma-separated subset (default: all)")
    parser.add_argument("--imgsz", type=int, default=None, help="finetune/val size (default: the demo's)")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--seed", type=int, default=0, help="finetune seed (run-to-run noise: repeat with others)")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--name", default="exp", help="results folder runs/compare_methods/NAME")
    parser.add_argument("--plot", default="docs/compare_methods.png")
    args = parser.parse_args()
    header()

    from autoprune.channels import analyze
    from autoprune.cost import count_gflops, count_params
    from autoprune.data import load_data_config
    from autoprune.demo import DEMO_IMGSZ
    from autoprune.devices import resolve_device
    from autoprune.finetune import DistillSettings, finetune, validate_checkpoint
    from autoprune.models import load_model, save_checkpoint
    from autoprune.pruner import channel_scores, prune_to_counts
    from autoprune.proxy import ProxyEvaluator, ProxySettings
    from autoprune.strategies import plan_counts

    out = Path("runs/compare_methods") / args.name
    out.mkdir(parents=True, exist_ok=True)
    cache_path = out / "results.json"
    results = json.loads(cache_path.read_text()) if cache_path.exists() else {}
    device = resolve_device(args.device)
    imgsz = args.imgsz or DEMO_IMGSZ
    loaded = load_model(args.model)
    data = load_data_config(args.data)
    base = loaded.model
    graph = analyze(base, imgsz=640)
    target = args.share * graph.conv_gflops()
    calib = ProxyEvaluator(data, ProxySettings(imgsz=imgsz, steps=0, device=str(device))).calibration_batches()
    print(f"model {loaded.source}, {count_gflops(base, 640):.2f} GFLOPs at 640; target {args.share:.0%} of the conv "
          f"GFLOPs = {target:.2f}; finetune {args.epochs} epochs at {imgsz}, distill={args.distill}\n", flush=True)

    def save(results):
        cache_path.write_text(json.dumps(results, indent=2))

    def evaluate(name: str, model, counts: dict, extra: dict) -> None:
        """Finetune a pruned copy with the shared settings, validate before and after, cache the row."""
        if name in results:
            return
        t0 = time.perf_counter()
        before_ckpt = save_checkpoint(model, out / name / "before.pt")
        before = validate_checkpoint(before_ckpt, data, imgsz=imgsz, device=device)
        distill = DistillSettings() if args.distill else None
        teacher = copy.deepcopy(base) if args.distill else None
        ft = finetune(copy.deepcopy(model), data, save_dir=out / name / "train", teacher=teacher,
                      distill=distill, epochs=args.epochs, imgsz=imgsz, batch=args.batch, device=device,
                      verbose=False, label=name, seed=args.seed)
        after = validate_checkpoint(ft.best, data, imgsz=imgsz, device=device)
        results[name] = {
            "gflops": count_gflops(model, 640), "params": count_params(model), "conv_gflops": graph.conv_gflops(counts),
            "map50_95_before": before["map50_95"], "map50_95": after["map50_95"], "map50": after["map50"],
            "minutes": (time.perf_counter() - t0) / 60, **extra,
        }
        save(results)
        r = results[name]
        print(f"  {name}: {r['gflops']:.2f} GFLOPs, mAP50-95 {r['map50_95_before']:.4f} -> {r['map50_95']:.4f} "
              f"({r['minutes']:.1f} min; {load()})", flush=True)

    wanted = set(args.methods.split(",")) if args.methods else None

    def want(name):
        return wanted is None or name in wanted or name.split("-")[0] in wanted

    # one-shot methods
    if want("uniform"):
        plan = plan_counts(graph, "uniform", target_gflops=target)
        evaluate("uniform", prune_to_counts(base, plan.counts, graph=graph), plan.counts, {"ratio": plan.ratio})
    for criterion in CRITERIA:
        name = f"global-{criterion}"
        if not want(name):
            continue
        batches = calib if criterion in ("taylor", "hessian") else None
        scores = channel_scores(base, graph, criterion, batches=batches)
        plan = plan_counts(graph, "global", target_gflops=target, scores=scores)
        ranking = {g: [s.argsort(descending=True, stable=True) for s in per] for g, per in scores.items()}
        evaluate(name, prune_to_counts(base, plan.counts, graph=graph, ranking=ranking), plan.counts, {})

    # network slimming: sparse training, then a global bn_scale threshold
    if want("slimming") and "slimming" not in results:
        from autoprune.finetune import ultralytics_device
        from autoprune.sparsify import SparsifySettings, sparsify

        run_dir = out / "slimming" / "sparsify"
        run_dir.mkdir(parents=True, exist_ok=True)
        if not (run_dir / "sparse.pt").exists():
            sparse = sparsify(args.model, data, run_dir, SparsifySettings(
                epochs=args.sparsify_epochs, l1=args.sparsify_l1, imgsz=imgsz, batch=args.batch,
                device=ultralytics_device(device)))
            (run_dir / "summary.json").write_text(json.dumps(sparse, indent=2, default=str))
        sparse = json.loads((run_dir / "summary.json").read_text())
        sparse_model = load_model(str(run_dir / "sparse.pt")).model
        sgraph = analyze(sparse_model, imgsz=640)
        scores = channel_scores(sparse_model, sgraph, "bn_scale")
        plan = plan_counts(sgraph, "global", target_gflops=target, scores=scores)
        ranking = {g: [s.argsort(descending=True, stable=True) for s in per] for g, per in scores.items()}
        evaluate("slimming", prune_to_counts(sparse_model, plan.counts, graph=sgraph, ranking=ranking), plan.counts,
                 {"gamma_below_1e-2": sparse["gamma_share_below"]["after"]})

    # the search, with the smallest budget any one-shot method reached
    searched = "searched" if args.search_criterion == "l1" else f"searched-{args.search_criterion}"
    if want(searched) and searched not in results:
        from autoprune.search.driver import Search, SearchSettings
        from autoprune.search.records import TrialRecord

        budget = count_gflops(base, 640) * args.share  # the nominal share; one-shot methods land at or below it
        name = args.search_name or f"compare-{args.name}"
        search = Search(SearchSettings(budget_gflops=round(budget, 4), model=args.model, data=args.data,
                                       trials=args.search_trials, name=name, resume=True, device=args.device,
                                       criterion=args.search_criterion, space=args.search_space),
                        log=lambda *_: None)
        search.run()
        records = [TrialRecord.from_trial(t) for t in search.study.trials]
        best = max((r for r in records if r.feasible), key=lambda r: (r.map50_95, -r.gflops))
        counts = best.attrs["kept_channels"]
        evaluate(searched, prune_to_counts(base, counts, graph=graph, ranking=search.ranking), counts,
                 {"trial": best.number, "study": name, "budget": budget, "proxy_map50_95": best.map50_95})

    _table(results, args)
    if args.plot:
        _plot(results, Path(args.plot), args)
    return 0


def _table(results: dict, args) -> None:
    print(f"\n| method | GFLOPs | params | mAP50-95 before finetune | mAP50-95 after {args.epochs} epochs | mAP50 |")
    print("|---|---|---|---|---|---|")
    for name, r in sorted(results.items(), key=lambda kv: -kv[1]["map50_95"]):
        print(f"| {name} | {r['gflops']:.2f} | {r['params'] / 1e6:.2f}M | {r['map50_95_before']:.4f} | "
              f"**{r['map50_95']:.4f}** | {r['map50']:.4f} |" if name.startswith("searched") else
              f"| {name} | {r['gflops']:.2f} | {r['params'] / 1e6:.2f}M | {r['map50_95_before']:.4f} | "
              f"{r['map50_95']:.4f} | {r['map50']:.4f} |")


def _plot(results: dict, path: Path, args) -> None:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(8, 4.5))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    for name, r in results.items():
        searched = name.startswith("searched")
        ax.scatter(r["gflops"], r["map50_95"], s=80 if searched else 30, marker="*" if searched else "o",
                   color="#d62728" if searched else "#1f77b4", zorder=3 if searched else 2)
        ax.annotate(name, (r["gflops"], r["map50_95"]), textcoords="offset points", fontsize=7,
                    xytext=(-6, -11) if searched else (4, 3), ha="right" if searched else "left")
    ax.set_xlabel("GFLOPs at 640 (fvcore, Ultralytics' convention)")
    ax.set_ylabel(f"mAP50-95 after {args.epochs} epochs" + (" with distillation" if args.distill else ""))
    ax.set_title(f"Pruning methods at about {args.share:.0%} of the GFLOPs (demo, val split)")
    ax.grid(alpha=0.3)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120, bbox_inches="tight")
    print(f"\nplot: {path}")


if __name__ == "__main__":
    raise SystemExit(main())
