"""Channel-group analysis: the hard cases on small synthetic models, and coverage of real Ultralytics YAMLs."""

from __future__ import annotations

import pytest
import torch
from conftest import SYNTH_C2F, SYNTH_C3K2, build_synthetic, make_removed_channels_constant, randomize_bn

from autoprune.channels import analyze
from autoprune.pruner import prune


@pytest.fixture(scope="module")
def c2f_model():
    m = build_synthetic(SYNTH_C2F)
    randomize_bn(m)
    return m


@pytest.fixture(scope="module")
def c3k2_model():
    m = build_synthetic(SYNTH_C3K2)
    randomize_bn(m)
    return m


def test_c2f_split_is_one_group_of_two_tied_halves(c2f_model):
    graph = analyze(c2f_model)
    g = graph.group("1.cv1")
    assert g.size == 16 and len(g.parts) == 2
    # the residual bottleneck output shares the second half's channels
    assert "model.1.m.0.cv2" in g.producers
    assert {"model.1.cv2", "model.1.m.0.cv1"} <= set(g.consumers)


def test_c2f_halves_keep_equal_counts_and_update_c(c2f_model):
    pruned = prune(c2f_model, {"1.cv1": 0.5})
    block = pruned.model[1]
    assert block.cv1.conv.out_channels == 16  # 2 halves x 8
    assert block.c == 8
    assert block.m[0].cv1.conv.in_channels == 8
    assert block.m[0].cv2.conv.out_channels == 8  # residual: the bottleneck output follows the half
    assert block.cv2.conv.in_channels == 3 * 8  # both halves + one bottleneck output
    assert block.m[0].cv1.conv.out_channels == 16  # its own hidden group is untouched
    assert pruned(torch.zeros(1, 3, 64, 64))[0].shape == c2f_model(torch.zeros(1, 3, 64, 64))[0].shape


def test_residual_group_spans_every_bottleneck_of_a_c3():
    from ultralytics.nn.tasks import DetectionModel

    graph = analyze(DetectionModel("yolov5nu.yaml", verbose=False))
    g = graph.group("6.cv1")  # C3 with three shortcut bottlenecks
    assert g.producers == ("model.6.cv1", "model.6.m.0.cv2", "model.6.m.1.cv2", "model.6.m.2.cv2")
    assert len(g.parts) == 1


def test_concat_of_two_groups_shrinks_its_consumer_by_both(c2f_model):
    graph = analyze(c2f_model)
    assert "model.5" in graph.group("2").consumers and "model.5" in graph.group("1.cv2").consumers
    pruned = prune(c2f_model, {"2": 0.5, "1.cv2": 0.25})
    assert pruned.model[2].conv.out_channels == 16
    assert pruned.model[1].cv2.conv.out_channels == 8
    assert pruned.model[5].conv.in_channels == 16 + 8


def test_detect_box_and_class_branches_are_separate_groups(c2f_model):
    graph = analyze(c2f_model)
    box, cls = graph.group("6.cv2.0.0"), graph.group("6.cv3.0.0")
    assert box.size == 64 and cls.size == 32
    pruned = prune(c2f_model, {"6.cv2.0.0": 0.5, "6.cv3.0.0": 0.5})
    head = pruned.model[6]
    assert head.cv2[0][0].conv.out_channels == 32 and head.cv2[0][1].conv.in_channels == 32
    assert head.cv3[0][0].conv.out_channels == 16 and head.cv3[0][1].conv.in_channels == 16
    assert head.cv2[0][2].out_channels == 4 * head.reg_max and head.cv3[0][2].out_channels == 2  # outputs fixed


def test_depthwise_head_conv_follows_its_input_group(c3k2_model):
    graph = analyze(c3k2_model)
    g = graph.group("7.cv2")  # feeds the YOLO11 class branch, whose first conv is depthwise
    assert "model.8.cv3.0.0.0" in g.producers
    pruned = prune(c3k2_model, {"7.cv2": 0.5})
    dw = pruned.model[8].cv3[0][0][0].conv
    assert dw.in_channels == dw.out_channels == dw.groups == 16
    assert pruned.model[8].cv3[0][0][1].conv.in_channels == 16


def test_attention_block_prunes_inside_and_keeps_its_stock_attributes(c3k2_model):
    """C2PSA at 64 channels: one head of 32 values and 16 query/key channels; the residual stream and the values are
    one group with cv1's halves (autoprune.channels.psa; tests/channels/test_psa.py has the multi-head cases)."""
    graph = analyze(c3k2_model)
    assert graph.fixed_blocks == {} and graph.fixed_why == {}
    ids = set(graph.ids)
    assert {"3.cv2", "4.cv1", "4.m.0.attn.qkv", "4.m.0.ffn.0", "4.cv2"} <= ids
    assert "model.4.m.0.attn.pe" in graph.group("4.cv1").producers
    pruned = prune(c3k2_model, 0.5)
    attn = pruned.model[4].m[0].attn
    assert pruned.model[4].c == attn.head_dim == 16 and attn.key_dim == 8 and attn.scale == 8**-0.5
    assert pruned(torch.zeros(1, 3, 64, 64))[0].shape == c3k2_model(torch.zeros(1, 3, 64, 64))[0].shape


class _Mystery(torch.nn.Module):
    """A block no rule knows, wrapping a conv."""

    def __init__(self, inner):
        super().__init__()
        self.inner = inner

    def forward(self, x):
        return self.inner(x)


