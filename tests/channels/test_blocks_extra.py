"""Rules of autoprune.channels.blocks_extra that the whole-family tests in tests/test_pruner.py cannot see well."""

from __future__ import annotations

import pytest
import torch
from conftest import build_synthetic, make_removed_channels_constant, randomize_bn, replicate_padding

from autoprune.channels import analyze
from autoprune.pruner import apply_indices


def _zero_gammas_and_halve(model, graph, groups, seed=0):
    """Keep a random half of each group's channels per part and set the removed channels' BN gammas to 0."""
    g = torch.Generator().manual_seed(seed)
    modules = dict(model.named_modules(remove_duplicate=False))
    indices = {}
    for group in groups:
        indices[group.id] = []
        for pi in group.parts:
            part = graph.parts[pi]
            order = torch.randperm(part.size, generator=g)
            kept, removed = order[: part.size // 2].sort().values, order[part.size // 2 :]
            indices[group.id].append(kept)
            for prod in part.producers:
                p = graph.producers[prod]
                modules[p.bn].weight.data[p.offset + removed] = 0.0
    return indices


@pytest.fixture(scope="module")
def yolo12n():
    from ultralytics.nn.tasks import DetectionModel

    torch.manual_seed(0)
    model = DetectionModel("yolo12n.yaml", verbose=False).eval()
    randomize_bn(model)
    return model


def test_area_attention_prunes_head_dims_exactly(yolo12n):
    """Half of every AAttn's head dim removed (query/key pairs and values with gamma 0): the model's outputs stay.

    The attention is made sharp (qkv weights scaled up): with Ultralytics' small initial weights the softmax is
    nearly uniform and would hide a wrong pairing of queries and keys or a wrong logit scale.
    """
    from ultralytics.nn.modules.block import AAttn

    model = yolo12n
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, AAttn):
                m.qkv.conv.weight.mul_(30.0)
    graph = analyze(model, imgsz=64)
    assert not any(cls in ("ABlock", "AAttn") for cls in graph.fixed_blocks.values()), graph.fixed_blocks
    groups = [g for g in graph.groups if g.id.endswith("attn.qkv")]
    assert len(groups) == sum(isinstance(m, AAttn) for m in model.modules()) > 0
    indices = _zero_gammas_and_halve(model, graph, groups)
    pruned = apply_indices(model, graph, indices)
    attn = [m for m in pruned.modules() if isinstance(m, AAttn)]
    assert all(m.head_dim == 16 and m.qkv.conv.out_channels == 3 * 16 * m.num_heads for m in attn)
    x = torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    with torch.no_grad():
        ref, got = model.double()(x)[0], pruned.double()(x)[0]
    model.float()
    assert (got - ref).abs().max() <= 1e-6 * ref.abs().max()


def test_the_space_prices_attention_products_that_shrink_with_the_head_dim(yolo12n):
    """The matrix products of attention (q^T k and the mix of values) shrink with a pruned head dim: a space's
    full-GFLOPs prediction (`base_gflops`) adds them by the graph (`ChannelGraph.attention_gflops`; in area attention
    each query meets the keys of its area) and matches fvcore's count of the pruned model; left in the fixed
    remainder they would put it over by half their cost."""
    from autoprune.cost import count_gflops
    from autoprune.pruner import prune_to_counts
    from autoprune.space import load_space

    graph = analyze(yolo12n)
    space = load_space("generic", graph, yolo12n)
    base = count_gflops(yolo12n, 128)
    genome = space.uniform(0.5)
    counted = count_gflops(prune_to_counts(yolo12n, space.counts(genome), graph=graph), 128)
    assert space.gflops(genome, 128, base_gflops=base) == pytest.approx(counted, abs=1e-9)
    full, half = graph.attention_gflops(None, 128), graph.attention_gflops(space.counts(genome), 128)
    assert half == pytest.approx(full / 2) and full > 1e-3 * base


