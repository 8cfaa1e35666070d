"""Rules of autoprune.channels.psa: the position-sensitive attention of C2PSA, PSA and C3k2's attention form."""

from __future__ import annotations

import copy

import pytest
import torch
from conftest import build_synthetic, make_removed_channels_constant, randomize_bn

from autoprune.channels import analyze
from autoprune.pruner import apply_indices, prune

# The three forms at 256 channels, so that every attention has 2 heads (num_heads = hidden // 64) and the residual
# stream has to be cut into head-sized pieces; at stride 8, 64 px inputs give 8 x 8 = 64 positions to attend over.
SYNTH_PSA = {
    "nc": 2,
    "backbone": [
        [-1, 1, "Conv", [32, 3, 2]],  # 0
        [-1, 1, "Conv", [64, 3, 2]],  # 1
        [-1, 1, "Conv", [256, 3, 2]],  # 2
        [-1, 2, "C2PSA", [256]],  # 3: two PSABlocks (YOLO11, YOLO26)
        [-1, 1, "PSA", [256]],  # 4: YOLOv10's
        [-1, 1, "C3k2", [256, True, 0.5, True]],  # 5: Bottleneck + PSABlock inside a C2f split (YOLO26)
    ],
    "head": [[[1, 5], 1, "Detect", ["nc"]]],  # 6
}

# Layer 4 becomes a PSABlock whose input is a concat of 96 and 160 channels: 4 heads of 64 cannot be cut from it.
SYNTH_UNCUTTABLE = {
    "nc": 2,
    "backbone": [
        [-1, 1, "Conv", [32, 3, 2]],  # 0
        [-1, 1, "Conv", [96, 3, 2]],  # 1
        [0, 1, "Conv", [160, 3, 2]],  # 2
        [[1, 2], 1, "Concat", [1]],  # 3
        [-1, 1, "Conv", [256, 1, 1]],  # 4: replaced by PSABlock(256, num_heads=4)
    ],
    "head": [[[1, 4], 1, "Detect", ["nc"]]],  # 5
}


def _attentions(model):
    from ultralytics.nn.modules.block import Attention

    return [m for m in model.modules() if isinstance(m, Attention)]


def _sharpness(model, x) -> list[float]:
    """For each attention of the model, the mean largest softmax weight of a query (1 / positions when uniform)."""
    attns, seen = _attentions(model), {}
    handles = [m.qkv.register_forward_hook(lambda mod, i, out, m=m: seen.__setitem__(m, out)) for m in attns]
    try:
        model(x)
    finally:
        for h in handles:
            h.remove()
    result = []
    for m in attns:
        qkv = seen[m].flatten(2).view(1, m.num_heads, 2 * m.key_dim + m.head_dim, -1)
        q, k = qkv[:, :, : m.key_dim], qkv[:, :, m.key_dim : 2 * m.key_dim]
        result.append(float(((q * m.scale).transpose(-2, -1) @ k).softmax(-1).amax(-1).mean()))
    return result


def _block_outputs(model, x) -> dict:
    """The outputs of layers 3, 4 and 5 (the attention blocks) and the model's, by layer index and "head"."""
    seen = {}
    handles = [model.model[i].register_forward_hook(lambda m, a, out, i=i: seen.__setitem__(i, out)) for i in (3, 4, 5)]
    try:
        seen["head"] = model(x)[0]
    finally:
        for h in handles:
            h.remove()
    return seen


@pytest.fixture(scope="module")
def psa_model():
    model = build_synthetic(SYNTH_PSA)
    randomize_bn(model)
    return model


def test_every_attention_channel_prunes(psa_model):
    graph = analyze(psa_model, imgsz=64)
    assert graph.fixed_blocks == {} and graph.fixed_why == {}
    assert all(not p.fixed for g in graph.groups for p in (graph.parts[i] for i in g.parts))
    assert graph.prunable_flops_share() > 0.999  # only the image input and the head's outputs stay
    for layer in (3, 4, 5):  # the residual stream and the heads' values: one group of 2 x 2 halves + 2 per attention
        g = graph.group(f"{layer}.cv1")
        attns = 2 if layer == 3 else 1
        assert g.size == 64 and len(g.parts) == 4 + 2 * attns
    qk = [g for g in graph.groups if g.id.endswith("attn.qkv")]
    assert len(qk) == len(_attentions(psa_model)) == 4 and all(g.size == 32 and len(g.parts) == 2 for g in qk)