def test_unknown_block_is_a_fixed_boundary():
    model = build_synthetic(SYNTH_C2F)
    old = model.model[2]
    model.model[2] = _Mystery(old)
    model.model[2].f, model.model[2].i, model.model[2].type = old.f, old.i, "_Mystery"
    graph = analyze(model)
    assert graph.fixed_blocks == {"model.2": "_Mystery"}
    assert graph.fixed_why["model.2"].startswith("autoprune has no channel rule for _Mystery")
    pruned = prune(model, 0.5, graph=graph)
    x = torch.zeros(1, 3, 64, 64)
    assert pruned.eval()(x)[0].shape == model.eval()(x)[0].shape
    # a fixed block's convs are untouched, and what it reads is kept
    a, b = model.model[2], pruned.model[2]
    assert [p.shape for p in a.parameters()] == [p.shape for p in b.parameters()]
    assert pruned.model[1].cv2.conv.out_channels == model.model[1].cv2.conv.out_channels


SYNTH_DECONV = {
    "nc": 2,
    "backbone": [
        [-1, 1, "Conv", [16, 3, 2]],  # 0
        [-1, 1, "Conv", [32, 3, 2]],  # 1
    ],
    "head": [
        [-1, 1, "ConvTranspose", [32, 2, 2]],  # 2: Ultralytics' transposed conv + BN + act
        [-1, 1, "nn.ConvTranspose2d", [16, 2, 2, 0]],  # 3: a plain one, with a bias, as YOLOv6 and Proto have
        [-1, 1, "Conv", [16, 3, 1]],  # 4
        [[4, 1], 1, "Detect", ["nc"]],  # 5
    ],
}


def test_transposed_convs_prune_like_convs_and_fold_exactly_through_flat_kernels():
    """Both forms of transposed conv consume their input group and produce their own; removing half of every group
    (constant channels: gamma 0, zero rows for the BN-less conv, flat kernels where a transposed conv reads them)
    leaves the outputs unchanged, fused or not."""
    from autoprune.pruner import apply_indices

    model = build_synthetic(SYNTH_DECONV)
    randomize_bn(model)
    graph = analyze(model, imgsz=64)
    assert not graph.fixed_blocks
    assert graph.group("2").producers == ("model.2",) and graph.group("2").consumers == ("model.3",)
    assert graph.group("3").consumers == ("model.4",)
    assert "model.2" in graph.group("1").consumers
    assert graph.producers[graph.parts[graph.group("2").parts[0]].producers[0]].bn == "model.2.bn"
    indices = {g.id: [torch.arange(1, g.size, 2) for _ in g.parts] for g in graph.groups}
    make_removed_channels_constant(model, graph, indices)
    pruned = apply_indices(model, graph, indices)
    assert (pruned.model[2].conv_transpose.in_channels, pruned.model[2].conv_transpose.out_channels) == (16, 16)
    assert pruned.model[2].bn.num_features == 16
    assert (pruned.model[3].in_channels, pruned.model[3].out_channels) == (16, 8)
    x = torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    for m in (model, pruned):
        m.double()
        for conv in m.modules():  # a constant channel stays constant in the padding too
            if isinstance(conv, torch.nn.Conv2d) and any(conv.padding):
                conv.padding_mode = "replicate"
    with torch.no_grad():
        ref, got = model.eval()(x)[0], pruned.eval()(x)[0]
    assert (got - ref).abs().max() <= 1e-6 * ref.abs().max()
    fused = analyze(model.float().fuse(verbose=False), imgsz=64)  # ConvTranspose without its BatchNorm
    assert fused.ids == graph.ids and not fused.fixed_blocks
    assert fused.producers[fused.parts[fused.group("2").parts[0]].producers[0]].bn is None


def test_a_rule_registered_before_the_first_analysis_keeps_the_builtin_rules(c2f_model, monkeypatch):
    from torch import nn

    from autoprune.channels import register_handler, symbolic

    expected = [g.id for g in analyze(c2f_model).groups]
    monkeypatch.setattr(symbolic, "_HANDLERS", [])  # as in a fresh process: nothing analysed yet
    monkeypatch.setattr(symbolic, "_BUILTINS_INSTALLED", False)

    class Custom(nn.Module):
        def forward(self, x):
            return x

    register_handler(Custom, lambda tr, path, m, x: x)
    assert [g.id for g in analyze(c2f_model).groups] == expected
    assert symbolic._HANDLERS[0][0] is Custom  # the custom rule stays in front of the built-in ones


def test_analysis_does_not_change_the_model(c3k2_model):
    before = {k: v.clone() for k, v in c3k2_model.state_dict().items()}
    training = c3k2_model.training
    analyze(c3k2_model)
    after = c3k2_model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert c3k2_model.training == training


@pytest.mark.parametrize("name", ["yolov8n.yaml", "yolo11n.yaml"])
def test_prunable_share_of_conv_flops_target(name):
    from ultralytics.nn.tasks import DetectionModel

    graph = analyze(DetectionModel(name, verbose=False))
    assert graph.prunable_flops_share() >= 0.85


def test_conv_gflops_match_the_pruned_model():
    from ultralytics.nn.tasks import DetectionModel

    model = DetectionModel("yolo11n.yaml", verbose=False)
    graph = analyze(model)
    from autoprune.pruner import keep_counts

    counts = keep_counts(graph, 0.5)
    predicted = graph.conv_gflops(counts)
    actual = analyze(prune(model, 0.5, graph=graph)).conv_gflops()
    assert predicted == pytest.approx(actual, rel=1e-9)
    assert graph.conv_gflops(imgsz=320) == pytest.approx(graph.conv_gflops() / 4, rel=1e-9)
