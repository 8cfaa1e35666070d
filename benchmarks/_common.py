"""What every benchmark prints first: the command that produced its figures and the machine they were taken on."""

from __future__ import annotations

import os
import platform
import shlex
import sys
from collections.abc import Callable
from datetime import datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing


def machine() -> str:
    """CPU model, cores, torch threads, GPU if any, versions and the load average (the CPU is often shared)."""
    import torch
    import ultralytics

    cpu = platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    load = " ".join(f"{x:.2f}" for x in os.getloadavg())
    return (
        f"{cpu}, {os.cpu_count()} logical cores, {gpu}; torch {torch.__version__} ({torch.get_num_threads()} threads), "
        f"ultralytics {ultralytics.__version__}, Python {platform.python_version()}; load average {load}"
    )


def load() -> str:
    """The load average now: figures taken on a busy CPU are noisy."""
    try:
        return "load average " + " ".join(f"{x:.2f}" for x in os.getloadavg())
    except OSError:
        return "load average n/a"


def header() -> None:
    """Print the command line, the date and the machine."""
    print(f"command: {shlex.join([sys.executable.rsplit('/', 1)[-1], *sys.argv])}")
    print(f"date:    {datetime.now().astimezone().isoformat(timespec='seconds')}")
    print(f"machine: {machine()}")
    print()


def plan_within(graph, model, strategy: str, budget: float, *, scores=None, ranking=None, min_channels: int = 8):
    """(pruned model, plan): the largest plan of `strategy` whose full GFLOPs at 640 (fvcore, what a search's budget
    counts) fit `budget`, found as a search finds its global trial (`strategies.plan_within`). `ranking` defaults to
    the order of `scores`."""
    from autoprune import strategies
    from autoprune.cost import count_gflops
    from autoprune.pruner import prune_to_counts

    if ranking is None and scores is not None:
        ranking = {g: [x.argsort(descending=True, stable=True) for x in per] for g, per in scores.items()}
    pruned = {}

    def cost(counts):
        pruned["model"] = prune_to_counts(model, counts, graph=graph, ranking=ranking)
        return count_gflops(pruned["model"], 640)

    plan, fits = strategies.plan_within(graph, strategy, budget, cost, full_cost=count_gflops(model, 640),
                                        scores=scores, min_channels=min_channels)
    if not fits:
        raise RuntimeError(f"{strategy}: no plan within {budget} GFLOPs")
    return pruned["model"], plan


def results_cache(folder: Path) -> tuple[dict, Callable[[], int]]:
    """(results, save): the rows cached in folder/results.json (empty if none), and a function writing them back."""
    import json

    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "results.json"
    results = json.loads(path.read_text()) if path.exists() else {}
    return results, lambda: path.write_text(json.dumps(results, indent=2))


def finetune_and_validate(model, teacher, data, save_dir: Path, *, epochs: int, imgsz: int, batch: int, device,
                          seed: int, label: str) -> dict:
    """Finetune a copy of `model` as the methods comparison does (distilling from `teacher`, None: no distillation;
    `finetune` keeps its own frozen copy of it), then validate its best checkpoint on the whole val split; returns
    Ultralytics' metrics (`validate_checkpoint`)."""
    import copy

    from autoprune.finetune import DistillSettings, finetune, validate_checkpoint

    ft = finetune(copy.deepcopy(model), data, save_dir=save_dir, teacher=teacher,
                  distill=DistillSettings() if teacher is not None else None, epochs=epochs, imgsz=imgsz,
                  batch=batch, device=device, verbose=False, label=label, seed=seed)
    return validate_checkpoint(ft.best, data, imgsz=imgsz, device=device)


def run_autoprune(cmd: list[str], log: Path) -> dict:
    """The `--json` output of one autoprune command run in its own process; its stderr goes to `log`. A failed
    command ends the benchmark naming the command and the log."""
    import json
    import subprocess

    with log.open("w") as err:
        out = subprocess.run([sys.executable, "-m", "autoprune", *cmd, "--json"], stdout=subprocess.PIPE,
                             stderr=err, text=True, check=False)
    if out.returncode != 0:
        raise SystemExit(f"error: {' '.join(cmd)} exited {out.returncode}; see {log}")
    return json.loads(out.stdout)
