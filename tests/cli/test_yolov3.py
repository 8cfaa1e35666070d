"""YOLOv3 (the Ultralytics "u" YAMLs) through every command: groups, cost, proxy, search, trials, plot and apply on
yolov3-tinyu at tiny sizes (prune and sparsify have their own YOLOv3 tests), and groups and cost on the full
yolov3u."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from autoprune.cli import main

QUICK = dict(warmup_runs=1, warmup_s=0.0, min_repeats=3, min_time_s=0.0, max_time_s=0.3, rel_tol=0.5, window_tol=0.5)


@pytest.fixture(scope="module")
def tiny_v3(tmp_path_factory):
    """A 2-class yolov3-tinyu YAML (the tiny dataset's classes)."""
    import ultralytics

    cfg = yaml.safe_load((Path(ultralytics.__file__).parent / "cfg/models/v3/yolov3-tiny.yaml").read_text())
    cfg["nc"] = 2
    path = tmp_path_factory.mktemp("v3") / "yolov3-tinyu-2cls.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


@pytest.fixture(autouse=True)
def quick_latency(monkeypatch):
    from autoprune import cost

    monkeypatch.setattr(cost.timing, "DEFAULT_PROTOCOL", cost.TimingProtocol(**QUICK))  # latency is not what is tested


def _cli(capsys, *argv):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    assert code == 0, err[-3000:]
    return json.loads(out) if "--json" in argv else out


@pytest.mark.parametrize("name", [pytest.param("yolov3u.yaml", marks=pytest.mark.slow), "yolov3-tinyu.yaml"])
def test_groups_and_cost(capsys, name):
    groups = _cli(capsys, "groups", "--model", name, "--imgsz", 64, "--json")
    assert len(groups["groups"]) > 5
    cost = _cli(capsys, "cost", "--model", name, "--imgsz", 64, "--device", "cpu", "--json")
    assert cost["gflops"] > 0 and cost["params"] > 0 and cost["latency_ms"] > 0


@pytest.mark.slow
def test_proxy_search_trials_plot_and_apply(capsys, tmp_path, monkeypatch, tiny_v3, tiny_data):
    from ultralytics.nn.tasks import DetectionModel

    from autoprune.cost import count_gflops

    monkeypatch.chdir(tmp_path)
    scored = _cli(capsys, "proxy", "--model", tiny_v3, "--data", tiny_data, "--keep", 0.5, "--imgsz", 64,
                  "--steps", 1, "--calib-batches", 1, "--batch", 4, "--val-images", 4, "--device", "cpu",
                  "--no-latency", "--json")
    assert 0.0 <= scored["map50_95"] <= 1.0 and scored["gflops"] > 0

    full = count_gflops(DetectionModel(str(tiny_v3), verbose=False), 128)
    budget = round(0.6 * full, 4)
    result = _cli(capsys, "search", "--model", tiny_v3, "--data", tiny_data, "--budget-gflops", budget,
                  "--imgsz", 128, "--proxy-imgsz", 64, "--proxy-steps", 1, "--calib-batches", 1, "--val-images", 4,
                  "--population", 4, "--trials", 3, "--device", "cpu", "--name", "v3", "--json")
    front = result["front"]
    assert front and all(t["gflops"] <= budget + 1e-9 for t in front)
    listed = _cli(capsys, "trials", "--study", "v3", "--json")
    assert set(listed["front"]) == {t["number"] for t in front}
    plotted = _cli(capsys, "plot", "--study", "v3", "--json")
    assert Path(plotted["png"]).is_file() and Path(plotted["html"]).is_file()

    trial = front[0]["number"]
    applied = _cli(capsys, "apply", "--study", "v3", "--trial", trial, "--epochs", 1, "--batch", 4, "--device", "cpu",
                   "--json")
    assert applied["after"]["gflops"] == pytest.approx(front[0]["gflops"], abs=1e-5)
    assert applied["after"]["params"] < applied["before"]["params"]
