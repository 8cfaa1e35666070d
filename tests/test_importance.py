"""Importance criteria: each keeps the channels that are important by its own definition, is deterministic, scores
whole coupled groups, and the data criteria really read gradients of the detection loss."""

from __future__ import annotations

import copy

import pytest
import torch
from conftest import SYNTH_C2F, SYNTH_C3K2, build_synthetic, randomize_bn

from autoprune.channels import analyze
from autoprune.errors import UserError
from autoprune.importance import CRITERIA, DATA_CRITERIA, ScoringContext, accumulate_gradients, taylor_terms
from autoprune.pruner import channel_scores, prune, prune_to_counts, rank_channels

STRONG = torch.tensor([1, 4, 6, 9, 10, 12, 13, 15])  # 8 of the 16 channels of group "0"
WEAK = torch.tensor([i for i in range(16) if i not in STRONG.tolist()])


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def batches(tiny_data):
    from autoprune.proxy import ProxyEvaluator, ProxySettings

    ev = ProxyEvaluator(tiny_data, ProxySettings(imgsz=64, calib_batches=2, steps=0, batch=4, val_images=4,
                                                 train_images=8, device="cpu", threads=1))
    return ev.calibration_batches()


def _kept_rows(pruned):
    return pruned.model[0].conv.weight


def test_registry_lists_every_criterion():
    assert set(CRITERIA) == {"l1", "l2", "bn_scale", "lamp", "fpgm", "random", "taylor", "hessian"}
    assert DATA_CRITERIA == {"taylor", "hessian"}


@pytest.mark.parametrize("criterion", ["l1", "l2", "bn_scale", "lamp"])
def test_magnitude_criteria_keep_the_largest_channels(criterion):
    model = build_synthetic(SYNTH_C2F)
    randomize_bn(model)
    graph = analyze(model)
    conv, bn = model.model[0].conv, model.model[0].bn
    with torch.no_grad():  # 8 of the 16 channels of group "0" clearly the largest: rows, gammas and consumer columns
        conv.weight.mul_(0.01)
        conv.weight[STRONG] *= 1000
        bn.weight.mul_(0.01)
        bn.weight[STRONG] *= 1000
        model.model[1].cv1.conv.weight[:, STRONG] *= 10
    pruned = prune(model, {"0": 0.5}, criterion=criterion, graph=graph)
    assert torch.allclose(_kept_rows(pruned), conv.weight[STRONG])


def test_fpgm_keeps_the_channels_far_from_the_geometric_median():
    """Eight identical filters (and input columns) sit at the geometric median: any one replaces the others. FPGM
    removes them, although they are the largest by norm (so l1 would keep them)."""
    model = build_synthetic(SYNTH_C2F)
    graph = analyze(model)
    conv, consumer = model.model[0].conv, model.model[1].cv1.conv
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        conv.weight[STRONG] = torch.randn(8, *conv.weight.shape[1:], generator=g) * 0.3
        conv.weight[WEAK] = torch.ones(*conv.weight.shape[1:]) * 0.5
        consumer.weight[:, STRONG] = torch.randn(consumer.weight.shape[0], 8, 1, 1, generator=g) * 0.3
        consumer.weight[:, WEAK] = 0.5
    assert set(prune(model, {"0": 0.5}, criterion="l1", graph=graph).model[0].conv.weight[:, 0, 0, 0].tolist()) == {0.5}
    pruned = prune(model, {"0": 0.5}, criterion="fpgm", graph=graph)
    assert torch.allclose(_kept_rows(pruned), conv.weight[STRONG])


