"""Rebuild a search trial's pruned model, finetune it (distilled from the unpruned model) and report before/after.

    autoprune apply --trial 7                                     # the latest search; runs/apply/exp1-trial7/
    autoprune apply --name exp1 --trial 7                         # the same for the search named exp1
    autoprune apply --name exp1 --trial 7 --epochs 30 --export onnx --out small
    autoprune apply --storage postgresql://user@host/db --name exp1 --trial 7 --no-distill

The trial's stored kept channel counts and criterion rebuild exactly the model the search scored (same GFLOPs), from
the model the study was made with (its fingerprint is checked). Ultralytics' trainer then finetunes that pruned
object itself, with the unpruned model as the teacher (`autoprune.finetune`). A trial of a search made with
--reconstruct is refit the same way (least squares on the search's calibration images) before the finetune. Outputs
in runs/apply/NAME/:
pruned.pt (a stock Ultralytics checkpoint), report.md and report.json (mAP50, mAP50-95, params, GFLOPs, latency and
file size, before and after), pruned.onnx with --export onnx, args.yaml, and the trainer's folder train/.
"""

from __future__ import annotations

import argparse
import json
import math
import tempfile
import time
from pathlib import Path

from autoprune.cli.trials import add_study_arguments, default_study
from autoprune.errors import UserError

EXPORT_FORMATS = ("onnx",)
ONNX_OPSET = 17  # what the bundled onnx and onnxruntime read; simplify=False: onnxslim is optional, offline-safe


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--trial", type=int, required=True, metavar="N", help="the trial to apply (`autoprune trials`)")
    add_study_arguments(parser)
    parser.add_argument("--model", default=None, help="the unpruned model (default: the one the study was made with; "
                                                      "its fingerprint must match either way)")
    parser.add_argument("--data", default=None, help="data YAML to finetune and validate on (default: the study's)")
    parser.add_argument("--epochs", type=int, default=20, help="finetune epochs (default 20)")
    parser.add_argument("--imgsz", type=int, default=None,
                        help="training and validation image size (default: the study's proxy image size)")
    parser.add_argument("--batch", type=int, default=16, help="training batch size (default 16)")
    parser.add_argument("--distill", action=argparse.BooleanOptionalAction, default=True,
                        help="distil from the unpruned model (default on)")
    parser.add_argument("--kd-weight", type=float, default=1.0,
                        help="weight of the head distillation (class logits, box distributions) (default 1.0)")
    parser.add_argument("--kd-temperature", type=float, default=2.0, help="distillation temperature (default 2)")
    parser.add_argument("--kd-neck", type=float, default=0.0,
                        help="weight of the neck feature distillation through a 1x1 projector (default 0: off)")
    parser.add_argument("--reconstruct", action=argparse.BooleanOptionalAction, default=None,
                        help="refit the convs that lost inputs by least squares before finetuning, on the search's "
                             "calibration images (default: as the search did, i.e. on for a search with --reconstruct)")
    parser.add_argument("--amp", action=argparse.BooleanOptionalAction, default=True,
                        help="mixed precision on CUDA (default on; the CPU always trains in float32)")
    parser.add_argument("--export", choices=EXPORT_FORMATS, default=None, help="also export pruned.pt to this format")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N (default auto)")
    parser.add_argument("--workers", type=int, default=2, help="data loader workers on CUDA (the CPU uses 0)")
    parser.add_argument("--seed", type=int, default=0, help="training seed (data order, augmentation) (default 0)")
    parser.add_argument("--out", default=None,
                        help="output folder name under runs/apply/ (default: NAME-trialN); must not exist")


# ------------------------------------------------------------------------------------------------------- inputs
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
    from autoprune.search import records as R

    trials = study.get_trials(deepcopy=False)
    records = {t.number: R.TrialRecord.from_trial(t) for t in trials}
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
        over = r.attrs.get(R.CONSTRAINTS)
        detail = f" (constraints {over}; > 0 is over budget)" if over else ""
        raise UserError(f"trial {number} of study {name!r} is infeasible: over its budget{detail}{usable}")
    missing = [k for k in (R.KEPT_CHANNELS, R.GFLOPS) if r.attrs.get(k) is None]
    if missing:
        raise UserError(f"trial {number} of study {name!r} does not store {', '.join(missing)}; it cannot be rebuilt")
    return r


