"""How many validation images does the proxy need to rank candidates? Scores and score differences per subset size.

    .venv/bin/python benchmarks/bench_val_size.py --sizes 12,25,50,100,200 --draws 300

The search's small-split warning (`uncertainty.too_small`) fires below 50 validation images, 200 labelled objects, or
a bootstrap standard error of one proxy score above 0.01 (rules of thumb until this measurement). What decides a
ranking, though, is the difference of two candidates scored on the same images, which moves much less than either
score when both fail on the same hard images. This benchmark measures both on the demo:

Four candidates at `--share` of the demo baseline's GFLOPs (uniform, global l1, global hessian, global hessian with
per-FLOP scores, as a search's first trials are made) are each scored once by the proxy with the main command's
settings, except that the whole val split is scored; every image's matching statistics are kept. Then, for each
subset size n, `--draws` random n-image subsets of the split (without replacement) give each candidate's mAP50-95
and every pair's difference on the same subset: their standard deviation over subsets is how far another subset of
that size would move them (an underestimate as n nears the split's size, where subsets overlap), next to the
bootstrap standard error the proxy reports on one subset (`uncertainty.bootstrap_scores`). Only the validation
subset varies here: the proxy's finetune (its seed's images and order) is a second source of noise that
`bench_proxy_seeds.py` measures. Results cached in runs/bench_val_size/NAME/results.json. Nothing is asserted.
"""

from __future__ import annotations

import argparse
import itertools
import math
import statistics
from pathlib import Path

import numpy as np
from _common import header, plan_within, results_cache

CANDIDATES = (("uniform", "uniform", "l1", False), ("global l1", "global", "l1", False),
              ("global hessian", "global", "hessian", False), ("global hessian per FLOP", "global", "hessian", True))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="12,25,50,100,200")
    parser.add_argument("--draws", type=int, default=300)
    parser.add_argument("--share", type=float, default=0.5)
    parser.add_argument("--name", default="demo")
    args = parser.parse_args()
    header()
    out = Path("runs/bench_val_size") / args.name
    results, save = results_cache(out)
    if "images" not in results:
        results["images"] = score(args.share)
        save()
    table(results["images"], [int(s) for s in args.sizes.split(",")], args.draws)
    return 0


def score(share: float) -> dict:
    """Each candidate's per-image matching statistics on the whole val split, as lists (JSON)."""
    import copy

    from autoprune import uncertainty
    from autoprune.channels import analyze
    from autoprune.cost import count_gflops
    from autoprune.models import load_model
    from autoprune.pruner import channel_scores
    from autoprune.proxy import ProxyEvaluator, ProxySettings
    from autoprune.strategies import per_flop_scores

    base = load_model(None).model
    graph = analyze(base, imgsz=640)
    budget = share * count_gflops(base, 640)
    ev = ProxyEvaluator(None, ProxySettings(val_images=10**6))
    print(f"proxy: {ev.val_images} validation images, {ev.val_boxes} boxes; budget {budget:.4f} GFLOPs", flush=True)
    calib = ev.calibration_batches()
    scores = {"l1": channel_scores(base, graph, "l1"), "hessian": channel_scores(base, graph, "hessian", batches=calib)}
    captured = []
    real = uncertainty.per_image_stats

    def keep(stats, tp_key="tp"):
        images = real(stats, tp_key)
        captured.append(images)
        return images

    uncertainty.per_image_stats = keep
    out = {}
    try:
        for label, strategy, criterion, per_flop in CANDIDATES:
            s = scores[criterion]
            rank = {g: [x.argsort(descending=True, stable=True) for x in per] for g, per in s.items()}
            if per_flop:
                s = per_flop_scores(graph, s)
            model, _ = plan_within(graph, base, strategy, budget, scores=s, ranking=rank)
            r = ev.evaluate(copy.deepcopy(model))
            out[label] = [{k: v.tolist() for k, v in im.items()} for im in captured[-1]]
            print(f"{label}: {count_gflops(model, 640):.4f} GFLOPs, proxy mAP50-95 {r.map50_95:.4f}", flush=True)
    finally:
        uncertainty.per_image_stats = real
    return out


def table(images: dict, sizes: list[int], draws: int) -> None:
    from autoprune.uncertainty import bootstrap_scores, difference_se, map50_95, standard_error

    labels = list(images)
    per = {k: [{x: np.asarray(v) for x, v in im.items()} for im in ims] for k, ims in images.items()}
    n_all = len(next(iter(per.values())))
    boxes = np.array([len(im["target_cls"]) for im in next(iter(per.values()))])
    full = {k: map50_95(v) for k, v in per.items()}
    print(f"\nwhole split: {n_all} images, {boxes.sum()} boxes; " +
          ", ".join(f"{k} {v:.4f}" for k, v in full.items()))
    pairs = list(itertools.combinations(labels, 2))
    close = min(pairs, key=lambda p: abs(full[p[0]] - full[p[1]]))  # the two candidates a ranking must separate
    print(f"closest pair: {close[0]} and {close[1]}, {abs(full[close[0]] - full[close[1]]):.4f} apart on the whole "
          "split; finite-population factor f = sqrt(1 - n / images): an SD over subsets divided by f estimates the "
          "SD over subsets of a larger split")
    print("\n| images | boxes (mean) | f | one score: SD over subsets / f (mean of candidates) | one score: bootstrap SE "
          "on one subset (mean) | closest pair's difference: SD over subsets / f | its paired bootstrap SE on one "
          "subset (mean of 20) | every pair's difference: SD / f (min-max) |")
    print("|---|---|---|---|---|---|---|---|")
    rng = np.random.default_rng(0)
    for n in sizes:
        if n > n_all:
            continue
        f = math.sqrt(1 - n / n_all)
        subsets = [rng.choice(n_all, n, replace=False) for _ in range(draws)]
        s = {k: np.array([map50_95([per[k][i] for i in idx]) for idx in subsets]) for k in labels}
        sd_one = statistics.mean(float(np.std(v, ddof=1)) for v in s.values()) / f
        sd_pair = {p: float(np.std(s[p[0]] - s[p[1]], ddof=1)) / f for p in pairs}
        boot = statistics.mean(standard_error(bootstrap_scores([per[k][i] for i in subsets[0]])) for k in labels)
        paired = statistics.mean(difference_se(bootstrap_scores([per[close[0]][i] for i in idx]),
                                               bootstrap_scores([per[close[1]][i] for i in idx]))
                                 for idx in subsets[:20])
        print(f"| {n} | {np.mean([boxes[idx].sum() for idx in subsets]):.0f} | {f:.2f} | {sd_one:.4f} | {boot:.4f} | "
              f"{sd_pair[close]:.4f} | {paired:.4f} | {min(sd_pair.values()):.4f}-{max(sd_pair.values()):.4f} |",
              flush=True)

if __name__ == "__main__":
    raise SystemExit(main())
