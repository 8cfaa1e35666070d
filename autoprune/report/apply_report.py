"""apply's report: report.md (`format_report`), and the finetune's validation after every epoch, read from the
trainer's results.csv (`epoch_curve`) and drawn as finetune_curve.png (`plot_curve`). `autoprune.apply` measures,
this module only writes what it measured."""

from __future__ import annotations

from pathlib import Path


def epoch_curve(train_dir: Path, *, step: int = 1, first_epoch: int = 1, task: str = "detect") -> list[dict]:
    """The trainer's validation after every epoch (its results.csv): [{epoch, step, map50, map50_95}], epochs
    counted from `first_epoch` (steps continue the count); the task's own metric (`proxy.metric_keys`: mask mAP for
    segment, keypoint mAP for pose, rotated-box mAP for OBB, top-1 and top-5 accuracy for classify)."""
    import csv

    path = Path(train_dir) / "results.csv"
    if not path.exists():
        return []
    with open(path) as f:
        rows = list(csv.DictReader(f, skipinitialspace=True))
    from autoprune.proxy import metric_keys

    key50, key = metric_keys(task)  # the results.csv columns of the task's own metric
    return [{"epoch": first_epoch + i, "step": step, "map50": round(float(r[key50]), 5),
             "map50_95": round(float(r[key]), 5)} for i, r in enumerate(rows)]


def plot_curve(curve: list[dict], path: Path, *, teacher: float, untrained: float | None = None,
               metric: str = "mAP50-95") -> str | None:
    """finetune_curve.png: the student's validation `metric` (map50_95: mAP50-95, a classify model's top-1
    accuracy) after every epoch, the unpruned teacher's level as a line (and the pruned model before finetuning at
    epoch 0 when given). None when there is no curve."""
    if not curve:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.6), dpi=110)
    xs = [p["epoch"] for p in curve]
    ys = [p["map50_95"] for p in curve]
    if untrained is not None:
        xs, ys = [0, *xs], [untrained, *ys]
    ax.plot(xs, ys, marker="o", label="pruned student (trainer's validation, EMA)")
    ax.axhline(teacher, color="tab:gray", linestyle="--", label=f"unpruned teacher ({teacher:.4f})")
    for prev, p in zip(curve, curve[1:]):
        if p["step"] != prev["step"]:
            ax.axvline(prev["epoch"] + 0.5, color="tab:orange", alpha=0.4, linewidth=1)
    ax.set_xlabel("finetune epoch")
    ax.set_ylabel(f"{metric} (val)")
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return str(path)