def test_removed_attention_channels_that_are_constant_leave_the_outputs_unchanged(psa_model):
    """Half of every group's channels (random, per part) made constant and removed: query/key pairs, values, the
    residual stream, the ffn's hidden channels. Float64 with replicate padding (a constant channel stays constant at
    the border of the 3x3 convs that read the stream), and attention made sharper than at initialization (qkv's
    weights scaled up), so that a wrong pairing of queries and keys or a wrong logit scale shows."""
    model = copy.deepcopy(psa_model).double()
    graph = analyze(model, imgsz=64)
    gen = torch.Generator().manual_seed(0)
    indices = {g.id: [torch.randperm(g.size, generator=gen)[: g.size // 2].sort().values for _ in g.parts]
               for g in graph.groups}
    make_removed_channels_constant(model, graph, indices)
    x = torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    with torch.no_grad():
        for i, m in enumerate(_attentions(model)):  # a removed channel's gamma is 0: it stays constant
            for _ in range(30):
                p = _sharpness(model, x)[i]
                if 0.3 < p < 0.95:
                    break
                m.qkv.conv.weight.mul_(1.5 if p <= 0.3 else 1 / 1.5)
        assert all(0.3 < p < 0.99 for p in _sharpness(model, x))  # neither uniform (1/64) nor one-hot
    pruned = apply_indices(model, graph, indices)
    for m in (model, pruned):
        for conv in m.modules():
            if isinstance(conv, torch.nn.Conv2d) and any(conv.padding):
                conv.padding_mode = "replicate"
    with torch.no_grad():
        ref, got = _block_outputs(model, x), _block_outputs(pruned, x)
    attn = _attentions(pruned)
    assert all((m.key_dim, m.head_dim) == (16, 32) and m.scale == 16**-0.5 for m in attn)
    for i in (3, 4, 5, "head"):  # each block's kept outputs, and the model's
        r = ref[i] if i == "head" else ref[i][:, indices[f"{i}.cv2"][0]]
        assert (got[i] - r).abs().max() <= 1e-6 * r.abs().max(), i  # folds are computed in float32


def test_pruned_blocks_keep_their_classes_and_attributes_and_run_at_other_sizes(psa_model):
    from ultralytics.nn.modules.block import C2PSA, PSA, C3k2

    pruned = prune(psa_model, 0.5)
    c2psa, psa, c3k2 = pruned.model[3], pruned.model[4], pruned.model[5]
    assert (type(c2psa), type(psa), type(c3k2)) == (C2PSA, PSA, C3k2)
    assert c2psa.c == psa.c == c3k2.c == 64 and c2psa.cv1.conv.out_channels == 128
    for m in _attentions(pruned):
        assert (m.num_heads, m.head_dim, m.key_dim, m.scale) == (2, 32, 16, 16**-0.5)
        assert m.qkv.conv.out_channels == 2 * (2 * 16 + 32) and m.pe.conv.groups == m.proj.conv.in_channels == 64
    with torch.no_grad():
        assert pruned.eval()(torch.zeros(1, 3, 96, 96))[0].shape == psa_model.eval()(torch.zeros(1, 3, 96, 96))[0].shape


@pytest.mark.parametrize("name", ["yolo11n.yaml", "yolov10n.yaml", "yolo26n.yaml"])
def test_attention_of_real_models_prunes_and_keep_one_changes_nothing(name):
    from ultralytics.nn.tasks import DetectionModel

    torch.manual_seed(0)
    model = DetectionModel(name, verbose=False).eval()
    graph = analyze(model, imgsz=64)
    assert graph.fixed_blocks == {}, graph.fixed_why
    n_attn = len(_attentions(model))
    assert len([g for g in graph.groups if g.id.endswith("attn.qkv")]) == n_attn > 0
    assert len(graph.attention) == n_attn
    x = torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert (prune(model, 1.0, graph=graph)(x)[0] - model(x)[0]).abs().max() <= 1e-5


def test_an_input_that_cannot_be_cut_into_heads_keeps_the_values_and_says_why():
    from ultralytics.nn.modules.block import PSABlock

    model = build_synthetic(SYNTH_UNCUTTABLE)
    old = model.model[4]
    model.model[4] = PSABlock(256, attn_ratio=0.5, num_heads=4).eval()
    model.model[4].f, model.model[4].i, model.model[4].type = old.f, old.i, "PSABlock"
    graph = analyze(model, imgsz=64)
    assert graph.fixed_blocks == {"model.4.attn": "Attention"}
    assert "cannot be cut into 4 pieces" in graph.fixed_why["model.4.attn"]
    assert "4.attn.qkv" in graph.ids and "4.ffn.0" in graph.ids  # query/key and hidden channels still prune
    pruned = prune(model, 0.5, graph=graph)
    attn = pruned.model[4].attn
    assert (attn.head_dim, attn.key_dim) == (64, 16) and attn.proj.conv.out_channels == 256
    with torch.no_grad():
        assert pruned.eval()(torch.zeros(1, 3, 64, 64))[0].shape == model.eval()(torch.zeros(1, 3, 64, 64))[0].shape
