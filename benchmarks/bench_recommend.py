"""Does the same seed give the same recommendation, and is the recommended trial ever worse than trial 1 (issue 24)?

    python benchmarks/bench_recommend.py                                   # val 12 and the default subset, seeds 0 1 2
    python benchmarks/bench_recommend.py --val-images 12 --seeds 0 1 --repeats 2 --apply-epochs 10

(a) Runs the main command, `autoprune search --budget-gflops 5` on the demo, `--repeats` times for each seed in
`--seeds` and each `--val-images` (0: the command's default, 200 images), each run in its own process and study (under
`--project`), with `--json`. Per run: the recommended trial, its genome (a hash of the trial's kept channels, so two
runs recommending "trial 7" with different genomes do not count as the same), its proxy mAP50-95 and standard
error, the reason the search gave, the extra proxy scores auto-confirm spent and the wall time. Per seed and
val size: whether every repeat recommended the same genome.

(b) With `--apply-epochs E`: for every run whose recommendation is not trial 1 (the one-shot global plan), `autoprune
apply` of the recommended trial and of trial 1 of the same study, `E` epochs, finetune seeds `--finetune-seeds`:
the recommended trial's mAP50-95 against trial 1's, seed by seed. A recommendation of trial 1 is trial 1: nothing to
apply. The goal of issue 24: the recommended trial is never worse than trial 1 by more than one finetune seed's
spread.

Latency is measured (the main command's default) but steers nothing the search selects; the machine may be loaded,
which is part of what is checked. Nothing is asserted; the tables are the result.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import time
from pathlib import Path

from _common import header, load
from _common import run_autoprune as run


def genome_id(study_db: Path, study: str, number: int) -> str:
    """A short hash of the trial's kept channels (what `apply` rebuilds)."""
    import optuna

    from autoprune.search.records import KEPT_CHANNELS

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    s = optuna.load_study(study_name=study, storage=f"sqlite:///{study_db}")
    kept = next(t for t in s.get_trials(deepcopy=False) if t.number == number).user_attrs[KEPT_CHANNELS]
    return hashlib.sha1(json.dumps(kept, sort_keys=True).encode()).hexdigest()[:8]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--val-images", type=int, nargs="+", default=[12, 0],
                   help="0: the command's default subset (200 images)")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--repeats", type=int, default=2, help="runs per seed and val size")
    p.add_argument("--apply-epochs", type=int, default=0, help="0: no apply (part (a) only)")
    p.add_argument("--finetune-seeds", type=int, nargs="+", default=[0, 1])
    p.add_argument("--project", default="runs/bench_recommend")
    p.add_argument("--extra", default="", help="more search flags, e.g. '--trials 12' for a shorter check")
    args = p.parse_args()
    header()
    project = Path(args.project).resolve()
    project.mkdir(parents=True, exist_ok=True)
    cache = project / "results.json"
    rows = json.loads(cache.read_text()) if cache.exists() else {}

    print("(a) the main command, repeated")
    print(f"{'val':>5} {'seed':>4} {'rep':>3}  {'trial':>5} {'genome':>8}  {'proxy mAP':>14}  {'confirm':>7}  "
          f"{'wall s':>6}  reason")
    for val in args.val_images:
        for seed in args.seeds:
            for rep in range(args.repeats):
                name = f"v{val or 'all'}-s{seed}-r{rep}"
                if name not in rows:
                    cmd = ["search", "--budget-gflops", "5", "--seed", str(seed), "--project", str(project),
                           "--name", name, *(["--val-images", str(val)] if val else []), *args.extra.split()]
                    t0 = time.perf_counter()
                    out = run(cmd, project / f"{name}.log")
                    rec = out["recommended"]
                    rows[name] = {"val": val, "seed": seed, "rep": rep, "trial": rec["number"],
                                  "genome": genome_id(project / name / "study.db", out["name"], rec["number"]),
                                  "map": rec["map50_95"], "se": rec.get("map50_95_se"),
                                  "reason": out["recommendation_reason"],
                                  "confirm": (out.get("auto_confirm") or {}).get("evaluations", 0),
                                  "wall_s": round(time.perf_counter() - t0, 1), "load": load(), "study": out["name"]}
                    cache.write_text(json.dumps(rows, indent=1))
                r = rows[name]
                se = f"+-{r['se']:.4f}" if r["se"] is not None else ""
                print(f"{val or 'all':>5} {seed:>4} {rep:>3}  {r['trial']:>5} {r['genome']:>8}  {r['map']:.4f}{se:>8}  "
                      f"{r['confirm']:>7}  {r['wall_s']:>6}  {r['reason']}", flush=True)
    print()
    print("same seed, same recommended genome:")
    for val in args.val_images:
        same = []
        for seed in args.seeds:
            genomes = {rows[f"v{val or 'all'}-s{seed}-r{rep}"]["genome"] for rep in range(args.repeats)}
            same.append(len(genomes) == 1)
        print(f"  val {val or 'all'}: {sum(same)} of {len(same)} seeds")

    if not args.apply_epochs:
        return
    print()
    print(f"(b) apply, {args.apply_epochs} epochs: the recommended trial against trial 1 of the same study")
    print(f"{'run':>14} {'trial':>5} {'ft seed':>7}  {'recommended':>11}  {'trial 1':>8}  {'diff':>8}")
    done = set()
    for name, r in rows.items():
        if r["trial"] == 1 or (r["val"], r["seed"], r["genome"]) in done:
            continue
        done.add((r["val"], r["seed"], r["genome"]))
        for fs in args.finetune_seeds:
            maps = []
            for trial in (r["trial"], 1):
                key = f"apply:{name}:{trial}:{fs}:{args.apply_epochs}"
                if key not in rows:
                    out = run(["apply", "--storage", f"sqlite:///{project / name / 'study.db'}", "--study", r["study"],
                               "--trial", str(trial), "--epochs", str(args.apply_epochs), "--seed", str(fs),
                               "--project", str(project / "apply"), "--name", f"{name}-t{trial}-f{fs}", "--exist-ok"],
                              project / f"{name}-t{trial}-f{fs}.log")
                    rows[key] = out["after"]["map50_95"]
                    cache.write_text(json.dumps(rows, indent=1))
                maps.append(rows[key])
            print(f"{name:>14} {r['trial']:>5} {fs:>7}  {maps[0]:>11.4f}  {maps[1]:>8.4f}  {maps[0] - maps[1]:>+8.4f}",
                  flush=True)
    if not done:
        print("  every run recommended trial 1: nothing to compare")


if __name__ == "__main__":
    os.environ.setdefault("AUTOPRUNE_PROGRESS", "0")
    main()
