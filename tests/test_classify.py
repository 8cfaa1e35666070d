"""Classification end to end, as the other tasks: the demo scenes' objects cropped into class folders, the data's
task and one error line for data of another task, the proxy's top-1 accuracy, the hessian ranking on the
cross-entropy, prune --val, sparsify, the class-logit distillation, and a search and an apply. Tiny throughout: a
width-scaled yolo11n-cls, 32 px, a handful of images."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import assert_user_error, demo_model_yaml, run_cli

pytestmark = pytest.mark.usefixtures("one_thread")
IMGSZ = 32
BATCH = 5  # the demo folder's 25 train crops split into whole batches (Ultralytics refuses a last batch of 1)


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    """The demo scenes (64 px, 6 train / 3 val) as a classification folder and with detect labels, a tiny
    yolo11n-cls and a tiny yolov8n detector."""
    from autoprune.demo.dataset import generate

    root = tmp_path_factory.mktemp("classify")
    return {"root": root,
            "classify": generate(root / "cls", n_train=6, n_val=3, imgsz=64, task="classify"),
            "detect": generate(root / "det", n_train=6, n_val=3, imgsz=64),
            "model": demo_model_yaml(root, "11/yolo11-cls.yaml", "yolo11n-cls-tiny.yaml"),
            "detector": demo_model_yaml(root, "v8/yolov8.yaml", "yolov8n-tiny.yaml")}


def test_demo_classification_folder_is_the_scenes_objects_and_ultralytics_reads_it(env):
    from ultralytics.cfg import get_cfg
    from ultralytics.data import ClassificationDataset

    from autoprune.demo.dataset import CLASS_NAMES, MIN_CROP_PX, render_objects

    root = env["classify"]
    for split, n in (("train", 6), ("val", 3)):
        assert sorted(p.name for p in (root / split).iterdir()) == sorted(CLASS_NAMES)  # every class, both splits
        # one crop per labelled object of each scene, filed under its class
        want = sorted(f"{CLASS_NAMES[label[0]]}/{i:05d}_{k}.jpg" for i in range(n)
                      for k, label in enumerate(render_objects(0, split, i, 64)[2]))
        got = sorted(str(p.relative_to(root / split)) for p in (root / split).rglob("*.jpg"))
        assert got == want and len(got) > 2 * n
        ds = ClassificationDataset(str(root / split), get_cfg(overrides={"imgsz": IMGSZ}), augment=False)
        assert len(ds.samples) == len(got)  # none dropped as corrupt (every crop at least MIN_CROP_PX)
        for f, j, *_ in ds.samples:
            assert sorted(CLASS_NAMES)[j] == Path(f).parent.name
        item = ds[0]
        assert item["img"].shape == (3, IMGSZ, IMGSZ)
    import cv2

    sides = {cv2.imread(str(p)).shape[:2] for p in root.rglob("*.jpg")}
    assert all(h == w and h >= MIN_CROP_PX for h, w in sides)  # square crops


def test_data_task_and_one_error_line_for_data_of_another_task(env, capsys, tmp_path):
    from autoprune.data import check_task, load_data_config
    from autoprune.errors import UserError

    cfg = load_data_config(env["classify"])
    assert cfg.task == "classify" and cfg.class_folders and cfg.nc == 8
    assert list(cfg.names.values()) == sorted(cfg.names.values())  # Ultralytics' order: the folders, sorted
    u = cfg.ultralytics_dict()
    assert (u["train"], u["val"]) == (str(env["classify"] / "train"), str(env["classify"] / "val"))
    check_task(cfg, "classify")
    with pytest.raises(UserError, match="the model is a classify model, and .* holds detect labels"):
        check_task(load_data_config(env["detect"]), "classify")
    # through the commands: one line naming both
    args = ("--imgsz", IMGSZ, "--steps", "0", "--calib-batches", "1", "--val-images", "2", "--device", "cpu",
            "--no-latency")
    code, _, err = run_cli(capsys, "proxy", "--model", env["model"], "--data", env["detect"], *args)
    assert "holds detect labels" in assert_user_error(code, err, "the model is a classify model")
    code, _, err = run_cli(capsys, "proxy", "--model", env["detector"], "--data", env["classify"], *args)
    assert "is a classification dataset" in assert_user_error(code, err, "the model is a detect model")
    code, _, err = run_cli(capsys, "prune", "--model", env["detector"], "--data", env["classify"], "--keep", "0.5",
                           "--imgsz", IMGSZ, "--out", tmp_path / "p.pt")
    assert_user_error(code, err, "is a classification dataset (a folder of class folders)")
    # a classification folder without its val split
    (tmp_path / "noval" / "train" / "cat").mkdir(parents=True)
    (tmp_path / "noval" / "train" / "cat" / "a.jpg").write_bytes(b"")
    with pytest.raises(UserError, match="has no val/ folder"):
        load_data_config(tmp_path / "noval")


@pytest.fixture(scope="module")
def evaluator(env):
    from autoprune.proxy import ProxyEvaluator, ProxySettings

    return ProxyEvaluator(env["classify"], ProxySettings(imgsz=IMGSZ, steps=1, calib_batches=1, batch=BATCH,
                                                         val_images=12, amp=False, threads=1), task="classify")


def test_proxy_scores_top1_accuracy_of_the_validation_images(env, evaluator):
    from ultralytics.models.yolo.classify import ClassificationValidator

    from autoprune.models import load_model

    ev = evaluator
    assert isinstance(ev._validator, ClassificationValidator)
    batch = ev.calibration_batches()[0]
    assert batch["img"].shape == (BATCH, 3, IMGSZ, IMGSZ) and batch["img"].dtype == torch.uint8
    assert batch["cls"].shape == (BATCH,) and "bboxes" not in batch
    model = load_model(env["model"]).model
    r = ev.evaluate(model, recalibrate=False, steps=0)
    assert r.metric == "top-1 accuracy" and r.val_images == 12 and r.box_map50_95 is None
    # the same figures from the model's own logits
    with torch.no_grad():
        logits = torch.cat([model.eval()(b["img"].float() / 255)[1] for b in ev._val_batches])
    labels = torch.cat([b["cls"] for b in ev._val_batches])
    top = logits.argsort(1, descending=True)
    assert r.map50_95 == pytest.approx(float((top[:, 0] == labels).float().mean()), abs=1e-6)
    assert r.map50 == pytest.approx(float((top[:, :5] == labels[:, None]).any(1).float().mean()), abs=1e-6)
    assert r.precision == r.recall == r.map50_95
    assert len(r.map50_95_boot) == 200 and r.map50_95_se > 0  # each image a hit or a miss, resampled
    # the finetune runs on the cross-entropy (per image) and with the teacher's logits distilled
    trained = ev.evaluate(load_model(env["model"]).model)
    assert trained.steps == 1 and np.isfinite(trained.train_loss).all()
    assert trained.train_loss[0] == pytest.approx(np.log(8), rel=0.3)  # a fresh model's cross-entropy, ~ln(classes)


def test_hessian_ranks_on_the_cross_entropy(env, evaluator):
    import torch.nn.functional as F

    from autoprune.channels import analyze
    from autoprune.importance import ScoringContext, accumulate_gradients
    from autoprune.models import load_model

    model = load_model(env["model"]).model
    graph = analyze(model, imgsz=IMGSZ)
    b = evaluator.calibration_batches()[0]
    ctx = accumulate_gradients(model, [b], ScoringContext.for_model(model, graph))
    net = load_model(env["model"]).model.train()
    for m in net.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.eval()
    F.cross_entropy(net(b["img"].float() / 255), b["cls"]).backward()
    want = net.model[-1].linear.weight.grad
    assert want.abs().sum() > 0
    assert torch.allclose(ctx.grads["model.10.linear.weight"], want, atol=1e-6)  # the loss per image, not per batch


def test_prune_ranks_and_scores_on_the_class_folders(env, capsys, tmp_path):
    out = tmp_path / "p.pt"
    code, stdout, err = run_cli(capsys, "prune", "--model", env["model"], "--data", env["classify"], "--keep",
                                "0.5", "--imgsz", IMGSZ, "--calib-imgsz", IMGSZ, "--calib-batches", "1", "--batch",
                                BATCH, "--val-images", "6", "--out", out, "--json")
    assert code == 0, err[-3000:]
    r = json.loads(stdout)
    assert r["criterion"] == "hessian" and r["val"]["metric"] == "top-1 accuracy"
    assert 0 <= r["val"]["map50_95"] <= r["val"]["map50"] <= 1  # top-1 <= top-5
    assert r["params_ratio"] < 0.8 and out.is_file()
    from ultralytics import YOLO

    assert YOLO(str(out)).task == "classify"


def test_sparsify_trains_on_the_class_folders(env, capsys, tmp_path):
    code, stdout, err = run_cli(capsys, "sparsify", "--model", env["model"], "--data", env["classify"], "--epochs",
                                "1", "--imgsz", IMGSZ, "--batch", BATCH, "--device", "cpu", "--project", tmp_path,
                                "--name", "sp", "--json")
    assert code == 0, err[-3000:]
    from ultralytics.nn.tasks import load_checkpoint

    model, ckpt = load_checkpoint(json.loads(stdout)["checkpoint"])
    assert type(model).__name__ == "ClassificationModel" and ckpt["train_args"]["task"] == "classify"
    assert "metrics/accuracy_top1" in (tmp_path / "sp" / "train" / "results.csv").read_text()


def test_class_logits_are_distilled_zero_when_equal_and_pulled_toward_the_teacher(env):
    import copy

    from autoprune.distill import head_term, logit_distillation
    from autoprune.models import load_model

    torch.manual_seed(0)
    teacher = load_model(env["model"]).model.eval()
    student = copy.deepcopy(teacher).train()
    for m in student.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.eval()
    x = torch.rand(3, 3, IMGSZ, IMGSZ)
    with torch.no_grad():
        t_preds = teacher(x)  # eval: (probabilities, logits)
    assert float(head_term(student(x), t_preds, cls_gain=0.5, box_gain=1.5).detach()) == pytest.approx(0.0, abs=1e-6)
    linear = student.model[-1].linear
    with torch.no_grad():  # a fresh model's pooled features are near 0: its logits are about the bias
        linear.bias.add_(torch.randn_like(linear.bias))
    term = head_term(student(x), t_preds, cls_gain=0.5, box_gain=1.5)
    # the softmax KL at temperature 2, times 4, with no gain
    s, t = student(x) / 2, t_preds[1] / 2
    kl = (t.softmax(1) * (t.log_softmax(1) - s.log_softmax(1))).sum(1).mean() * 4
    assert float(term.detach()) == pytest.approx(float(kl.detach()), rel=1e-5) and float(term.detach()) > 0.01
    assert float(logit_distillation(t_preds[1], t_preds[1])) == 0.0
    term.backward()
    assert linear.bias.grad.abs().sum() > 0


@pytest.mark.slow
def test_tiny_search_and_apply(env, capsys):
    root = env["root"]
    code, out, err = run_cli(capsys, "search", "--model", env["model"], "--data", env["classify"], "--budget-gflops",
                             "0.0018", "--imgsz", IMGSZ, "--proxy-imgsz", IMGSZ, "--proxy-steps", "1",
                             "--calib-batches", "1", "--val-images", "6", "--population", "4", "--trials", "2",
                             "--device", "cpu", "--project", root / "runs", "--name", "cls", "--no-auto-confirm",
                             "--json")
    assert code == 0, err[-3000:]
    result = json.loads(out)
    assert result["evaluated"] == 2 and result["feasible"] >= 1, result
    trial = result["recommended"]["number"]
    assert "trial #0 top-1 accuracy " in err  # the progress lines name the task's score
    code, table, _ = run_cli(capsys, "trials", "--storage", f"sqlite:///{root / 'runs' / 'cls' / 'study.db'}",
                             "--study", "cls")
    assert code == 0 and "(a classify model: mAP50-95 is its top-1 accuracy, mAP50 its top-5 accuracy)" in table
    code, _, err = run_cli(capsys, "apply", "--storage", f"sqlite:///{root / 'runs' / 'cls' / 'study.db'}", "--study",
                           "cls", "--trial", str(trial), "--kd-neck", "1", "--project", root / "apply", "--name", "neck")
    assert_user_error(code, err, "--kd-neck distils the Detect head's inputs, and this model's head is Classify")
    assert not (root / "apply" / "neck").exists()  # refused before the run folder
    code, out, err = run_cli(capsys, "apply", "--storage", f"sqlite:///{root / 'runs' / 'cls' / 'study.db'}",
                             "--study", "cls", "--trial", str(trial), "--epochs", "1", "--batch", BATCH, "--device",
                             "cpu", "--project", root / "apply", "--name", "cls", "--json")
    assert code == 0, err[-3000:]
    report = json.loads(out)
    assert report["task"] == "classify" and report["metric"] == "top-1 accuracy"
    assert report["train"]["loss_names"] == ["loss", "kd_loss"]  # the cross-entropy and the logit distillation
    for stage in ("before", "pruned", "after"):
        assert 0 <= report[stage]["map50_95"] <= report[stage]["map50"] <= 1
    assert report["after"]["gflops"] == pytest.approx(result["recommended"]["gflops"], abs=1e-6)
    md = (root / "apply" / "cls" / "report.md").read_text()
    assert "| top-1 accuracy |" in md and "| top-5 accuracy |" in md
    from ultralytics import YOLO

    assert YOLO(report["outputs"]["pruned"]).task == "classify"