def output_dir(name: str) -> Path:
    """runs/apply/NAME, which must not exist yet (checked, not created)."""
    from autoprune.runs import RUNS_ROOT

    if not name or "/" in name or "\\" in name or name in (".", ".."):
        raise UserError(f"--out must be a plain folder name, got {name!r}")
    path = RUNS_ROOT / "apply" / name
    if path.exists():
        raise UserError(f"{path} already exists; pick another --out")
    return path


def _positive(flag: str, value: int, low: int = 1) -> int:
    if value < low:
        raise UserError(f"{flag} must be an integer >= {low}, got {value}")
    return value


def rebuild(loaded, record, *, imgsz: int, ranking: dict | None = None, batches: list | None = None,
            seed: int = 0):
    """(pruned model, kept counts, GFLOPs at `imgsz`) rebuilt from a trial's stored kept counts.

    Which channels are kept: the first `count` of each part in `ranking` (the study's stored channel order,
    {group id: [order per part]}, what every trial of the search sliced); without one, the order is recomputed with
    the trial's criterion (a data criterion cannot be recomputed: its calibration batches are not stored). With
    calibration `batches`, the convs that lost inputs are refit on them (`reconstruct.prune_reconstructed`,
    sampling positions with `seed`).
    Raises `UserError` when the counts or the ranking do not fit the model, and `RuntimeError` when the rebuilt
    model's GFLOPs differ from the trial's: the stored counts fully determine the architecture, so a mismatch is a bug.
    """
    from autoprune.channels import analyze
    from autoprune.cost import count_gflops
    from autoprune.importance import DATA_CRITERIA, get_criterion
    from autoprune.pruner import prune_to_counts, rank_channels
    from autoprune.search import records as R

    counts = {str(k): int(v) for k, v in record.attrs[R.KEPT_CHANNELS].items()}
    criterion = record.attrs.get(R.CRITERION) or "l1"
    get_criterion(criterion)
    if ranking is None and criterion in DATA_CRITERIA:  # its order depends on calibration batches
        raise UserError(f"trial {record.number} ranked channels by the data criterion {criterion!r} and the study "
                        "stores no channel ranking (made by an older autoprune); apply cannot replay it")
    graph = analyze(loaded.model, imgsz=imgsz)
    unknown = sorted(set(counts) - set(graph.ids))
    if unknown:
        raise UserError(f"trial {record.number} keeps channels of groups this model does not have ({unknown[0]!r}, "
                        f"{len(unknown)} in all); it was made with another model")
    order = None if ranking is None else _check_ranking(ranking, graph, counts)
    if batches is None:
        pruned = prune_to_counts(loaded.model, counts, criterion=criterion, graph=graph, ranking=order)
    else:
        from autoprune.reconstruct import prune_reconstructed

        order = order if order is not None else rank_channels(loaded.model, graph, criterion)
        pruned = prune_reconstructed(loaded.model, counts, graph, order, batches, seed=seed)
    gflops = count_gflops(pruned, imgsz)
    expected = float(record.attrs[R.GFLOPS])
    if not math.isclose(gflops, expected, rel_tol=1e-9, abs_tol=1e-12):
        raise RuntimeError(f"rebuilt trial {record.number} has {gflops!r} GFLOPs at {imgsz}, the trial {expected!r}")
    return pruned, counts, gflops


def _check_ranking(ranking: dict, graph, counts: dict) -> dict:
    """The stored ranking as tensors; a `UserError` unless every pruned group has a permutation per part."""
    import torch

    out = {}
    for gid, n in counts.items():
        g = graph.group(gid)
        orders = ranking.get(gid)
        if n == g.size:
            continue
        if not isinstance(orders, list) or len(orders) != len(g.parts) or any(
                sorted(o) != list(range(g.size)) for o in orders):
            raise UserError(f"the study's stored channel ranking does not fit group {gid!r} of this model "
                            f"({len(g.parts)} part(s) of {g.size} channels)")
        out[gid] = [torch.tensor(o, dtype=torch.long) for o in orders]
    return out


