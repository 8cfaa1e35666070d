"""The latency model (`autoprune.latency_model`): a prediction is the sum of the table's entries, the table is kept on
disk, and a second build measures nothing. Timing is replaced by a deterministic function of the layer."""

from __future__ import annotations

import json

import pytest

from autoprune.channels import analyze
from autoprune.latency_model import LatencyTable, LayerConfig
from autoprune.demo import demo_model_path
from autoprune.models import load_model
from autoprune.strategies import floor_counts

IMGSZ = 64


def fake_measure(module, ch, hw):
    """Milliseconds as a function of what is measured: a layer by its MACs, the whole model a constant."""
    if ch is None:
        return 50.0
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
    element goes. Swaps are not priced: an error, not a silent figure."""
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
    with pytest.raises(ValueError, match="does not price operator swaps"):
        table.predict({**small, "swap:3": 1})


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
