"""Segmentation end to end (issue 20): demo polygon labels, the data's task, the proxy's mask metric, a segment
search. Tiny throughout: a width-scaled yolov8n-seg, 64 px, a handful of images, one step."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest

from conftest import assert_user_error, run_cli


@pytest.fixture(scope="module")
def seg_root(tmp_path_factory):
    """Segment and detect demo datasets of the same scenes (64 px, 6 train / 3 val) and a tiny yolov8n-seg YAML."""
    import ultralytics
    import yaml

    from autoprune.demo.dataset import CLASS_NAMES, generate

    root = tmp_path_factory.mktemp("segment")
    seg = generate(root / "seg", n_train=6, n_val=3, imgsz=64, task="segment")
    det = generate(root / "det", n_train=6, n_val=3, imgsz=64)
    cfg = yaml.safe_load((Path(ultralytics.__file__).parent / "cfg/models/v8/yolov8-seg.yaml").read_text())
    cfg.update(nc=len(CLASS_NAMES), scales={"n": [0.33, 0.125, 1024]}, scale="n")
    model = root / "tiny-seg.yaml"
    model.write_text(yaml.safe_dump(cfg))
    return {"root": root, "seg": seg, "det": det, "model": model}


def _lines(yaml_path: Path, split: str = "val") -> dict[str, list[list[float]]]:
    out = {}
    for p in sorted((yaml_path.parent / "labels" / split).glob("*.txt")):
        out[p.stem] = [[float(v) for v in line.split()] for line in p.read_text().splitlines() if line.strip()]
    return out


def test_demo_segment_labels_are_polygons_inside_the_image_that_match_the_boxes(seg_root):
    from autoprune.demo.dataset import mask_polygon, render_image

    seg, det = _lines(seg_root["seg"], "train"), _lines(seg_root["det"], "train")
    assert seg.keys() == det.keys() and sum(len(v) for v in seg.values()) > 5
    px = 1 / 64
    for name, polys in seg.items():
        assert len(polys) == len(det[name])
        for poly, box in zip(polys, det[name]):
            assert poly[0] == box[0]  # same class
            xy = np.array(poly[1:]).reshape(-1, 2)  # an even count of coordinates
            assert len(xy) >= 3 and len(poly) > 6  # Ultralytics reads more than 6 values as a polygon
            assert (xy >= 0).all() and (xy <= 1).all()
            (x0, y0), (x1, y1) = xy.min(0), xy.max(0)
            # vertices on pixel centres: the polygon's extent is the box's less one pixel
            assert np.allclose([(x0 + x1 + px) / 2, (y0 + y1 + px) / 2, x1 - x0 + px, y1 - y0 + px], box[1:],
                               atol=1e-5)
    # filled the way Ultralytics fills it, each polygon is the object's visible mask (bridges aside)
    _, _, _, masks = render_image(0, "train", 0, 64, masks=True)
    for m in masks:
        filled = np.zeros(m.shape, np.uint8)
        cv2.fillPoly(filled, [np.round(mask_polygon(m)).astype(np.int32)], 1)
        assert (filled.astype(bool) ^ m).sum() <= max(2, 0.02 * m.sum())


def test_data_task_is_read_from_the_labels(seg_root):
    from autoprune.data import load_data_config

    assert load_data_config(seg_root["seg"]).task == "segment"
    assert load_data_config(seg_root["det"]).task == "detect"


def test_proxy_scores_a_segment_model_by_mask_map(seg_root, monkeypatch):
    from ultralytics.models.yolo.segment import SegmentationValidator

    from autoprune.models import load_model
    from autoprune.proxy import ProxyEvaluator, ProxySettings

    ev = ProxyEvaluator(seg_root["seg"], ProxySettings(imgsz=64, steps=1, calib_batches=1, batch=4, val_images=3,
                                                       threads=1), task="segment")
    assert isinstance(ev._validator, SegmentationValidator)
    assert "masks" in ev.calibration_batches()[0]
    model = load_model(seg_root["model"]).model
    # the validator's figures, box (B) and mask (M) told apart: the result reads the mask ones
    real = type(ev._validator).get_stats
    seen = {}

    def get_stats(self):
        stats = real(self)
        seen.update(stats)
        return {**stats, "metrics/mAP50-95(B)": 0.25, "metrics/mAP50(B)": 0.5,
                "metrics/mAP50-95(M)": 0.125, "metrics/mAP50(M)": 0.375}

    monkeypatch.setattr(type(ev._validator), "get_stats", get_stats)
    r = ev.evaluate(model)
    assert "metrics/mAP50-95(M)" in seen  # a real mask validation ran
    assert r.metric == "mask mAP50-95"
    assert (r.map50_95, r.map50, r.box_map50_95, r.box_map50) == (0.125, 0.375, 0.25, 0.5)
    assert r.steps == 1 and len(r.train_loss) == 2 and np.isfinite(r.train_loss).all()  # the segment loss ran
    assert len(r.map50_95_boot) > 0


def test_segment_model_with_detect_labels_is_one_error_line(seg_root, capsys):
    code, _, err = run_cli(capsys, "proxy", "--model", seg_root["model"], "--data", seg_root["det"], "--imgsz", "64",
                           "--steps", "0", "--calib-batches", "1", "--val-images", "2", "--device", "cpu",
                           "--no-latency")
    line = assert_user_error(code, err, "segment model")
    assert "detect labels" in line


@pytest.mark.slow
def test_tiny_segment_search_completes_two_trials(seg_root, capsys):
    root = seg_root["root"]
    code, out, err = run_cli(capsys, "search", "--model", seg_root["model"], "--data", seg_root["seg"],
                             "--budget-gflops", "0.03", "--imgsz", "64", "--proxy-imgsz", "64", "--proxy-steps", "1",
                             "--calib-batches", "1", "--val-images", "3", "--population", "4", "--trials", "2",
                             "--device", "cpu", "--project", root / "runs", "--name", "s", "--json")
    assert code == 0, err
    result = json.loads(out)
    assert result["evaluated"] == 2 and result["feasible"] >= 1, result
    assert (root / "runs" / "s" / "study.db").is_file()
    # apply finetunes it with the segment trainer (distilled from the unpruned model) and reports mask mAP
    trial = result["recommended"]["number"]
    code, out, err = run_cli(capsys, "apply", "--storage", f"sqlite:///{root / 'runs' / 's' / 'study.db'}", "--study",
                             "s", "--trial", str(trial), "--epochs", "1", "--batch", "2", "--device", "cpu",
                             "--project", root / "apply", "--name", "a", "--json")
    assert code == 0, err[-3000:]
    report = json.loads(out)
    assert report["task"] == "segment" and report["metric"] == "mask mAP50-95"
    assert "seg_loss" in report["train"]["loss_names"] and "kd_loss" in report["train"]["loss_names"]
    for stage in ("before", "pruned", "after"):  # mask and box figures, each a real mAP
        assert 0 <= report[stage]["map50_95"] <= 1 and 0 <= report[stage]["box_map50_95"] <= 1
    assert report["after"]["gflops"] == pytest.approx(result["recommended"]["gflops"], abs=1e-6)
    assert "| mask mAP50-95 |" in (root / "apply" / "a" / "report.md").read_text()
    from ultralytics import YOLO

    assert YOLO(report["outputs"]["pruned"]).task == "segment"


def test_apply_reads_the_mask_metric_of_a_segment_model_and_the_box_metric_of_a_detector(tmp_path, monkeypatch):
    """validate_checkpoint and the per-epoch curve take a segment model's mask figures (M), a detector's box (B)."""
    from types import SimpleNamespace

    import ultralytics

    from autoprune.report.apply_report import epoch_curve
    from autoprune.finetune import validate_checkpoint

    box, seg = SimpleNamespace(map50=0.6, map=0.4), SimpleNamespace(map50=0.5, map=0.3)
    for metrics, want in ((SimpleNamespace(box=box, seg=seg), (0.5, 0.3, "mask mAP50-95")),
                          (SimpleNamespace(box=box), (0.6, 0.4, "box mAP50-95"))):
        monkeypatch.setattr(ultralytics.YOLO, "__init__", lambda self, *a, **k: None)
        monkeypatch.setattr(ultralytics.YOLO, "val", lambda self, metrics=metrics, **k: metrics)
        v = validate_checkpoint(tmp_path / "m.pt", SimpleNamespace(yaml=tmp_path / "d.yaml"), imgsz=64)
        assert (v["map50"], v["map50_95"], v["metric"]) == want
        assert ("box_map50_95" in v) == (want[2] == "mask mAP50-95") and v.get("box_map50_95", 0.4) == 0.4
    (tmp_path / "results.csv").write_text("epoch,metrics/mAP50(B),metrics/mAP50-95(B),metrics/mAP50(M),"
                                          "metrics/mAP50-95(M)\n1,0.6,0.4,0.5,0.3\n")
    assert epoch_curve(tmp_path, task="segment") == [{"epoch": 1, "step": 1, "map50": 0.5, "map50_95": 0.3}]
    assert epoch_curve(tmp_path) == [{"epoch": 1, "step": 1, "map50": 0.6, "map50_95": 0.4}]


def test_prune_ranks_and_scores_a_segment_model_on_segment_labels(seg_root, capsys, tmp_path):
    """prune's defaults (hessian ranking on the loss, BN recalibration, --val) take a segment model's masks."""
    out = tmp_path / "p.pt"
    code, stdout, err = run_cli(capsys, "prune", "--model", seg_root["model"], "--data", seg_root["seg"], "--keep",
                                "0.5", "--imgsz", "64", "--calib-imgsz", "64", "--calib-batches", "1", "--batch", "2",
                                "--val-images", "3", "--out", out, "--json")
    assert code == 0, err[-3000:]
    r = json.loads(stdout)
    assert r["criterion"] == "hessian" and r["val"]["metric"] == "mask mAP50-95" and 0 <= r["val"]["map50_95"] <= 1
    assert r["gflops_ratio"] < 0.8 and out.is_file()


def test_sparsify_trains_a_segment_model_on_its_masks(seg_root, capsys, tmp_path):
    code, stdout, err = run_cli(capsys, "sparsify", "--model", seg_root["model"], "--data", seg_root["seg"],
                                "--epochs", "1", "--imgsz", "64", "--batch", "2", "--device", "cpu", "--project",
                                tmp_path, "--name", "sp", "--json")
    assert code == 0, err[-3000:]
    r = json.loads(stdout)
    from ultralytics.nn.tasks import load_checkpoint

    model, ckpt = load_checkpoint(r["checkpoint"])
    assert type(model).__name__ == "SegmentationModel" and ckpt["train_args"]["task"] == "segment"
    assert "seg_loss" in (tmp_path / "sp" / "train" / "results.csv").read_text()  # the masks were in the loss