def test_lamp_is_one_for_each_groups_strongest_channel_and_ranks_like_l2():
    model = build_synthetic(SYNTH_C3K2)
    randomize_bn(model)
    graph = analyze(model)
    lamp, l2 = channel_scores(model, graph, "lamp"), channel_scores(model, graph, "l2")
    for g in graph.groups:
        flat = torch.cat(lamp[g.id])
        assert flat.max().item() == pytest.approx(1.0)
        assert ((flat > 0) & (flat <= 1)).all()
        for a, b in zip(lamp[g.id], l2[g.id]):
            assert torch.equal(a.argsort(descending=True, stable=True)[: g.size // 2].sort().values,
                               b.argsort(descending=True, stable=True)[: g.size // 2].sort().values)


def test_random_is_seeded_per_group_and_reproducible():
    model = build_synthetic(SYNTH_C3K2)
    graph = analyze(model)
    ctx0 = ScoringContext.for_model(model, graph)
    a = {g.id: CRITERIA["random"](ctx0, g) for g in graph.groups}
    b = {g.id: CRITERIA["random"](ctx0, g) for g in reversed(graph.groups)}  # order does not matter
    assert all(torch.equal(x, y) for gid in a for x, y in zip(a[gid], b[gid]))
    ctx1 = ScoringContext.for_model(model, graph)
    ctx1.extra["seed"] = 1
    c = {g.id: CRITERIA["random"](ctx1, g) for g in graph.groups}
    assert not all(torch.equal(x, y) for gid in a for x, y in zip(a[gid], c[gid]))
    assert not torch.equal(a[graph.groups[0].id][0], a[graph.groups[1].id][0][: graph.groups[0].size])


def _ctx_with(model, graph, fill):
    """A context whose gradients (and Fisher) are `fill(name, param)` for every parameter."""
    ctx = ScoringContext.for_model(model, graph)
    grads = {n: fill(n, p) for n, p in model.named_parameters()}
    ctx.grads.update(grads)
    ctx.extra["fisher"] = {n: g * g for n, g in grads.items()}
    return ctx


@pytest.mark.parametrize("criterion", ["taylor", "hessian"])
def test_data_criteria_follow_the_gradients_when_weights_are_equal(criterion):
    """Equal weights everywhere in group "0": only the gradients tell the channels apart."""
    model = build_synthetic(SYNTH_C2F)
    graph = analyze(model)
    with torch.no_grad():
        model.model[0].conv.weight.fill_(0.1)
        model.model[0].bn.weight.fill_(1.0)
        model.model[1].cv1.conv.weight.fill_(0.1)

    def fill(name, p):
        g = torch.full_like(p, 1e-3)
        if name in ("model.0.conv.weight", "model.0.bn.weight"):
            g[STRONG] = 1.0
        return g

    ctx = _ctx_with(model, graph, fill)
    order = rank_channels(model, graph, criterion, ctx)["0"][0]
    assert set(order[:8].tolist()) == set(STRONG.tolist())
    pruned = prune_to_counts(model, {"0": 8}, criterion=criterion, graph=graph, ctx=ctx)
    assert pruned.model[0].conv.out_channels == 8


@pytest.mark.parametrize("criterion", ["taylor", "hessian"])
def test_data_criteria_on_real_gradients_drop_zeroed_channels_and_change_with_the_data(criterion, batches):
    model = build_synthetic(SYNTH_C2F)
    randomize_bn(model)
    graph = analyze(model)
    with torch.no_grad():  # channels WEAK of group "0" do nothing: zero rows, gammas and consumer columns
        model.model[0].conv.weight[WEAK] = 0
        model.model[0].bn.weight[WEAK] = 0
        model.model[1].cv1.conv.weight[:, WEAK] = 0
    before = copy.deepcopy(model.state_dict())
    s1 = channel_scores(model, graph, criterion, batches=batches)
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())  # the model is not touched
    assert all(p.grad is None for p in model.parameters())
    assert torch.all(s1["0"][0][WEAK] == 0) and torch.all(s1["0"][0][STRONG] > 0)
    kept = rank_channels(model, graph, criterion, batches=batches)["0"][0][:8]
    assert set(kept.tolist()) == set(STRONG.tolist())
    again = channel_scores(model, graph, criterion, batches=batches)
    assert all(torch.equal(a, b) for gid in s1 for a, b in zip(s1[gid], again[gid]))  # deterministic
    other = channel_scores(model, graph, criterion, batches=batches[:1])  # other data, other scores
    assert not all(torch.allclose(a, b) for gid in s1 for a, b in zip(s1[gid], other[gid]))


def test_accumulated_gradients_cover_every_member_and_bound_the_fisher(batches):
    model = build_synthetic(SYNTH_C3K2)
    graph = analyze(model)
    ctx = accumulate_gradients(model, batches, ScoringContext.for_model(model, graph))
    assert ctx.extra["gradient_batches"] == len(batches)
    for g in graph.groups:
        for pi in g.parts:
            for kind, path, w, grad in ctx.members_with(pi, ctx.grads):
                assert grad is not None and grad.shape == w.shape, (kind, path)
    # Fisher >= squared mean gradient (Jensen), with equality only if every batch agrees
    name = "model.0.conv.weight"
    assert torch.all(ctx.extra["fisher"][name] >= ctx.grads[name] ** 2 - 1e-12)
    assert ctx.grads[name].abs().sum() > 0


def test_taylor_is_the_squared_first_order_loss_change_averaged_over_batches(batches):
    """Molchanov et al. 2019, eq. 8: per batch, (sum over the channel's rows, gammas and columns of w * g)^2, then
    the mean over batches; not |w * g| of the mean gradient, which gradients of opposite sign cancel."""
    model = build_synthetic(SYNTH_C3K2)
    randomize_bn(model)
    graph = analyze(model)
    ctx = accumulate_gradients(model, batches, ScoringContext.for_model(model, graph))
    per_batch = [accumulate_gradients(model, [b], ScoringContext.for_model(model, graph)).grads for b in batches]
    for group in graph.groups:
        got = CRITERIA["taylor"](ctx, group)
        for pi, score in zip(group.parts, got):
            change = [sum((w * g).reshape(w.shape[0], -1).sum(1) for _, _, w, g in ctx.members_with(pi, grads))
                      for grads in per_batch]
            assert torch.allclose(score, torch.stack(change).pow(2).mean(0), rtol=1e-4, atol=1e-12), group.id
            # Jensen: at least the square of the mean change, i.e. of the change along the mean gradient
            assert torch.all(score >= torch.stack(change).mean(0).pow(2) * (1 - 1e-4))
    # gradients that cancel over two batches: the mean gradient scores nothing, taylor still sees the channel
    grads = per_batch[0]
    cancel = ScoringContext.for_model(model, graph)
    cancel.grads.update({n: torch.zeros_like(g) for n, g in grads.items()})
    cancel.extra["taylor_terms"] = taylor_terms(cancel.modules, [grads, {n: -g for n, g in grads.items()}])
    zero = ScoringContext.for_model(model, graph)
    zero.grads.update(cancel.grads)
    group = graph.groups[0]
    assert torch.all(CRITERIA["taylor"](zero, group)[0] == 0)
    assert torch.allclose(CRITERIA["taylor"](cancel, group)[0], CRITERIA["taylor"](
        ScoringContext(cancel.modules, graph, dict(grads)), group)[0])


@pytest.mark.parametrize("criterion", sorted(CRITERIA))
def test_every_criterion_is_deterministic_and_scores_every_part(criterion, batches):
    model = build_synthetic(SYNTH_C3K2)
    randomize_bn(model)
    graph = analyze(model)
    kw = {"batches": batches} if criterion in DATA_CRITERIA else {}
    a = channel_scores(model, graph, criterion, **kw)
    b = channel_scores(model, graph, criterion, **kw)
    for g in graph.groups:
        assert len(a[g.id]) == len(g.parts) and all(s.shape == (g.size,) for s in a[g.id])
        assert all(torch.isfinite(s).all() and (s >= 0).all() for s in a[g.id])
        assert all(torch.equal(x, y) for x, y in zip(a[g.id], b[g.id]))


def test_every_criterion_scores_a_transposed_convs_channels_on_its_own_dimensions():
    """Proto's upsampling is an nn.ConvTranspose2d, weight (in, out, kh, kw): channels whose rows, columns, gammas
    and bias are all zero, in the group it produces (dim 1) and in the group it reads (dim 0), score 0 by every
    magnitude and data criterion, and a prune keeps exactly the others, sliced on the right dimensions."""
    from ultralytics.nn.tasks import SegmentationModel

    torch.manual_seed(0)
    model = SegmentationModel("yolov8n-seg.yaml", verbose=False).eval()
    randomize_bn(model)
    graph = analyze(model, imgsz=64)
    proto = model.model[-1].proto
    up = f"model.{len(model.model) - 1}.proto.upsample"
    out_group = next(g for g in graph.groups if up in g.producers)
    in_group = next(g for g in graph.groups if up in g.consumers)
    n = out_group.size
    weak = {out_group.id: torch.arange(0, n, 2), in_group.id: torch.arange(n // 2)}  # other channels on each side
    strong = {gid: torch.tensor([i for i in range(n) if i not in w.tolist()]) for gid, w in weak.items()}
    with torch.no_grad():
        proto.upsample.weight[:, weak[out_group.id]] = 0
        proto.upsample.bias[weak[out_group.id]] = 0
        proto.cv2.conv.weight[:, weak[out_group.id]] = 0
        proto.cv1.conv.weight[weak[in_group.id]] = 0
        proto.cv1.bn.weight[weak[in_group.id]] = 0
        proto.upsample.weight[weak[in_group.id]] = 0
    ctx = _ctx_with(model, graph, lambda name, p: torch.ones_like(p))
    for criterion in sorted(CRITERIA):
        for group in (out_group, in_group):
            (scores,) = CRITERIA[criterion](ctx, group)
            assert scores.shape == (group.size,) and torch.isfinite(scores).all() and (scores >= 0).all()
            if criterion not in ("fpgm", "random"):
                assert torch.all(scores[weak[group.id]] == 0), (criterion, group.id)
                assert torch.all(scores[strong[group.id]] > 0), (criterion, group.id)
    pruned = prune_to_counts(model, {gid: len(s) for gid, s in strong.items()}, graph=graph,
                             ranking=rank_channels(model, graph, "l1"))
    small = pruned.model[-1].proto.upsample
    assert torch.equal(small.weight, proto.upsample.weight[strong[in_group.id]][:, strong[out_group.id]])
    assert torch.equal(small.bias, proto.upsample.bias[strong[out_group.id]])


@pytest.mark.parametrize("criterion", ["taylor", "hessian"])
def test_a_data_criterion_without_data_is_a_user_error(criterion):
    model = build_synthetic(SYNTH_C2F)
    graph = analyze(model)
    with pytest.raises(UserError, match="pass --data"):
        prune(model, 0.5, criterion=criterion, graph=graph)
    with pytest.raises(UserError, match="pass --data"):
        rank_channels(model, graph, criterion)


def test_yolov3_tiny_every_criterion_prunes(batches):
    """YOLOv3-tiny (the head at nc=2 for the tiny data): every criterion ranks and prunes it."""
    from ultralytics.nn.tasks import DetectionModel

    torch.manual_seed(0)
    model = DetectionModel("yolov3-tinyu.yaml", nc=2, verbose=False).eval()
    graph = analyze(model, imgsz=64)
    x = torch.rand(1, 3, 64, 64)
    for criterion in sorted(CRITERIA):
        ranking = rank_channels(model, graph, criterion, batches=batches if criterion in DATA_CRITERIA else None)
        pruned = prune_to_counts(model, {g.id: max(8, g.size // 2) for g in graph.groups}, graph=graph, ranking=ranking)
        assert pruned.eval()(x)[0].shape == model(x)[0].shape
        assert sum(p.numel() for p in pruned.parameters()) < 0.5 * sum(p.numel() for p in model.parameters())
