"""How much of a search's top band is proxy noise: trials of one study re-scored by its proxy under other seeds.

    .venv/bin/python benchmarks/bench_proxy_seeds.py --study bench-search-fine-hessian-kd150 --trials 1,143,6,2 \
        --seeds 0,1,2,3

A search scores every candidate with one proxy seed: one val subset, one set of BN-recalibration images, one batch
order. Its best trial is the maximum of many such scores, so part of its lead over the others can be that seed's
luck (the winner's curse). Each trial's model is rebuilt from the study (its kept channels and the study's channel
ranking, as `autoprune apply` does) and scored with the study's proxy settings (`STUDY_PROXY`), the seed replaced by
each of `--seeds`; seed 0 of a study made with seed 0 reproduces the stored score. Prints a table of the scores per
seed, their mean and standard deviation, and each trial's mean difference from the first trial listed. Results are
cached in runs/bench_proxy_seeds/STUDY/results.json. Nothing is asserted.
"""

from __future__ import annotations

import argparse
import copy
import statistics
from pathlib import Path

from _common import header, load, results_cache


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--study", required=True, help="a finished search's --name (runs/search/NAME)")
    parser.add_argument("--trials", required=True, help="comma-separated trial numbers; the first is the reference")
    parser.add_argument("--seeds", default="0,1,2,3", help="comma-separated proxy seeds")
    parser.add_argument("--model", default=None, help="the study's model (default: the embedded demo model)")
    parser.add_argument("--data", default=None, help="default: the embedded demo dataset")
    parser.add_argument("--device", default="auto")
    args = parser.parse_args()
    header()

    from autoprune.apply import rebuild
    from autoprune.data import load_data_config
    from autoprune.devices import resolve_device
    from autoprune.models import load_model
    from autoprune.proxy import ProxyEvaluator, ProxySettings
    from autoprune.search import records
    from autoprune.search.storage import open_study

    study = open_study(None, args.study)
    proxy = dict(study.user_attrs[records.STUDY_PROXY])
    trials = {t.number: records.TrialRecord.from_trial(t) for t in study.trials}
    numbers = [int(x) for x in args.trials.split(",")]
    seeds = [int(x) for x in args.seeds.split(",")]
    missing = [n for n in numbers if n not in trials or trials[n].map50_95 is None]
    if missing:
        raise SystemExit(f"error: study {args.study!r} has no scored trial {missing[0]}")
    out = Path("runs/bench_proxy_seeds") / args.study
    results, save = results_cache(out)
    device = resolve_device(args.device)
    loaded = load_model(args.model)
    data = load_data_config(args.data)
    ranking = study.user_attrs.get(records.STUDY_RANKING)
    models = {n: rebuild(loaded, trials[n], imgsz=640, ranking=ranking)[0] for n in numbers}
    print(f"study {args.study}: proxy {proxy}; trials {numbers}; proxy seeds {seeds}\n", flush=True)

    for seed in seeds:
        ev = None
        for n in numbers:
            key = f"{n}@s{seed}"
            if key in results:
                continue
            if ev is None:
                ev = ProxyEvaluator(data, ProxySettings(**{**proxy, "seed": seed, "device": str(device)}))
                if proxy.get("distill"):
                    ev.set_teacher(loaded.model)
            r = ev.evaluate(copy.deepcopy(models[n]))
            results[key] = {"trial": n, "seed": seed, "map50_95": r.map50_95, "seconds": r.seconds}
            save()
            print(f"  trial {n}, proxy seed {seed}: {r.map50_95:.4f} ({r.seconds:.1f} s; {load()})", flush=True)

    ref = numbers[0]
    print("\n| trial | kind | stored score | " + " | ".join(f"seed {s}" for s in seeds)
          + f" | mean ± sd | mean - trial {ref} |")
    print("|---|---|---|" + "---|" * len(seeds) + "---|---|")
    for n in numbers:
        v = [results[f"{n}@s{s}"]["map50_95"] for s in seeds]
        d = [a - results[f"{ref}@s{s}"]["map50_95"] for a, s in zip(v, seeds)]
        sd = f" ± {statistics.stdev(v):.4f}" if len(v) > 1 else ""
        cells = " | ".join(f"{x:.4f}" for x in v)
        print(f"| {n} | {trials[n].attrs.get(records.KIND)} | {trials[n].map50_95:.4f} | {cells} | "
              f"{statistics.fmean(v):.4f}{sd} | {statistics.fmean(d):+.4f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
