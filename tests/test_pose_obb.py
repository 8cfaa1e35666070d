"""Pose and oriented boxes end to end, as segmentation: demo keypoint and rotated-box labels, the data's task, the
proxy's pose and OBB metrics, prune --val, sparsify, a search and an apply of each, the head distillation of
keypoints and angles, and one error line for labels of another task. Tiny throughout: width-scaled yolov8n-pose
and -obb, 64 px, a handful of images, one step."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from conftest import assert_user_error, demo_model_yaml, run_cli

pytestmark = pytest.mark.usefixtures("one_thread")
PX = 1 / 64  # one pixel of the 64 px demo images, normalised


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    """Pose, OBB and detect demo datasets of the same scenes (64 px, 6 train / 3 val) and tiny model YAMLs: pose
    with the demo's 4 keypoints, pose with COCO's 17, OBB."""
    from autoprune.demo.dataset import generate

    root = tmp_path_factory.mktemp("pose_obb")
    out = {"root": root}
    for task in ("pose", "obb", "detect"):
        out[task] = generate(root / task, n_train=6, n_val=3, imgsz=64, task=task)
    out["pose_model"] = demo_model_yaml(root, "v8/yolov8-pose.yaml", "yolov8n-pose-k4.yaml", kpt_shape=[4, 3])
    out["pose17_model"] = demo_model_yaml(root, "v8/yolov8-pose.yaml", "yolov8n-pose-k17.yaml")
    out["obb_model"] = demo_model_yaml(root, "v8/yolov8-obb.yaml", "yolov8n-obb-tiny.yaml")
    return out


def _lines(yaml_path: Path, split: str = "train") -> dict[str, list[list[float]]]:
    out = {}
    for p in sorted((yaml_path.parent / "labels" / split).glob("*.txt")):
        out[p.stem] = [[float(v) for v in line.split()] for line in p.read_text().splitlines() if line.strip()]
    return out


def test_demo_pose_labels_are_the_boxes_and_extreme_points_of_the_objects(env):
    import yaml

    from autoprune.demo.dataset import FLIP_IDX, KEYPOINTS, render_objects

    pose, det = _lines(env["pose"]), _lines(env["detect"])
    assert pose.keys() == det.keys() and sum(len(v) for v in pose.values()) > 5
    for name, rows in pose.items():
        assert len(rows) == len(det[name])
        for row, box in zip(rows, det[name]):
            assert len(row) == 5 + 4 * 3 and row[:5] == box  # the detect label, then the keypoints
            kp = np.array(row[5:]).reshape(4, 3)
            assert (kp[:, 2] == 2).all()
            cx, cy, w, h = box[1:]
            x0, y0, x1, y1 = cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2
            assert ((kp[:, 0] > x0) & (kp[:, 0] < x1) & (kp[:, 1] > y0) & (kp[:, 1] < y1)).all()  # in the box
            assert ((kp[:, :2] > 0) & (kp[:, :2] < 1)).all()  # in the image
            # top, right, bottom, left: on the box's edge rows and columns (pixel centres)
            assert np.allclose([kp[0, 1], kp[1, 0], kp[2, 1], kp[3, 0]],
                               [y0 + PX / 2, x1 - PX / 2, y1 - PX / 2, x0 + PX / 2], atol=1e-5)
    data = yaml.safe_load(env["pose"].read_text())
    assert data["kpt_shape"] == [len(KEYPOINTS), 3] and data["flip_idx"] == list(FLIP_IDX)
    # each keypoint is a visible pixel of its object (at the labels' own coordinates)
    _, _, labels, objects = render_objects(0, "train", 0, 64)
    kp = np.array(pose["00000"])[:, 5:].reshape(len(objects), 4, 3)
    for o, points in zip(objects, kp):
        px = np.floor(points[:, :2] * 64).astype(int)
        assert o.mask[px[:, 1], px[:, 0]].all()


def test_demo_obb_labels_are_rectangles_along_the_objects_that_hold_them(env):
    from autoprune.demo.dataset import render_objects, rotated_box

    obb, det = _lines(env["obb"]), _lines(env["detect"])
    assert obb.keys() == det.keys()
    rotated = 0
    for name, rows in obb.items():
        assert len(rows) == len(det[name])
        for row, box in zip(rows, det[name]):
            assert len(row) == 9 and row[0] == box[0]
            c = np.array(row[1:]).reshape(4, 2)
            assert ((c >= 0) & (c <= 1)).all()
            side = np.roll(c, -1, 0) - c
            assert np.allclose(side[0], -side[2], atol=1e-5) and np.allclose(side[1], -side[3], atol=1e-5)
            assert abs(side[0] @ side[1]) < 1e-4 * np.linalg.norm(side[0]) * np.linalg.norm(side[1]) + 1e-9
            cx, cy, w, h = box[1:]
            aabb = np.array([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2])
            lo, hi = c.min(0), c.max(0)
            assert (lo <= aabb[:2] + 1e-5).all() and (hi >= aabb[2:] - 1e-5).all()  # holds the visible box
            rotated += not np.allclose([*lo, *hi], aabb, atol=1e-5)
    assert rotated > 0  # not all axis-aligned
    # every visible pixel lies inside its rectangle, which is tight (each side touches a pixel), along the object's
    # own axes where it is rotated
    for index in range(3):
        _, _, _, objects = render_objects(0, "train", index, 64)
        for o in objects:
            r = rotated_box(o.mask, o.angle)
            u, v = r[1] - r[0], r[3] - r[0]
            axes = np.stack([u / np.linalg.norm(u), v / np.linalg.norm(v)])
            ys, xs = np.nonzero(o.mask)
            corners = np.concatenate([np.stack([xs + dx, ys + dy], 1) for dx in (0, 1) for dy in (0, 1)])
            t = (corners - r[0]) @ axes.T
            assert (t >= -1e-6).all() and (t[:, 0] <= np.linalg.norm(u) + 1e-6).all()
            assert (t[:, 1] <= np.linalg.norm(v) + 1e-6).all()
            assert np.allclose([t[:, 0].min(), t[:, 1].min()], 0, atol=1e-6)
            assert np.allclose([t[:, 0].max(), t[:, 1].max()], [np.linalg.norm(u), np.linalg.norm(v)], atol=1e-6)
            turn = np.arctan2(u[1], u[0]) - o.angle
            axis_aligned = abs(u[1]) < 1e-9
            assert axis_aligned or abs(np.sin(2 * turn)) < 1e-6  # its sides run along the object's axes


def test_data_task_is_read_from_the_labels(env):
    from autoprune.data import load_data_config

    pose = load_data_config(env["pose"])
    assert (pose.task, pose.kpt_shape, pose.flip_idx) == ("pose", (4, 3), (0, 3, 2, 1))
    assert pose.ultralytics_dict()["kpt_shape"] == [4, 3]
    assert load_data_config(env["obb"]).task == "obb"
    assert load_data_config(env["detect"]).task == "detect"
    assert "kpt_shape" not in load_data_config(env["obb"]).ultralytics_dict()


def test_a_bad_kpt_shape_is_one_error_line(env, tmp_path):
    from autoprune.data import load_data_config
    from autoprune.errors import UserError

    bad = tmp_path / "data.yaml"
    bad.write_text(env["pose"].read_text().replace("kpt_shape: [4, 3]", "kpt_shape: [4, 5]") +
                   f"path: {env['pose'].parent}\n")
    with pytest.raises(UserError, match=r"'kpt_shape' must be \[keypoints, 2 or 3\], got \[4, 5\]"):
        load_data_config(bad)
    bad.write_text(env["pose"].read_text().replace("flip_idx: [0, 3, 2, 1]", "flip_idx: [0, 3, 2]") +
                   f"path: {env['pose'].parent}\n")
    with pytest.raises(UserError, match="'flip_idx' must order the 4 keypoints 0..3"):
        load_data_config(bad)
    for sigmas in ("[0.1, 0.2]", "[0.1, 0.2, 0.3, 0]", "oks"):
        bad.write_text(env["pose"].read_text() + f"path: {env['pose'].parent}\nkpt_oks_sigmas: {sigmas}\n")
        with pytest.raises(UserError, match=r"'kpt_oks_sigmas' must be 4 positive numbers \(one per keypoint of "
                                             r"kpt_shape \[4, 3\]\)"):
            load_data_config(bad)
    bad.write_text(env["detect"].read_text() + f"path: {env['detect'].parent}\nkpt_oks_sigmas: [0.1]\n")
    with pytest.raises(UserError, match="'kpt_oks_sigmas' needs a 'kpt_shape'"):
        load_data_config(bad)


def _pose_data_with_sigmas(env, tmp_path, sigmas):
    """The demo pose data YAML with its own kpt_oks_sigmas."""
    data = tmp_path / "pose.yaml"
    data.write_text(env["pose"].read_text() + f"path: {env['pose'].parent}\nkpt_oks_sigmas: {list(sigmas)}\n")
    return data


def _record_keypoint_sigmas(monkeypatch) -> list:
    """The sigmas every Ultralytics KeypointLoss is built with from now on (a list this appends to)."""
    from ultralytics.utils import loss as ultralytics_loss

    seen = []
    real_init = ultralytics_loss.KeypointLoss.__init__

    def keypoint_loss(self, sigmas):
        seen.append(sigmas.tolist())
        real_init(self, sigmas)

    monkeypatch.setattr(ultralytics_loss.KeypointLoss, "__init__", keypoint_loss)
    return seen


@pytest.mark.parametrize("task", ["pose", "obb"])
def test_proxy_scores_the_tasks_own_metric(env, monkeypatch, tmp_path, task):
    from ultralytics.models.yolo.obb import OBBValidator
    from ultralytics.models.yolo.pose import PoseValidator

    from autoprune.models import load_model
    from autoprune.proxy import ProxyEvaluator, ProxySettings

    sigmas = (0.1, 0.2, 0.3, 0.4)
    # the dataset's own OKS sigmas reach Ultralytics' pose validator and keypoint loss
    data = _pose_data_with_sigmas(env, tmp_path, sigmas) if task == "pose" else env[task]
    loss_sigmas = _record_keypoint_sigmas(monkeypatch)
    ev = ProxyEvaluator(data, ProxySettings(imgsz=64, steps=1, calib_batches=1, batch=4, val_images=3,
                                                 threads=1), task=task)
    batch = ev.calibration_batches()[0]
    if task == "pose":
        assert isinstance(ev._validator, PoseValidator)
        assert batch["keypoints"].shape == (len(batch["cls"]), 4, 3)
    else:
        assert isinstance(ev._validator, OBBValidator)
        assert batch["bboxes"].shape == (len(batch["cls"]), 5)  # x, y, w, h, angle
    model = load_model(env[f"{task}_model"]).model
    real = type(ev._validator).get_stats
    seen = {}

    def get_stats(self):
        stats = real(self)
        seen.update(stats)
        return {**stats, "metrics/mAP50-95(B)": 0.25, "metrics/mAP50(B)": 0.5,
                "metrics/mAP50-95(P)": 0.125, "metrics/mAP50(P)": 0.375}

    monkeypatch.setattr(type(ev._validator), "get_stats", get_stats)
    r = ev.evaluate(model)
    assert r.steps == 1 and len(r.train_loss) == 2 and np.isfinite(r.train_loss).all()  # the task's loss ran
    assert len(r.map50_95_boot) > 0
    if task == "pose":
        assert "metrics/mAP50-95(P)" in seen  # a real keypoint validation ran
        assert np.allclose(ev._validator.sigma, sigmas)
        assert loss_sigmas and all(np.allclose(s, sigmas) for s in loss_sigmas)
        assert r.metric == "pose mAP50-95"
        assert (r.map50_95, r.map50, r.box_map50_95, r.box_map50) == (0.125, 0.375, 0.25, 0.5)
    else:
        assert "metrics/mAP50-95(B)" in seen and "metrics/mAP50-95(P)" not in seen
        assert r.metric == "OBB mAP50-95"
        assert (r.map50_95, r.map50, r.box_map50_95, r.box_map50) == (0.25, 0.5, None, None)


@pytest.mark.parametrize("model, data, says", [
    ("pose_model", "detect", ("the model is a pose model", "holds detect labels (boxes only)")),
    ("pose_model", "obb", ("the model is a pose model", "holds obb labels")),
    ("obb_model", "detect", ("the model is an OBB model", "holds detect labels (boxes only)")),
    ("obb_model", "pose", ("the model is an OBB model", "holds pose labels (boxes and keypoints)")),
])
def test_labels_of_another_task_are_one_error_line(env, capsys, model, data, says):
    code, _, err = run_cli(capsys, "proxy", "--model", env[model], "--data", env[data], "--imgsz", "64",
                           "--steps", "0", "--calib-batches", "1", "--val-images", "2", "--device", "cpu",
                           "--no-latency")
    line = assert_user_error(code, err, says[0])
    assert says[1] in line


def test_a_pose_model_with_other_keypoints_is_one_error_line(env, capsys, tmp_path):
    code, _, err = run_cli(capsys, "sparsify", "--model", env["pose17_model"], "--data", env["pose"], "--epochs",
                           "1", "--imgsz", "64", "--device", "cpu", "--project", tmp_path, "--name", "sp")
    line = assert_user_error(code, err, "the model predicts keypoints of shape [17, 3]")
    assert "kpt_shape [4, 3]" in line
    assert not (tmp_path / "sp").exists()


@pytest.mark.parametrize("task, metric", [("pose", "pose mAP50-95"), ("obb", "OBB mAP50-95")])
def test_prune_ranks_and_scores_on_the_tasks_labels(env, capsys, tmp_path, task, metric):
    """prune's defaults (hessian ranking on the task's loss, BN recalibration, --val) take keypoints and angles."""
    out = tmp_path / "p.pt"
    code, stdout, err = run_cli(capsys, "prune", "--model", env[f"{task}_model"], "--data", env[task], "--keep",
                                "0.5", "--imgsz", "64", "--calib-imgsz", "64", "--calib-batches", "1", "--batch", "2",
                                "--val-images", "3", "--out", out, "--json")
    assert code == 0, err[-3000:]
    r = json.loads(stdout)
    assert r["criterion"] == "hessian" and r["val"]["metric"] == metric and 0 <= r["val"]["map50_95"] <= 1
    assert r["gflops_ratio"] < 0.8 and out.is_file()


def test_hessian_ranking_weights_keypoints_by_the_datas_sigmas(env, monkeypatch, tmp_path):
    """The keypoint loss behind a pose model's hessian ranking uses the data YAML's kpt_oks_sigmas (the model's own
    attribute otherwise), as Ultralytics' PoseTrainer and the proxy do."""
    from autoprune.data import load_data_config
    from autoprune.models import load_model
    from autoprune.proxy import ProxyEvaluator, ProxySettings
    from autoprune.search import plan

    sigmas = (0.1, 0.2, 0.3, 0.4)
    data = _pose_data_with_sigmas(env, tmp_path, sigmas)
    seen = _record_keypoint_sigmas(monkeypatch)
    ev = ProxyEvaluator(load_data_config(data), ProxySettings(imgsz=64, steps=0, calib_batches=1, batch=2,
                                                              val_images=2, threads=1), task="pose")
    loaded = load_model(env["pose_model"])
    from autoprune.channels import analyze

    search = SimpleNamespace(settings=SimpleNamespace(criterion="hessian"), evaluator=ev, loaded=loaded,
                             graph=analyze(loaded.model))
    scores = plan.channel_scores(search)  # the search's ranking
    assert scores and seen and all(np.allclose(s, sigmas) for s in seen)


