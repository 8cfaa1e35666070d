"""Apply a search trial: rebuild its pruned model, finetune it (distilled from the unpruned model), save, report.

What `autoprune apply` does, as a library: `apply_study_trial(study, number, ...)` checks the trial and the model,
rebuilds exactly the model the trial scored (`candidate.replay`, from the study's stored channel ranking; refit
by least squares when the search ran with --reconstruct), finetunes that pruned object itself with Ultralytics'
trainer and the unpruned model as the teacher (`finetune.finetune`), checks that what was saved is the trial's
architecture, and measures the unpruned, the pruned and the finetuned model alike. The run folder
(runs/apply/NAME/) gets pruned.pt (a stock Ultralytics checkpoint), report.md and report.json, args.yaml, the
trainer's folder train/ (train-step1/, ... when pruning in steps), finetune_curve.png (mAP after every epoch), and
pruned.onnx with `export="onnx"`.

Example:
    >>> from autoprune.apply import apply_study_trial
    >>> result = apply_study_trial(study, 17, epochs=30)
    >>> result["after"]["map50_95"], result["outputs"]["pruned"]
"""

from __future__ import annotations

import json
import math
import tempfile
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

from autoprune.errors import UserError
from autoprune.schedule import ULTRALYTICS_SCHEDULE
from autoprune.search.records import (CONSTRAINTS, CRITERION, GFLOPS, IMGSZ, KEPT_CHANNELS, MODEL_FINGERPRINT,
                                      STUDY_DATA, STUDY_IMGSZ, STUDY_MODEL, STUDY_MODEL_FINGERPRINT, STUDY_PROXY,
                                      STUDY_RANKING, TrialRecord)

EXPORT_FORMATS = ("onnx",)
LATENCY_ROUNDS = 3  # the unpruned and the pruned model timed in turn this many times (`cost.measure_latencies`)
ONNX_OPSET = 17  # what the bundled onnx and onnxruntime read; simplify=False: onnxslim is optional, offline-safe


def format_numbers(numbers) -> str:
    """Compact ranges: [0, 1, 2, 3, 7, 9, 10] -> '0-3, 7, 9-10'.

    Example:
        >>> format_numbers([0, 1, 2, 3, 7, 9, 10])
        '0-3, 7, 9-10'
    """
    out, run = [], []
    for n in sorted(set(numbers)):
        if run and n == run[-1] + 1:
            run.append(n)
            continue
        if run:
            out.append(f"{run[0]}-{run[-1]}" if len(run) > 1 else str(run[0]))
        run = [n]
    if run:
        out.append(f"{run[0]}-{run[-1]}" if len(run) > 1 else str(run[0]))
    return ", ".join(out)


def resolve_trial(study, number: int):
    """The `TrialRecord` of trial `number`, which must exist, have completed and be feasible; else a `UserError`."""
    trials = study.get_trials(deepcopy=False)
    records = {t.number: TrialRecord.from_trial(t) for t in trials}
    feasible = [n for n, r in records.items() if r.feasible]
    usable = f"; feasible trials: {format_numbers(feasible)}" if feasible else "; it has no feasible trial yet"
    name = study.study_name
    if number not in records:
        have = f"trials {format_numbers(records)}" if records else "no trials"
        raise UserError(f"study {name!r} has no trial {number} (it has {have}{usable})")
    r = records[number]
    why = f" ({r.reason})" if r.reason else ""
    if r.state == "FAIL":
        raise UserError(f"trial {number} of study {name!r} failed{why}; nothing to apply{usable}")
    if r.state in ("RUNNING", "WAITING"):
        raise UserError(f"trial {number} of study {name!r} is still {r.state.lower()}; wait for it{usable}")
    if r.state != "COMPLETE":
        raise UserError(f"trial {number} of study {name!r} was not scored{why}{usable}")
    if not r.feasible:
        over = r.attrs.get(CONSTRAINTS)
        detail = f" (constraints {over}; > 0 is over budget)" if over else ""
        raise UserError(f"trial {number} of study {name!r} is infeasible: over its budget{detail}{usable}")
    missing = [k for k in (KEPT_CHANNELS, GFLOPS) if r.attrs.get(k) is None]
    if missing:
        raise UserError(f"trial {number} of study {name!r} does not store {', '.join(missing)}; it cannot be rebuilt")
    return r


