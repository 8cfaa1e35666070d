"""The latency model (`autoprune.latency_model`): a prediction is the sum of the table's entries, the table is kept on
disk, and a second build measures nothing. Timing is replaced by a deterministic function of the layer."""

from __future__ import annotations

import json

import pytest

from autoprune.channels import analyze
from autoprune.latency_layers import AttentionConfig, AttentionCore
from autoprune.latency_model import LatencyTable, LayerConfig
from autoprune.demo import demo_model_path
from autoprune.models import load_model
from autoprune.strategies import floor_counts

IMGSZ = 64


def attention_measure(core, hw):
    """An attention core (`AttentionCore`): 1 us plus 0.1 us per multiply-accumulate of its matrix products, linear in
    them like `macs_measure`, so that the table's interpolation between anchors is exact."""
    h, w = (hw, hw) if isinstance(hw, int) else hw
    n = h * w
    return 1e-3 + n * (n // core.area) * core.heads * (core.key_dim + core.head_dim) * 1e-7


def fake_measure(module, ch, hw):
    """Milliseconds as a function of what is measured: a layer by its MACs, the whole model a constant."""
    if ch is None:
        return 50.0
    if isinstance(module, AttentionCore):
        return attention_measure(module, hw)
    conv = module[0]
    return 1e-3 + conv.in_channels * conv.out_channels * conv.kernel_size[0] * conv.kernel_size[1] * hw * hw * 1e-9


@pytest.fixture(scope="module")
def demo():
    model = load_model(str(demo_model_path())).model
    return model, analyze(model, imgsz=IMGSZ)


def test_prediction_is_the_sum_of_the_entries(demo):
    model, graph = demo
    table = LatencyTable(model, graph, imgsz=IMGSZ, backend="onnxruntime", threads=1, measure=fake_measure).build()
    assert table.sites and table.measured > len(table.sites)
    full = table.layer_latencies()
    assert table.overhead_ms > 0
    for site in table.sites:  # an unpruned conv is priced by its own measured entry, less the call overhead
        assert full[site.name] == pytest.approx(table.entry(site.full) - table.overhead_ms)
    assert table.rest_ms == pytest.approx(50.0 - sum(full.values()))
    assert table.predict() == pytest.approx(50.0)  # unpruned: what the model measured end to end
    small = floor_counts(graph)
    layers = table.layer_latencies(small)
    assert table.scale == 1.0  # the fake model costs more than its convs: a positive rest, nothing scaled
    assert table.predict(small) == pytest.approx(sum(layers.values()) + table.rest_ms)
    assert table.predict(small) < table.predict()
    channels = graph.conv_channels(small)
    for site in table.sites:  # at the floor every conv sits on an anchor: its measured entry, no interpolation
        assert layers[site.name] == pytest.approx(table.entry(site.config(*channels[site.name])) - table.overhead_ms)


def test_depth_plans_remove_their_convs_from_the_prediction(demo):
    """A depth plan's removed elements cost nothing and their concat reader reads fewer channels: the prediction
    of widths + depth is the sum over the convs that remain, each at the channels it keeps; the order decides which
    element goes."""
    from autoprune.depth import conv_channels, depth_key

    model, graph = demo
    table = LatencyTable(model, graph, imgsz=IMGSZ, backend="onnxruntime", threads=1, measure=fake_measure).build()
    small = floor_counts(graph)
    small["4.m.1.cv1"] = graph.group("4.m.1.cv1").size  # element 1 of 4.m wider than element 0
    plan = {**small, depth_key("4.m"): 1, depth_key("2.m"): 0}
    layers = table.layer_latencies(plan)
    channels = conv_channels(graph, list(table.units), plan)
    assert "model.4.m.1.cv1.conv" not in channels and "model.2.m.0.cv1.conv" not in channels
    for site in table.sites:
        expected = 0.0 if site.name not in channels else table._layer_ms(
            site.name, site.config(*channels[site.name]).macs())
        assert layers[site.name] == pytest.approx(expected)
    reader = next(u.reader for u in table.units if u.id == "2.m")
    assert channels[reader][0] < graph.conv_channels(small)[reader][0]  # below its width floor: an anchor there
    assert layers[reader] == pytest.approx(table.entry(next(s for s in table.sites if s.name == reader).config(
        *channels[reader])) - table.overhead_ms)
    assert table.predict(plan) < table.predict(small)
    table.element_orders = {depth_key("4.m"): [1, 0]}  # the wide element 1 stays: more time than keeping element 0
    wide = table.predict(plan)
    table.element_orders = {}
    assert wide > table.predict(plan)


def test_layers_summing_to_more_than_the_model_are_scaled_down(demo):
    model, graph = demo
    table = LatencyTable(model, graph, imgsz=IMGSZ, backend="onnxruntime", threads=1,
                         measure=lambda m, ch, hw: 0.001 if ch is None else fake_measure(m, ch, hw)).build()
    assert table.rest_ms == pytest.approx(0.0) and 0 < table.scale < 1
    assert table.predict() == pytest.approx(0.001)
    assert 0 < table.predict(floor_counts(graph)) < table.predict()


def test_table_is_cached_on_disk(demo, tmp_path):
    model, graph = demo
    path = tmp_path / "lut.json"
    first = LatencyTable(model, graph, imgsz=IMGSZ, backend="onnxruntime", threads=1, path=path,
                         measure=fake_measure).build()
    assert first.measured > 0 and path.exists()
    assert len(json.loads(path.read_text())["entries"]) == first.measured

    def never(*_):
        raise AssertionError("the second build measured something")

    second = LatencyTable(model, graph, imgsz=IMGSZ, backend="onnxruntime", threads=1, path=path,
                          measure=never).build()
    assert second.measured == 0
    assert second.predict(floor_counts(graph)) == pytest.approx(first.predict(floor_counts(graph)))
    assert second.fingerprint() == first.fingerprint()


def test_a_real_layer_is_measured_in_each_cpu_runtime(demo, one_thread):
    pytest.importorskip("openvino")
    model, graph = demo
    cfg = LayerConfig("conv", (16, 16), 8, 16, (3, 3), (1, 1), (1, 1), (1, 1), 1, "SiLU")
    for backend in ("onnxruntime", "openvino"):
        table = LatencyTable(model, graph, imgsz=IMGSZ, backend=backend, threads=1)
        ms = table.entry(cfg)
        assert 0 < ms < 1000 and table.measured == 1
        assert table.entry(cfg) == ms and table.measured == 1  # filed: not measured again


def test_entries_measured_under_load_are_measured_again_on_a_quiet_machine(demo, tmp_path):
    """A table built while the CPU was busy files its entries as measured under load and says so; a later build on
    a quiet machine measures them again (and files quiet figures), a later busy one reuses them."""
    import os

    model, graph = demo
    path = tmp_path / "lut.json"
    busy, quiet = (lambda: 10.0 * (os.cpu_count() or 1)), (lambda: 0.0)
    calls = []

    def measure(module, ch, hw):
        calls.append(ch)
        return fake_measure(module, ch, hw)

    first = LatencyTable(model, graph, imgsz=IMGSZ, threads=1, path=path, measure=measure, load_average=busy).build()
    assert first.entries_under_load == first.measured > 0 and "under load" in first.load_note()
    entries = json.loads(path.read_text())["entries"]
    assert all(e.get("under_load") for e in entries.values())
    calls.clear()
    again_busy = LatencyTable(model, graph, imgsz=IMGSZ, threads=1, path=path, measure=measure,
                              load_average=busy).build()
    assert not calls and again_busy.entries_under_load == first.measured
    quiet_table = LatencyTable(model, graph, imgsz=IMGSZ, threads=1, path=path, measure=measure,
                               load_average=quiet).build()
    assert len(calls) == first.measured and quiet_table.entries_under_load == 0 and quiet_table.load_note() is None
    assert not any(e.get("under_load") for e in json.loads(path.read_text())["entries"].values())
    calls.clear()
    LatencyTable(model, graph, imgsz=IMGSZ, threads=1, path=path, measure=measure, load_average=busy).build()
    assert not calls  # quiet figures are kept whatever the load later


# -- operator swaps --------------------------------------------------------------------------------------------------

SWAPS = {"3": "dws", "5": "factor", "4.m.0.cv1": "group4", "1": "group8"}  # stride-2 and stride-1 sites


def macs_measure(module, ch, hw):
    """1 us plus 1 ns per multiply-accumulate of the layer (run to find its output size; `hw` a side or (h, w)),
    50 ms for the whole model: linear in MACs, so the table's interpolation between anchors is exact."""
    import torch

    if ch is None:
        return 50.0
    if isinstance(module, AttentionCore):
        return attention_measure(module, hw)
    conv = module[0]
    h, w = (hw, hw) if isinstance(hw, int) else hw
    with torch.no_grad():
        out = conv(torch.zeros(1, ch, h, w))
    return 1e-3 + out.numel() * (conv.in_channels // conv.groups) * conv.kernel_size[0] * conv.kernel_size[1] * 1e-9


def _swapped(counts, swaps=SWAPS):
    from autoprune.swap import KINDS, swap_key

    return {**counts, **{swap_key(sid): KINDS.index(kind) for sid, kind in swaps.items()}}


def test_swap_layers_are_the_convs_swap_convs_builds(demo):
    """`swap_layers` describes the replacement as `swap.swap_convs` builds it: the same convs (kernels, strides,
    paddings, groups, input sizes, activations) in the same order, at full and at pruned channels."""
    from autoprune.latency_model import _layer_configs, swap_layers
    from autoprune.pruner import prune_to_counts
    from autoprune.swap import swap_convs

    model, graph = demo
    small = floor_counts(graph)
    for counts in (None, small):
        pruned = prune_to_counts(model, counts, graph=graph) if counts else model
        before = _layer_configs(pruned, IMGSZ)
        for sid, kind in SWAPS.items():
            swapped, _ = swap_convs(pruned, {sid: kind})
            after = _layer_configs(swapped, IMGSZ)
            built = [cfg for name, cfg in after.items() if name.startswith(f"model.{sid}.")]
            expected = swap_layers(before[f"model.{sid}.conv"], kind)
            assert built == expected and len(expected) == (2 if kind in ("dws", "factor") else 1), (sid, kind)
    cfg = before["model.5.conv"]
    assert swap_layers(cfg, "factor")[1].in_hw == (cfg.out_hw()[0], cfg.in_hw[1])  # rectangular: measured so
    odd = LayerConfig("conv", (8, 8), 12, 20, (3, 3), (1, 1), (1, 1), (1, 1), 1, "SiLU")
    assert swap_layers(odd, "group8") == [odd]  # 12 -> 20 do not divide by 8: the conv stays, as swap_convs leaves it


def test_a_swapped_conv_is_priced_by_its_replacement_layers(demo):
    """With a swap in the counts, the site is priced by the sum of its replacement layers' entries at the
    candidate's channels (exact here: the fake time is linear in MACs) instead of the original conv; the rest of
    the prediction is unchanged, and it never falls when a group's count rises."""
    from autoprune.latency_model import swap_layers

    model, graph = demo
    table = LatencyTable(model, graph, imgsz=IMGSZ, threads=1, measure=macs_measure,
                         swaps={sid: [kind] for sid, kind in SWAPS.items()}).build()
    configs = {s.name: s for s in table.sites}
    for counts in (None, floor_counts(graph), {**floor_counts(graph), "3": 48, "4.m.0.cv1": 24}):
        plain, swapped = table.layer_latencies(counts), table.layer_latencies(_swapped(counts or {}))
        channels = graph.conv_channels(counts)
        for sid, kind in SWAPS.items():
            conv = f"model.{sid}.conv"
            layers = swap_layers(configs[conv].config(*channels[conv]), kind)
            by_hand = sum(macs_measure(c.module(), c.cin, c.in_hw if c.in_hw[0] != c.in_hw[1] else c.in_hw[0])
                          - table.overhead_ms for c in layers)
            assert swapped[conv] == pytest.approx(by_hand, rel=1e-9, abs=1e-12), (sid, kind)
            assert swapped[conv] != pytest.approx(plain[conv])
        assert {k: v for k, v in swapped.items() if k[6:-5] not in SWAPS} == {
            k: v for k, v in plain.items() if k[6:-5] not in SWAPS}
        assert table.predict(_swapped(counts or {})) == pytest.approx(sum(swapped.values()) + table.rest_ms)
        assert table.predict(_swapped(counts or {})) != pytest.approx(table.predict(counts))
    assert table.predict() == pytest.approx(50.0)  # no swap: what the model measured end to end
    # non-decreasing in every group's count, one group at a time from the floor up (steps of round_to)
    counts = floor_counts(graph)
    last = table.predict(_swapped(counts))
    for g in graph.groups:
        while counts[g.id] < g.size:
            counts[g.id] = min(counts[g.id] + 8, g.size)
            now = table.predict(_swapped(counts))
            assert now >= last - 1e-12, (g.id, counts[g.id])
            last = now
    assert table.predict(_swapped(counts)) == table.predict(_swapped({}))  # every group full: the unpruned widths


def test_a_swap_of_a_conv_pruning_never_changes_takes_its_time_out_of_the_rest(demo):
    """A conv with no anchor curve (pruning never changes it; its time is part of `rest_ms`) swapped: its own entry
    comes out of the prediction and its replacement's go in. A swap not given to the table is measured when first
    priced; a site gone with its depth element costs nothing."""
    from autoprune.depth import depth_key
    from autoprune.latency_model import swap_layers

    model, graph = demo
    table = LatencyTable(model, graph, imgsz=IMGSZ, threads=1, measure=macs_measure, min_channels=4096).build()
    assert "model.3.conv" not in {s.name for s in table.sites}  # floors at full: only depth elements' convs
    before = table.measured
    full = table._configs["model.3.conv"]
    ms = table.predict(_swapped({}, {"3": "dws"}))
    assert table.measured > before  # measured on first use
    by_hand = sum(macs_measure(c.module(), c.cin, c.in_hw[0]) - table.overhead_ms for c in swap_layers(full, "dws"))
    original = macs_measure(full.module(), full.cin, full.in_hw[0]) - table.overhead_ms
    assert ms == pytest.approx(50.0 - original + by_hand)
    assert table.predict(_swapped({}, {"3": "group4"})) < table.predict()  # fewer MACs, less time here
    gone = {depth_key("4.m"): 0, **_swapped({}, {"4.m.0.cv1": "dws"})}
    assert table.predict(gone) == pytest.approx(table.predict({depth_key("4.m"): 0}))
    with pytest.raises(ValueError, match="no swap site"):
        table.predict({"swap:4": 1})  # layer 4 is a C2f


def test_a_table_without_swaps_measures_what_it_did(demo):
    """The entries of a table without swaps are the overhead, its convs' anchors and the model, nothing else (the
    keys of a cache written before swaps were priced); one with swaps adds its replacement layers' entries only, and
    predicts the same for counts without swaps."""
    from autoprune.cost.signature import architecture_signature
    from autoprune.latency_model import LAYER_TIMING, MODEL_TIMING, OVERHEAD, swap_layers

    model, graph = demo
    plain = LatencyTable(model, graph, imgsz=IMGSZ, threads=1, measure=macs_measure).build()
    keys = set(plain.cache._entries)
    cfgs = {LayerConfig(*OVERHEAD)} | {c for s in plain.sites for c in s.anchors()}
    expected = {plain._key("layer:" + c.key(), c.in_hw[0], LAYER_TIMING) for c in cfgs}
    expected.add(plain._key("model:" + architecture_signature(plain.model), IMGSZ, MODEL_TIMING))
    assert keys == expected and plain.measured == len(expected)
    swapped = LatencyTable(model, graph, imgsz=IMGSZ, threads=1, measure=macs_measure,
                           swaps={sid: [kind] for sid, kind in SWAPS.items()}).build()
    added = set(swapped.cache._entries) - keys
    assert keys <= set(swapped.cache._entries) and swapped.measured == len(keys) + len(added)
    sites = {s.name: s for s in plain.sites}
    for key in added:  # each a layer of a replacement at one of its site's anchors, filed with what was timed
        cfg = LayerConfig(**{k: tuple(v) if isinstance(v, list) else v
                             for k, v in swapped.cache._entries[key]["layer"].items()})
        g = {"group4": 4, "group8": 8}
        assert any(cfg in swap_layers(LayerConfig(**{**vars(a), "cin": a.cin + (-a.cin) % g.get(kind, 1),
                                                     "cout": a.cout + (-a.cout) % g.get(kind, 1)}), kind)
                   for sid, kind in SWAPS.items() for a in sites[f"model.{sid}.conv"].anchors()), cfg
    small = floor_counts(graph)
    assert swapped.predict(small) == plain.predict(small) and swapped.fingerprint() != plain.fingerprint()


def test_a_segment_models_transposed_conv_is_priced_and_a_classifiers_linear_is_left_in_the_rest():
    """Proto's upsample (nn.ConvTranspose2d, pruned like a conv) is a site measured as a transposed conv, priced by its
    input positions; a classifier's nn.Linear (a group's consumer, not a layer the table measures) stays in rest_ms."""
    import torch
    from ultralytics.nn.tasks import ClassificationModel, SegmentationModel

    seg = SegmentationModel("yolov8n-seg.yaml", nc=2, verbose=False).eval()
    graph = analyze(seg, imgsz=IMGSZ)
    table = LatencyTable(seg, graph, imgsz=IMGSZ, backend="onnxruntime", threads=1, measure=fake_measure).build()
    up = next(s for s in table.sites if s.name.endswith("proto.upsample"))
    assert up.full.op == "conv_transpose" and up.full.out_hw() == (2 * up.full.in_hw[0],) * 2
    assert isinstance(up.full.module()[0], torch.nn.ConvTranspose2d)
    assert up.full.macs() == up.full.cin * up.full.cout * 4 * up.full.in_hw[0] ** 2  # 2x2 kernel per input pixel
    small = floor_counts(graph)
    assert table.layer_latencies(small)[up.name] < table.layer_latencies()[up.name]
    cls = ClassificationModel("yolo11n-cls.yaml", nc=3, verbose=False).eval()
    graph = analyze(cls, imgsz=IMGSZ)
    table = LatencyTable(cls, graph, imgsz=IMGSZ, backend="onnxruntime", threads=1, measure=fake_measure).build()
    assert all(isinstance(s.full.module()[0], torch.nn.Conv2d) for s in table.sites)
    assert table.predict(floor_counts(graph)) < table.predict()


def test_predictions_are_medians_the_entries_minima(demo, monkeypatch, tmp_path):
    """The entries are minima; `predict` gives the median a timing run of the model would (what `cost` and a search's
    latency budget use): the minima's sum scaled by the unpruned model's median over minimum, kept in the table."""
    import autoprune.cost.latency as latency
    from autoprune.cost import LatencyResult

    model, graph = demo
    runs = []

    def measure(model, *, imgsz, batch, device, backend, precision, threads, protocol, cache):
        runs.append(imgsz)
        return LatencyResult(median_ms=60.0, p10_ms=50.0, p90_ms=70.0, min_ms=50.0, repeats=15, device="cpu",
                             device_name="fake", backend=backend, precision="fp32", threads=1, imgsz=imgsz, batch=1,
                             signature="fake", stable=True)

    monkeypatch.setattr(latency, "measure_latency", measure)
    monkeypatch.setattr(LatencyTable, "_time", lambda self, module, ch, hw, protocol: fake_measure(module, ch, hw))
    path = tmp_path / "lut.json"
    quiet = lambda: 0.0  # noqa: E731  (entries filed as measured on a quiet machine, whatever the load now)
    table = LatencyTable(model, graph, imgsz=IMGSZ, backend="onnxruntime", threads=1, path=path,
                         load_average=quiet).build()
    assert table.median_ratio == pytest.approx(1.2) and len(runs) == 1
    assert table.predict_min() == pytest.approx(50.0) and table.predict() == pytest.approx(60.0)
    small = floor_counts(graph)
    assert table.predict(small) == pytest.approx(1.2 * table.predict_min(small))
    again = LatencyTable(model, graph, imgsz=IMGSZ, backend="onnxruntime", threads=1, path=path,
                         load_average=quiet).build()
    assert again.median_ratio == pytest.approx(1.2) and again.measured == 0 and len(runs) == 1  # kept on disk


@pytest.mark.parametrize("backend", ["onnxruntime", "openvino"])
def test_a_transposed_conv_entry_runs_the_transposed_conv_in_the_runtime(backend):
    """What the table times for a transposed conv is that layer in the runtime (OpenVINO's graph is built by hand:
    a Convolution there would time another layer), checked by its outputs against torch."""
    import numpy as np
    import torch

    from autoprune.cost import backends
    from autoprune.latency_model import _layer_session

    cfg = LayerConfig("conv_transpose", (8, 8), 16, 16, (2, 2), (2, 2), (0, 0), (1, 1), 1, "Identity")
    module = cfg.module()
    session = _layer_session(backend, module, torch.device("cpu"), cfg.cin, 8, 1, "fp32", 1)
    out = session.outputs()[0]
    with torch.no_grad():
        expected = module(backends.fixed_input(1, cfg.cin, 8)).numpy()
    assert out.shape == expected.shape == (1, 16, 16, 16)
    assert np.allclose(out, expected, atol=1e-4)


# -- attention -------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def attention_models():
    """yolo11n (one PSA `Attention`) and yolo12n (eight area attentions, `AAttn`) with their channel analyses."""
    from ultralytics.nn.tasks import DetectionModel

    out = {}
    for name in ("yolo11n.yaml", "yolo12n.yaml"):
        model = DetectionModel(name, verbose=False).eval()
        out[name] = model, analyze(model, imgsz=IMGSZ)
    return out


@pytest.mark.parametrize("block", ["Attention", "AAttn area 4", "AAttn area 1"])
def test_an_attention_core_does_what_its_block_does_between_its_convs(block):
    """The core from the qkv conv's output gives what the block's `proj` and `pe` read: proj(x + pe(v)) is the
    block's output, for PSA's `Attention` and YOLO12's area attention (positions cut into areas, or not)."""
    import torch
    from ultralytics.nn.modules.block import AAttn, Attention

    torch.manual_seed(0)
    m = {"Attention": Attention(64, 2), "AAttn area 4": AAttn(64, 2, area=4), "AAttn area 1": AAttn(64, 4)}[block]
    m.eval()
    op = "attention" if isinstance(m, Attention) else "area_attention"
    cfg = AttentionConfig(op, (8, 8), m.num_heads, getattr(m, "key_dim", m.head_dim), m.head_dim, getattr(m, "area", 1))
    x = torch.randn(1, 64, 8, 8)
    with torch.no_grad():
        qkv = m.qkv(x)
        assert qkv.shape[1] == cfg.cin
        mixed, v = cfg.module()(qkv)
        assert torch.allclose(m.proj(mixed + m.pe(v)), m(x), atol=1e-5)
    assert cfg.macs() == 64 * (64 // cfg.area) * m.num_heads * (cfg.key_dim + cfg.head_dim)


@pytest.mark.parametrize("name", ["yolo11n.yaml", "yolo12n.yaml"])
def test_attention_head_dims_are_priced(attention_models, name):
    """Each attention block's matrix products are an entry of the table (`AttentionConfig`, its MACs the channel
    analysis's), taken out of `rest_ms` unpruned and priced at the candidate's head dims: pruning only the query/key
    channels predicts less, by what the core's entries say, and the prediction never falls when they rise."""
    model, graph = attention_models[name]
    table = LatencyTable(model, graph, imgsz=IMGSZ, threads=1, measure=macs_measure).build()
    sites = {s.name: s for s in table.attention_sites}
    assert set(sites) == set(graph.attention)
    for counts in (None, floor_counts(graph)):  # the cores' MACs are the analysis's attention GFLOPs
        channels = graph.conv_channels(counts)
        macs = sum(s.config(channels[s.qkv][1], channels[s.values][1]).macs() for s in sites.values())
        assert 2 * macs / 1e9 == pytest.approx(graph.attention_gflops(counts))
    full = table.layer_latencies()
    convs = sum(full[s.name] for s in table.sites)
    cores = {n: table.entry(s.full) - table.overhead_ms for n, s in sites.items()}
    assert all(full[n] == pytest.approx(ms) and ms > 0 for n, ms in cores.items())
    assert table.rest_ms == pytest.approx(50.0 - convs - sum(cores.values()))
    assert table.predict_min() == pytest.approx(table.rest_ms + convs + sum(cores.values())) == pytest.approx(50.0)

    qk = [g for g in graph.groups if g.id.endswith("attn.qkv")]
    assert qk and all(g.producers[0].removesuffix(".qkv") in sites for g in qk)
    pruned = {g.id: 8 for g in qk}  # the head dims alone: every other group whole
    layers = table.layer_latencies(pruned)
    channels = graph.conv_channels(pruned)
    for n, s in sites.items():  # exact: the fake time is linear in the MACs the table interpolates in
        cfg = s.config(channels[s.qkv][1], channels[s.values][1])
        assert cfg.key_dim < s.full.key_dim or cfg.head_dim < s.full.head_dim
        assert layers[n] == pytest.approx(attention_measure(cfg, cfg.in_hw) - table.overhead_ms)
        assert layers[n] < full[n]
    assert table.predict_min(pruned) == pytest.approx(table.rest_ms + sum(layers.values()))
    without_cores = table.rest_ms + sum(layers[s.name] for s in table.sites) + sum(cores.values())
    assert table.predict_min(pruned) < without_cores - 1e-9  # what the table predicted with the cores in rest_ms
    last = table.predict(floor_counts(graph) | {g.id: 8 for g in qk})
    for size in range(16, qk[0].size + 1, 8):
        now = table.predict(floor_counts(graph) | {g.id: size for g in qk})
        assert now > last
        last = now


def test_an_attention_a_depth_plan_removes_costs_nothing(attention_models, monkeypatch):
    """An attention block inside a removed depth element (its qkv conv gone from the channels) costs nothing. No
    stock model has such an element yet (C2PSA's PSABlocks are no depth unit): yolo11n's is made one here."""
    import autoprune.depth as depth
    from autoprune.depth import DepthUnit, depth_key

    model, graph = attention_models["yolo11n.yaml"]
    psa = DepthUnit(id="10.m", layer=10, block="C2PSA", kind="chain", n=1, residual=True,
                    elements=("model.10.m.0",), out_convs=("model.10.m.0.ffn.1.conv",), reader=None)
    real = depth.find_units
    monkeypatch.setattr(depth, "find_units", lambda m: [*real(m), psa])
    table = LatencyTable(model, graph, imgsz=IMGSZ, threads=1, measure=macs_measure).build()
    attn = "model.10.m.0.attn"
    assert [s.name for s in table.attention_sites] == [attn]
    kept, gone = table.layer_latencies({depth_key("10.m"): 1}), table.layer_latencies({depth_key("10.m"): 0})
    assert kept[attn] > 0 and gone[attn] == 0.0
    assert table.predict_min({depth_key("10.m"): 0}) == pytest.approx(table.rest_ms + sum(gone.values()))


def test_a_model_without_attention_predicts_from_its_convs_alone(demo):
    """No attention, no attention entry: the prediction is `rest_ms` (the model less its convs' entries) plus the
    convs' entries at the candidate's channels, computed here from the fake timer, and the table hashes as a table
    of convs alone (the state it always hashed)."""
    import hashlib

    model, graph = demo
    assert not graph.attention
    table = LatencyTable(model, graph, imgsz=IMGSZ, threads=1, measure=macs_measure).build()
    assert table.attention_sites == [] and not table._attention_curves

    def conv_ms(cfg):
        return macs_measure(cfg.module(), cfg.cin, cfg.in_hw[0]) - table.overhead_ms

    rest = 50.0 - sum(conv_ms(s.full) for s in table.sites)
    assert table.rest_ms == pytest.approx(rest)
    small = floor_counts(graph) | {"4.m.0.cv1": 24}
    channels = graph.conv_channels(small)
    expected = rest + sum(conv_ms(s.config(*channels[s.name])) for s in table.sites)
    assert table.predict_min(small) == pytest.approx(expected)
    state = {"curves": table._curves, "rest": table.rest_ms, "scale": table.scale}
    assert table.fingerprint() == hashlib.sha256(json.dumps(state, sort_keys=True).encode()).hexdigest()[:16]


@pytest.mark.parametrize("backend", ["onnxruntime", "openvino"])
def test_an_attention_core_runs_in_the_runtime(demo, backend, one_thread):
    """The core exported as the table's layer sessions run it gives torch's outputs (both forms), and its entry is
    measured in the runtime and filed."""
    import numpy as np
    import torch

    from autoprune.cost import backends
    from autoprune.latency_model import _layer_session

    if backend == "openvino":
        pytest.importorskip("openvino")
    for cfg in (AttentionConfig("attention", (4, 4), 2, 8, 16), AttentionConfig("area_attention", (4, 4), 2, 8, 8, 2)):
        module = cfg.module()
        session = _layer_session(backend, module, torch.device("cpu"), cfg.cin, 4, 1, "fp32", 1)
        out = session.outputs()
        with torch.no_grad():
            expected = [t.numpy() for t in module(backends.fixed_input(1, cfg.cin, 4))]
        for i, e in enumerate(expected):
            assert out[i].shape == e.shape == (1, cfg.heads * cfg.head_dim, 4, 4)
            assert np.allclose(out[i], e, atol=1e-5), (cfg.op, i)
    if backend == "onnxruntime":
        model, graph = demo
        table = LatencyTable(model, graph, imgsz=IMGSZ, backend=backend, threads=1)
        ms = table.entry(cfg)
        assert 0 < ms < 1000 and table.measured == 1
        assert table.entry(cfg) == ms and table.measured == 1  # filed: not measured again