@pytest.mark.parametrize("task, cls, loss", [("pose", "PoseModel", "pose_loss"), ("obb", "OBBModel", "angle_loss")])
def test_sparsify_trains_on_the_tasks_labels(env, capsys, tmp_path, task, cls, loss):
    code, stdout, err = run_cli(capsys, "sparsify", "--model", env[f"{task}_model"], "--data", env[task],
                                "--epochs", "1", "--imgsz", "64", "--batch", "2", "--device", "cpu", "--project",
                                tmp_path, "--name", "sp", "--json")
    assert code == 0, err[-3000:]
    r = json.loads(stdout)
    from ultralytics.nn.tasks import load_checkpoint

    model, ckpt = load_checkpoint(r["checkpoint"])
    assert type(model).__name__ == cls and ckpt["train_args"]["task"] == task
    assert loss in (tmp_path / "sp" / "train" / "results.csv").read_text()  # the keypoints / angles were in the loss


@pytest.mark.slow
@pytest.mark.parametrize("task, metric, loss", [("pose", "pose mAP50-95", "pose_loss"),
                                                ("obb", "OBB mAP50-95", "angle_loss")])
def test_tiny_search_and_apply(env, capsys, task, metric, loss):
    root = env["root"]
    code, out, err = run_cli(capsys, "search", "--model", env[f"{task}_model"], "--data", env[task],
                             "--budget-gflops", "0.022", "--imgsz", "64", "--proxy-imgsz", "64", "--proxy-steps", "1",
                             "--calib-batches", "1", "--val-images", "3", "--population", "4", "--trials", "2",
                             "--device", "cpu", "--project", root / "runs", "--name", task, "--json")
    assert code == 0, err[-3000:]
    result = json.loads(out)
    assert result["evaluated"] == 2 and result["feasible"] >= 1, result
    # apply finetunes it with the task's trainer, distilled from the unpruned model, and reports the task's metric
    trial = result["recommended"]["number"]
    code, out, err = run_cli(capsys, "apply", "--storage", f"sqlite:///{root / 'runs' / task / 'study.db'}",
                             "--study", task, "--trial", str(trial), "--epochs", "1", "--batch", "2", "--device",
                             "cpu", "--project", root / "apply", "--name", task, "--json")
    assert code == 0, err[-3000:]
    report = json.loads(out)
    assert report["task"] == task and report["metric"] == metric
    assert loss in report["train"]["loss_names"] and "kd_loss" in report["train"]["loss_names"]
    for stage in ("before", "pruned", "after"):
        assert 0 <= report[stage]["map50_95"] <= 1
        assert ("box_map50_95" in report[stage]) == (task == "pose")  # a pose model's box figures beside
    assert report["after"]["gflops"] == pytest.approx(result["recommended"]["gflops"], abs=1e-6)
    assert f"| {metric} |" in (root / "apply" / task / "report.md").read_text()
    from ultralytics import YOLO

    assert YOLO(report["outputs"]["pruned"]).task == task