def rebuild(loaded, record: TrialRecord, *, imgsz: int, ranking: dict | None = None, batches: list | None = None,
            swap_batches: list | None = None, seed: int = 0):
    """(pruned model, kept counts, GFLOPs at `imgsz`) of a trial, rebuilt from its stored kept counts
    (`candidate.replay`): the first `count` channels of each part in the study's stored `ranking`, recomputed by
    the trial's criterion without one; refit on calibration `batches` when given (sampling positions with `seed`),
    or only its swaps fitted on `swap_batches`.
    """
    from autoprune.candidate import replay

    return replay(loaded.model, record.attrs[KEPT_CHANNELS], criterion=record.attrs.get(CRITERION) or "l1",
                  imgsz=imgsz, expected_gflops=float(record.attrs[GFLOPS]), ranking=ranking, batches=batches,
                  swap_batches=swap_batches, seed=seed, what=f"trial {record.number}")


def search_calibration_batches(data, proxy: Mapping) -> list:
    """The calibration batches of a search's proxy (its stored image size, batch count and seed): the images a
    search with --reconstruct refit every candidate on."""
    from autoprune.batches import calibration_batches
    from autoprune.proxy import ProxySettings

    settings = ProxySettings(steps=0, **{k: proxy[k] for k in ("imgsz", "calib_batches", "seed")
                                         if proxy.get(k) is not None})
    if settings.calib_batches == 0:
        raise UserError("--reconstruct refits convs on the search's calibration batches, and the search had "
                        "--calib-batches 0")
    return calibration_batches(data, imgsz=settings.imgsz, calib_batches=settings.calib_batches,
                               batch=settings.batch, seed=settings.seed, train_images=settings.train_images)


