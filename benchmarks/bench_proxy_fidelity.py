"""How well a search's proxy score predicts the mAP after the real finetune: trials of one study, finetuned alike.

    .venv/bin/python benchmarks/bench_proxy_fidelity.py --study bench-search-fine-hessian-kd \
        --trials 14,21,38,45,89,1,87

Each trial's model is rebuilt from the study (its kept channels and the study's channel ranking, as `autoprune
apply` does), finetuned for `--epochs` with distillation from the unpruned model (seed `--seed`), and validated by
Ultralytics on the whole val split. Prints each trial's proxy mAP50-95 next to its finetuned one, and the Spearman
and Kendall rank correlations between the two. Results are cached per trial in
runs/bench_proxy_fidelity/STUDY/results.json. Nothing is asserted.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from _common import finetune_and_validate, header, load, results_cache


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--study", required=True, help="a finished search's --name (runs/search/NAME)")
    parser.add_argument("--trials", required=True, help="comma-separated trial numbers")
    parser.add_argument("--model", default=None, help="the study's model (default: the embedded demo model)")
    parser.add_argument("--data", default=None, help="default: the embedded demo dataset")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--imgsz", type=int, default=None, help="finetune/val size (default: the demo's)")
    parser.add_argument("--device", default="auto")
    args = parser.parse_args()
    header()

    from autoprune.apply import rebuild
    from autoprune.data import load_data_config
    from autoprune.demo import DEMO_IMGSZ
    from autoprune.devices import resolve_device
    from autoprune.models import load_model
    from autoprune.search import records
    from autoprune.search.storage import open_study

    study = open_study(None, args.study)
    trials = {t.number: records.TrialRecord.from_trial(t) for t in study.trials}
    out = Path("runs/bench_proxy_fidelity") / args.study
    results, save = results_cache(out)
    device = resolve_device(args.device)
    imgsz = args.imgsz or DEMO_IMGSZ
    loaded = load_model(args.model)
    data = load_data_config(args.data)
    print(f"study {args.study}: proxy {study.user_attrs.get(records.STUDY_PROXY)}; finetune {args.epochs} epochs at {imgsz}, "
          f"distillation, seed {args.seed}\n", flush=True)

    numbers = [int(x) for x in args.trials.split(",")]
    for n in numbers:
        key = f"{n}@e{args.epochs}s{args.seed}"
        if key in results:
            continue
        record = trials[n]
        t0 = time.perf_counter()
        model, _, gflops = rebuild(loaded, record, imgsz=640, ranking=study.user_attrs.get(records.STUDY_RANKING))
        after = finetune_and_validate(model, loaded.model, data, out / f"trial{n}-e{args.epochs}-s{args.seed}",
                                      epochs=args.epochs, imgsz=imgsz, batch=args.batch, device=device,
                                      seed=args.seed, label=f"trial{n}")
        results[key] = {"trial": n, "kind": record.attrs.get(records.KIND), "gflops": gflops, "proxy": record.map50_95,
                        "map50_95": after["map50_95"], "minutes": (time.perf_counter() - t0) / 60}
        save()
        print(f"  trial {n}: proxy {record.map50_95:.4f} -> finetuned {after['map50_95']:.4f} "
              f"({results[key]['minutes']:.1f} min; {load()})", flush=True)

    rows = [results[f"{n}@e{args.epochs}s{args.seed}"] for n in numbers]
    print("\n| trial | kind | GFLOPs | proxy mAP50-95 | finetuned mAP50-95 |")
    print("|---|---|---|---|---|")
    for r in sorted(rows, key=lambda r: r["proxy"]):
        print(f"| {r['trial']} | {r['kind']} | {r['gflops']:.2f} | {r['proxy']:.4f} | {r['map50_95']:.4f} |")
    proxy, final = [r["proxy"] for r in rows], [r["map50_95"] for r in rows]
    print(f"\nSpearman {_spearman(proxy, final):.3f}, Kendall {_kendall(proxy, final):.3f} over {len(rows)} trials")
    return 0


def _ranks(x: list[float]):
    import numpy as np

    x = np.asarray(x, dtype=float)
    return np.array([(x < v).sum() + ((x == v).sum() - 1) / 2 for v in x])  # average ranks for ties


def _spearman(a: list[float], b: list[float]) -> float:
    """Spearman's rho: Pearson's correlation of the ranks."""
    import numpy as np

    return float(np.corrcoef(_ranks(a), _ranks(b))[0, 1])


def _kendall(a: list[float], b: list[float]) -> float:
    """Kendall's tau-b."""
    import math

    conc = disc = ta = tb = 0
    for i in range(len(a)):
        for j in range(i + 1, len(a)):
            x, y = a[i] - a[j], b[i] - b[j]
            if x == 0 and y == 0:
                continue
            if x == 0:
                ta += 1
            elif y == 0:
                tb += 1
            elif (x > 0) == (y > 0):
                conc += 1
            else:
                disc += 1
    return (conc - disc) / math.sqrt((conc + disc + ta) * (conc + disc + tb))


if __name__ == "__main__":
    raise SystemExit(main())