# YOLOv9-E's auxiliary branch in small: CBLinears at P1 and P3 whose pieces CBFuse sums into the main branch, up- and
# downsampled, one 64-channel piece per fuse cut to an ADown's two 32-channel halves, two pieces read by nothing.
# Every consumer of a fused stream is 1x1, so removed constant channels fold exactly under zero padding.
SYNTH_CB = {
    "nc": 2,
    "backbone": [
        [-1, 1, "nn.Identity", []],  # 0
        [-1, 1, "Conv", [16, 3, 2]],  # 1-P1/2: the auxiliary branch
        [-1, 1, "Conv", [32, 3, 2]],  # 2-P2/4
        [-1, 1, "ADown", [64]],  # 3-P3/8
        [1, 1, "CBLinear", [[16, 64]]],  # 4: at P1
        [3, 1, "CBLinear", [[16, 32, 64, 16, 16]]],  # 5: at P3 (its input's constants fold into its bias)
        [0, 1, "Conv", [16, 3, 2]],  # 6-P1/2: the main branch
        [[4, 5, -1], 1, "CBFuse", [[0, 0]]],  # 7: 5's piece upsampled x4
        [-1, 1, "Conv", [32, 1, 2]],  # 8-P2/4
        [[5, -1], 1, "CBFuse", [[1]]],  # 9
        [-1, 1, "ADown", [64]],  # 10-P3/8: two halves of 32
        [[4, 5, -1], 1, "CBFuse", [[1, 2]]],  # 11: two 64-channel pieces cut to the halves, 4's downsampled x4
        [-1, 1, "Conv", [64, 1, 1]],  # 12
    ],
    "head": [[[9, 12], 1, "Detect", ["nc"]]],  # 13
}


def test_cbfuse_pieces_join_the_stream_they_are_summed_into():
    """Each piece a CBFuse reads joins its last input's channels (cut to an ADown's halves); the group is named after
    that input's producer; a piece nothing reads is a group of its own, named by its offset when its conv names one
    already."""
    graph = analyze(build_synthetic(SYNTH_CB), imgsz=64)
    assert graph.fixed_blocks == {}, graph.fixed_why
    producers = {gid: set(graph.group(gid).producers) for gid in graph.ids}
    assert producers["6"] == {"model.4", "model.5", "model.6"}
    assert producers["8"] == {"model.5", "model.8"}
    assert producers["10.cv1"] == producers["10.cv2"] - {"model.10.cv2"} | {"model.10.cv1"} == {
        "model.4", "model.5", "model.10.cv1"}
    assert graph.group("10.cv1").size == graph.group("10.cv2").size == 32
    assert [(gid, graph.group(gid).size, graph.group(gid).consumers) for gid in ("5", "5@128")] == [
        ("5", 16, ()), ("5@128", 16, ())]
    free = [(graph.producers[i].offset, graph.parts[pi].size) for g in graph.groups for pi in g.parts
            for i in graph.parts[pi].producers if graph.producers[i].conv == "model.5.conv"]
    # every channel of CBLinear 5 prunes: its 32- and 64-channel pieces cut to the halves of ADown 10's input and output
    assert sorted(free) == [(0, 16), (16, 16), (32, 16), (48, 32), (80, 32), (112, 16), (128, 16)]