def apply_study_trial(study, number: int, *, run_name: str | None = None, project=None, exist_ok: bool = False,
                      model: str | None = None,
                      data: str | None = None, epochs: int = 20, imgsz: int | None = None, batch: int = 16,
                      distill=None, reconstruct: bool | None = None, amp: bool = True, export: str | None = None,
                      device="cpu", workers: int = 2, seed: int = 0, args: Mapping | None = None,
                      extra: Mapping | None = None, latency: Mapping | None = None, verbose: bool = True,
                      log: Callable = print, schedule: Mapping | None = None, steps: int = 1) -> dict:
    """Apply trial `number` of `study` (see the module doc); returns what report.json holds.

    `schedule` ({name: "short" or "ultralytics", lr0, lrf, warmup_epochs, lr_scale, warmup_bias_lr}, values None for
    the defaults) is the finetune's optimizer schedule (`finetune.short_schedule`, picked from the epochs of each
    finetune; "ultralytics": Ultralytics' defaults); `lr_scale` multiplies the starting learning rate Ultralytics fits
    (the short schedule's default lr0 alike); `warmup_bias_lr` is the rate the biases start the warm-up at (default:
    `DEFAULT_WARMUP_BIAS_LR` in Ultralytics' schedule, 0 in the short one). `steps` K > 1 prunes in K steps from the
    unpruned model to the trial's channel counts, finetuning after each (`--epochs` shared among them, the rest to
    the last);
    `distill.feature_weight` > 0 adds the channel-matched feature distillation (`distill.FeatureMatch`) at every step.

    Everything a user can get wrong (the trial, the run name, the model's fingerprint, the data's classes) is
    checked before anything is created or trained. `model` and `data` default to the study's; `imgsz` (finetune
    and validation) to the proxy's image size; `reconstruct` to what the search did; `distill` is a
    `finetune.DistillSettings` or None (no distillation). `args` are saved to args.yaml with the resolved values;
    `extra` fields join the report. `latency` ({backend, batch, precision}, each None or absent for the study's)
    says how the report's latencies are measured: by default as the search measured them. A `device` naming
    several GPUs ("0,1") finetunes on all of them (Ultralytics' DDP; `batch` a multiple of their count) and measures
    on the first.
    """
    from autoprune import _ultralytics
    from autoprune.imgsz import check_imgsz
    from autoprune.data import check_task, load_data_config
    from autoprune.devices import resolve_devices, ultralytics_device
    from autoprune.models import head_classes, keypoint_shape, load_model, require_task
    from autoprune.runs import run_dir_path, save_args, trial_run_name
    from autoprune.report.apply_report import format_report

    devices = resolve_devices(device)
    if len(devices) > 1:  # a DDP finetune on all of them; the measurements run on the first
        from autoprune.finetune import check_multi_gpu

        check_multi_gpu(batch, len(devices))
    train_device = ultralytics_device(device) if len(devices) > 1 else devices[0]
    device = devices[0]
    latency = study_latency(study.user_attrs, device, latency)
    record = resolve_trial(study, number)
    name = study.study_name
    # PROJECT/NAME (default runs/apply/STUDY-trialN, or -2, -3, ... when taken): a NAME given that exists needs exist_ok
    run_path = run_dir_path("apply", project, run_name, exist_ok=exist_ok, default=trial_run_name(name, number))
    sattrs = study.user_attrs
    data = load_data_config(data or sattrs.get(STUDY_DATA))
    loaded = load_model(model or sattrs.get(STUDY_MODEL))
    require_task(loaded, "apply")
    check_task(data, loaded.task, keypoint_shape(loaded.model))  # e.g. a segment model needs polygon labels
    if distill is not None and distill.neck_weight > 0:  # a head without Detect inputs: one line, no run folder
        from autoprune.distill import detect_input_channels

        detect_input_channels(loaded.model)
    expected_fp = record.attrs.get(MODEL_FINGERPRINT) or sattrs.get(STUDY_MODEL_FINGERPRINT)
    if expected_fp and loaded.fingerprint != expected_fp:
        raise UserError(f"{loaded.source} is not the model study {name!r} was made with (fingerprint "
                        f"{loaded.fingerprint}, the study's {expected_fp}); pass the original with --model")
    nc = head_classes(loaded.model)
    if nc != data.nc:
        raise UserError(f"the model predicts {nc} classes but {data.yaml} has {data.nc}")
    cost_imgsz = int(record.attrs.get(IMGSZ) or sattrs.get(STUDY_IMGSZ) or 640)
    proxy = sattrs.get(STUDY_PROXY) or {}
    imgsz_from = ("--imgsz" if imgsz else "the search's proxy size" if proxy.get("imgsz")
                  else "the size the study's GFLOPs were counted at")
    imgsz = check_imgsz(int(imgsz or proxy.get("imgsz") or cost_imgsz))
    reconstruct = proxy.get("reconstruct", False) if reconstruct is None else reconstruct
    batches = search_calibration_batches(data, proxy) if reconstruct else None
    if batches and verbose:
        log(f"refitting the convs that lost inputs on {len(batches)} calibration batches (--reconstruct)...")
    if steps != 1 and reconstruct:
        raise UserError("--steps prunes step by step with finetunes between; it does not combine with "
                        "--reconstruct (pass --no-reconstruct)")
    from autoprune.swap import split_counts as split_swaps

    swap_batches = None
    if not reconstruct and split_swaps(record.attrs[KEPT_CHANNELS])[1] and proxy.get("calib_batches") != 0:
        swap_batches = search_calibration_batches(data, proxy)  # the images the search fitted its swaps on
        if verbose:
            log(f"fitting the trial's swapped convolutions on {len(swap_batches)} calibration batches...")
    pruned, counts, _ = rebuild(loaded, record, imgsz=cost_imgsz, ranking=sattrs.get(STUDY_RANKING),
                                batches=batches, swap_batches=swap_batches, seed=int(proxy.get("seed") or 0))
    plan = finetune_plan(loaded.model, record, counts, imgsz=cost_imgsz, stored_ranking=sattrs.get(STUDY_RANKING),
                         epochs=epochs, steps=steps, nc=data.nc, schedule=schedule, distill=distill)

    _ultralytics.set_verbose(verbose)
    run_dir = run_path
    run_dir.mkdir(parents=True, exist_ok=True)
    save_args(run_dir, {**dict(args or {}), "model": loaded.source, "data": str(data.yaml),
                        "project": str(run_dir.parent), "name": run_dir.name, "imgsz": imgsz},
              study=name, model_resolved=loaded.source, data_resolved=str(data.yaml),
              imgsz_resolved=imgsz, imgsz_from=imgsz_from, cost_imgsz=cost_imgsz, device_resolved=str(device),
              train_device=str(train_device),
              finetune_steps=[step.as_dict() for step in plan])
    meta = {"source": loaded.source, "source_fingerprint": loaded.fingerprint, "study": name,
            "trial": number, "criterion": record.attrs.get(CRITERION) or "l1", "kept_channels": counts,
            "channel_order": "the study's stored ranking" if sattrs.get(STUDY_RANKING) else "recomputed",
            "imgsz": cost_imgsz, "reconstructed": bool(reconstruct),
            "distill": distill.as_dict() if distill else None, "epochs": epochs}
    result = apply_trial(loaded, pruned, data, run_dir=run_dir, record=record, meta=meta, distill=distill,
                         epochs=epochs, imgsz=imgsz, cost_imgsz=cost_imgsz, batch=batch, device=device,
                         amp=amp, workers=workers, export=export, verbose=verbose, seed=seed, log=log,
                         latency=latency, plan=plan, train_device=train_device)
    result.update(study=name, imgsz_from=imgsz_from, **(extra or {}))
    (run_dir / "report.json").write_text(json.dumps(result, indent=2, default=str))
    (run_dir / "report.md").write_text(format_report(result))
    result["outputs"]["report_json"] = str(run_dir / "report.json")
    return result


