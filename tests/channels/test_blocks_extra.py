"""Rules of autoprune.channels.blocks_extra that the whole-family tests in tests/test_pruner.py cannot see well."""

from __future__ import annotations

import pytest
import torch
from conftest import randomize_bn

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
