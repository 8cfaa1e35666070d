"""Does distillation help the finetune of a pruned model? `autoprune apply` on one Pareto trial, with and without.

    .venv/bin/python benchmarks/bench_apply.py --name SEARCH [--trial N] --epochs 10
    .venv/bin/python benchmarks/bench_apply.py --epochs 10            # no search yet: a one-trial study is built

Four mAPs on the data's val split (Ultralytics validation at the training image size, the same protocol for every
model): the unpruned model, the pruned model before finetuning, after `--epochs` of finetuning with distillation
and after the same finetuning without it (same seed, same data order; `--seeds N` repeats both with seeds 0..N-1
to show the run-to-run noise). Every finetune is a full `autoprune apply` run; their report.json files hold
everything else (params, GFLOPs, latency, file sizes, training time). Also printed: the per-epoch validation curves,
and how far each student's head outputs are from the teacher's on val images (does distillation make the student
follow the teacher, and does following it buy mAP).

Without `--name`, a study is built directly with the trial schema of `autoprune.search.records`: one trial from
`autoprune.pruner.keep_counts` at the uniform keep ratio whose GFLOPs are closest to `--target` (0.6) of the
model's. With `--name` and no `--trial`, the Pareto trial whose GFLOPs are closest to that share is used.
Nothing is asserted; the numbers are the result.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import time
from pathlib import Path

from _common import header


def uniform_counts_for_share(model, graph, imgsz: int, target: float):
    """(keep ratio, kept counts, GFLOPs) of the uniform keep ratio (step 0.01) whose GFLOPs are closest to `target`
    x the model's."""
    from autoprune.cost import count_gflops
    from autoprune.pruner import keep_counts, prune_to_counts

    base = count_gflops(model, imgsz)
    lo, hi = 0.05, 1.0
    best = None
    for _ in range(12):  # bisection on the ratio; GFLOPs grow with it (in steps, from channel rounding)
        mid = round((lo + hi) / 2, 3)
        counts = keep_counts(graph, mid)
        g = count_gflops(prune_to_counts(model, counts, graph=graph), imgsz)
        if best is None or abs(g / base - target) < abs(best[2] / base - target):
            best = (mid, counts, g)
        if g / base > target:
            hi = mid
        else:
            lo = mid
    return best


def build_study(name: str, model_spec: str | None, data: str | None, imgsz: int, proxy_imgsz: int,
                target: float, criterion: str = "l1") -> int:
    """A study `name` in runs/search/NAME/study.db with one feasible trial at ~`target` of the GFLOPs; its number."""
    import optuna

    from autoprune.channels import analyze
    from autoprune.cost import count_gflops, count_params
    from autoprune.data import load_data_config
    from autoprune.models import load_model
    from autoprune.search import records
    from autoprune.search.storage import make_storage, run_dir_for, storage_url

    loaded = load_model(model_spec)
    data_cfg = load_data_config(data)
    graph = analyze(loaded.model, imgsz=imgsz)
    ratio, counts, gflops = uniform_counts_for_share(loaded.model, graph, imgsz, target)
    from autoprune.pruner import prune_to_counts

    from autoprune.pruner import rank_channels

    ranking = rank_channels(loaded.model, graph, criterion)  # stored in the study, as the search does
    pruned = prune_to_counts(loaded.model, counts, graph=graph, ranking=ranking)
    run_dir_for(name).mkdir(parents=True, exist_ok=True)
    storage = make_storage(storage_url(None, name), heartbeat=None)
    study = optuna.create_study(study_name=name, storage=storage, directions=list(records.DIRECTIONS))
    base = {"gflops": count_gflops(loaded.model, imgsz), "params": count_params(loaded.model)}
    for k, v in {
        records.STUDY_MODEL: loaded.source, records.STUDY_MODEL_FINGERPRINT: loaded.fingerprint, records.STUDY_DATA: str(data_cfg.yaml),
        records.STUDY_IMGSZ: imgsz, records.STUDY_CRITERION: criterion, records.STUDY_ENGINE: "manual",
        records.STUDY_PROXY: {"imgsz": proxy_imgsz}, records.STUDY_BASE: base, records.STUDY_BUDGET_GFLOPS: gflops,
        records.STUDY_RANKING: {g: [o.tolist() for o in orders] for g, orders in ranking.items()},
    }.items():
        study.set_user_attr(k, v)
    trial = optuna.trial.create_trial(
        state=optuna.trial.TrialState.COMPLETE, values=[0.0, gflops, 0.0],
        user_attrs={records.KEEP: {g: ratio for g in counts}, records.KEPT_CHANNELS: counts, records.GFLOPS: gflops,
                    records.PARAMS: count_params(pruned), records.MODEL_FINGERPRINT: loaded.fingerprint, records.IMGSZ: imgsz,
                    records.CRITERION: criterion, records.KIND: "uniform", records.FEASIBLE: True},
    )  # fmt: skip
    study.add_trial(trial)
    print(f"built study {name!r}: uniform keep {ratio} -> {gflops:.3f} GFLOPs at {imgsz} "
          f"({100 * gflops / base['gflops']:.1f}% of {base['gflops']:.3f})")
    return study.trials[-1].number