def test_apply_reads_the_pose_and_obb_metrics(tmp_path, monkeypatch):
    """validate_checkpoint and the per-epoch curve take a pose model's keypoint figures (P), an OBB model's (B)."""
    from types import SimpleNamespace

    import ultralytics
    from ultralytics.utils.metrics import OBBMetrics

    from autoprune.finetune import validate_checkpoint
    from autoprune.report.apply_report import epoch_curve

    box, pose = SimpleNamespace(map50=0.6, map=0.4), SimpleNamespace(map50=0.5, map=0.3)
    obb = OBBMetrics()
    obb.box = SimpleNamespace(map50=0.7, map=0.45)
    for metrics, want in ((SimpleNamespace(box=box, pose=pose), (0.5, 0.3, "pose mAP50-95")),
                          (obb, (0.7, 0.45, "OBB mAP50-95"))):
        monkeypatch.setattr(ultralytics.YOLO, "__init__", lambda self, *a, **k: None)
        monkeypatch.setattr(ultralytics.YOLO, "val", lambda self, metrics=metrics, **k: metrics)
        v = validate_checkpoint(tmp_path / "m.pt", SimpleNamespace(yaml=tmp_path / "d.yaml"), imgsz=64)
        assert (v["map50"], v["map50_95"], v["metric"]) == want
        assert ("box_map50_95" in v) == (want[2] == "pose mAP50-95")
    (tmp_path / "results.csv").write_text("epoch,metrics/mAP50(B),metrics/mAP50-95(B),metrics/mAP50(P),"
                                          "metrics/mAP50-95(P)\n1,0.6,0.4,0.5,0.3\n")
    assert epoch_curve(tmp_path, task="pose") == [{"epoch": 1, "step": 1, "map50": 0.5, "map50_95": 0.3}]
    assert epoch_curve(tmp_path, task="obb") == [{"epoch": 1, "step": 1, "map50": 0.6, "map50_95": 0.4}]