def format_report(r: dict) -> str:
    """report.md: the before/after table and how it was measured."""
    b, p, a = r["before"], r["pruned"], r["after"]

    def mb(n):
        return f"{n / 1e6:.2f} MB"

    def pct(x, y):
        return f"{100 * x / y:.1f}%" if y else "-"

    # Each figure's image size: mAP at the finetune and validation size, GFLOPs and latency at the budget's.
    val_px, cost_px = f"{r['imgsz']} px", f"{r['cost_imgsz']} px"
    from autoprune.proxy import figure_names

    task = r.get("task") or "detect"
    # the task's own metric by name ('mask mAP50', 'OBB mAP50-95', 'top-1 accuracy'); a detector's plain 'mAP50'
    name50, name = figure_names(task)
    rows = [
        (name50, val_px, f"{b['map50']:.4f}", f"{p['map50']:.4f}", f"{a['map50']:.4f}",
         pct(a["map50"], b["map50"])),
        (name, val_px, f"{b['map50_95']:.4f}", f"{p['map50_95']:.4f}", f"{a['map50_95']:.4f}",
         pct(a["map50_95"], b["map50_95"])),
        *([("box mAP50-95", val_px, f"{b['box_map50_95']:.4f}", f"{p['box_map50_95']:.4f}",
            f"{a['box_map50_95']:.4f}", pct(a["box_map50_95"], b["box_map50_95"]))] if "box_map50_95" in a else []),
        ("params", "", f"{b['params']:,}", f"{p['params']:,}", f"{a['params']:,}", pct(a["params"], b["params"])),
        ("GFLOPs", cost_px, f"{b['gflops']:.3f}", f"{p['gflops']:.3f}", f"{a['gflops']:.3f}",
         pct(a["gflops"], b["gflops"])),
        ("latency (ms)", cost_px, f"{b['latency_ms']:.2f}", f"{p['latency_ms']:.2f}", f"{a['latency_ms']:.2f}",
         pct(a["latency_ms"], b["latency_ms"])),
        ("file size", "", mb(b["file_bytes"]), mb(p["file_bytes"]), mb(a["file_bytes"]),
         pct(a["file_bytes"], b["file_bytes"])),
    ]
    head = ("", "image size", "unpruned", "pruned, not finetuned", "pruned + finetuned", "after / before")
    lines = [f"# autoprune apply: study {r.get('study')!r}, trial {r['trial']}", "",
             "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    d = r["distill"]
    how = (f"distilled from the unpruned model (head weight {d['weight']:g}, temperature {d['temperature']:g}, "
           f"neck weight {d['neck_weight']:g})") if d else "without distillation"
    t = r["train"]
    tr = r["trial_record"]
    proxy = (f"The search's proxy scored this trial {name} {tr['map50_95']:.4f} (proxy protocol: short "
             "finetune, val subset).") if tr.get("map50_95") is not None else ""
    lines += [
        "",
        f"- model: `{r['model']}`; data: `{r['data']}`",
        f"- finetune: {r['epochs']} epochs at {r['imgsz']} px ({r.get('imgsz_from') or 'apply --imgsz'}), batch "
        f"{t['batch']}, {how}; {t['seconds']:.0f} s on "
        f"{t['device']} (AMP {'on' if t['amp'] else 'off'})",
        *(["- pruned, then the convs that lost inputs refit by least squares on the search's calibration images "
            "(`--reconstruct`), then finetuned"] if r.get("reconstructed") else []),
        f"- {'accuracy' if task == 'classify' else 'mAP'}: Ultralytics validation of each checkpoint on the val split at {r['imgsz']} px (same protocol for all)",
        f"- GFLOPs at {r['cost_imgsz']} px, batch 1; latency at {r['cost_imgsz']} px, batch "
        f"{a.get('latency_batch', 1)}, measured in {a.get('latency_backend', 'torch')} "
        f"{a.get('latency_precision', '')} on {a['latency_device']}"
        + (f", {a['latency_threads']} CPU thread{'s' if a['latency_threads'] != 1 else ''}"
           if a.get("latency_threads") and "cuda" not in str(t.get("device")) else "")
        + ("; the unpruned and the pruned model timed in turn over "
           f"{a['latency_rounds']} rounds (`autoprune.cost.measure_latencies`, median of the rounds' medians)"
           if a.get("latency_rounds") else " (`autoprune.cost.measure_latency`, median)"),
        "- file size: each model saved the same way (`autoprune.models.save_checkpoint`: FP16, no optimizer)",
    ]
    if proxy:
        lines.append(f"- {proxy}")
    sched = t.get("schedule") or {}
    if sched:
        scale = sched.get("lr_scale") or 1.0
        lines.append(f"- schedule: {sched.get('name')} ({sched.get('optimizer')}, lr0 {sched.get('lr0'):g}"
                     + (f" ({scale:g} x the fitted rate, --lr-scale)" if scale != 1.0 else "") + ", "
                     f"{'cosine' if sched.get('cos_lr') else 'linear'} decay to lrf {sched.get('lrf'):g}, warm-up "
                     f"{sched.get('warmup_epochs'):g} epochs"
                     + (f" (biases from {sched['warmup_bias_lr']:g})" if sched.get("warmup_bias_lr") else "")
                     + f", {sched.get('ema')})"
                     + (f"; pruned in {len(t['steps'])} steps, finetuned after each "
                        f"({', '.join(str(x['epochs']) for x in t['steps'])} epochs)" if len(t.get("steps", [])) > 1
                        else ""))
    features = ((t.get("steps") or [{}])[-1]).get("features")
    if features and d:
        lines.append(f"- channel-matched feature distillation (weight {d.get('feature_weight'):g}) at layers "
                     f"{features['levels']} (weights {features['weights']})")
    if r.get("curve"):
        last = r["curve"][-1]
        lines += ["", f"{name} after every epoch (the trainer's validation; the dashed line is the unpruned "
                      f"model's {b['map50_95']:.4f}; last epoch {last['map50_95']:.4f}):", "",
                  "![finetune curve](finetune_curve.png)"]
    lines.append("")
    return "\n".join(lines)


__all__ = ["epoch_curve", "format_report", "plot_curve"]
