"""The README's quick start as a user meets it: `autoprune search --budget-gflops 5` on the embedded demo (no
--model, no --data) from a fresh folder, then `autoprune apply --trial N` with no --study or --name, and the saved
model loading in plain Ultralytics."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import optuna
import pytest
import yaml

from autoprune.cli import main
from autoprune.search import records as R
from autoprune.search.storage import make_storage

README_SEARCH = ["search", "--budget-gflops", "5"]

# The README's command evaluates 24 candidates, each after a 50-step finetune at 320 px, once channels are ranked on
# 20 calibration batches: about 5 minutes on an idle 2-core CPU (docs/BENCHMARKS.md), and nearly as long on a tiny
# demo dataset, because none of that work depends on the number of images; apply then finetunes 20 epochs. The test
# shrinks only that work, as AUTOPRUNE_DEMO_SIZE shrinks the demo dataset: these defaults are set on the commands'
# parsers (`_smaller_defaults`), so the command lines are the README's word for word (apply's with --json, to read its
# report). Every other default that makes the command the quick start stays: the demo model and data, the budget at
# 640 px, the criterion, the space, the engine, the device, the run folder and the study's name.
SMALLER = {"search": {"trials": 3, "proxy_steps": 2, "calib_batches": 2, "proxy_imgsz": 64}, "apply": {"epochs": 1}}

# Loads the saved model in a process that imports only Ultralytics, and reports what it found.
PLAIN = """
import json, sys
import torch
from ultralytics import YOLO
model = YOLO(sys.argv[1]).model.eval()
with torch.no_grad():
    out = model(torch.zeros(1, 3, 640, 640))
print(json.dumps({"params": sum(p.numel() for p in model.parameters()), "type": type(model).__name__,
                  "out": list((out[0] if isinstance(out, (list, tuple)) else out).shape),
                  "autoprune": sorted(k for k in sys.modules if k.split(".")[0] == "autoprune")}))
"""


def _smaller_defaults(monkeypatch) -> None:
    """Give `autoprune search` and `autoprune apply` the defaults of `SMALLER` for this test."""
    import importlib

    for command, defaults in SMALLER.items():
        module = importlib.import_module(f"autoprune.cli.{command}")

        def add_arguments(parser, real=module.add_arguments, defaults=defaults):
            real(parser)
            assert set(defaults) <= {a.dest for a in parser._actions}, defaults  # each names a flag of the command
            parser.set_defaults(**defaults)

        monkeypatch.setattr(module, "add_arguments", add_arguments)


def _table_numbers(out: str) -> list[int]:
    """Trial numbers of the rows of the front table `search` prints (the lines under its `trial  kind` header)."""
    lines = out.splitlines()
    start = next(i for i, line in enumerate(lines) if re.match(r"^\s+trial\s+kind\s", line)) + 1
    numbers = []
    for line in lines[start:]:
        m = re.match(r"^\s*\*?\s+(\d+)\s+[a-z-]+\s+\d", line)
        if m:
            numbers.append(int(m.group(1)))
        elif not line.strip() or line.lstrip().startswith("("):
            break
    return numbers


@pytest.mark.slow
def test_the_readme_quick_start_then_apply_a_trial_it_printed(tmp_path, monkeypatch, capsys):
    from autoprune.demo import demo_data_spec, demo_model_path

    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    assert f"autoprune {' '.join(README_SEARCH)}\n" in readme  # the command below is still the README's
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("AUTOPRUNE_DEMO_SIZE", "16,8")  # a tiny demo dataset, generated in the session's home
    _smaller_defaults(monkeypatch)

    code = main(README_SEARCH)
    out, err = capsys.readouterr()
    assert code == 0, err[-3000:]
    run = tmp_path / "runs" / "search" / "exp1"  # the first unnamed search in this folder
    assert sorted(p.name for p in (tmp_path / "runs" / "search").iterdir()) == ["exp1"]
    study = optuna.load_study(study_name="exp1", storage=make_storage(f"sqlite:///{run / 'study.db'}",
                                                                      heartbeat=None, read_only=True))
    attrs = study.user_attrs
    assert attrs[R.STUDY_BUDGET_GFLOPS] == 5.0 and attrs[R.STUDY_IMGSZ] == 640
    assert attrs[R.STUDY_PROXY]["steps"] == 2  # the smaller defaults took effect
    assert sum(R.SECONDS in t.user_attrs for t in study.trials) == 3
    assert Path(attrs[R.STUDY_MODEL]).resolve() == demo_model_path()
    assert Path(attrs[R.STUDY_DATA]).parent.name == demo_data_spec().folder_name
    records = [R.TrialRecord.from_trial(t) for t in study.trials]
    front = {r.number for r in R.pareto_front(records)}
    printed = _table_numbers(out)
    assert front and front <= set(printed), (front, printed, out[-2000:])
    assert set(printed) <= {r.number for r in records if r.feasible}
    assert "latency model: predicted" not in out  # the default times every candidate; it says nothing else

    n = printed[0]
    code = main(["apply", "--trial", str(n), "--json"])  # no --study: the only study in runs/search
    out, err = capsys.readouterr()
    assert code == 0, err[-3000:]
    report = json.loads(out)
    record = next(r for r in records if r.number == n)
    assert report["trial"] == n and report["cost_imgsz"] == 640
    assert report["pruned"]["gflops"] == pytest.approx(record.gflops, abs=1e-6)
    assert report["after"]["gflops"] == pytest.approx(record.gflops, abs=1e-6) and report["after"]["gflops"] <= 5.0
    assert report["before"]["gflops"] > 5.0  # the demo model itself is over the budget: something was pruned
    pruned = Path(report["outputs"]["pruned"])
    assert pruned.resolve() == (tmp_path / "runs" / "apply" / f"exp1-trial{n}" / "pruned.pt").resolve()

    proc = subprocess.run([sys.executable, "-c", PLAIN, str(pruned)], capture_output=True, text=True, cwd=tmp_path,
                          env={**os.environ, "YOLO_OFFLINE": "1"}, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    plain = json.loads(proc.stdout.strip().splitlines()[-1])
    assert plain["autoprune"] == [] and plain["type"] == "DetectionModel"
    nc = len(yaml.safe_load(Path(attrs[R.STUDY_DATA]).read_text())["names"])
    assert plain["params"] == report["after"]["params"] and plain["out"][:2] == [1, 4 + nc]

