"""The distillation loss and the finetune that trains the pruned object itself (autoprune.finetune)."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch
from conftest import randomize_bn

from autoprune.data import load_data_config
from autoprune.finetune import (
    DistillationLoss,
    DistillSettings,
    FeatureMatch,
    FeatureProjector,
    check_amp_offline,
    detect_input_channels,
    finetune,
    head_distillation,
    neck_distillation,
    offline_ultralytics,
    short_schedule,
)
from autoprune.errors import UserError
from autoprune.pruner import prune


def _outputs(seed: int, nc: int = 3, reg_max: int = 16, anchors: int = 20):
    g = torch.Generator().manual_seed(seed)
    return {"scores": torch.randn(2, nc, anchors, generator=g) * 3,
            "boxes": torch.randn(2, 4 * reg_max, anchors, generator=g) * 3}


def test_head_kd_is_zero_for_equal_outputs_and_positive_otherwise():
    s, t = _outputs(0), _outputs(1)
    assert [float(x) for x in head_distillation(s, copy.deepcopy(s))] == [0.0, 0.0]
    cls_term, box_term = head_distillation(s, t)
    assert cls_term > 0 and box_term > 0
    # Only the class logits differ: only the class term moves.
    only_cls = {"scores": t["scores"], "boxes": s["boxes"].clone()}
    c, b = head_distillation(s, only_cls)
    assert c > 0 and b == 0
    # No DFL (reg_max 1): an L1 on the side distances, zero when equal.
    s1, t1 = _outputs(0, reg_max=1), _outputs(1, reg_max=1)
    assert float(head_distillation(s1, s1)[1]) == 0.0 and head_distillation(s1, t1)[1] > 0


def test_head_kd_pulls_the_student_towards_the_teacher():
    s, t = _outputs(0), _outputs(1)
    s = {k: v.clone().requires_grad_(True) for k, v in s.items()}
    t = {k: v.clone().requires_grad_(True) for k, v in t.items()}
    loss = sum(head_distillation(s, t))
    loss.backward()
    assert t["scores"].grad is None and t["boxes"].grad is None  # the teacher's outputs are detached
    with torch.no_grad():  # one small gradient step lowers the loss
        stepped = {k: v - 0.1 * v.grad for k, v in s.items()}
    assert sum(head_distillation(stepped, t)) < loss


def _models(tiny_pruned: bool = True):
    from ultralytics.cfg import DEFAULT_CFG_DICT
    from ultralytics.nn.tasks import DetectionModel
    from ultralytics.utils import IterableSimpleNamespace

    torch.manual_seed(0)
    teacher = DetectionModel("yolov8n.yaml", nc=2, verbose=False).eval()
    randomize_bn(teacher)  # outputs that depend on the weights (a fresh model's class logits are all its bias)
    student = prune(teacher, 0.5) if tiny_pruned else copy.deepcopy(teacher)
    student.args = IterableSimpleNamespace(**DEFAULT_CFG_DICT)
    for p in teacher.parameters():
        p.requires_grad_(False)
    return teacher, student


def _batch(n: int = 2, size: int = 64):
    g = torch.Generator().manual_seed(0)
    return {"img": torch.rand(n, 3, size, size, generator=g), "batch_idx": torch.tensor([0.0, 1.0]),
            "cls": torch.tensor([[0.0], [1.0]]), "bboxes": torch.tensor([[0.5, 0.5, 0.4, 0.3], [0.3, 0.6, 0.2, 0.2]])}


def test_distillation_loss_trains_the_student_and_never_the_teacher():
    teacher, student = _models()
    crit = DistillationLoss(student, teacher, DistillSettings(weight=1.0, neck_weight=1.0),
                            FeatureProjector(detect_input_channels(student), detect_input_channels(teacher)))
    student.train()
    batch = _batch()
    loss, items = crit(student(batch["img"]), batch)
    assert list(items) == ["box_loss", "cls_loss", "dfl_loss", "kd_loss", "kd_neck"]
    assert loss.shape == (5,) and float(items["kd_loss"]) > 0 and float(items["kd_neck"]) > 0
    loss.sum().backward()
    assert all(p.grad is None for p in teacher.parameters())
    assert not teacher.training
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in student.parameters())
    assert all(p.grad is not None for p in crit.projector.parameters())


def test_distillation_terms_are_zero_when_the_student_is_the_teacher():
    teacher, student = _models(tiny_pruned=False)
    proj = FeatureProjector(detect_input_channels(student), detect_input_channels(teacher))  # identity: same widths
    crit = DistillationLoss(student, teacher, DistillSettings(weight=1.0, neck_weight=1.0), proj)
    x = _batch()["img"]
    student.eval()
    with torch.no_grad():
        kd, neck = crit.terms(student(x), teacher(x))
        assert float(kd) == 0.0 and float(neck) < 1e-10
        # A different student (pruned) gives a positive head term.
        _, pruned = _models()
        kd2, _ = DistillationLoss(pruned, teacher, DistillSettings()).terms(pruned.eval()(x), teacher(x))
    assert kd2 > 0


def test_neck_term_compares_patterns_not_scales():
    f = [torch.randn(2, 8, 4, 4)]
    proj = FeatureProjector([8], [8]).requires_grad_(False)
    assert float(neck_distillation([3 * v + 1 for v in f], f, proj)) < 1e-8
    assert float(neck_distillation([torch.randn(2, 8, 4, 4)], f, proj)) > 0.5


@pytest.mark.parametrize(("kw", "flag"), [({"weight": -1.0}, "--kd-weight"), ({"temperature": 0.0}, "--kd-temperature"),
                                          ({"neck_weight": float("nan")}, "--kd-neck")])
def test_distill_settings_are_checked(kw, flag):
    with pytest.raises(UserError, match=flag):
        DistillSettings(**kw)


def test_finetune_without_distillation_trains_the_pruned_object_with_the_plain_loss(tmp_path):
    from conftest import make_tiny_dataset
    from ultralytics.nn.tasks import DetectionModel, load_checkpoint

    data = make_tiny_dataset(tmp_path / "data")
    files = sorted(p.relative_to(tmp_path / "data") for p in (tmp_path / "data").rglob("*"))
    torch.manual_seed(0)
    model = DetectionModel("yolov8n.yaml", nc=2, verbose=False)
    pruned = prune(model, 0.5)
    before = {k: v.clone() for k, v in pruned.state_dict().items()}
    n_params = sum(p.numel() for p in pruned.parameters())
    r = finetune(pruned, load_data_config(data), save_dir=tmp_path / "train", epochs=1, imgsz=64, batch=4,
                 device="cpu", verbose=False)
    # nothing written into the dataset's folder (Ultralytics would leave labels/train.cache and labels/val.cache)
    assert sorted(p.relative_to(tmp_path / "data") for p in (tmp_path / "data").rglob("*")) == files
    assert r.loss_names == ("box_loss", "cls_loss", "dfl_loss")  # no distillation term
    assert pruned.criterion is None  # nothing of the training left on the model
    assert r.amp is False and r.device == "cpu"
    saved, _ = load_checkpoint(r.best)
    assert sum(p.numel() for p in saved.parameters()) == n_params  # the pruned network, not one rebuilt from YAML
    after = saved.float().state_dict()
    assert after.keys() == before.keys()
    changed = [k for k, v in before.items() if v.is_floating_point() and not torch.allclose(v, after[k], atol=1e-3)]
    assert len(changed) > 10  # it trained
    live = pruned.cpu().state_dict()  # the very object handed to the trainer is the one that trained
    assert sum(not torch.equal(before[k], live[k]) for k in before if before[k].is_floating_point()) > 10


def test_distilled_finetune_leaves_the_callers_teacher_as_it_was(tmp_path, tiny_data):
    from ultralytics.nn.tasks import DetectionModel

    torch.manual_seed(0)
    teacher = DetectionModel("yolov8n.yaml", nc=2, verbose=False).train()
    before = {k: v.clone() for k, v in teacher.state_dict().items()}
    grads = [p.requires_grad for p in teacher.parameters()]  # DFL's fixed conv is False in the stock model
    r = finetune(prune(teacher, 0.5), load_data_config(tiny_data), save_dir=tmp_path / "train", teacher=teacher,
                 distill=DistillSettings(weight=1.0), epochs=1, imgsz=64, batch=4, device="cpu", verbose=False)
    assert r.loss_names[-1] == "kd_loss"  # it did distil
    assert teacher.training  # the trainer froze and evaluated its own copy
    assert [p.requires_grad for p in teacher.parameters()] == grads
    assert all(torch.equal(v, teacher.state_dict()[k]) for k, v in before.items())


@pytest.mark.parametrize("epochs, warmup", [(1, 0.1), (3, 0.3), (10, 1.0), (20, 2.0), (30, 3.0), (100, 3.0)])
def test_short_schedule_scales_the_warmup_to_the_finetune(epochs, warmup):
    s = short_schedule(epochs, nc=8)
    assert s.warmup_epochs == warmup
    assert s.lr0 == 0.000833 and s.optimizer == "AdamW" and s.cos_lr and s.lrf == 0.01  # Ultralytics' fit for 8
    assert short_schedule(epochs, nc=80).lr0 == 0.000119
    o = short_schedule(epochs, nc=8, lr0=0.002, lrf=0.1, warmup_epochs=0).overrides()
    assert (o["lr0"], o["lrf"], o["warmup_epochs"], o["optimizer"]) == (0.002, 0.1, 0, "AdamW")


@pytest.mark.parametrize("kw, flag", [({"lr0": 0}, "--lr0"), ({"lrf": 2.0}, "--lrf"), ({"lrf": -1}, "--lrf"),
                                      ({"warmup_epochs": 4}, "--warmup-epochs"),
                                      ({"warmup_epochs": float("nan")}, "--warmup-epochs")])
def test_short_schedule_values_are_checked(kw, flag):
    with pytest.raises(UserError, match=flag):
        short_schedule(3, nc=8, **kw)


def test_finetune_with_the_short_schedule_and_feature_distillation(tmp_path, tiny_data):
    """The schedule reaches the trainer (a warm-up of the whole single epoch: Ultralytics would cap it at
    epochs - 1 = 0 and end the epoch at lr0) with its rate x `lr_scale` and the biases' warm-up from
    `warmup_bias_lr`, the feature term is trained and its hooks leave the student."""
    import csv

    from autoprune.candidate import rank
    from autoprune.channels import analyze
    from autoprune.pruner import apply_indices, keep_counts, select_indices
    from ultralytics.nn.tasks import DetectionModel

    torch.manual_seed(0)
    teacher = DetectionModel("yolov8n.yaml", nc=2, verbose=False).eval()
    graph = analyze(teacher, imgsz=64)
    indices = select_indices(graph, keep_counts(graph, 0.5), rank(teacher, graph, "l1"))
    student = apply_indices(teacher, graph, indices)
    settings = DistillSettings(weight=1.0, feature_weight=1.0)
    match = FeatureMatch.build(teacher, graph, indices, settings.feature_levels)
    schedule = short_schedule(1, nc=2, warmup_epochs=1.0)
    r = finetune(student, load_data_config(tiny_data), save_dir=tmp_path / "train", teacher=teacher,
                 distill=settings, features=match, schedule=schedule, epochs=1, imgsz=64, batch=4, device="cpu",
                 verbose=False, lr_scale=3.0, warmup_bias_lr=0.05)
    assert r.loss_names[-2:] == ("kd_loss", "kd_feat")
    assert r.schedule == {"name": "short", "optimizer": "AdamW", "lr0": pytest.approx(3 * schedule.lr0), "lrf": 0.01,
                          "cos_lr": True, "warmup_epochs": 1.0, "lr_scale": 3.0, "warmup_bias_lr": 0.05,
                          "ema": "Ultralytics ModelEMA (decay 0.9999, tau 2000 updates)"}
    with open(r.save_dir / "results.csv") as f:
        row = next(csv.DictReader(f, skipinitialspace=True))
    assert float(row["lr/pg1"]) == pytest.approx(3 * schedule.lr0 / 2, rel=1e-3)  # 1 of 2 warm-up batches done
    assert float(row["lr/pg2"]) == pytest.approx((0.05 + 3 * schedule.lr0) / 2, rel=1e-3)  # the biases, from 0.05
    assert all(not m._forward_hooks for m in student.modules())


@pytest.mark.parametrize("bias_lr", [None, 0.1])
def test_warmup_bias_lr_outlives_optimizer_autos_reset(tmp_path, tiny_data, bias_lr):
    """Ultralytics' optimizer=auto sets warmup_bias_lr to 0 while it builds the optimizer; the trainer puts the
    rate it was given back afterwards (None leaves auto's 0), before the warm-up reads it."""
    from autoprune.finetune import finetune_trainer

    teacher, _ = _models()
    trainer = finetune_trainer(teacher, load_data_config(tiny_data), save_dir=tmp_path / "train", epochs=2,
                               imgsz=64, batch=4, verbose=False, warmup_bias_lr=bias_lr)
    assert trainer.args.optimizer == "auto" and trainer.args.warmup_bias_lr == 0.1  # Ultralytics' default
    trainer.data = trainer.get_dataset()
    optimizer = trainer.build_optimizer(teacher, name="auto", lr=0.01, momentum=0.9, decay=5e-4, iterations=10)
    assert type(optimizer).__name__ == "AdamW"
    assert trainer.args.warmup_bias_lr == (0.0 if bias_lr is None else bias_lr)


def test_offline_ultralytics_replaces_the_downloading_checks_and_restores_them():
    import ultralytics.data.dataset as dataset
    import ultralytics.data.utils as data_utils
    import ultralytics.engine.trainer as trainer_mod

    amp, font, save = trainer_mod.check_amp, data_utils.check_font, dataset.save_dataset_cache_file
    with offline_ultralytics():
        assert trainer_mod.check_amp is check_amp_offline  # CUDA AMP check without downloading yolo26n.pt
        assert data_utils.check_font("Arial.ttf") is None  # no font download (autoprune draws no plots)
        assert dataset.save_dataset_cache_file is not save  # no labels/*.cache written into the user's dataset
    assert trainer_mod.check_amp is amp and data_utils.check_font is font and dataset.save_dataset_cache_file is save
    teacher, _ = _models()
    assert check_amp_offline(teacher) is False  # AMP does nothing on the CPU


def test_the_trainer_never_builds_a_model_from_yaml():
    from autoprune.finetune import PrunedModelTrainer

    with pytest.raises(RuntimeError, match="never builds one from a YAML"):
        PrunedModelTrainer.get_model(object(), cfg="yolov8n.yaml")


def test_pickled_modules_sees_an_autoprune_object_in_a_checkpoint(tmp_path):
    from autoprune.finetune import pickled_modules

    torch.save({"model": torch.nn.Conv2d(1, 1, 1), "oops": DistillSettings()}, tmp_path / "bad.pt")
    modules = pickled_modules(tmp_path / "bad.pt")
    assert "autoprune.distill" in modules and "torch.nn.modules.conv" in modules


def test_a_last_batch_of_one_tiny_image_is_one_error_line(tmp_path, tiny_data):
    """Ultralytics refuses to train when the last batch holds one image at a size whose feature maps reach 1 x 1
    (BatchNorm gets one value per channel): a dataset and --batch a user picked, so a UserError, not a traceback."""
    from ultralytics.nn.tasks import DetectionModel

    data = load_data_config(tiny_data)
    n = len(list((Path(tiny_data).parent / "images" / "train").glob("*")))
    torch.manual_seed(0)
    model = DetectionModel("yolov8n.yaml", nc=2, verbose=False)
    with pytest.raises(UserError, match="finetuning failed: final batch=1 training at imgsz=32"):
        finetune(model, data, save_dir=tmp_path / "train", epochs=1, imgsz=32, batch=n - 1, device="cpu", workers=0,
                 verbose=False)
