"""One-shot pruning: prune a model once, by a strategy and a criterion, to a keep share, a GFLOPs or a latency target.

What `autoprune prune` does, as a library: `prune_once(loaded, settings, imgsz=...)` counts the unpruned model,
resolves and checks the target against the smallest model `round_to`/`min_channels` allow, reads the calibration
batches when the criterion, the reconstruction or the validation needs data (the demo data when none is given),
ranks the channels, plans the kept channel counts (`strategies.plan_counts`, or `strategies.plan_within` bisecting
on whole-model GFLOPs or on the latency model `latency_model.LatencyTable`), builds the pruned model (`candidate.build`,
refit by least squares with `reconstruct`), recalibrates its BatchNorm statistics on the calibration batches,
scores it with the proxy's validation (no finetune) and saves it as a stock Ultralytics checkpoint. With `depth`,
the depth units (`autoprune.depth`) also lose elements, after the widths: the residual ones those whose removal
changes their block's output least on the calibration batches (`depth.rank_elements`; the last ones without data),
and a GFLOPs target is met by the widths and the depth together. With `swap`, the chosen k x k Convs then become
cheaper operators (`autoprune.swap`), fitted to the pruned convs' output on the calibration batches, and the summary
reports each swap's relative output error before finetuning; a GFLOPs or latency target counts them too. It returns a
`OneShot`: the summary `autoprune prune --json` prints, the pruned model, and where it was saved.

Example:
    >>> from autoprune.models import load_model
    >>> from autoprune.oneshot import OneShotSettings, prune_once
    >>> done = prune_once(load_model("yolov8n.yaml"), OneShotSettings(criterion="l1", keep=0.5, val=False), imgsz=320)
    >>> done.summary["after"]["gflops"], done.out
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from autoprune.errors import UserError


@dataclass(frozen=True)
class OneShotSettings:
    """How to prune, with the defaults of `autoprune prune`. Exactly one of `keep` (a share in (0, 1], or, uniform
    only, a mapping {group id: ratio}), `target_gflops` (a number of GFLOPs, or a share of the unpruned model such
    as "50%") and `target_latency_ms` (with the `latency_*` setup of the latency model) is the target."""

    strategy: str = "global"
    criterion: str = "hessian"
    keep: float | dict[str, float] | None = None
    target_gflops: str | None = None
    target_latency_ms: float | None = None
    latency_backend: str = "onnxruntime"
    latency_batch: int = 1
    latency_precision: str | None = None
    latency_calibration: int = 0  # end-to-end timings of the plan at the target that calibrate the latency model
    round_to: int = 8
    min_channels: int = 8
    reconstruct: bool = False
    val: bool | None = None  # None: validate unless the model's classes are not the data's
    val_images: int = 200
    calib_batches: int = 8
    batch: int = 8
    calib_imgsz: int = 320
    ridge: float = 1e-3
    max_samples: int = 8192
    seed: int = 0
    device: str = "auto"
    depth: str | None = None  # `--depth`: a share of every depth unit's elements kept, or UNIT=K[,UNIT=K]
    swap: tuple[str, ...] = ()  # `--swap KIND[:SELECTION]` values (`swap.parse_spec`)

    @property
    def wants_data(self) -> bool:
        """Whether the ranking, the reconstruction or the validation reads calibration data."""
        from autoprune.importance import DATA_CRITERIA

        return self.criterion in DATA_CRITERIA or self.reconstruct or self.val is not False


@dataclass
class OneShot:
    """What `prune_once` did: the summary (JSON-serialisable, its numbers rounded), the pruned model, the checkpoint
    it saved, the run folder it made (None with an explicit `out`), the data it read (None when it read none), and
    the unrounded GFLOPs before and after and seconds taken (loading the model excluded, validation too)."""

    summary: dict
    model: object
    out: Path
    run_dir: Path | None
    data: object | None
    gflops_before: float
    gflops_after: float
    seconds: float


def parse_gflops(text: str, full: float) -> float:
    """`--target-gflops`: a number of GFLOPs, or a percentage of `full` ("50%")."""
    t = text.strip()
    try:
        value = float(t[:-1]) / 100 * full if t.endswith("%") else float(t)
    except ValueError:
        raise UserError(
            f"--target-gflops must be a number of GFLOPs or a percentage such as 50%, got {text!r}") from None
    if not value > 0 or math.isinf(value):
        raise UserError(f"--target-gflops must be positive, got {text!r}")
    return value


def prune_once(loaded, s: OneShotSettings, *, imgsz: int, data=None, out: str | Path | None = None,
               run_dir: str | Path | None = None, warn: Callable[[str], None] | None = None) -> OneShot:
    """Prune `loaded` (a `models.LoadedModel`) once as `s` says, costs counted at `imgsz`; save the checkpoint to
    `out`, or else as pruned.pt in the run folder `run_dir` (a checked `runs.run_dir_path`; default: the next free
    runs/prune/expN), the folder made only once the target is known good. `data` is the
    calibration/validation data (a `data.DataConfig`; default: the demo data, read only when `s.wants_data`).
    `warn` receives each warning (also listed in the summary's "warnings") as it happens."""
    from autoprune.candidate import build, rank
    from autoprune.channels import analyze
    from autoprune.cost import count_gflops, count_params
    from autoprune.devices import resolve_device
    from autoprune.importance import DATA_CRITERIA
    from autoprune.models import save_checkpoint
    from autoprune.pruner import channel_scores, keep_counts, score_context
    from autoprune.strategies import check_keep_target, plan_counts

    keep = s.keep
    demo = data is None
    _task_note(loaded.model, s, demo)  # a label-reading step the model's task cannot take: one error line, first
    t0 = time.perf_counter()
    graph = analyze(loaded.model, imgsz=imgsz)
    full_gflops = count_gflops(loaded.model, imgsz)
    depth = _depth_plan(loaded.model, s)
    swaps = _swap_plan(loaded.model, s)
    target_gflops = None
    warnings = []
    if s.target_gflops is not None:
        target_gflops = parse_gflops(s.target_gflops, full_gflops)
        _check_reachable(loaded.model, graph, target_gflops, full_gflops, s)
        if target_gflops >= full_gflops:
            warnings.append(f"--target-gflops {s.target_gflops} ({target_gflops:.4g} GFLOPs) is not below the "
                            f"unpruned model's {full_gflops:.4g} GFLOPs at --imgsz {imgsz}: nothing to prune, the "
                            "checkpoint is an unpruned copy")
            if warn is not None:
                warn(warnings[-1])
    elif s.target_latency_ms is not None:
        pass  # checked against the latency model once the channel ranking is known (`_plan_within_latency`)
    elif s.strategy == "global":
        check_keep_target(graph, keep, round_to=s.round_to, min_channels=s.min_channels)
    else:
        keep_counts(graph, keep, round_to=s.round_to, min_channels=s.min_channels)  # validates the ratios

    if s.wants_data and data is None:
        from autoprune.data import load_data_config

        data = load_data_config(None)  # the demo data (generated on first use), once the target is known good
    val_note = _check_data(data, loaded.model, s, demo) if data is not None else None
    do_val = data is not None and s.val is not False and val_note is None
    batches, evaluator = (None, None) if data is None else _calibration(data, s, do_val, loaded.task)
    data_batches = batches if s.criterion in DATA_CRITERIA else None
    ctx = score_context(loaded.model, graph, s.criterion, batches=data_batches, seed=s.seed,
                        device=resolve_device(s.device) if data_batches else None,
                        kpt_oks_sigmas=getattr(data, "kpt_oks_sigmas", None))
    scores = channel_scores(loaded.model, graph, s.criterion, ctx) if s.strategy == "global" else None
    orders = None  # which elements a depth plan removes: measured on the calibration batches when there are some
    if depth and batches is not None:
        from autoprune.depth import rank_elements

        orders = rank_elements(loaded.model, batches)
    ranking = rank(loaded.model, graph, s.criterion, ctx=ctx)
    latency = None
    if s.target_latency_ms is not None:
        def architecture(counts):  # what a plan builds, for timing: the swaps fitted to the weights alone
            return build(loaded.model, counts, graph=graph, ranking={**ranking, **(orders or {})}).model

        plan, latency = _plan_within_latency(loaded.model, graph, imgsz, scores, s, depth, orders, swaps,
                                             architecture)
        if latency["after_ms"] > s.target_latency_ms:
            warnings.append(f"the pruned model measured {latency['after_ms']:.2f} ms end to end, over the target "
                            f"{s.target_latency_ms:g} ms (the latency model predicted {latency['predicted_ms']:.2f}): "
                            "timing noise, or a latency model off here (--latency-calibration N times the plan to "
                            "correct it); time it with `autoprune cost`, and prune to a lower target if it holds")
            if warn is not None:
                warn(warnings[-1])
        if latency.get("load_note"):
            warnings.append(latency["load_note"])
            if warn is not None:
                warn(warnings[-1])
    elif target_gflops is None:
        plan = plan_counts(graph, s.strategy, keep=keep, scores=scores, round_to=s.round_to,
                           min_channels=s.min_channels)
    else:
        plan = _plan_within(loaded.model, graph, target_gflops, full_gflops, scores, s)
    out, run_dir = _out_path(out, run_dir)
    recon = None
    if s.reconstruct:
        recon = _reconstruct(loaded.model, plan.counts, graph, ranking, batches, s)
        pruned = recon.pop("model")
    else:
        pruned = build(loaded.model, plan.counts, graph=graph, ranking=ranking).model
    depth_summary = None
    if depth:
        from autoprune.depth import apply_depth, find_units

        pruned = apply_depth(pruned, depth, orders, inplace=True)
        depth_summary = {"kept": depth, "elements": {u.id: u.n for u in find_units(loaded.model)},
                         "order": "measured" if orders is not None else "last first",
                         "orders": {k.removeprefix("depth:"): v for k, v in (orders or {}).items()}}
    swap_summary = None
    if swaps:
        from autoprune.swap import swap_convs

        pruned, swap_report = swap_convs(pruned, swaps, batches, inplace=True, max_samples=s.max_samples, seed=s.seed)
        swap_summary = {"fit": "calibration output" if batches is not None else "weights", "convs": swap_report}
    if batches is not None:
        _recalibrate(pruned, batches, s)
    seconds = time.perf_counter() - t0
    val = _validate(evaluator, pruned, data, s) if evaluator is not None else None
    calibration = None if data is None else {
        "data": str(data.yaml), "demo": demo, "batches": s.calib_batches, "batch": s.batch,
        "imgsz": s.calib_imgsz, "criterion": s.criterion in DATA_CRITERIA, "bn_recalibrated": True,
    }

    meta = {
        "source": loaded.source,
        "source_fingerprint": loaded.fingerprint,
        "criterion": s.criterion,
        "strategy": s.strategy,
        "keep": keep if not isinstance(keep, dict) else dict(keep),
        "target_gflops": target_gflops,
        "threshold": plan.threshold,
        "uniform_ratio": plan.ratio,
        "kept_channels": plan.counts,
        "depth": depth_summary,
        "swaps": swap_summary,
        "round_to": s.round_to,
        "min_channels": s.min_channels,
        "reconstructed": bool(s.reconstruct),
        "imgsz": imgsz,
        "gflops": {"before": round(full_gflops, 4), "after": round(count_gflops(pruned, imgsz), 4)},
        "bn_recalibrated": batches is not None,
        "calibration_data": None if data is None else str(data.yaml),
        "val": None if val is None else {k: v for k, v in val.items() if k != "seconds"},
    }
    save_checkpoint(pruned, out, base_ckpt=loaded.ckpt, meta=meta, derived=True)

    before = {"gflops": full_gflops, "params": count_params(loaded.model)}
    after = {"gflops": count_gflops(pruned, imgsz), "params": count_params(pruned)}
    result = {
        "model": loaded.source,
        "out": str(out),
        "imgsz": imgsz,
        "criterion": s.criterion,
        "strategy": s.strategy,
        "target": ({"latency_ms": s.target_latency_ms} if latency is not None else plan.target
                   if target_gflops is None else {"gflops": round(target_gflops, 4)}),
        "uniform_ratio": plan.ratio,
        "threshold": plan.threshold,
        "conv_gflops": {"before": round(graph.conv_gflops(), 4), "after": round(plan.gflops, 4)},
        "keep_share": round(plan.keep_share, 4),
        "before": {"gflops": round(before["gflops"], 4), "params": before["params"]},
        "after": {"gflops": round(after["gflops"], 4), "params": after["params"]},
        "gflops_ratio": round(after["gflops"] / before["gflops"], 4),
        "params_ratio": round(after["params"] / before["params"], 4),
        "seconds": round(seconds, 3),
        "kept_channels": plan.counts,
        "depth": depth_summary,
        "swaps": swap_summary,
        "calibration": calibration,
        "bn_recalibrated": batches is not None,
        "val": val,
        "map50": None if val is None else val["map50"],
        "map50_95": None if val is None else val["map50_95"],
        "needs_finetune": True,
    }
    if val_note:
        result["val_note"] = val_note
    if recon is not None:
        result["reconstruction"] = recon
    if latency is not None:
        result["latency"] = latency
    note = None if latency is not None else _reached_note(graph, plan, keep, target_gflops, after["gflops"],
                                                           full_gflops, s)
    if note:
        result["note"] = note
    if warnings:
        result["warnings"] = warnings
    return OneShot(summary=result, model=pruned, out=out, run_dir=run_dir, data=data,
                   gflops_before=before["gflops"], gflops_after=after["gflops"], seconds=seconds)


def _out_path(out: str | Path | None, run_dir: str | Path | None) -> tuple[Path, Path | None]:
    """(checkpoint path, run folder or None): `out`, or pruned.pt in `run_dir` (default: a new runs/prune/expN)."""
    if out is not None:
        return Path(out), None
    from autoprune.runs import run_dir_path

    run_dir = Path(run_dir) if run_dir is not None else run_dir_path("prune")
    run_dir.mkdir(parents=True, exist_ok=True)
    return run_dir / "pruned.pt", run_dir


# ------------------------------------------------------------------------------------------------- the targets
def _depth_plan(model, s: OneShotSettings) -> dict[str, int]:
    """{depth unit id: elements kept} of `s.depth` (`depth.parse_spec`), {} without it."""
    if s.depth is None:
        return {}
    from autoprune.depth import find_units, parse_spec

    return parse_spec(s.depth, find_units(model))


def _swap_plan(model, s: OneShotSettings) -> dict[str, str]:
    """{conv id: swap kind} of `s.swap` (`swap.parse_spec`), {} without it."""
    if not s.swap:
        return {}
    from autoprune.swap import parse_spec

    return parse_spec(s.swap, model)


def _full_gflops(model, graph, counts: dict[str, int], imgsz: int, depth: dict[str, int] | None = None,
                 swaps: dict[str, str] | None = None) -> float:
    """What `count_gflops` says of `model` pruned to `counts`, then to the `depth` plan, then swapped (which
    channels or elements go does not change the count)."""
    from autoprune.cost import count_gflops
    from autoprune.depth import apply_depth
    from autoprune.pruner import prune_to_counts
    from autoprune.swap import swap_convs

    pruned = apply_depth(prune_to_counts(model, counts, graph=graph), depth or {}, inplace=True)
    if swaps:
        pruned = swap_convs(pruned, swaps, inplace=True)[0]
    return count_gflops(pruned, imgsz)


def _check_reachable(model, graph, target: float, full: float, s: OneShotSettings) -> None:
    """A `UserError` naming the smallest model `min_channels` and `round_to` allow when `target` is below it."""
    from autoprune.strategies import floor_counts

    lowest = _full_gflops(model, graph, floor_counts(graph, round_to=s.round_to, min_channels=s.min_channels),
                          graph.imgsz, _depth_plan(model, s), _swap_plan(model, s))
    if target < lowest:
        raise UserError(
            f"the GFLOPs target {target:.4g} is below the minimum {lowest:.4g} GFLOPs ({100 * lowest / full:.1f}% of "
            f"{full:.4g}) that --min-channels {s.min_channels} and --round-to {s.round_to} allow at --imgsz "
            f"{graph.imgsz}"
        )


def _plan_within(model, graph, target: float, full: float, scores, s: OneShotSettings):
    """The largest plan of the strategy whose whole-model GFLOPs are at most `target` (`strategies.plan_within`, as
    a search finds its one-shot trial), built and counted for each step."""
    from autoprune.strategies import plan_within

    depth, swaps = _depth_plan(model, s), _swap_plan(model, s)
    if depth or swaps:  # the widths start from the model the depth plan and the swaps leave
        full = _full_gflops(model, graph, {}, graph.imgsz, depth, swaps)
    plan, fits = plan_within(graph, s.strategy, target,
                             lambda c: _full_gflops(model, graph, c, graph.imgsz, depth, swaps),
                             full_cost=full, scores=scores, round_to=s.round_to, min_channels=s.min_channels)
    if not fits:  # _check_reachable let the target through: the floor plan itself fits
        raise RuntimeError(f"no {s.strategy} plan within {target} GFLOPs although the floor fits")
    return plan


def _plan_within_latency(model, graph, imgsz: int, scores, s: OneShotSettings, depth: dict | None,
                         orders: dict | None, swaps: dict | None, architecture):
    """(plan, latency summary): the largest plan of the strategy whose predicted latency, with the `depth` plan
    ({unit id: kept}, elements chosen by `orders`) and the `swaps` ({conv id: kind}) applied too, is at most the
    target (`strategies.plan_within` bisecting the widths on the latency model, `latency_model.LatencyTable`, the
    depth and the swaps fixed). With `s.latency_calibration` N > 0 the latency model is first calibrated by timing
    the plan at the target end to end N times (`latency_calibration.calibrate`; `architecture`: kept counts -> the
    pruned model). The final plan is timed end to end: the summary's `after_ms` is measured, `predicted_ms` the
    (calibrated) table's figure, `before_ms` the unpruned model's as the table measured it."""
    import autoprune.cost
    from autoprune.depth import depth_key
    from autoprune.latency_calibration import calibrate
    from autoprune.latency_model import LatencyTable
    from autoprune.runs import RUNS_ROOT
    from autoprune.strategies import floor_counts, plan_within
    from autoprune.swap import KINDS, swap_key

    target = s.target_latency_ms
    swaps = swaps or {}
    table = LatencyTable(model, graph, imgsz=imgsz, batch=s.latency_batch, device=s.device,
                         backend=s.latency_backend, precision=s.latency_precision,
                         path=RUNS_ROOT / "latency_lut.json", round_to=s.round_to,
                         min_channels=s.min_channels, swaps={sid: [kind] for sid, kind in swaps.items()}).build()
    table.element_orders = dict(orders or {})
    kept = {depth_key(u): k for u, k in (depth or {}).items()}
    kept.update({swap_key(sid): KINDS.index(kind) for sid, kind in swaps.items()})

    def predict(counts=None):
        return table.predict({**(counts or {}), **kept})

    def lowest():
        return predict(floor_counts(graph, round_to=s.round_to, min_channels=s.min_channels))

    def check(how: str):
        if target < lowest():
            raise UserError(
                f"--target-latency-ms {target:g} is below the smallest latency reachable: {lowest():.3f} ms "
                f"({s.latency_backend}, at --imgsz {imgsz}, {how}; the unpruned model "
                f"{table.predict(calibrated=False):.3f} ms) with --min-channels {s.min_channels} and --round-to "
                f"{s.round_to}")

    def plan_now():
        plan, fits = plan_within(graph, s.strategy, target, predict, full_cost=predict(), scores=scores,
                                 round_to=s.round_to, min_channels=s.min_channels)
        if not fits:
            raise RuntimeError(f"no {s.strategy} plan within {target} ms although the floor fits")
        return plan

    timed = {}  # {plan: ms} of the plans timed end to end

    def measure(counts):
        key = tuple(sorted(counts.items()))
        if key not in timed:
            timed[key] = autoprune.cost.measure_latency(
                architecture(counts), imgsz=imgsz, device=s.device, cache=False, backend=s.latency_backend,
                batch=s.latency_batch, precision=s.latency_precision).median_ms
        return timed[key]

    check("predicted by the latency model")
    cal = None
    if s.latency_calibration:
        cal = calibrate(table, target, lambda: {**plan_now().counts, **kept}, measure, steps=s.latency_calibration)
        check("predicted by the latency model calibrated by end-to-end timings")
    plan = plan_now()  # timed already when the last factor did not move it
    return plan, {"target_ms": target, "before_ms": round(table.predict(calibrated=False), 4),
                  "after_ms": round(measure({**plan.counts, **kept}), 4), "measured": True,
                  "predicted_ms": round(predict(plan.counts), 4), "calibration": cal and cal.to_dict(),
                  "setup": table.setup(), "entries_under_load": table.entries_under_load,
                  "load_note": table.load_note()}


def _reached_note(graph, plan, keep, target_gflops, gflops, full_gflops, s: OneShotSettings) -> str | None:
    """One sentence saying what was reached and why, when it is not what was asked: channel counts move in steps of
    --round-to and never go below the --min-channels floor. None when the result is within 2% of the target."""
    from autoprune.strategies import floor_counts

    floors = floor_counts(graph, round_to=s.round_to, min_channels=s.min_channels)
    at_floor = sum(1 for g in graph.groups if plan.counts[g.id] == floors[g.id] < g.size)
    why = f"kept channel counts are multiples of --round-to {s.round_to}"
    if at_floor:
        why += (f", and {at_floor} of {len(graph.groups)} groups are at the floor of --min-channels "
                f"{s.min_channels} (rounded up to --round-to)")
    if target_gflops is not None:
        if gflops >= 0.98 * target_gflops or target_gflops >= full_gflops:
            return None
        return (f"reached {gflops:.4g} GFLOPs ({100 * gflops / full_gflops:.1f}% of {full_gflops:.4g}), under the "
                f"target {target_gflops:.4g} ({100 * target_gflops / full_gflops:.1f}%): the largest {s.strategy} "
                f"plan within it, as {why}")
    if isinstance(keep, dict) or abs(plan.keep_share - keep) <= 0.02:
        return None
    return (f"kept {100 * plan.keep_share:.1f}% of the prunable channels for --keep {keep:g}: {why}")


# ------------------------------------------------------------------------------------------------------ the data
def _task_note(model, s: OneShotSettings, demo: bool = True) -> str | None:
    """For a model of another task than detection, before any data is read: a `UserError` where the ranking or an
    explicit --val needs labels that cannot be had (a task whose labels autoprune does not read yet, or a segment,
    pose or OBB model on the demo data, which has detect labels), else the note saying why no mAP is given (None
    with --no-val, a detector, or a model of a `LABELLED_TASKS` task given --data: `_check_data` checks its labels).
    The tasks whose labels prune reads are `models.LABELLED_TASKS` (a data criterion's loss, --val); the
    reconstruction and the BatchNorm recalibration need images only, so every task prunes with a criterion that
    needs no data."""
    from autoprune.importance import DATA_CRITERIA
    from autoprune.models import LABELLED_TASKS, model_task

    task = model_task(model)
    if task == "detect" or (task in LABELLED_TASKS and not demo):
        return None
    if task in LABELLED_TASKS:  # the demo data: detect labels, no masks, keypoints, angles or class folders
        labels = "a classification dataset folder" if task == "classify" else f"{task} labels"
        rank = f"and this is a {task} model: pass --data with {labels}, or a criterion that needs no data"
        val = f"--val scores a {task} model on {labels}: pass --data with them (or --no-val)"
        note = f"no mAP: a {task} model needs --data with {labels} for one"
    else:
        rank = (f"which autoprune reads for detect, segment, pose and OBB models only so far, and this is a {task} "
                "model: pass a criterion that needs no data")
        val = (f"--val scores detect, segment, pose and OBB models only so far, and this is a {task} model (pass "
               "--no-val)")
        note = f"no mAP: autoprune validates detect, segment, pose and OBB models only so far; this is a {task} model"
    if s.criterion in DATA_CRITERIA:
        raise UserError(f"--criterion {s.criterion} takes gradients of the loss on labelled data, {rank} (l1, l2, "
                        "lamp, bn_scale, fpgm, random)")
    if s.val:
        raise UserError(val)
    return None if s.val is False else note


def _check_data(data, model, s: OneShotSettings, demo: bool) -> str | None:
    """Whether `data` fits the model, before any work: a `UserError` where the ranking's labels or an explicit --val
    cannot use it; the note that says why the mAP is skipped where only the default --val cannot."""
    from autoprune.data import check_task
    from autoprune.importance import DATA_CRITERIA
    from autoprune.models import head_classes, keypoint_shape, model_task

    if _task_note(model, s, demo) is not None:
        return _task_note(model, s, demo)
    if not demo:
        check_task(data, model_task(model), keypoint_shape(model))  # e.g. a segment model needs polygon labels
    nc = head_classes(model)
    what = "the demo data" if demo else data.yaml.name
    if data.nc > nc and (s.criterion in DATA_CRITERIA or s.reconstruct):
        raise UserError(f"{what} has {data.nc} classes but the model predicts {nc}; "
                        "use data with the model's classes (--data)")
    if s.val is not False and data.nc != nc:
        why = f"the model predicts {nc} classes and {what} has {data.nc}"
        if s.val:
            raise UserError(f"--val needs data with the model's classes: {why} (pass --data, or --no-val)")
        return f"no mAP: {why} (pass --data with the model's classes for one)"
    return None


def _calibration(data, s: OneShotSettings, val: bool, task: str = "detect") -> tuple[list[dict], object | None]:
    """The fixed calibration batches (seeded subset of the train split, letterboxed: the proxy's), and with `val`
    the proxy evaluator that drew them and scores the val split (`ProxyEvaluator`, no finetune steps)."""
    train_images = s.calib_batches * s.batch
    if not val:
        from autoprune.batches import calibration_batches

        return calibration_batches(data, imgsz=s.calib_imgsz, calib_batches=s.calib_batches, batch=s.batch,
                                   seed=s.seed, train_images=train_images, task=task), None
    from autoprune.proxy import ProxyEvaluator, ProxySettings

    ev = ProxyEvaluator(data, ProxySettings(steps=0, imgsz=s.calib_imgsz, calib_batches=s.calib_batches,
                                            batch=s.batch, seed=s.seed, device=s.device,
                                            val_images=s.val_images, train_images=train_images), task=task)
    return ev.calibration_batches(), ev


def _recalibrate(model, batches: list[dict], s: OneShotSettings) -> None:
    """Recalibrate `model`'s BatchNorm statistics on the calibration batches (in float32 on the device), in place."""
    from autoprune.batchnorm import recalibrate_bn
    from autoprune.devices import resolve_device

    device = resolve_device(s.device)
    recalibrate_bn(model.to(device), batches, device=device)
    model.cpu()


def _validate(evaluator, model, data, s: OneShotSettings) -> dict:
    """The proxy's validation of a copy of `model` as saved (already recalibrated; no finetune)."""
    import copy

    r = evaluator.evaluate(copy.deepcopy(model), recalibrate=False, steps=0)
    return {"metric": r.metric, "map50": round(r.map50, 4), "map50_95": round(r.map50_95, 4),
            "map50_95_se": None if r.map50_95_se is None else round(r.map50_95_se, 4),
            "images": r.val_images, "imgsz": s.calib_imgsz, "data": str(data.yaml),
            "seconds": round(r.seconds, 3)}


def _reconstruct(model, counts, graph, ranking, batches, s: OneShotSettings) -> dict:
    """The candidate keeping `counts`, refit by least squares on `batches` (`candidate.build`) on the device, with
    the relative errors of the Detect inputs and the head outputs before and after the refit."""
    import torch

    from autoprune.candidate import build
    from autoprune.devices import resolve_device
    from autoprune.pruner import apply_indices
    from autoprune.reconstruct import feature_errors

    device = resolve_device(s.device)
    if device.type != "cpu":
        model = model.to(device)
    c = build(model, counts, graph=graph, ranking=ranking, batches=batches, ridge=s.ridge,
              max_samples=s.max_samples, seed=s.seed)
    before = feature_errors(model, apply_indices(model, graph, c.indices), graph, c.indices, batches)
    after = feature_errors(model, c.model, graph, c.indices, batches)
    out = {
        **c.reconstruction.summary(),
        "detect_input_mse_before": round(before["detect_inputs_mean"], 6),
        "detect_input_mse_after": round(after["detect_inputs_mean"], 6),
        "head_output_mse_before": round(before["head_outputs"], 6),
        "head_output_mse_after": round(after["head_outputs"], 6),
        "model": c.model.cpu() if device.type != "cpu" else c.model,
    }
    if device.type != "cpu":
        model.cpu()
        torch.cuda.empty_cache()
    return out


__all__ = ["OneShot", "OneShotSettings", "parse_gflops", "prune_once"]
