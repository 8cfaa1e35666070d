"""Feature-map reconstruction: refit convs that lost inputs so the pruned model's features match the original's."""

from __future__ import annotations

import copy

import pytest
import torch
from conftest import SYNTH_C2F, SYNTH_C3K2, build_synthetic, randomize_bn
from torch import nn

from autoprune.channels import analyze
from autoprune.pruner import apply_indices, conv_masks, keep_counts, rank_channels, select_indices
from autoprune.reconstruct import conv_patches, feature_errors, reconstruct

GEN = torch.Generator().manual_seed(0)
CALIB = [torch.rand(4, 3, 64, 64, generator=GEN) for _ in range(3)]
HELD_OUT = [torch.rand(4, 3, 64, 64, generator=GEN) for _ in range(2)]


pytestmark = pytest.mark.usefixtures("one_thread")


def _pruned(model, keep=0.5, criterion="l1"):
    graph = analyze(model, imgsz=64)
    indices = select_indices(graph, keep_counts(graph, keep), rank_channels(model, graph, criterion))
    return graph, indices, apply_indices(model, graph, indices)


def _model(name):
    if name == "c2f":
        model = build_synthetic(SYNTH_C2F)
    elif name == "c3k2":
        model = build_synthetic(SYNTH_C3K2)
    else:
        from ultralytics.nn.tasks import DetectionModel

        torch.manual_seed(0)
        model = DetectionModel(name, verbose=False).eval()
    randomize_bn(model)
    return model


@pytest.mark.parametrize("name", ["c2f", "c3k2", "yolov8n.yaml", "yolov3-tinyu.yaml"])
def test_reconstruction_cuts_layer_and_detect_input_errors(name):
    model = _model(name)
    graph, indices, pruned = _pruned(model)
    result = reconstruct(model, pruned, graph, indices, CALIB, max_samples=2048)
    refit = {f.conv for f in result.layers}
    masks = conv_masks(graph, indices)
    depthwise = {p.conv for p in graph.producers if p.depthwise}
    assert refit == {c for c, (_, im) in masks.items() if not im.all() and c not in depthwise}
    assert all(f.error_after < f.error_before for f in result.layers)
    for batches in (CALIB, HELD_OUT):  # on the calibration images, and on images the fit never saw
        before = feature_errors(model, pruned, graph, indices, batches)
        after = feature_errors(model, result.model, graph, indices, batches)
        assert after["detect_inputs_mean"] < 0.7 * before["detect_inputs_mean"], (before, after)
        assert after["head_outputs"] < before["head_outputs"]


@pytest.mark.parametrize("name", ["c3k2", "yolov8n.yaml"])
def test_refit_batchnorms_hold_their_inputs_statistics(name):
    """A refit BatchNorm's running statistics are its refit conv's own output statistics (gamma and beta compensate,
    so the eval-mode function is the refit's): BN recalibration, or a finetune in training mode, keeps the refit
    instead of scaling the least-squares prediction back up to the original variance."""
    model = _model(name)
    graph, indices, pruned = _pruned(model)
    result = reconstruct(model, pruned, graph, indices, CALIB, max_samples=4096)
    bn_of = {p.conv: p.bn for p in graph.producers if p.bn is not None}
    modules = dict(result.model.named_modules())
    refit_bns = [bn_of[f.conv] for f in result.layers if f.conv in bn_of]
    assert refit_bns
    seen = {path: [] for path in refit_bns}
    hooks = [modules[path].register_forward_pre_hook(lambda m, inp, path=path: seen[path].append(inp[0]))
             for path in refit_bns]
    try:
        with torch.no_grad():
            for x in CALIB:
                result.model.eval()(x)
    finally:
        for h in hooks:
            h.remove()
    for path in refit_bns:
        z = torch.cat([t.transpose(0, 1).reshape(t.shape[1], -1) for t in seen[path]], 1)  # channels x positions
        bn = modules[path]
        mean, var = z.mean(1), z.var(1)
        assert torch.all((bn.running_mean - mean).abs() <= 0.1 * var.sqrt() + 1e-5), path
        assert torch.all((bn.running_var - var).abs() <= 0.2 * var + 1e-5), path


