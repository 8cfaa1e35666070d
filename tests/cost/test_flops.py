"""One FLOP model: the search space's GFLOPs prediction for a genome (channel graph's conv count plus the norms)
equals fvcore's count of the model actually pruned to that genome, and fvcore counts by `autoprune.cost.flops`'s
per-operation formulas. CPU-only, offline, 320 px."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from autoprune.channels import analyze
from autoprune.cost import count_gflops
from autoprune.cost.flops import conv_flops, norm_flops
from autoprune.models import load_model
from autoprune.pruner import prune_to_counts
from autoprune.space import load_space

IMGSZ = 320


def test_a_transposed_conv_costs_its_weights_once_per_input_position():
    layer = nn.Sequential(nn.Conv2d(3, 8, 1), nn.ConvTranspose2d(8, 16, 2, 2))
    expected = conv_flops(8, 3, 1, 64 * 64) + conv_flops(16, 8, 4, 64 * 64)  # its input is 64 x 64, its output 128
    assert count_gflops(layer, 64) == pytest.approx(expected / 1e9, abs=1e-15)


@pytest.mark.parametrize("stride,groups", [(1, 1), (2, 1), (1, 8), (2, 16)])
def test_count_gflops_applies_the_flop_model(stride, groups):
    """A conv (plain, strided, grouped, depthwise) and its BatchNorm cost exactly what the formulas say."""
    layer = nn.Sequential(nn.Conv2d(16, 32, 3, stride, 1, groups=groups, bias=False), nn.BatchNorm2d(32),
                          nn.SiLU())
    side = 64 // stride
    expected = conv_flops(32, 16 // groups, 9, side * side) + norm_flops(32 * side * side, affine=True)
    assert count_gflops(layer, 64) == pytest.approx(expected / 1e9, abs=1e-15)
    plain = nn.Sequential(nn.Conv2d(16, 32, 1, bias=False), nn.BatchNorm2d(32, affine=False))
    assert count_gflops(plain, 64) == pytest.approx(
        (conv_flops(32, 16, 1, 64 * 64) + norm_flops(32 * 64 * 64, affine=False)) / 1e9, abs=1e-15)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["yolov8n.yaml", "yolo11n.yaml", "yolov8n-seg.yaml"])
def test_space_prediction_equals_the_pruned_models_count(name):
    """Uniform 0.3/0.5/0.8 and random genomes: prediction and fvcore count agree to 1e-9 GFLOPs (float rounding).

    yolo11n has attention (matrix products that shrink with its pruned head dims) besides convs and norms;
    yolov8n-seg a pruned transposed conv (Proto's upsampling: each weight once per input position).
    """
    before = torch.get_num_threads()
    torch.set_num_threads(1)  # fvcore's trace on a shared 2-core machine: threads only wait on each other
    try:
        torch.manual_seed(0)
        model = load_model(name).model
        graph = analyze(model)
        space = load_space(None, graph, model)
        base = count_gflops(model, IMGSZ)
        genomes = [space.uniform(r) for r in (0.3, 0.5, 0.8)] + [space.random(np.random.default_rng(3))]
        seen = set()
        for genome in genomes:
            pruned = prune_to_counts(model, space.counts(genome), graph=graph)
            counted = count_gflops(pruned, IMGSZ)
            predicted = space.gflops(genome, IMGSZ, base_gflops=base)
            assert abs(predicted - counted) <= 1e-9, (name, genome, predicted, counted)
            assert counted < base  # every one of them prunes something
            seen.add(round(counted, 6))
        assert len(seen) == len(genomes)  # four different models, not one counted four times
    finally:
        torch.set_num_threads(before)