DEFAULT_SCHEDULE = "ultralytics"  # the finetune schedule apply uses unless told (see docs/BENCHMARKS.md)
DEFAULT_LR_SCALE = 1.0  # x the starting learning rate Ultralytics fits (docs/BENCHMARKS.md, issue 21)
# Where the biases' warm-up starts in Ultralytics' schedule: its default 0.1, which optimizer=auto sets to 0 (+0.62
# mAP50-95 points after 10 epochs, +0.45 after 3, over 3 seeds each; docs/BENCHMARKS.md, issue 21).
DEFAULT_WARMUP_BIAS_LR = 0.1


@dataclass
class FinetuneStep:
    """One finetune of `apply`: its epochs, schedule and feature match, and the channel counts the model is pruned
    to before it (`kept`: the teacher's kept indices per part of each pruned group)."""

    counts: dict
    kept: dict
    epochs: int
    schedule: object | None = None  # finetune.FinetuneSchedule, None: Ultralytics' defaults
    features: object | None = None  # distill.FeatureMatch
    ranking: dict | None = None  # the teacher's channel order the steps prune by
    lr_scale: float = 1.0  # x the rate Ultralytics' schedule starts at (the short schedule's lr0 holds its own)
    warmup_bias_lr: float | None = None  # the biases' warm-up start; None: the schedule's (0)

    def as_dict(self) -> dict:
        bias = {} if self.warmup_bias_lr is None else {"warmup_bias_lr": self.warmup_bias_lr}
        return {"epochs": self.epochs, "kept_channels": dict(self.counts),
                "schedule": {**self.schedule.as_dict(), **bias} if self.schedule is not None
                else {**ULTRALYTICS_SCHEDULE, "lr_scale": self.lr_scale, "warmup_bias_lr": 0.0, **bias},
                "features": self.features.as_dict() if self.features is not None else None}


def step_counts(sizes: Mapping[str, int], counts: Mapping[str, int], steps: int) -> list[dict]:
    """The kept counts after each of `steps` steps from `sizes` (unpruned) to `counts`: every group loses an equal
    share of what it loses in all at each step (rounded), the last step lands on `counts` exactly.

    Example:
        >>> step_counts({"a": 64, "b": 32}, {"a": 16, "b": 32}, 3)
        [{'a': 48, 'b': 32}, {'a': 32, 'b': 32}, {'a': 16, 'b': 32}]
    """
    return [{g: sizes[g] - round((sizes[g] - n) * k / steps) for g, n in counts.items()} for k in range(1, steps + 1)]