@pytest.mark.parametrize("base, key, part", [("yolov8-pose.yaml", "kpts", "cv4"),
                                             ("yolov8-obb.yaml", "angle", "cv4")])
def test_keypoints_and_angles_are_distilled_zero_when_equal_and_pulled_toward_the_teacher(tmp_path, base, key, part):
    """The head term of a Pose (OBB) head covers its keypoints (angles): exactly 0 for the teacher's own outputs,
    positive when only that branch differs, and its gradient reaches that branch and not the box branch."""
    import copy

    import torch
    from ultralytics.nn.tasks import OBBModel, PoseModel

    from autoprune.distill import angle_distillation, head_term, keypoint_distillation

    torch.manual_seed(0)
    cls = PoseModel if key == "kpts" else OBBModel
    teacher = cls(str(demo_model_yaml(tmp_path, f"v8/{base}", f"yolov8n-{key}.yaml")), verbose=False).eval()
    student = copy.deepcopy(teacher)
    x = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        t_preds = teacher(x)
    same = head_term(student(x), t_preds, cls_gain=0.5, box_gain=1.5)
    assert float(same.detach()) == pytest.approx(0.0, abs=1e-6)
    term_of = keypoint_distillation if key == "kpts" else angle_distillation
    raw = t_preds[1]
    t_conf = raw["scores"].sigmoid().amax(1)
    norm = t_conf.sum().clamp(min=1.0)
    assert float(term_of(raw, raw, t_conf, norm)) == 0.0
    last = getattr(student.model[-1], part)[0][2]
    with torch.no_grad():
        last.weight.add_(0.5 * torch.randn_like(last.weight))
        last.bias.add_(0.3)
        assert float(head_term(student(x), t_preds, cls_gain=0.5, box_gain=1.5)) > 0  # that branch alone differs
    term = term_of(student(x)[1], raw, t_conf, norm)
    assert float(term.detach()) > 0
    term.backward()
    head = student.model[-1]
    assert last.weight.grad.abs().sum() > 0
    assert head.cv2[0][2].weight.grad is None  # the box branch's outputs did not enter the term
    if key == "angle":  # a rectangle turned by pi is the same rectangle
        turned = {**raw, "angle": raw["angle"] + torch.pi}
        assert float(angle_distillation(turned, raw, t_conf, norm)) == pytest.approx(0.0, abs=1e-9)