# ------------------------------------------------------------------------------------------------------- the run
def run(args: argparse.Namespace) -> dict:
    from autoprune import _ultralytics, report
    from autoprune.cli._common import check_imgsz
    from autoprune.data import load_data_config
    from autoprune.devices import resolve_device
    from autoprune.finetune import DistillSettings
    from autoprune.models import load_model
    from autoprune.search import records as R

    # Every check first: nothing is created or trained before all of them pass.
    _positive("--trial", args.trial, 0)
    _positive("--epochs", args.epochs)
    _positive("--batch", args.batch)
    _positive("--workers", args.workers, 0)
    _positive("--seed", args.seed, 0)
    if args.imgsz is not None:
        check_imgsz(args.imgsz)
    from autoprune.runs import check_run_root

    check_run_root("apply")
    distill = DistillSettings(args.kd_weight, args.kd_temperature, args.kd_neck) if args.distill else None
    device = resolve_device(args.device)
    default_study(args)
    study = report.read_study(args.storage, args.name)  # never creates a database; no study: one line naming those
    record = resolve_trial(study, args.trial)
    run_path = output_dir(args.out or f"{args.name}-trial{args.trial}")
    sattrs = study.user_attrs
    data = load_data_config(args.data or sattrs.get(R.STUDY_DATA))
    model_spec = args.model or sattrs.get(R.STUDY_MODEL)
    loaded = load_model(model_spec)
    expected_fp = record.attrs.get(R.MODEL_FINGERPRINT) or sattrs.get(R.STUDY_MODEL_FINGERPRINT)
    if expected_fp and loaded.fingerprint != expected_fp:
        raise UserError(f"{loaded.source} is not the model study {args.name!r} was made with (fingerprint "
                        f"{loaded.fingerprint}, the study's {expected_fp}); pass the original with --model")
    head = loaded.model.model[-1]
    if head.nc != data.nc:
        raise UserError(f"the model predicts {head.nc} classes but {data.yaml} has {data.nc}")
    cost_imgsz = int(record.attrs.get(R.IMGSZ) or sattrs.get(R.STUDY_IMGSZ) or 640)
    proxy = sattrs.get(R.STUDY_PROXY) or {}
    imgsz = check_imgsz(int(args.imgsz or proxy.get("imgsz") or cost_imgsz))
    reconstruct = proxy.get("reconstruct", False) if args.reconstruct is None else args.reconstruct
    batches = _calibration_batches(data, proxy, device) if reconstruct else None
    if batches and not args.json:
        print(f"refitting the convs that lost inputs on {len(batches)} calibration batches (--reconstruct)...")
    pruned, counts, gflops = rebuild(loaded, record, imgsz=cost_imgsz, ranking=sattrs.get(R.STUDY_RANKING),
                                     batches=batches, seed=int(proxy.get("seed") or 0))

    from autoprune.runs import new_run_dir, save_args

    verbose = not args.json
    _ultralytics.set_verbose(verbose)
    run_dir = new_run_dir("apply", run_path.name)
    save_args(run_dir, args, study=args.name, model_resolved=loaded.source, data_resolved=str(data.yaml),
              imgsz_resolved=imgsz, cost_imgsz=cost_imgsz, device_resolved=str(device))
    meta = {"source": loaded.source, "source_fingerprint": loaded.fingerprint, "study": args.name,
            "trial": args.trial, "criterion": record.attrs.get(R.CRITERION) or "l1", "kept_channels": counts,
            "channel_order": "the study's stored ranking" if sattrs.get(R.STUDY_RANKING) else "recomputed",
            "imgsz": cost_imgsz, "reconstructed": bool(reconstruct),
            "distill": distill.as_dict() if distill else None, "epochs": args.epochs}
    result = apply_trial(loaded, pruned, data, run_dir=run_dir, record=record, meta=meta, distill=distill,
                         epochs=args.epochs, imgsz=imgsz, cost_imgsz=cost_imgsz, batch=args.batch, device=device,
                         amp=args.amp, workers=args.workers, export=args.export, verbose=verbose, seed=args.seed,
                         log=print)
    result.update(study=args.name, storage_given=args.storage is not None)
    (run_dir / "report.json").write_text(json.dumps(result, indent=2, default=str))
    (run_dir / "report.md").write_text(format_report(result))
    result["outputs"]["report_json"] = str(run_dir / "report.json")
    if verbose:
        print()
        print(format_report(result))
        print(f"saved {result['outputs']['pruned']}" + (f" and {result['outputs']['onnx']}" if args.export else ""))
    return result