def test_reconstruction_keeps_the_architecture_and_changes_no_input():
    model = _model("c3k2")
    graph, indices, pruned = _pruned(model)
    states = [copy.deepcopy(m.state_dict()) for m in (model, pruned)]
    result = reconstruct(model, pruned, graph, indices, CALIB)
    for m, state in zip((model, pruned), states):
        assert all(torch.equal(v, m.state_dict()[k]) for k, v in state.items())
    new = result.model.state_dict()
    assert {k: v.shape for k, v in new.items()} == {k: v.shape for k, v in pruned.state_dict().items()}
    assert all(type(a) is type(b) for a, b in zip(result.model.modules(), pruned.modules()))
    changed = {k.rsplit(".", 1)[0] for k, v in new.items() if not torch.equal(v, pruned.state_dict()[k])}
    assert changed and all(c.startswith(tuple(f.conv.rsplit(".", 1)[0] for f in result.layers)) for c in changed)


def test_samples_are_capped_per_conv():
    model = _model("c2f")
    graph, indices, pruned = _pruned(model)
    result = reconstruct(model, pruned, graph, indices, CALIB, max_samples=300)
    assert all(f.samples <= 300 for f in result.layers)  # 100 positions per batch, 3 batches
    assert any(f.samples == 300 for f in result.layers)


def test_removed_constant_channels_are_recovered_exactly_by_1x1_consumers():
    """Channels whose gamma is 0 emit a constant; a 1x1 consumer refit with its intercept reproduces the original
    output exactly (the least-squares problem has a zero-error solution)."""
    model = _model("c2f")
    graph = analyze(model, imgsz=64)
    group = graph.group("4" if "4" in graph.ids else "2")
    ranking = rank_channels(model, graph, "l1")
    indices = select_indices(graph, {group.id: group.size // 2}, ranking)
    modules = dict(model.named_modules())
    for pi, kept in zip(group.parts, indices[group.id]):
        part = graph.parts[pi]
        removed = torch.ones(part.size, dtype=torch.bool)
        removed[kept] = False
        for prod in part.producers:
            p = graph.producers[prod]
            modules[p.bn].weight.data[p.offset + removed.nonzero().flatten()] = 0.0
    pruned = apply_indices(model, graph, indices)
    result = reconstruct(model, pruned, graph, indices, CALIB, ridge=0.0)
    one_by_one = [f for f in result.layers if graph.convs[f.conv].kernel == 1]
    assert one_by_one and all(f.error_after < 1e-6 for f in one_by_one)


def test_transposed_convs_that_lost_inputs_are_left_as_pruned_and_listed():
    """YOLOv6's upsampling layers are nn.ConvTranspose2d that lose input channels: the fit leaves them as the pruner
    made them and says so; every other conv that lost inputs is refit."""
    model = _model("yolov6n.yaml")
    graph, indices, pruned = _pruned(model)
    result = reconstruct(model, pruned, graph, indices, CALIB[:1], max_samples=256)
    transposed = {c for c, info in graph.convs.items() if info.transposed}
    assert len(transposed) == 2 and set(result.unfitted) == transposed
    assert all(why.startswith("a transposed conv") for why in result.unfitted.values())
    masks = conv_masks(graph, indices)
    assert {f.conv for f in result.layers} == {c for c, (_, im) in masks.items() if not im.all()} - transposed
    assert result.summary()["unfitted"] == 2 and result.summary()["convs"] == len(result.layers)
    refit, before = dict(result.model.named_modules()), dict(pruned.named_modules())
    for c in transposed:
        assert torch.equal(refit[c].weight, before[c].weight) and torch.equal(refit[c].bias, before[c].bias)


@pytest.mark.parametrize("stride, padding, dilation", [(1, 1, 1), (2, 1, 1), (1, 2, 2), (2, 0, 1)])
def test_patches_match_unfold(stride, padding, dilation):
    conv = nn.Conv2d(5, 7, 3, stride=stride, padding=padding, dilation=dilation, bias=False)
    x = torch.randn(2, 5, 11, 9, generator=GEN)
    y = conv(x)
    cols = nn.functional.unfold(x, 3, dilation=dilation, padding=padding, stride=stride)  # (N, C*9, L)
    n = torch.tensor([0, 1, 1, 0])
    oy = torch.tensor([0, y.shape[2] - 1, 1, y.shape[2] // 2])
    ox = torch.tensor([0, y.shape[3] - 1, 2, 0])
    got = conv_patches(x, conv, (n, oy, ox))
    want = cols[n, :, oy * y.shape[3] + ox]
    assert torch.allclose(got, want)
    assert torch.allclose(got @ conv.weight.reshape(7, -1).T, y[n, :, oy, ox], atol=1e-5)