def pick_trial(name: str, storage: str | None, target: float) -> int:
    """The Pareto trial whose GFLOPs are closest to `target` x the unpruned model's."""
    from autoprune.search import records
    from autoprune.search.storage import open_study

    study = open_study(storage, name)
    recs = [records.TrialRecord.from_trial(t) for t in study.get_trials(deepcopy=False)]
    front = records.pareto_front(recs)
    if not front:
        raise SystemExit(f"study {name!r} has no feasible trial yet")
    base = (study.user_attrs.get(records.STUDY_BASE) or {}).get("gflops") or max(r.gflops for r in front)
    return min(front, key=lambda r: abs(r.gflops / base - target)).number


def _model(m):
    from ultralytics.nn.tasks import load_checkpoint

    return (m if hasattr(m, "model") else load_checkpoint(m)[0]).float().eval()


def rebuilt(name: str, storage: str | None, trial: int, model: str, cost_imgsz: int):
    """(unpruned model, {"before finetuning": the trial's pruned model}) as `autoprune apply` rebuilds them."""
    from autoprune.apply import rebuild, resolve_trial
    from autoprune.models import load_model
    from autoprune.search.storage import open_study

    loaded = load_model(model)
    pruned, _, _ = rebuild(loaded, resolve_trial(open_study(storage, name), trial), imgsz=cost_imgsz)
    return loaded.model, {"before finetuning": pruned}