def finetune_plan(teacher, record: TrialRecord, counts: Mapping[str, int], *, imgsz: int, stored_ranking, epochs: int,
                  steps: int, nc: int, schedule: Mapping | None, distill) -> list[FinetuneStep]:
    """The finetunes `apply` runs: one for the trial's model, or `steps` (pruning step by step), each with its
    schedule (`finetune.short_schedule` from its epochs, or Ultralytics' defaults) and, with a feature weight, its
    `distill.FeatureMatch`. Every bad value (`--steps`, the schedule's, a feature level) is a `UserError`, raised
    before anything is written."""
    from autoprune.candidate import rank, ranking_from_lists
    from autoprune.channels import analyze
    from autoprune.finetune import short_schedule
    from autoprune.pruner import select_indices

    schedule = dict(schedule or {})
    name = schedule.pop("name", None) or DEFAULT_SCHEDULE
    lr_scale = check_lr_scale(schedule.pop("lr_scale", None), schedule.get("lr0"))
    bias_lr = check_warmup_bias_lr(schedule.pop("warmup_bias_lr", None))
    if bias_lr is None and name == "ultralytics":
        bias_lr = DEFAULT_WARMUP_BIAS_LR
    given = {k: v for k, v in schedule.items() if v is not None}
    if name not in ("short", "ultralytics"):
        raise UserError(f"--schedule must be short or ultralytics, got {name!r}")
    if name == "ultralytics" and given:
        raise UserError(f"{', '.join('--' + k.replace('_', '-') for k in given)} set the short schedule; they do "
                        "not combine with --schedule ultralytics")
    if name == "short" and lr_scale != 1.0:
        from autoprune.schedule import ultralytics_adamw_lr

        given["lr0"] = ultralytics_adamw_lr(nc) * lr_scale
    from autoprune.depth import split_counts
    from autoprune.swap import split_counts as split_swaps

    counts, swaps = split_swaps(counts)
    counts, depth = split_counts(counts)
    features = distill is not None and distill.feature_weight > 0
    if swaps and steps != 1:
        raise UserError(f"trial {record.number} also swaps convolutions (swap genes); --steps prunes channels only "
                        "and does not combine with it yet")
    if depth and (steps != 1 or features):
        raise UserError(f"trial {record.number} also removes blocks (depth genes); --steps and --kd-features match "
                        "channels only and do not combine with it yet")
    graph = analyze(teacher, imgsz=imgsz)
    losses = {g: graph.group(g).size - n for g, n in counts.items()}
    most = max(losses.values(), default=0)
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1 or steps > max(most, 1):
        raise UserError(f"--steps must be an integer from 1 to {max(most, 1)} (the most channels a group of trial "
                        f"{record.number} loses), got {steps!r}")
    if steps > epochs:
        raise UserError(f"--steps {steps} finetunes after every step and needs at least as many --epochs, got {epochs}")
    ranking = None
    if steps > 1 or features:
        ranking = (rank(teacher, graph, record.attrs.get(CRITERION) or "l1") if stored_ranking is None
                   else ranking_from_lists({k: v for k, v in stored_ranking.items() if not k.startswith("depth:")},
                                           graph, counts))
    per = [epochs // steps] * steps
    per[-1] += epochs - sum(per)
    plan = []
    for c, e in zip(step_counts({g: graph.group(g).size for g in counts}, counts, steps), per):
        kept = select_indices(graph, c, ranking) if ranking is not None else {}
        match = None
        if features:
            from autoprune.distill import FeatureMatch

            match = FeatureMatch.build(teacher, graph, kept, distill.feature_levels)
        plan.append(FinetuneStep(counts=c, kept=kept, epochs=e,
                                 schedule=short_schedule(e, nc=nc, **given) if name == "short" else None,
                                 features=match, ranking=ranking,
                                 lr_scale=1.0 if name == "short" else lr_scale, warmup_bias_lr=bias_lr))
    return plan


def check_warmup_bias_lr(value) -> float | None:
    """`--warmup-bias-lr` as a float (None stays None: the schedule's default); one `UserError` for a value that
    is not a finite number >= 0."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
        raise UserError(f"--warmup-bias-lr must be a number >= 0, got {value!r}")
    return float(value)


def check_lr_scale(lr_scale, lr0) -> float:
    """`--lr-scale` as a float (`DEFAULT_LR_SCALE` when None); one `UserError` for a value that is not a number > 0,
    or one given with `--lr0` (the scale multiplies the rate Ultralytics fits; --lr0 sets the rate itself)."""
    if lr_scale is None:
        return DEFAULT_LR_SCALE
    if isinstance(lr_scale, bool) or not isinstance(lr_scale, (int, float)) or not math.isfinite(lr_scale) or (
            lr_scale <= 0):
        raise UserError(f"--lr-scale must be a number > 0, got {lr_scale!r}")
    if lr0 is not None:
        raise UserError("--lr-scale multiplies the learning rate Ultralytics fits and --lr0 sets one: give one of them")
    return float(lr_scale)


def prune_further(model, kept_now: Mapping, counts: Mapping[str, int], ranking: Mapping, *, imgsz: int):
    """`model` (a finetuned student keeping `kept_now`, the teacher's indices per part of each pruned group) pruned
    on to `counts`: the next channels to go are the next in the teacher's `ranking`, so the kept sets are nested
    and the last step keeps what the one-shot trial keeps."""
    import torch

    from autoprune.channels import analyze
    from autoprune.pruner import apply_indices, select_indices

    graph = analyze(model, imgsz=imgsz)
    local = {}
    for gid, n in counts.items():
        if n == graph.group(gid).size:
            continue
        now = kept_now.get(gid)
        orders = []
        for p, order in enumerate(ranking[gid]):
            if now is None:  # still whole: the teacher's indices are this model's
                orders.append(order)
                continue
            pos = {int(c): i for i, c in enumerate(now[p])}
            orders.append(torch.tensor([pos[int(c)] for c in order[:len(now[p])]], dtype=torch.long))
        local[gid] = orders
    return apply_indices(model, graph, select_indices(graph, counts, local))


def study_latency(sattrs: Mapping, device, latency: Mapping | None = None) -> dict:
    """The latency settings {backend, batch, precision} apply measures with: those given in `latency`, else the
    study's (`sattrs`; torch, batch 1, the device's default precision for a study that stored none), checked to
    run on `device` (`cost.check_runtime`: one error line where they cannot)."""
    from autoprune.cost import check_backend, check_runtime
    from autoprune.search.records import STUDY_LATENCY_BACKEND, STUDY_LATENCY_BATCH, STUDY_LATENCY_PRECISION

    given = {k: v for k, v in (latency or {}).items() if v is not None}
    backend = check_backend(given["backend"] if "backend" in given else sattrs.get(STUDY_LATENCY_BACKEND) or "torch")
    batch = given["batch"] if "batch" in given else sattrs.get(STUDY_LATENCY_BATCH) or 1
    if isinstance(batch, bool) or not isinstance(batch, int) or batch < 1:
        raise UserError(f"--latency-batch must be a positive integer, got {batch!r}")
    precision = given.get("precision") or (sattrs.get(STUDY_LATENCY_PRECISION) if "backend" not in given else None)
    return {"backend": backend, "batch": batch, "precision": check_runtime(backend, device, precision)}


def apply_trial(loaded, pruned, data, *, run_dir: Path, record, meta: dict, distill, epochs: int, imgsz: int,
                cost_imgsz: int, batch: int, device, amp: bool, workers: int, export: str | None, verbose: bool,
                seed: int = 0, log=print, latency: Mapping | None = None, plan: list | None = None,
                train_device=None) -> dict:
    """Measure the unpruned and the pruned model, finetune the pruned one, save, check and measure the result.
    `train_device` is where the finetune runs (default `device`; a GPU list such as "0,1": Ultralytics' DDP).
    `latency` ({backend, batch, precision}) is how latency is measured (default: torch, batch 1). `plan`
    (`finetune_plan`) says how the finetune runs: one finetune of `pruned` (the default), or several steps
    pruning the teacher down to `pruned`'s channels. The validation mAP after every epoch is drawn in
    finetune_curve.png beside report.md."""
    from autoprune.cost import count_gflops, count_params, measure_latencies
    from autoprune.finetune import finetune, pickled_modules, validate_checkpoint
    from autoprune.models import save_checkpoint
    from autoprune.progress import stage
    from autoprune.proxy import TASK_METRICS
    from autoprune.report.apply_report import epoch_curve, plot_curve

    t_start = time.perf_counter()
    say = log if verbose else (lambda *a, **k: None)
    latency = dict(latency or {})

    def measure(path: Path, model, lat) -> dict:
        say(f"validating {path.name} at {imgsz} on {data.yaml.name} (val split)...")
        with stage(f"validating {path.name}", live=not verbose):
            v = validate_checkpoint(path, data, imgsz=imgsz, batch=batch, device=device)
        box = {k: round(v[k], 5) for k in ("box_map50", "box_map50_95") if k in v}  # a segment model's boxes
        return {"map50": round(v["map50"], 5), "map50_95": round(v["map50_95"], 5), **box,
                "params": count_params(model),
                "gflops": round(count_gflops(model, cost_imgsz), 6), "latency_ms": round(lat.median_ms, 3),
                "latency_spread_ms": round(lat.spread_ms, 3), "latency_device": lat.device_name,
                "latency_backend": lat.backend, "latency_precision": lat.precision,
                "latency_executed_precision": lat.executed_precision, "latency_batch": lat.batch,
                "latency_threads": lat.threads, "latency_rounds": LATENCY_ROUNDS,
                "file_bytes": path.stat().st_size, "val_seconds": v["seconds"]}

    with tempfile.TemporaryDirectory(prefix="autoprune-apply-") as tmp:
        # The unpruned model saved exactly the way pruned.pt is (FP16, no optimizer): sizes compare like for like.
        ref = save_checkpoint(loaded.model, Path(tmp) / "unpruned.pt", base_ckpt=loaded.ckpt)
        untrained = save_checkpoint(pruned, Path(tmp) / "pruned-untrained.pt", base_ckpt=loaded.ckpt, meta=meta)
        # Timed in turn, so that a machine whose speed drifts over minutes moves both alike and their ratio holds.
        with stage(f"timing the unpruned and the pruned model in turn ({LATENCY_ROUNDS} rounds)", live=not verbose):
            timed = measure_latencies({"unpruned": loaded.model, "pruned": pruned}, rounds=LATENCY_ROUNDS,
                                      imgsz=cost_imgsz, device=device, **latency)
        before = measure(ref, loaded.model, timed["unpruned"])
        pruned_lat = timed["pruned"]
        pruned_m = measure(untrained, pruned, pruned_lat)

    say(f"finetuning the pruned model ({pruned_m['gflops']:.3f} GFLOPs at {cost_imgsz}, {pruned_m['params']:,} "
        f"params) for {epochs} epochs at {imgsz}, " + ("distilled from the unpruned model" if distill else
                                                       "without distillation") + "...")
    student_params = count_params(pruned)
    teacher = loaded.model if distill else None
    from ultralytics.nn.tasks import load_checkpoint

    plan = plan or [FinetuneStep(counts=dict(meta.get("kept_channels") or {}), kept={}, epochs=epochs,
                                 warmup_bias_lr=DEFAULT_WARMUP_BIAS_LR)]  # apply's default finetune
    curve, steps_done, ft = [], [], None
    for k, step in enumerate(plan):
        if len(plan) == 1:
            student, save_dir = pruned, run_dir / "train"
        else:  # the teacher (first step) or the last step's best checkpoint, pruned on to this step's counts
            before_step = loaded.model if k == 0 else load_checkpoint(ft.best)[0].float()
            student = prune_further(before_step, plan[k - 1].kept if k else {}, step.counts, step.ranking,
                                    imgsz=cost_imgsz)
            save_dir = run_dir / f"train-step{k + 1}"
            say(f"step {k + 1} of {len(plan)}: {count_gflops(student, cost_imgsz):.3f} GFLOPs, "
                f"{step.epochs} epoch{'s' if step.epochs != 1 else ''}")
        label = f"finetuning for {step.epochs} epoch{'s' if step.epochs != 1 else ''}" + (
            f" (step {k + 1} of {len(plan)})" if len(plan) > 1 else "")
        with stage(label, live=not verbose):  # verbose: the trainer shows its own bars
            ft = finetune(student, data, save_dir=save_dir, teacher=teacher, distill=distill, epochs=step.epochs,
                          task=loaded.task,
                          imgsz=imgsz, batch=batch, device=device if train_device is None else train_device,
                          amp=amp, workers=workers, seed=seed,
                          verbose=verbose, label=str(run_dir / "pruned.pt"), schedule=step.schedule,
                          lr_scale=step.lr_scale, warmup_bias_lr=step.warmup_bias_lr,
                          features=step.features if distill else None)
        curve += epoch_curve(ft.save_dir, step=k + 1, first_epoch=len(curve) + 1, task=loaded.task)
        steps_done.append({**step.as_dict(), "seconds": round(ft.seconds, 1), "schedule_used": ft.schedule,
                           "train_dir": str(ft.save_dir), "loss_names": list(ft.loss_names)})

    # What was saved must be the pruned architecture, trained: same GFLOPs as the trial, same parameter count.

    trained, ckpt = load_checkpoint(ft.best)
    trained = trained.float().eval()
    expected = float(record.attrs[GFLOPS])
    checked = [(ft.best.name, trained)]
    if ft.last.exists() and ft.last != ft.best:
        checked.append((ft.last.name, load_checkpoint(ft.last)[0].float()))
    for what, m in checked:
        g = count_gflops(m, cost_imgsz)
        if not math.isclose(g, expected, rel_tol=1e-9, abs_tol=1e-12) or count_params(m) != student_params:
            raise RuntimeError(f"{what} has {g} GFLOPs and {count_params(m)} params; the trial {expected} and "
                               f"{student_params}: the trainer did not train the pruned model")
    out = save_checkpoint(trained, run_dir / "pruned.pt", base_ckpt=ckpt, meta=meta)
    foreign = sorted(m for m in pickled_modules(out) if m.split(".")[0] == "autoprune")
    if foreign:
        raise RuntimeError(f"{out} refers to autoprune classes {foreign}; it would not load without autoprune")
    saved, _ = load_checkpoint(out)
    g = count_gflops(saved.float(), cost_imgsz)
    if not math.isclose(g, expected, rel_tol=1e-9, abs_tol=1e-12):
        raise RuntimeError(f"pruned.pt has {g} GFLOPs at {cost_imgsz}; the trial {expected}")
    after = measure(out, trained, pruned_lat)  # the same architecture: one latency measurement for both

    outputs = {"pruned": str(out), "run_dir": str(run_dir), "train_dir": str(ft.save_dir), "best": str(ft.best),
               "report_md": str(run_dir / "report.md"), "onnx": None,
               "curve_png": plot_curve(curve, run_dir / "finetune_curve.png", teacher=before["map50_95"],
                                       untrained=pruned_m["map50_95"] if len(plan) == 1 else None,
                                       metric=TASK_METRICS[loaded.task][0])}
    if export == "onnx":
        with stage("exporting pruned.onnx", live=not verbose):
            outputs["onnx"] = export_onnx(out, imgsz=cost_imgsz, verbose=verbose)

    proxy = {"map50": record.map50, "map50_95": record.map50_95, "gflops": record.gflops,
             "latency_ms": record.latency_ms, "kind": record.kind}
    return {
        "trial": record.number,
        "model": loaded.source,
        "task": loaded.task,
        "metric": TASK_METRICS[loaded.task][0],
        "data": str(data.yaml),
        "run_dir": str(run_dir),
        "imgsz": imgsz,
        "cost_imgsz": cost_imgsz,
        "epochs": epochs,
        "reconstructed": bool(meta.get("reconstructed")),
        "distill": distill.as_dict() if distill else None,
        "before": before,
        "pruned": pruned_m,
        "after": after,
        "ratios": {k: round(after[k] / before[k], 4) if before[k] else None
                   for k in ("map50", "map50_95", "params", "gflops", "latency_ms", "file_bytes")},
        "trial_record": proxy,
        "train": {"seconds": round(sum(x["seconds"] for x in steps_done), 1), "device": ft.device, "amp": ft.amp,
                  "seed": seed, "loss_names": list(ft.loss_names), "batch": batch, "best": str(ft.best),
                  "schedule": ft.schedule, "steps": steps_done},
        "curve": curve,
        "seconds": round(time.perf_counter() - t_start, 1),
        "outputs": outputs,
    }


def export_onnx(checkpoint: Path, *, imgsz: int, verbose: bool) -> str:
    """Export with Ultralytics' exporter on the CPU (opset 17, no onnxslim): pruned.onnx beside pruned.pt."""
    from ultralytics import YOLO

    from autoprune.finetune import offline_ultralytics

    with offline_ultralytics():
        path = YOLO(str(checkpoint)).export(format="onnx", imgsz=imgsz, opset=ONNX_OPSET, simplify=False,
                                            device="cpu", verbose=verbose)
    return str(path)


__all__ = ["DEFAULT_LR_SCALE", "DEFAULT_SCHEDULE", "EXPORT_FORMATS", "FinetuneStep", "apply_study_trial", "apply_trial",
           "export_onnx", "finetune_plan", "format_numbers", "prune_further",
           "step_counts",
           "rebuild", "resolve_trial", "search_calibration_batches", "study_latency"]