def _calibration_batches(data, proxy: dict, device) -> list:
    """The calibration batches of the search's proxy (its image size, batch count and seed): the images a search
    with --reconstruct refit every candidate on."""
    from autoprune.proxy import ProxyEvaluator, ProxySettings

    settings = ProxySettings(steps=0, device=str(device), **{k: proxy[k] for k in ("imgsz", "calib_batches", "seed")
                                                               if proxy.get(k) is not None})
    if settings.calib_batches == 0:
        raise UserError("--reconstruct refits convs on the search's calibration batches, and the search had "
                        "--calib-batches 0")
    return ProxyEvaluator(data, settings).calibration_batches()


def apply_trial(loaded, pruned, data, *, run_dir: Path, record, meta: dict, distill, epochs: int, imgsz: int,
                cost_imgsz: int, batch: int, device, amp: bool, workers: int, export: str | None, verbose: bool,
                seed: int = 0, log=print) -> dict:
    """Measure the unpruned and the pruned model, finetune the pruned one, save, check and measure the result."""
    from autoprune.cost import count_gflops, count_params, measure_latency
    from autoprune.finetune import finetune, pickled_modules, validate_checkpoint
    from autoprune.models import save_checkpoint
    from autoprune.search import records as R

    t_start = time.perf_counter()
    say = log if verbose else (lambda *a, **k: None)

    def measure(path: Path, model, lat=None) -> dict:
        say(f"validating {path.name} at {imgsz} on {data.yaml.name} (val split)...")
        v = validate_checkpoint(path, data, imgsz=imgsz, batch=batch, device=device)
        lat = lat or measure_latency(model, imgsz=cost_imgsz, device=device)
        return {"map50": round(v["map50"], 5), "map50_95": round(v["map50_95"], 5), "params": count_params(model),
                "gflops": round(count_gflops(model, cost_imgsz), 6), "latency_ms": round(lat.median_ms, 3),
                "latency_spread_ms": round(lat.spread_ms, 3), "latency_device": lat.device_name,
                "file_bytes": path.stat().st_size, "val_seconds": v["seconds"]}

    with tempfile.TemporaryDirectory(prefix="autoprune-apply-") as tmp:
        # The unpruned model saved exactly the way pruned.pt is (FP16, no optimizer): sizes compare like for like.
        ref = save_checkpoint(loaded.model, Path(tmp) / "unpruned.pt", base_ckpt=loaded.ckpt)
        before = measure(ref, loaded.model)
        untrained = save_checkpoint(pruned, Path(tmp) / "pruned-untrained.pt", base_ckpt=loaded.ckpt, meta=meta)
        pruned_lat = measure_latency(pruned, imgsz=cost_imgsz, device=device)
        pruned_m = measure(untrained, pruned, pruned_lat)

    say(f"finetuning the pruned model ({pruned_m['gflops']:.3f} GFLOPs at {cost_imgsz}, {pruned_m['params']:,} "
        f"params) for {epochs} epochs at {imgsz}, " + ("distilled from the unpruned model" if distill else
                                                       "without distillation") + "...")
    student_params = count_params(pruned)
    teacher = loaded.model if distill else None
    ft = finetune(pruned, data, save_dir=run_dir / "train", teacher=teacher, distill=distill, epochs=epochs,
                  imgsz=imgsz, batch=batch, device=device, amp=amp, workers=workers, seed=seed, verbose=verbose,
                  label=str(run_dir / "pruned.pt"))

    # What was saved must be the pruned architecture, trained: same GFLOPs as the trial, same parameter count.
    from ultralytics.nn.tasks import load_checkpoint

    trained, ckpt = load_checkpoint(ft.best)
    trained = trained.float().eval()
    expected = float(record.attrs[R.GFLOPS])
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
               "report_md": str(run_dir / "report.md"), "onnx": None}
    if export == "onnx":
        outputs["onnx"] = export_onnx(out, imgsz=cost_imgsz, verbose=verbose)

    proxy = {"map50": record.map50, "map50_95": record.map50_95, "gflops": record.gflops,
             "latency_ms": record.latency_ms, "kind": record.kind}
    return {
        "trial": record.number,
        "model": loaded.source,
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
        "train": {"seconds": round(ft.seconds, 1), "device": ft.device, "amp": ft.amp, "seed": seed,
                  "loss_names": list(ft.loss_names), "batch": batch, "best": str(ft.best)},
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


def format_report(r: dict) -> str:
    """report.md: the before/after table and how it was measured."""
    b, p, a = r["before"], r["pruned"], r["after"]

    def mb(n):
        return f"{n / 1e6:.2f} MB"

    def pct(x, y):
        return f"{100 * x / y:.1f}%" if y else "-"

    rows = [
        ("mAP50", f"{b['map50']:.4f}", f"{p['map50']:.4f}", f"{a['map50']:.4f}", pct(a["map50"], b["map50"])),
        ("mAP50-95", f"{b['map50_95']:.4f}", f"{p['map50_95']:.4f}", f"{a['map50_95']:.4f}",
         pct(a["map50_95"], b["map50_95"])),
        ("params", f"{b['params']:,}", f"{p['params']:,}", f"{a['params']:,}", pct(a["params"], b["params"])),
        (f"GFLOPs @{r['cost_imgsz']}", f"{b['gflops']:.3f}", f"{p['gflops']:.3f}", f"{a['gflops']:.3f}",
         pct(a["gflops"], b["gflops"])),
        ("latency (ms)", f"{b['latency_ms']:.2f}", f"{p['latency_ms']:.2f}", f"{a['latency_ms']:.2f}",
         pct(a["latency_ms"], b["latency_ms"])),
        ("file size", mb(b["file_bytes"]), mb(p["file_bytes"]), mb(a["file_bytes"]),
         pct(a["file_bytes"], b["file_bytes"])),
    ]
    head = ("", "unpruned", "pruned, not finetuned", "pruned + finetuned", "after / before")
    lines = [f"# autoprune apply: study {r.get('study')!r}, trial {r['trial']}", "",
             "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    d = r["distill"]
    how = (f"distilled from the unpruned model (head weight {d['weight']:g}, temperature {d['temperature']:g}, "
           f"neck weight {d['neck_weight']:g})") if d else "without distillation"
    t = r["train"]
    tr = r["trial_record"]
    proxy = (f"The search's proxy scored this trial mAP50-95 {tr['map50_95']:.4f} (proxy protocol: short finetune, "
             "val subset).") if tr.get("map50_95") is not None else ""
    lines += [
        "",
        f"- model: `{r['model']}`; data: `{r['data']}`",
        f"- finetune: {r['epochs']} epochs at {r['imgsz']} px, batch {t['batch']}, {how}; {t['seconds']:.0f} s on "
        f"{t['device']} (AMP {'on' if t['amp'] else 'off'})",
        *(["- pruned, then the convs that lost inputs refit by least squares on the search's calibration images "
            "(`--reconstruct`), then finetuned"] if r.get("reconstructed") else []),
        f"- mAP: Ultralytics validation of each checkpoint on the val split at {r['imgsz']} px (same protocol for all)",
        f"- GFLOPs and latency at {r['cost_imgsz']} px, batch 1; latency measured on {a['latency_device']} "
        "(`autoprune.cost.measure_latency`, median)",
        "- file size: each model saved the same way (`autoprune.models.save_checkpoint`: FP16, no optimizer)",
    ]
    if proxy:
        lines.append(f"- {proxy}")
    lines.append("")
    return "\n".join(lines)


__all__ = ["add_arguments", "apply_trial", "format_numbers", "format_report", "rebuild", "resolve_trial", "run"]
