"""One search and one apply on a trained model of another task: its own metric before and after (issue 20).

    python -m autoprune demo --train --task segment --epochs 12 --name seg-e12          # the model (once)
    python benchmarks/bench_task.py --model runs/demo/seg-e12/train/weights/best.pt --task segment --budget 50%

Runs the main command's search on the model and the demo data of its task (`autoprune search --budget-gflops
BUDGET`, every other setting the command's default), then `autoprune apply` of the recommended trial for `--epochs`
with distillation from the unpruned model, and with `--oneshot` also of trial 1 (the one-shot global plan the
search starts from) when the recommendation is another trial. Each command runs in its own process with `--json`,
its stderr in a log beside the studies. Printed: the task's metric (mask mAP50-95 for segment, pose mAP50-95 for
pose, OBB mAP50-95, top-1) and the box mAP50-95 of the unpruned model, the pruned model before finetuning and after,
with GFLOPs, parameters and latency, as apply's report.json holds them. Nothing is asserted; the numbers are the
result.
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

from _common import header, load
from _common import run_autoprune as run


def stage_row(label: str, stage: dict) -> str:
    box = stage.get("box_map50_95")
    latency = stage.get("latency_ms")
    return (f"{label:>22}  {stage['map50_95']:>9.4f}  {box if box is not None else float('nan'):>8.4f}  "
            f"{stage['gflops']:>7.3f}  {stage['params'] / 1e6:>7.3f}  "
            f"{latency if latency is not None else float('nan'):>8.2f}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", required=True, help="the trained task model (.pt)")
    p.add_argument("--task", required=True, choices=("detect", "segment", "pose", "obb"),
                   help="its task: the demo data of that task is used")
    p.add_argument("--budget", default="50%", help="--budget-gflops of the search, or a share of the model's GFLOPs "
                                                   "at the search's cost image size (default 50%%)")
    p.add_argument("--imgsz", type=int, default=640, help="the search's --imgsz, where GFLOPs are counted")
    p.add_argument("--epochs", type=int, default=3, help="apply's finetune epochs")
    p.add_argument("--seed", type=int, default=0, help="the search's and the finetune's seed")
    p.add_argument("--oneshot", action="store_true", help="also apply trial 1 when another trial is recommended")
    p.add_argument("--project", default="runs/bench_task")
    p.add_argument("--name", default=None, help="study and run names (default: TASK-BUDGET)")
    p.add_argument("--extra", default="", help="more search flags, e.g. '--trials 12' for a shorter check")
    args = p.parse_args()
    header()

    from autoprune.demo import ensure_demo_data

    data = ensure_demo_data(args.task)
    project = Path(args.project)
    project.mkdir(parents=True, exist_ok=True)
    name = args.name or f"{args.task}-{args.budget.rstrip('%')}"
    budget = args.budget
    if budget.endswith("%"):  # a share of the model's GFLOPs, counted as the search counts them
        from autoprune.cost import count_gflops
        from autoprune.models import load_model

        full = count_gflops(load_model(args.model).model, args.imgsz)
        budget = f"{full * float(budget[:-1]) / 100:.4f}"
        print(f"budget: {args.budget} of {full:.3f} GFLOPs at {args.imgsz} = {budget} GFLOPs")
    t0 = time.time()
    search = run(["search", "--model", args.model, "--data", str(data), "--budget-gflops", budget,
                  "--imgsz", str(args.imgsz), "--seed", str(args.seed), "--project", str(project), "--name", name, "--exist-ok",
                  *args.extra.split()], project / f"{name}-search.log")
    rec = search["recommended"]
    print(f"search: {time.time() - t0:.0f} s ({load()}); {search['evaluated']} trials; recommended trial "
          f"{rec['number']}: proxy score {rec['map50_95']:.4f}, {rec['gflops']:.3f} GFLOPs; "
          f"reason: {search['recommendation_reason']}")
    trials = [rec["number"]] + ([1] if args.oneshot and rec["number"] != 1 else [])
    storage = f"sqlite:///{project / name / 'study.db'}"
    for trial in trials:
        t0 = time.time()
        report = run(["apply", "--storage", storage, "--study", search["name"], "--trial", str(trial),
                      "--epochs", str(args.epochs), "--seed", str(args.seed), "--project", str(project / "apply"),
                      "--name", f"{name}-t{trial}", "--exist-ok"], project / f"{name}-t{trial}-apply.log")
        print()
        print(f"apply trial {trial}, {args.epochs} epochs, distillation: {time.time() - t0:.0f} s ({load()})")
        print(f"{'':>22}  {report['metric']:>9}  {'box mAP':>8}  {'GFLOPs':>7}  {'params M':>7}  {'ms':>8}")
        for label, key in (("unpruned", "before"), ("pruned, not finetuned", "pruned"), ("finetuned", "after")):
            print(stage_row(label, report[key]))
        print(f"report: {project / 'apply' / f'{name}-t{trial}' / 'report.md'}")


if __name__ == "__main__":
    os.environ.setdefault("AUTOPRUNE_PROGRESS", "0")
    main()
