"""The classic pruning methods against the searched genome, on the demo at about 50% of the GFLOPs.

    .venv/bin/python benchmarks/compare_methods.py --epochs 5
    .venv/bin/python benchmarks/compare_methods.py --epochs 5 --seeds 1,2 --methods global-hessian,searched

The budget is `--share` of the unpruned model's full GFLOPs (fvcore, Ultralytics' convention) for every method:

each one-shot plan is the largest its strategy makes within it, and the search gets it as --budget-gflops.
Methods, all from the same unpruned model (the embedded demo by default), each finetuned with the same number of
epochs and the same distillation setting (teacher: the unpruned model), then validated by Ultralytics on the whole
val split:

- uniform: the same keep ratio in every group (L1 ranking), the largest one within the target;
- global-<criterion>: one threshold over all groups' normalized scores, for every criterion
  (l1, l2, bn_scale, lamp, taylor, hessian, fpgm, random);
- slimming: sparse training (L1 on BN gamma, `autoprune sparsify`), then global bn_scale;
- prune-hessian, prune-depth, prune-dws: what `autoprune prune --target-gflops` makes (global hessian on its own
  calibration images), alone, with `--depth 0.5` (every repeated block keeps half its elements, rounded down; the
  measured order) and with `--swap dws` (every k x k Conv of backbone and neck depthwise-separable, fitted on the
  data), the widths filling the rest of the budget: the one-shot baselines of the depth and operator genes;
- searched: the trial an `autoprune search` at that budget recommends (the highest proxy mAP50-95, or the highest
  mean over the confirming proxy seeds of a search run with `--confirm`), with the channel ranking of
  `--search-criterion` (row `searched-C` for a criterion other than l1, or `--search-row`); `--search-name` names
  the study (a finished one is read as it is, with the channel ranking it stored).

Uniform pruning lands lower than the others where rounding to 8 channels stops it. A 3-epoch finetune on the demo
varies by about 0.005 mAP50-95 from seed to seed, so `--seeds` repeats methods with other finetune seeds and the
table gives the mean and the spread; each searched row is also compared with the best one-shot method seed by
seed (the paired difference, its standard error, and on how many seeds it is higher). Results are cached per
method and seed in runs/compare_methods/NAME/results.json (a row is reused only while its method still plans the
same model), so an interrupted run continues. Prints a Markdown table and writes a plot (`--plot`). Nothing is
asserted.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from _common import finetune_and_validate, header, load, plan_within, results_cache

CRITERIA = ("l1", "l2", "bn_scale", "lamp", "taylor", "hessian", "fpgm", "random")
PRUNE_ROWS = {"prune-hessian": {}, "prune-depth": {"depth": "0.5"}, "prune-dws": {"swap": ("dws",)}}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=None, help="default: the embedded demo model")
    parser.add_argument("--data", default=None, help="default: the embedded demo dataset")
    parser.add_argument("--share", type=float, default=0.5, help="budget: share of the unpruned model's GFLOPs")
    parser.add_argument("--epochs", type=int, default=5, help="finetune epochs for every method")
    parser.add_argument("--distill", action=argparse.BooleanOptionalAction, default=True)
    parser.add_argument("--sparsify-epochs", type=int, default=10)
    parser.add_argument("--sparsify-l1", type=float, default=1e-2)
    parser.add_argument("--search-trials", type=int, default=24)
    parser.add_argument("--search-name", default=None, help="use this finished search's best trial instead")
    parser.add_argument("--search-criterion", default="l1", help="the search's channel criterion (row searched-C "
                                                                 "unless l1)")
    parser.add_argument("--search-space", default=None, help="the search's space (default: the model family's)")
    parser.add_argument("--search-proxy-steps", type=int, default=50)
    parser.add_argument("--search-proxy-distill", type=float, default=0.0)
    parser.add_argument("--search-budget-floor", type=float, default=0.8)
    parser.add_argument("--search-trial", type=int, default=None, help="that trial of the search instead of the one "
                                                                         "it recommends")
    parser.add_argument("--search-row", default=None, help="the searched genome's row (default: searched, or "
                                                           "searched-C for --search-criterion C other than l1)")
    parser.add_argument("--methods", default=None, help="comma-separated subset (default: all)")
    parser.add_argument("--imgsz", type=int, default=None, help="finetune/val size (default: the demo's)")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--seeds", default="0", help="comma-separated finetune seeds (each method runs once per seed)")
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
    from autoprune.finetune import validate_checkpoint
    from autoprune.models import load_model, save_checkpoint
    from autoprune.pruner import channel_scores
    from autoprune.proxy import ProxySettings

    out = Path("runs/compare_methods") / args.name
    out.mkdir(parents=True, exist_ok=True)
    results, save = results_cache(out)
    device = resolve_device(args.device)
    imgsz = args.imgsz or DEMO_IMGSZ
    loaded = load_model(args.model)
    data = load_data_config(args.data)
    base = loaded.model
    graph = analyze(base, imgsz=640)
    groups = {g.id for g in graph.groups}  # kept counts of a plan of widths alone name only these
    budget = args.share * count_gflops(base, 640)
    seeds = [int(x) for x in args.seeds.split(",")]
    from autoprune.batches import calibration_batches

    proxy = ProxySettings(imgsz=imgsz, steps=0, device=str(device))
    calib = calibration_batches(data, imgsz=imgsz, calib_batches=proxy.calib_batches, batch=proxy.batch, seed=proxy.seed,
                                train_images=proxy.train_images)
    print(f"model {loaded.source}, {count_gflops(base, 640):.2f} GFLOPs at 640; budget {args.share:.0%} = "
          f"{budget:.4f} GFLOPs; finetune {args.epochs} epochs at {imgsz}, distill={args.distill}, seeds {seeds}\n",
          flush=True)

    def within_budget(model_graph, model, strategy, scores=None):
        return plan_within(model_graph, model, strategy, budget, scores=scores)

    def evaluate(name: str, model, counts: dict, extra: dict) -> None:
        """Finetune a pruned copy with the shared settings for every seed, validate before and after, cache rows."""
        gflops = count_gflops(model, 640)
        for seed in seeds:
            key = name if seed == 0 else f"{name}#s{seed}"
            if key in results and abs(results[key]["gflops"] - gflops) < 1e-9:
                continue
            if key in results:
                print(f"  {key}: the cached row is a model of {results[key]['gflops']:.4f} GFLOPs, the method now "
                      f"plans {gflops:.4f}; finetuning again", flush=True)
            t0 = time.perf_counter()
            run = out / key.replace("#", "-")
            before_ckpt = save_checkpoint(model, run / "before.pt")
            before = validate_checkpoint(before_ckpt, data, imgsz=imgsz, device=device)
            after = finetune_and_validate(model, base if args.distill else None, data, run / "train",
                                          epochs=args.epochs, imgsz=imgsz, batch=args.batch, device=device,
                                          seed=seed, label=name)
            results[key] = {
                "method": name, "seed": seed, "gflops": gflops, "params": count_params(model),
                "conv_gflops": graph.conv_gflops(counts) if counts and set(counts) <= groups else None,
                "map50_95_before": before["map50_95"],
                "map50_95": after["map50_95"], "map50": after["map50"], "minutes": (time.perf_counter() - t0) / 60,
                **extra,
            }
            save()
            r = results[key]
            print(f"  {key}: {r['gflops']:.2f} GFLOPs, mAP50-95 {r['map50_95_before']:.4f} -> {r['map50_95']:.4f} "
                  f"({r['minutes']:.1f} min; {load()})", flush=True)

    wanted = set(args.methods.split(",")) if args.methods else None

    def want(name):
        return wanted is None or name in wanted or name.split("-")[0] in wanted

    # one-shot methods
    if want("uniform"):
        model, plan = within_budget(graph, base, "uniform")
        evaluate("uniform", model, plan.counts, {"ratio": plan.ratio})
    for criterion in CRITERIA:
        name = f"global-{criterion}"
        if not want(name):
            continue
        batches = calib if criterion in ("taylor", "hessian") else None
        model, plan = within_budget(graph, base, "global", channel_scores(base, graph, criterion, batches=batches))
        evaluate(name, model, plan.counts, {})

    # network slimming: sparse training, then a global bn_scale threshold
    if want("slimming"):
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
        model, plan = within_budget(sgraph, sparse_model, "global", channel_scores(sparse_model, sgraph, "bn_scale"))
        evaluate("slimming", model, plan.counts, {"gamma_below_1e-2": sparse["gamma_share_below"]["after"]})

    # `autoprune prune` at the same budget: widths alone, with depth, with swaps
    for name, extra in PRUNE_ROWS.items():
        if want(name):
            from autoprune.oneshot import OneShotSettings, prune_once

            path = out / name / "pruned.pt"  # pruned once per results folder (delete it to prune again)
            if not path.exists():
                prune_once(loaded, OneShotSettings(target_gflops=repr(budget), val=False, **extra), imgsz=640,
                           data=data, out=path)
            evaluate(name, load_model(str(path)).model, {}, {"prune": {k: list(v) if isinstance(v, tuple) else v
                                                                       for k, v in extra.items()}})

    # the search at the same budget
    searched = args.search_row or ("searched" if args.search_criterion == "l1" else f"searched-{args.search_criterion}")
    if not searched.startswith("searched"):
        raise SystemExit(f"error: --search-row must start with 'searched', got {searched!r}")
    if want(searched):
        model, counts, extra = _searched(args, base, loaded, budget)
        evaluate(searched, model, counts, extra)

    _table(results, args)
    if args.plot:
        _plot(results, Path(args.plot), args)
    return 0


def _searched(args, base, loaded, budget: float):
    """(pruned model, kept counts, row extras) of the best feasible trial of the search `--search-name` (read as it
    is when it exists) or of a new search at `budget` with the --search-* settings."""
    from autoprune.apply import rebuild
    from autoprune.report import study_info
    from autoprune.search import records
    from autoprune.search.storage import open_study, run_dir_for, STUDY_FILE

    name = args.search_name or f"compare-{args.name}"
    if not (run_dir_for(name) / STUDY_FILE).is_file():
        from autoprune.search.driver import Search, SearchSettings

        Search(SearchSettings(budget_gflops=round(budget, 4), model=args.model, data=args.data,
                              trials=args.search_trials, name=name, device=args.device,
                              criterion=args.search_criterion, space=args.search_space,
                              proxy_steps=args.search_proxy_steps, proxy_distill=args.search_proxy_distill,
                              budget_floor=args.search_budget_floor), log=print).run()
    study = open_study(None, name)
    attrs = study.user_attrs
    if attrs.get(records.STUDY_CRITERION, "l1") != args.search_criterion:
        raise SystemExit(f"error: study {name!r} ranks channels by {attrs.get(records.STUDY_CRITERION)!r}, "
                         f"not --search-criterion {args.search_criterion!r}")
    if attrs[records.STUDY_BUDGET_GFLOPS] > budget + 1e-3:
        raise SystemExit(f"error: study {name!r} has a budget of {attrs[records.STUDY_BUDGET_GFLOPS]} GFLOPs, over {budget}")
    info = study_info(study)
    best = info.recommended  # the best by proxy, or by its mean over the confirming seeds (`search --confirm`)
    if args.search_trial is not None:
        best = next(r for r in records.load_records(study) if r.number == args.search_trial)
    from autoprune.apply import search_calibration_batches
    from autoprune.data import load_data_config
    from autoprune.swap import split_counts

    swap_batches = None  # a trial's swaps are fitted on the search's calibration images, as apply does
    if split_counts(best.attrs[records.KEPT_CHANNELS])[1]:
        swap_batches = search_calibration_batches(load_data_config(args.data), attrs[records.STUDY_PROXY])
    model, counts, _ = rebuild(loaded, best, imgsz=640, ranking=attrs.get(records.STUDY_RANKING),
                               swap_batches=swap_batches, seed=int(attrs[records.STUDY_PROXY].get("seed") or 0))
    confirmed = {n: mean for n, _, mean in info.confirmed}
    return model, counts, {"trial": best.number, "study": name, "kind": best.attrs.get(records.KIND),
                           "proxy_map50_95": best.map50_95, "proxy": attrs.get(records.STUDY_PROXY),
                           "confirmed_mean": confirmed.get(best.number)}


def _by_method(results: dict) -> dict[str, dict]:
    """{method: its seed-0 row (or first row) with "runs" (mAP50-95 per seed), "mean" and "sd" added}."""
    import statistics

    out: dict[str, dict] = {}
    for key, r in results.items():
        method = r.get("method", key.split("#")[0])
        row = out.setdefault(method, {**r, "runs": {}})
        if abs(r["gflops"] - row["gflops"]) > 1e-9:
            continue  # a row of an older plan of the method
        row["runs"][int(r.get("seed", 0))] = r["map50_95"]
    for row in out.values():
        v = list(row["runs"].values())
        row["mean"] = statistics.fmean(v)
        row["sd"] = statistics.stdev(v) if len(v) > 1 else None
    return out


def _table(results: dict, args) -> None:
    import statistics

    rows = _by_method(results)
    print(f"\n| method | GFLOPs | params | mAP50-95 before finetune | mAP50-95 after {args.epochs} epochs, mean "
          f"(per seed) | mAP50 (seed 0) |")
    print("|---|---|---|---|---|---|")
    for name, r in sorted(rows.items(), key=lambda kv: -kv[1]["mean"]):
        runs = ", ".join(f"{r['runs'][k]:.4f}" for k in sorted(r["runs"]))
        mean = f"{r['mean']:.4f}" + (f" ± {r['sd']:.4f} ({runs})" if r["sd"] is not None else "")
        mean = f"**{mean}**" if name.startswith("searched") else mean
        print(f"| {name} | {r['gflops']:.2f} | {r['params'] / 1e6:.2f}M | {r['map50_95_before']:.4f} | {mean} | "
              f"{r['map50']:.4f} |")
    one_shot = {k: r for k, r in rows.items() if not k.startswith("searched")}
    if not one_shot:
        return
    best_name, best = max(one_shot.items(), key=lambda kv: kv[1]["mean"])
    for name, r in rows.items():
        common = sorted(set(r["runs"]) & set(best["runs"])) if name.startswith("searched") else []
        if len(common) > 1:
            d = [r["runs"][k] - best["runs"][k] for k in common]
            wins = sum(x > 0 for x in d)
            print(f"{name} - {best_name} (the best one-shot method), paired over seeds {common}: "
                  f"{statistics.fmean(d):+.4f} (sd {statistics.stdev(d):.4f}, standard error "
                  f"{statistics.stdev(d) / len(d) ** 0.5:.4f}); higher on {wins} of {len(d)} seeds")


def _plot(results: dict, path: Path, args) -> None:
    """Left: every method, mAP50-95 (mean over seeds) against GFLOPs. Right: the leaders (within 0.02 of the best
    mean), one row each, every seed's result and the mean with its standard deviation."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    rows = _by_method(results)
    top = max(r["mean"] for r in rows.values())
    leaders = sorted((kv for kv in rows.items() if kv[1]["mean"] >= top - 0.02), key=lambda kv: kv[1]["mean"])
    fig = Figure(figsize=(13, 4.8))
    FigureCanvasAgg(fig)
    ax, zoom = fig.subplots(1, 2, gridspec_kw={"width_ratios": [3, 2]})
    for name, r in rows.items():
        searched = name.startswith("searched")
        color = "#d62728" if searched else "#1f77b4"
        ax.scatter(r["gflops"], r["mean"], s=80 if searched else 30, marker="*" if searched else "o", color=color,
                   zorder=3 if searched else 2)
        if r["mean"] < top - 0.02:  # the leaders are labelled on the right
            ax.annotate(name, (r["gflops"], r["mean"]), textcoords="offset points", fontsize=7,
                        xytext=(-6, -11) if searched else (4, 3), ha="right" if searched else "left")
    ax.axhspan(top - 0.02, top + 0.005, color="#999999", alpha=0.15, lw=0)
    ax.annotate("leaders (right)", (ax.get_xlim()[0], top - 0.02), textcoords="offset points", xytext=(4, 3),
                fontsize=7, color="#555555")
    ax.set_xlabel("GFLOPs at 640 (fvcore, Ultralytics' convention)")
    ax.set_ylabel(f"mAP50-95 after {args.epochs} epochs" + (" with distillation" if args.distill else "")
                  + " (mean over seeds)")
    ax.set_title(f"Pruning methods at about {args.share:.0%} of the GFLOPs (demo, val split)", fontsize=10)
    ax.grid(alpha=0.3)
    for y, (name, r) in enumerate(leaders):
        color = "#d62728" if name.startswith("searched") else "#1f77b4"
        zoom.scatter(list(r["runs"].values()), [y] * len(r["runs"]), s=14, color=color, alpha=0.5, zorder=2)
        if r["sd"] is not None:
            zoom.errorbar(r["mean"], y, xerr=r["sd"], color=color, capsize=3, lw=1, zorder=3)
        zoom.scatter(r["mean"], y, s=70, marker="*" if name.startswith("searched") else "o", color=color, zorder=4)
    zoom.set_yticks(range(len(leaders)), [f"{n} ({len(r['runs'])} seeds)" for n, r in leaders], fontsize=7)
    zoom.set_xlabel("mAP50-95: each seed (dots), mean ± sd")
    zoom.set_title("the leaders", fontsize=10)
    zoom.grid(alpha=0.3, axis="x")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120, bbox_inches="tight")
    print(f"\nplot: {path}")


if __name__ == "__main__":
    raise SystemExit(main())