def test_removed_cblinear_channels_that_are_constant_leave_the_outputs_unchanged():
    """Half of every group whose consumers are 1x1 removed, made constant first (a CBLinear's removed channels emit
    its bias, the ADowns' act(beta)): the outputs stay to 1e-6 in float64. That covers the pieces' biases folded
    through up- and downsampling into the BatchNorm of the conv that reads the sum, the ADown halves' constants
    folded into a CBLinear's bias, and pieces nothing reads. Leaving the biases out moves the outputs by 0.4."""
    from conftest import make_removed_channels_constant

    from autoprune.pruner import prune

    model = build_synthetic(SYNTH_CB)
    randomize_bn(model)
    cbl = [m for m in model.modules() if type(m).__name__ == "CBLinear"]
    with torch.no_grad():
        for m in cbl:
            m.conv.bias.normal_(generator=torch.Generator().manual_seed(2))
    graph = analyze(model, imgsz=64)
    one_by_one = [g for g in graph.groups
                  if all(graph.convs[c.conv].kernel == 1 for pi in g.parts for c in graph.parts[pi].consumers)]
    assert {"3.cv1", "5", "5@128", "6", "10.cv1", "10.cv2"} <= {g.id for g in one_by_one}
    gen = torch.Generator().manual_seed(0)
    indices = {g.id: [torch.randperm(g.size, generator=gen)[: g.size // 2].sort().values for _ in g.parts]
               for g in one_by_one}
    make_removed_channels_constant(model, graph, indices)
    pruned = apply_indices(model, graph, indices)
    assert [m.c2s for m in pruned.modules() if type(m).__name__ == "CBLinear"] == [[8, 32], [8, 32, 32, 8, 8]]
    assert [m.conv.out_channels for m in pruned.modules() if type(m).__name__ == "CBLinear"] == [40, 88]
    x = torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    with torch.no_grad():
        ref, got = model.double()(x)[0], pruned.double()(x)[0]
        model.float()
        assert (got - ref).abs().max() <= 1e-6 * ref.abs().max()
        assert (prune(model, 1.0, graph=graph)(x.float())[0] - model(x.float())[0]).abs().max() == 0


def test_the_space_prices_pruned_cblinear_pieces_as_fvcore_counts_them():
    from autoprune.cost import count_gflops
    from autoprune.pruner import prune_to_counts
    from autoprune.space import load_space

    model = build_synthetic(SYNTH_CB)
    graph = analyze(model)
    space = load_space("generic", graph, model)
    base = count_gflops(model, 128)
    for genome in (space.uniform(0.5), space.uniform(0.3)):
        counted = count_gflops(prune_to_counts(model, space.counts(genome), graph=graph), 128)
        assert space.gflops(genome, 128, base_gflops=base) == pytest.approx(counted, abs=1e-9)
        assert counted < 0.5 * base


def test_a_piece_that_cannot_be_cut_to_line_up_keeps_its_channels_and_says_why():
    """A piece that joined an ADown input's tied halves, summed again into a stream of other parts: neither side can
    be cut (tied parts keep equal counts), so that fuse keeps both, and `autoprune groups` says why."""
    cfg = {
        "nc": 2,
        "backbone": [
            [-1, 1, "nn.Identity", []],  # 0
            [-1, 1, "Conv", [32, 3, 2]],  # 1
            [-1, 1, "ADown", [32]],  # 2: cuts 1 into two tied halves
            [0, 1, "CBLinear", [[32]]],  # 3
            [[3, 1], 1, "CBFuse", [[0]]],  # 4: the piece joins the halves
            [0, 1, "Conv", [8, 3, 2]],  # 5
            [0, 1, "Conv", [24, 3, 2]],  # 6
            [[5, 6], 1, "Concat", [1]],  # 7
            [[3, 7], 1, "CBFuse", [[0]]],  # 8: the same piece against 8 + 24
        ],
        "head": [[[2, 4, 8], 1, "Detect", ["nc"]]],
    }
    graph = analyze(build_synthetic(cfg), imgsz=64)
    assert graph.fixed_blocks == {"model.8": "CBFuse"}
    assert "cannot be cut to line up" in graph.fixed_why["model.8"]
    assert "5" not in graph.ids and "6" not in graph.ids and "1" not in graph.ids


def test_yolov9e_prunes_through_its_auxiliary_branch_and_keep_one_changes_nothing():
    """yolov9e.yaml (at 64 px): no block kept whole, every output channel of every CBLinear in a prunable group, keep 1
    leaves the output as it was, and keep 0.5 leaves at most 35% of the conv GFLOPs with each CBLinear's `c2s` the
    sizes its conv's output is split into."""
    from ultralytics.nn.modules.block import CBLinear
    from ultralytics.nn.tasks import DetectionModel

    from autoprune.pruner import prune

    torch.manual_seed(0)
    model = DetectionModel("yolov9e.yaml", verbose=False).eval()
    graph = analyze(model, imgsz=64)
    assert graph.fixed_blocks == {}, graph.fixed_why
    free = {}
    for g in graph.groups:
        for pi in g.parts:
            for i in graph.parts[pi].producers:
                free[graph.producers[i].conv] = free.get(graph.producers[i].conv, 0) + graph.parts[pi].size
    cbl = {f"model.{i}": m for i, m in enumerate(model.model) if isinstance(m, CBLinear)}
    assert len(cbl) == 5 and all(free[f"{p}.conv"] == m.conv.out_channels for p, m in cbl.items())
    x = torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        ref = model(x)[0]
        assert (prune(model, 1.0, graph=graph)(x)[0] - ref).abs().max() <= 1e-5 * ref.abs().max()
        pruned = prune(model, 0.5, graph=graph)
        assert pruned(x)[0].shape == ref.shape
    assert analyze(pruned, imgsz=64).conv_gflops() <= 0.35 * graph.conv_gflops()
    for i in range(10, 15):
        m = pruned.model[i]
        assert sum(m.c2s) == m.conv.out_channels and m.c2s == [c // 2 for c in model.model[i].c2s]


def test_a2c2f_residual_scale_prunes_with_its_channels():
    """YOLO12 l/x's A2C2f adds `gamma * cv2(...)` to its input: the residual stream prunes, gamma is sliced with cv2's
    channels, and a removed channel's constant is scaled by it (outputs unchanged with removed BN gammas at 0)."""
    import os

    import ultralytics
    import yaml
    from ultralytics.nn.modules.block import A2C2f
    from ultralytics.nn.tasks import DetectionModel

    with open(os.path.join(os.path.dirname(ultralytics.__file__), "cfg/models/12/yolo12.yaml")) as f:
        cfg = yaml.safe_load(f)
    cfg["scale"], cfg["scales"] = "l", {"l": [0.25, 0.25, 1024]}  # the l scale's residual form, at n's size
    torch.manual_seed(0)
    model = DetectionModel(cfg, verbose=False).eval()
    randomize_bn(model)
    scaled = [m for m in model.modules() if isinstance(m, A2C2f) and m.gamma is not None]
    assert scaled
    with torch.no_grad():
        for m in scaled:  # far from Ultralytics' constant 0.01, so a constant left unscaled would show
            m.gamma.uniform_(0.5, 1.5)
    graph = analyze(model, imgsz=64)
    assert not any(cls == "A2C2f" for cls in graph.fixed_blocks.values()), graph.fixed_blocks
    scaled_groups = [g for g in graph.groups if any(graph.producers[i].scale for pi in g.parts
                                                    for i in graph.parts[pi].producers)]
    assert scaled_groups
    g = torch.Generator().manual_seed(0)
    indices = {gr.id: [torch.randperm(graph.parts[pi].size, generator=g)[: graph.parts[pi].size // 2].sort().values
                       for pi in gr.parts] for gr in graph.groups}
    make_removed_channels_constant(model, graph, indices)
    pruned = apply_indices(model, graph, indices)
    halved = [m for m in pruned.modules() if isinstance(m, A2C2f) and m.gamma is not None]
    assert [m.gamma.numel() for m in halved] == [m.cv2.conv.out_channels for m in halved] == [
        m.gamma.numel() // 2 for m in scaled
    ]
    for m in (model, pruned):
        m.double()
        replicate_padding(m)
    x = torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    with torch.no_grad():
        ref, got = model(x)[0], pruned(x)[0]
    assert (got - ref).abs().max() <= 1e-6 * ref.abs().max()