def teacher_agreement(teacher, students: dict, data_yaml: str, imgsz: int, images: int = 128,
                      extra: dict | None = None) -> dict:
    """How closely each student's head outputs follow the teacher's on the first `images` val images: the two
    head distillation terms at temperature 1 (`autoprune.finetune.head_distillation`), averaged over batches.

    A student distilled well sits closer to the teacher than one finetuned on the labels alone; if it is closer but
    no more accurate, the teacher knows nothing the labels do not already say."""
    import torch
    from ultralytics.cfg import get_cfg
    from ultralytics.data import build_yolo_dataset

    from autoprune.data import load_data_config
    from autoprune.distill import head_distillation, raw_head_outputs

    data = load_data_config(data_yaml)
    udata = data.ultralytics_dict()
    cfg = get_cfg(overrides={"imgsz": imgsz, "task": "detect", "rect": False, "cache": False, "split": "val"})
    ds = build_yolo_dataset(cfg, udata["val"], 16, udata, mode="val", rect=False, stride=32)
    n = min(images, len(ds))
    batches = [torch.stack([ds[j]["img"] for j in range(i, min(n, i + 16))]).float() / 255 for i in range(0, n, 16)]
    teacher = _model(teacher)
    students = {**students, **(extra or {})}
    out = {}
    with torch.no_grad():
        t_raw = [raw_head_outputs(teacher(x)) for x in batches]
        for label, m in students.items():
            student = _model(m)
            terms = [head_distillation(raw_head_outputs(student(x)), t, temperature=1.0) for x, t in zip(batches, t_raw)]
            out[label] = {"cls": sum(float(c) for c, _ in terms) / len(terms),
                          "box": sum(float(b) for _, b in terms) / len(terms)}
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--name", default=None, help="a search's study (default: build a one-trial study)")
    ap.add_argument("--storage", default=None)
    ap.add_argument("--trial", type=int, default=None)
    ap.add_argument("--model", default=None, help="for a built study: the model (default: the demo baseline)")
    ap.add_argument("--data", default=None, help="default: the study's data (the demo's for a built study)")
    ap.add_argument("--target", type=float, default=0.6, help="share of the unpruned GFLOPs to aim at")
    ap.add_argument("--epochs", type=int, default=10)
    ap.add_argument("--imgsz", type=int, default=None, help="training size (default: the study's proxy size)")
    ap.add_argument("--cost-imgsz", type=int, default=640, help="for a built study: the GFLOPs size")
    ap.add_argument("--proxy-imgsz", type=int, default=320, help="for a built study: its proxy (training) size")
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--kd-weight", type=float, default=None)
    ap.add_argument("--kd-temperature", type=float, default=None)
    ap.add_argument("--kd-neck", type=float, default=None)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--seeds", type=int, default=1, help="finetune each variant with seeds 0..N-1 (noise estimate)")
    ap.add_argument("--tag", default=None, help="suffix of the output folders (default: a timestamp)")
    args = ap.parse_args()
    header()

    from autoprune.cli import main as cli

    tag = args.tag or time.strftime("%Y%m%d-%H%M%S")
    name, trial = args.name, args.trial
    if name is None:
        from autoprune.models import load_model

        fp = load_model(args.model).fingerprint
        name = f"bench-apply-{fp[:8]}-{int(100 * args.target)}"
        from autoprune.search.storage import run_dir_for

        if (run_dir_for(name) / "study.db").exists():
            trial = 0 if trial is None else trial
        else:
            trial = build_study(name, args.model, args.data, args.cost_imgsz, args.proxy_imgsz, args.target)
    elif trial is None:
        trial = pick_trial(name, args.storage, args.target)

    common = ["apply", "--study", name, "--trial", str(trial), "--epochs", str(args.epochs), "--batch",
              str(args.batch), "--device", args.device, "--json"]
    for flag, value in (("--storage", args.storage), ("--data", args.data), ("--imgsz", args.imgsz),
                        ("--kd-weight", args.kd_weight), ("--kd-temperature", args.kd_temperature),
                        ("--kd-neck", args.kd_neck)):
        if value is not None:
            common += [flag, str(value)]
    runs: dict[str, list[dict]] = {"distill": [], "plain": []}
    for seed in range(args.seeds):
        for label, flag in (("distill", "--distill"), ("plain", "--no-distill")):
            prefix = "" if name.startswith("bench-") else "bench-"
            out = f"{prefix}{name}-t{trial}-{label}-s{seed}-{tag}"
            argv = common + [flag, "--seed", str(seed), "--name", out, "--exist-ok"]
            t0 = time.perf_counter()
            print(f"autoprune {' '.join(argv)}", flush=True)
            captured = io.StringIO()
            with contextlib.redirect_stdout(captured):  # the JSON summary; Ultralytics is quiet under --json
                code = cli(argv)
            if code != 0:
                raise SystemExit(f"autoprune apply failed with exit code {code}")
            runs[label].append(json.loads(captured.getvalue()))
            print(f"  {time.perf_counter() - t0:.0f} s", flush=True)

    kd, plain = runs["distill"][0], runs["plain"][0]
    print()
    print(f"study {name!r} trial {trial}: {kd['after']['gflops']:.3f} GFLOPs at {kd['cost_imgsz']} "
          f"({100 * kd['after']['gflops'] / kd['before']['gflops']:.1f}% of the unpruned), "
          f"validated at {kd['imgsz']} on {kd['data']}")
    print(f"distillation: {kd['distill']}; {args.epochs} epochs, batch {args.batch}, seeds 0..{args.seeds - 1}")
    print(f"{'model':<48} {'mAP50':>7} {'mAP50-95':>9}")
    rows = [("unpruned (reference)", [kd["before"]]), ("pruned, before finetuning", [kd["pruned"]])]
    rows += [(f"finetuned with distillation, seed {i}", [r["after"]]) for i, r in enumerate(runs["distill"])]
    rows += [(f"finetuned without distillation, seed {i}", [r["after"]]) for i, r in enumerate(runs["plain"])]
    if args.seeds > 1:
        rows += [(f"mean, {label}", [r["after"] for r in runs[key]])
                 for label, key in (("with distillation", "distill"), ("without distillation", "plain"))]
    for label, rs in rows:
        m50 = sum(r["map50"] for r in rs) / len(rs)
        m = sum(r["map50_95"] for r in rs) / len(rs)
        print(f"{label:<48} {m50:>7.4f} {m:>9.4f}")
    print("val mAP50-95 per epoch (the trainer's validation of its EMA at the end of each epoch):")
    for key in ("distill", "plain"):
        for i, r in enumerate(runs[key]):
            curve = [f"{x:.4f}" for x in epoch_curve(r)]
            print(f"  {key:<8} seed {i}: {' '.join(curve)}")
    agree = teacher_agreement(*rebuilt(name, args.storage, trial, kd["model"], kd["cost_imgsz"]),
                              kd["data"], kd["imgsz"], extra={"with distillation": kd["outputs"]["pruned"],
                                                              "without distillation": plain["outputs"]["pruned"]})
    print("distance to the teacher's head outputs on 128 val images (class KL, box-distribution KL; T=1; seed 0):")
    for label, d in agree.items():
        print(f"  {label:<22} class {d['cls']:.4f}  box {d['box']:.4f}")
    print(f"training time (seed 0): with distillation {kd['train']['seconds']:.0f} s, without "
          f"{plain['train']['seconds']:.0f} s ({kd['train']['device']}, amp {kd['train']['amp']})")
    print(f"reports: {kd['run_dir']}/report.md, {plain['run_dir']}/report.md")


def epoch_curve(report: dict) -> list[float]:
    """mAP50-95 per epoch from the trainer's results.csv of an apply run."""
    import csv

    path = Path(report["outputs"]["train_dir"]) / "results.csv"
    if not path.is_file():
        return []
    with open(path, newline="") as f:
        return [float({k.strip(): v for k, v in row.items()}["metrics/mAP50-95(B)"]) for row in csv.DictReader(f)]

if __name__ == "__main__":
    main()
