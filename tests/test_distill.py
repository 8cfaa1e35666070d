"""Channel-matched feature distillation (autoprune.distill.FeatureMatch): the student's maps against the SAME
channels of the teacher's, no projector."""

from __future__ import annotations

import copy

import pytest
import torch
from conftest import randomize_bn

from autoprune.channels import analyze
from autoprune.distill import (DistillationLoss, DistillSettings, FeatureMatch, feature_distillation,
                               parse_levels)
from autoprune.errors import UserError
from autoprune.pruner import apply_indices


def _teacher():
    from ultralytics.cfg import DEFAULT_CFG_DICT
    from ultralytics.nn.tasks import DetectionModel
    from ultralytics.utils import IterableSimpleNamespace

    torch.manual_seed(0)
    teacher = DetectionModel("yolov8n.yaml", nc=2, verbose=False).eval()
    randomize_bn(teacher)
    teacher.args = IterableSimpleNamespace(**DEFAULT_CFG_DICT)
    return teacher


def _pruned_at_level_15(teacher):
    """The teacher with the group of layer 15's output (a Detect input) cut to half, keeping every other channel:
    layer 15's kept channels are computed exactly as the teacher's (only its last conv was sliced)."""
    graph = analyze(teacher, imgsz=64)
    gid = next(g for g in graph.ids if g.startswith("15.cv2"))
    size = graph.group(gid).size
    kept = torch.arange(1, size, 2)  # not the first half: a match by position would be wrong
    indices = {gid: [kept for _ in graph.group(gid).parts]}
    return apply_indices(teacher, graph, indices).eval(), graph, indices, kept


def _features(model, levels, x):
    out = {}
    hooks = [model.model[j].register_forward_hook(lambda m, i, o, j=j: out.__setitem__(j, o)) for j in levels]
    with torch.no_grad():
        model(x)
    for h in hooks:
        h.remove()
    return [out[j] for j in levels]


def test_feature_loss_is_zero_on_the_teachers_kept_channels_and_positive_on_others():
    teacher = _teacher()
    student, graph, indices, kept = _pruned_at_level_15(teacher)
    match = FeatureMatch.build(teacher, graph, indices, ((15, 1.0),))
    assert match.masks[0].nonzero().flatten().tolist() == kept.tolist()
    x = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    s, t = _features(student, [15], x), _features(teacher, [15], x)
    assert float(feature_distillation(s, t, match)) < 1e-10
    # The first half of the teacher's channels (a match by position) is not what the student kept.
    by_position = FeatureMatch([15], [torch.arange(match.masks[0].numel()) < len(kept)], [1.0])
    assert float(feature_distillation(s, t, by_position)) > 0.1


def test_default_levels_are_the_detect_inputs_and_the_loss_installs_and_removes_its_hooks():
    teacher = _teacher()
    student, graph, indices, _ = _pruned_at_level_15(teacher)
    match = FeatureMatch.build(teacher, graph, indices)
    assert match.levels == [15, 18, 21] and match.weights == [1.0, 1.0, 1.0]
    assert [int(m.sum()) for m in match.masks] == [int(student.model[-1].cv2[i][0].conv.in_channels)
                                                   for i in range(3)]
    student.args = teacher.args
    settings = DistillSettings(weight=0.0, feature_weight=1.0, feature_levels=((15, 1.0),))
    match = FeatureMatch.build(teacher, graph, indices, settings.feature_levels)
    loss = DistillationLoss(student, copy.deepcopy(teacher), settings, features=match)
    assert all(student.model[15]._forward_hooks.values())
    g = torch.Generator().manual_seed(0)
    batch = {"img": torch.rand(2, 3, 64, 64, generator=g), "batch_idx": torch.tensor([0.0, 1.0]),
             "cls": torch.tensor([[0.0], [1.0]]), "bboxes": torch.tensor([[0.5, 0.5, 0.4, 0.3], [0.3, 0.6, 0.2, 0.2]])}
    student.eval()
    with torch.no_grad():
        preds = student(batch["img"])
    _, items = loss(preds, batch)
    assert "kd_feat" in items and float(items["kd_feat"]) < 1e-10
    loss.close()
    assert not student.model[15]._forward_hooks


@pytest.mark.parametrize("levels, pattern", [
    (((40, 1.0),), r"no feature level 40"),
    (((22, 1.0),), r"no feature level 22"),
    (((11, 1.0),), r"layer 11 \(Concat\) is not the output of one conv"),
])
def test_a_level_that_does_not_exist_is_a_user_error(levels, pattern):
    teacher = _teacher()
    graph = analyze(teacher, imgsz=64)
    with pytest.raises(UserError, match=pattern):
        FeatureMatch.build(teacher, graph, {}, levels)


def test_levels_parse_with_optional_weights():
    assert parse_levels("15,18:2, 21:0.5") == ((15, 1.0), (18, 2.0), (21, 0.5))
    assert parse_levels(None) == ()
    with pytest.raises(UserError, match="--kd-levels"):
        parse_levels("15,x")
    with pytest.raises(UserError, match="--kd-levels"):
        DistillSettings(feature_weight=1.0, feature_levels=((15, 0.0),))
    with pytest.raises(UserError, match="--kd-features"):
        DistillSettings(feature_weight=-1.0)


def test_a_segment_heads_masks_are_distilled_zero_when_equal_and_pulled_toward_the_teacher():
    """The head term of a Segment head covers its mask coefficients and prototypes (mask_distillation): exactly 0 for
    the teacher's own outputs, positive for a perturbed student, and its gradient reaches the mask branch and Proto."""
    from ultralytics.nn.tasks import SegmentationModel

    from autoprune.distill import head_term, mask_distillation

    torch.manual_seed(0)
    teacher = SegmentationModel("yolov8n-seg.yaml", nc=2, verbose=False)
    student = copy.deepcopy(teacher)
    x = torch.rand(2, 3, 64, 64)
    teacher.eval()
    with torch.no_grad():
        t_preds = teacher(x)  # eval mode: ((decoded, proto), raw dict)
    student.eval()  # the same BatchNorm statistics as the teacher; gradients still flow
    same = head_term(student(x), t_preds, cls_gain=0.5, box_gain=1.5)
    assert float(same) == pytest.approx(0.0, abs=1e-6)
    raw = t_preds[1]
    t_conf = raw["scores"].sigmoid().amax(1)
    norm = t_conf.sum().clamp(min=1.0)
    assert float(mask_distillation(raw, raw, t_conf, norm)) == 0.0
    with torch.no_grad():
        student.model[-1].cv4[0][2].weight.add_(0.5 * torch.randn_like(student.model[-1].cv4[0][2].weight))
        student.model[-1].proto.cv3.conv.weight.mul_(1.5)
    with torch.no_grad():  # boxes and classes unchanged: the head term is the mask term alone
        assert float(head_term(student(x), t_preds, cls_gain=0.5, box_gain=1.5)) > 0
    s_preds = student(x)[1]
    term = mask_distillation(s_preds, raw, t_conf, norm)
    assert float(term) > 0
    term.backward()
    head = student.model[-1]
    assert head.cv4[0][2].weight.grad.abs().sum() > 0 and head.proto.cv3.conv.weight.grad.abs().sum() > 0
    assert head.cv2[0][2].weight.grad is None  # the box branch's outputs did not enter the mask term
