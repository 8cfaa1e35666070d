"""Cost measurements: GFLOPs against Ultralytics' own count, parameters, signatures, measured latency and its cache,
and the `autoprune cost` command's user errors. CPU-only, offline, small image sizes; one timed assertion, with a
margin of twice what a loaded machine measured."""

from __future__ import annotations

import copy
import json
import os

import pytest
import torch
from torch import nn

from autoprune import cost
from autoprune.cost import (
    LatencyCache,
    LatencyResult,
    TimingProtocol,
    architecture_signature,
    count_gflops,
    count_params,
    measure_latencies,
    measure_latency,
)
from autoprune.devices import resolve_device
from autoprune.errors import UserError
from autoprune.models import load_model

# Short and lenient: these tests check the plumbing, not the numbers. One thread, so that a test sharing two cores
# with other processes is not slowed a hundredfold by OpenMP threads waiting on each other.
QUICK = TimingProtocol(warmup_runs=1, warmup_s=0.0, min_repeats=3, min_time_s=0.0, max_time_s=0.5,
                       rel_tol=0.5, window_tol=0.9, growth=2.0)
FAST = {"protocol": QUICK, "threads": 1}


@pytest.fixture(scope="module")
def models():
    """Stock detectors built from Ultralytics' YAMLs (random weights, fixed seed), built once."""
    return {name: load_model(f"{name}.yaml").model for name in ("yolov8n", "yolo11n", "yolov8s")}


@pytest.fixture(scope="module")
def thin(tmp_path_factory):
    """yolov8n at 1/8 of its width: a real DetectionModel that is cheap to time."""
    import yaml
    from ultralytics.nn.tasks import yaml_model_load

    cfg = yaml_model_load("yolov8n.yaml")
    cfg = {k: v for k, v in cfg.items() if k not in ("scale", "yaml_file")}
    cfg["scales"] = {"n": [0.33, 0.125, 1024]}
    path = tmp_path_factory.mktemp("thin") / "yolov8n-thin.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return load_model(str(path)).model


@pytest.fixture
def quick(monkeypatch):
    """Make the default timing protocol short for tests that go through the CLI."""
    monkeypatch.setattr(cost.timing, "DEFAULT_PROTOCOL", QUICK)


def _prune_bottlenecks(model: nn.Module, drop: int = 3) -> nn.Module:
    """Physically remove `drop` hidden channels from every Bottleneck (cv1's outputs, cv2's inputs) of a copy.

    The channel counts that result (13, 29, ...) are multiples of nothing, as after a real structured pruning.
    """
    from ultralytics.nn.modules.block import Bottleneck

    model = copy.deepcopy(model)
    for m in model.modules():
        if isinstance(m, Bottleneck):
            c1, c2 = m.cv1.conv, m.cv2.conv
            keep = c1.out_channels - drop
            new1 = nn.Conv2d(c1.in_channels, keep, c1.kernel_size, c1.stride, c1.padding, bias=False)
            new1.weight.data = c1.weight.data[:keep].clone()
            bn = m.cv1.bn
            new_bn = nn.BatchNorm2d(keep, eps=bn.eps, momentum=bn.momentum)
            for name in ("weight", "bias", "running_mean", "running_var"):
                getattr(new_bn, name).data = getattr(bn, name).data[:keep].clone()
            new2 = nn.Conv2d(keep, c2.out_channels, c2.kernel_size, c2.stride, c2.padding, bias=False)
            new2.weight.data = c2.weight.data[:, :keep].clone()
            m.cv1.conv, m.cv1.bn, m.cv2.conv = new1, new_bn, new2
    return model


# ---------------------------------------------------------------------------------------------------------- GFLOPs
@pytest.mark.parametrize("name", ["yolov8n", "yolo11n", "yolov8s"])
def test_gflops_match_ultralytics(models, name):
    from ultralytics.utils.torch_utils import get_flops

    model = models[name]
    ours, theirs = count_gflops(model, 256), get_flops(model, 256)
    assert theirs > 0
    assert ours == pytest.approx(theirs, rel=1e-6, abs=0), (ours, theirs)  # the same count, not a close one


def test_gflops_match_ultralytics_at_640(models):
    from ultralytics.utils.torch_utils import get_flops

    ours, theirs = count_gflops(models["yolov8n"], 640), get_flops(models["yolov8n"], 640)
    assert ours == pytest.approx(theirs, rel=1e-6, abs=0), (ours, theirs)  # the same count, not a close one
    assert 8.0 < ours < 9.5  # yolov8n is 8.7 GFLOPs in Ultralytics' tables (8.9 for an 80-class model from YAML)


def test_gflops_match_ultralytics_on_a_pruned_model(models):
    from ultralytics.utils.torch_utils import get_flops

    pruned = _prune_bottlenecks(models["yolov8n"])
    assert any(isinstance(m, nn.Conv2d) and m.out_channels % 2 for m in pruned.modules())
    ours, theirs = count_gflops(pruned, 256), get_flops(pruned, 256)
    assert ours == pytest.approx(theirs, rel=1e-6, abs=0), (ours, theirs)  # the same count, not a close one
    assert ours < count_gflops(models["yolov8n"], 256)


def test_gflops_scale_with_image_area(models):
    small, large = count_gflops(models["yolov8n"], 128), count_gflops(models["yolov8n"], 256)
    assert large / small == pytest.approx(4.0, rel=1e-3)


def test_thinner_model_has_fewer_gflops_and_params(models, thin):
    assert count_gflops(thin, 128) < count_gflops(models["yolov8n"], 128)
    assert count_params(thin) < count_params(models["yolov8n"])


def test_gflops_of_a_hand_built_model_are_two_times_macs():
    # a 3->11 3x3 conv, BN, SiLU, nearest upsample, 11->5 1x1 conv at 32x32: odd channel counts on purpose
    model = nn.Sequential(
        nn.Conv2d(3, 11, 3, padding=1, bias=False), nn.BatchNorm2d(11), nn.SiLU(),
        nn.Upsample(scale_factor=2), nn.Conv2d(11, 5, 1),
    )
    hw = 32 * 32
    macs = 11 * 3 * 9 * hw + 4 * 11 * hw + 0 + 5 * 11 * 4 * hw  # conv, affine BN (thop: 4/element), upsample free
    assert count_gflops(model, 32) == pytest.approx(2 * macs / 1e9, rel=1e-9)
    from ultralytics.utils.torch_utils import get_flops

    assert count_gflops(model, 32) == pytest.approx(get_flops(model, 32), rel=1e-6)


def test_params_match_ultralytics(models):
    from ultralytics.utils.torch_utils import get_num_params

    for model in models.values():
        assert count_params(model) == get_num_params(model)
    assert count_params(nn.Conv2d(3, 16, 3, bias=False)) == 432


def test_counting_leaves_the_callers_model_alone(thin):
    model = copy.deepcopy(thin).train()
    model.model[4].requires_grad_(False)
    grads = [p.requires_grad for p in model.parameters()]
    modes = [m.training for m in model.modules()]
    state = {k: v.clone() for k, v in model.state_dict().items()}
    count_gflops(model, 128)
    measure_latency(model, imgsz=128, cache=False, **FAST)
    assert [p.requires_grad for p in model.parameters()] == grads
    assert [m.training for m in model.modules()] == modes
    assert all(torch.equal(state[k], v) for k, v in model.state_dict().items())
    assert all(hasattr(m, "bn") for m in model.modules() if type(m).__name__ == "Conv")  # not fused in place


# ------------------------------------------------------------------------------------------------------- signature
def test_signature_changes_with_channels_not_with_weights(models):
    model = models["yolov8n"]
    sig = architecture_signature(model)
    retrained = copy.deepcopy(model)
    with torch.no_grad():
        for p in retrained.parameters():
            p.add_(torch.randn_like(p))
        for m in retrained.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.add_(1.0)
    retrained.train()
    assert architecture_signature(retrained) == sig
    assert architecture_signature(retrained.half()) == sig
    assert architecture_signature(_prune_bottlenecks(model, drop=1)) != sig
    assert architecture_signature(models["yolov8s"]) != sig


def test_signature_sees_one_channel_and_layer_settings():
    def net(c, stride=1):
        return nn.Sequential(nn.Conv2d(3, c, 3, stride), nn.BatchNorm2d(c))

    assert architecture_signature(net(8)) == architecture_signature(net(8))
    assert architecture_signature(net(8)) != architecture_signature(net(7))
    assert architecture_signature(net(8)) != architecture_signature(net(8, stride=2))


# --------------------------------------------------------------------------------------------------------- latency
def test_latency_fields_filled(thin):
    r = measure_latency(thin, imgsz=128, batch=2, cache=False, **FAST)
    assert isinstance(r, LatencyResult)
    assert 0 < r.min_ms <= r.p10_ms <= r.median_ms <= r.p90_ms
    assert r.spread_ms == pytest.approx(r.p90_ms - r.p10_ms)
    assert r.repeats >= QUICK.min_repeats
    assert (r.device, r.backend, r.precision, r.imgsz, r.batch) == ("cpu", "torch", "fp32", 128, 2)
    assert r.threads == 1
    assert r.signature == architecture_signature(thin)
    assert r.cached is False and r.device_name
    d = r.to_dict()
    assert json.loads(json.dumps(d))["median_ms"] == r.median_ms and "spread_ms" in d


def test_a_model_at_an_eighth_of_the_width_or_a_sixth_of_the_pixels_times_much_faster(models):
    """yolov8n pruned to 1/8 of every group's width (1/25 of its GFLOPs) times at most 0.6x the unpruned model's
    latency at 320 px, and the unpruned model at 128 px (1/6 of the pixels) at most 0.6x its latency at 320 px; one
    thread. Measured 0.20-0.33x for both, with the load average between 3 and 13 on two cores and with four busy loops
    beside it: each figure is the minimum over two alternating rounds, which a busy machine can only raise, and
    alternating spreads a change in the load over all three. A latency that does not follow the model (an image size,
    model or cache entry mixed up) fails."""
    from autoprune.channels import analyze
    from autoprune.pruner import keep_counts, prune_to_counts

    base = models["yolov8n"]
    graph = analyze(base, imgsz=320)
    small = prune_to_counts(base, keep_counts(graph, 0.125), graph=graph)
    assert count_gflops(small, 320) < 0.05 * count_gflops(base, 320)
    protocol = TimingProtocol(warmup_runs=1, warmup_s=0.0, min_repeats=3, min_time_s=0.0, max_time_s=1.0,
                              rel_tol=0.5, window_tol=0.9, growth=2.0)
    cases = {"base": (base, 320), "small": (small, 320), "base_128": (base, 128)}
    results = []
    for _ in range(2):
        cache = LatencyCache()  # one cache for all three: no two of them may share an entry
        results += [(name, measure_latency(model, imgsz=imgsz, threads=1, cache=cache, protocol=protocol))
                    for name, (model, imgsz) in cases.items()]
    best = {name: min(r.min_ms for n, r in results if n == name) for name in cases}
    assert best["small"] < 0.6 * best["base"], best
    assert best["base_128"] < 0.6 * best["base"], best
    assert all((r.imgsz, r.threads, r.cached) == (cases[n][1], 1, False) for n, r in results)


def test_measure_latencies_takes_turns_and_reports_the_median_of_the_rounds(thin, monkeypatch):
    """Each round times every model once, starting one model further on; a model's median is the median of its
    rounds' medians (a round slowed by the machine moves it less than it moves a pooled median)."""
    from autoprune.cost import backends

    small = _prune_bottlenecks(thin)
    order, speeds = [], iter([10, 20, 11, 21, 30, 40, 12, 22])  # round 2 (30, 40) slow for both
    real_open = backends.open_session

    def fake_time(session, dev, protocol):
        order.append(session.name)
        v = float(next(speeds))
        return [v - 1, v, v + 1], True

    def open_named(backend, model, *a):
        session = real_open(backend, model, *a)
        session.name = "small" if architecture_signature(model) == architecture_signature(small) else "base"
        return session

    monkeypatch.setattr(backends, "open_session", open_named)
    monkeypatch.setattr(backends, "time_session", fake_time)
    r = measure_latencies({"base": thin, "small": small}, rounds=4, imgsz=128, threads=1)
    assert order == ["base", "small", "small", "base", "base", "small", "small", "base"]
    # base's rounds: 10, 21, 30, 22 -> median 21.5; small's: 20, 11, 40, 12 -> 16
    assert r["base"].median_ms == 21.5 and r["small"].median_ms == 16.0
    assert r["base"].repeats == 12 and r["base"].min_ms == 9.0 and r["base"].stable
    assert r["small"].signature == architecture_signature(small) and r["small"].threads == 1
    with pytest.raises(UserError, match="rounds"):
        measure_latencies({"base": thin}, rounds=0, imgsz=128)


def test_measure_latencies_times_real_models(thin):
    small = _prune_bottlenecks(thin)
    r = measure_latencies({"base": thin, "small": small}, rounds=2, imgsz=128, protocol=QUICK, threads=1)
    assert set(r) == {"base", "small"}
    assert all(x.median_ms > 0 and x.repeats >= 2 * QUICK.min_repeats and not x.cached for x in r.values())
    assert r["base"].signature == architecture_signature(thin) != r["small"].signature


def test_latency_onnxruntime_cleans_up(thin, tmp_path, monkeypatch):
    import tempfile

    scratch, cwd = tmp_path / "tmp", tmp_path / "cwd"
    scratch.mkdir(), cwd.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))
    monkeypatch.chdir(cwd)
    r = measure_latency(thin, imgsz=128, backend="onnxruntime", cache=False, **FAST)
    assert r.median_ms > 0 and r.backend == "onnxruntime" and r.threads == 1 and r.repeats >= QUICK.min_repeats
    assert list(scratch.iterdir()) == [] and list(cwd.iterdir()) == []


def test_latency_cache_hit_does_not_measure(thin, monkeypatch):
    calls = []
    real = cost.timing.time_loop
    monkeypatch.setattr(cost.timing, "time_loop", lambda *a, **k: calls.append(1) or real(*a, **k))
    cache = LatencyCache()
    first = measure_latency(thin, imgsz=128, cache=cache, **FAST)
    second = measure_latency(copy.deepcopy(thin), imgsz=128, cache=cache, **FAST)  # same architecture
    assert len(calls) == 1 and not first.cached and second.cached
    assert second.median_ms == first.median_ms and second.repeats == first.repeats
    assert (cache.hits, cache.misses) == (1, 1)
    measure_latency(thin, imgsz=160, cache=cache, **FAST)  # another input size is another measurement
    measure_latency(_prune_bottlenecks(thin, drop=1), imgsz=128, cache=cache, **FAST)  # another architecture
    assert len(calls) == 3 and len(cache) == 3
    measure_latency(thin, imgsz=128, cache=False, **FAST)  # False: always measure
    assert len(calls) == 4


def test_json_cache_survives_a_new_cache_object(thin, tmp_path, monkeypatch):
    path = tmp_path / "sub" / "latency.json"
    first = measure_latency(thin, imgsz=128, cache=LatencyCache(path), **FAST)
    assert path.is_file() and json.loads(path.read_text())["format"] == cost.CACHE_FORMAT
    monkeypatch.setattr(cost.timing, "time_loop", lambda *a, **k: pytest.fail("re-measured a cached architecture"))
    again = measure_latency(thin, imgsz=128, cache=LatencyCache(path), **FAST)
    assert again.cached and again.median_ms == first.median_ms
    assert not [p for p in path.parent.iterdir() if p.name.endswith(".tmp")]


def test_json_cache_merges_writers(tmp_path):
    path = tmp_path / "latency.json"
    a, b = LatencyCache(path), LatencyCache(path)  # two processes that opened the file before either wrote
    a.put("k1", {"median_ms": 1.0})
    b.put("k2", {"median_ms": 2.0})
    a.put("k3", {"median_ms": 3.0})
    fresh = LatencyCache(path)
    assert {k: fresh.get(k)["median_ms"] for k in ("k1", "k2", "k3")} == {"k1": 1.0, "k2": 2.0, "k3": 3.0}
    assert b.get("k1") == {"median_ms": 1.0}  # a miss re-reads the file


def test_json_cache_defers_its_writes_inside_a_deferred_block(tmp_path, monkeypatch):
    """Inside `deferred` the file is written once the flush interval has passed and at the end, not on every put;
    the entries are readable from the cache at once, and a block left by an error still writes them."""
    path = tmp_path / "latency.json"
    cache = LatencyCache(path)
    writes = []
    real_write = cache._write
    monkeypatch.setattr(cache, "_write", lambda: (writes.append(len(cache._entries)), real_write()))
    with cache.deferred(flush_s=3600):
        for i in range(5):
            cache.put(f"k{i}", {"median_ms": float(i)})
        assert cache.get("k4") == {"median_ms": 4.0} and not writes and not path.exists()
    assert writes == [5] and LatencyCache(path).get("k4") == {"median_ms": 4.0}
    with cache.deferred(flush_s=0.0):  # every put is past the interval: written each time
        cache.put("k5", {"median_ms": 5.0})
        cache.put("k6", {"median_ms": 6.0})
    assert writes == [5, 6, 7]
    with pytest.raises(RuntimeError), cache.deferred(flush_s=3600):
        cache.put("k7", {"median_ms": 7.0})
        raise RuntimeError("interrupted")
    assert LatencyCache(path).get("k7") == {"median_ms": 7.0}
    cache.put("k8", {"median_ms": 8.0})  # outside a block: written at once, as always
    assert writes[-1] == 9


def test_json_cache_refuses_a_foreign_file(tmp_path):
    path = tmp_path / "notes.json"
    path.write_text('{"mine": 1}')
    with pytest.raises(UserError, match="not an autoprune latency cache"):
        LatencyCache(path)
    assert path.read_text() == '{"mine": 1}'


# ---------------------------------------------------------------------------------------------------------- inputs
def test_resolve_device():
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("auto") == torch.device("cuda:0" if torch.cuda.is_available() else "cpu")
    for bad in ("tpu", "gpu0"):
        with pytest.raises(UserError, match="^device must be auto, cpu, cuda or cuda:N"):
            resolve_device(bad)
    with pytest.raises(UserError, match="^device 'cuda:99' does not exist"):
        resolve_device("cuda:99")
    if not torch.cuda.is_available():
        for bad in ("cuda", "cuda:0", "0"):
            with pytest.raises(UserError, match="does not exist: no CUDA GPU is available here"):
                resolve_device(bad)


@pytest.mark.parametrize("imgsz", [100, 0, -32, 33])
def test_bad_imgsz_is_a_user_error(thin, imgsz):
    with pytest.raises(UserError, match=f"multiple of 32, got {imgsz}"):
        measure_latency(thin, imgsz=imgsz)
    with pytest.raises(UserError, match="multiple of 32"):
        count_gflops(thin, imgsz)


def test_timing_protocol_validates():
    with pytest.raises(ValueError, match="growth"):
        TimingProtocol(growth=1.0)
    with pytest.raises(ValueError, match="rel_tol"):
        TimingProtocol(rel_tol=0)
    with pytest.raises(ValueError, match="max_time_s"):
        TimingProtocol(min_time_s=5, max_time_s=1)
    with pytest.raises(ValueError, match="collect_garbage must be a bool"):
        TimingProtocol(collect_garbage=1)


def test_collect_garbage_runs_one_full_collection_first_and_leaves_the_cache_key_alone(monkeypatch):
    import gc

    from autoprune.cost import timing
    from autoprune.cost.cache import cache_key

    calls = []
    monkeypatch.setattr(timing.gc, "collect", lambda *a: calls.append(a) or 0)
    quick = dict(warmup_runs=1, warmup_s=0.0, min_repeats=3, min_time_s=0.0, max_time_s=0.1)
    for collect, expected in ((True, [()]), (False, [])):
        calls.clear()
        samples, _ = timing.time_loop(lambda: 1.0, TimingProtocol(**quick, collect_garbage=collect))
        assert calls == expected and len(samples) >= 3 and gc.isenabled()
    keys = {cache_key("sig", 64, 1, "cpu", "cpu", "torch", "fp32", 1, TimingProtocol(**quick, collect_garbage=c))
            for c in (True, False)}
    assert len(keys) == 1  # results cached with the collection stay valid without it


# ------------------------------------------------------------------------------------------------------------- CLI
def _cli(argv, capsys, monkeypatch):
    from autoprune import cli

    monkeypatch.setattr(cli, "COMMANDS", {"cost": cli.COMMANDS["cost"]})  # only this command's module is loaded
    rc = cli.main(argv)
    out, err = capsys.readouterr()
    return rc, out, err


@pytest.mark.parametrize(
    "argv, words",
    [
        (["--imgsz", "100"], ["100", "multiple of 32"]),
        (["--device", "tpu"], ["tpu"]),
        (["--device", "cuda:7"], ["cuda:7"]),
        (["--model", "missing/nothere.pt"], ["nothere.pt", "not found"]),
        (["--batch", "0"], ["--batch"]),
    ],
)
def test_cli_user_errors(argv, words, capsys, monkeypatch):
    rc, out, err = _cli(["cost", "--model", "yolov8n.yaml", *argv], capsys, monkeypatch)
    assert rc == 2 and out == ""
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:"), err
    assert all(w in lines[0] for w in words), lines[0]


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-CUDA message")
def test_cli_cuda_without_cuda(capsys, monkeypatch):
    rc, out, err = _cli(["cost", "--model", "yolov8n.yaml", "--device", "cuda:0"], capsys, monkeypatch)
    lines = err.strip().splitlines()
    assert rc == 2 and len(lines) == 1 and lines[0].startswith("error:") and "cuda:0" in lines[0]


def test_cli_json(models, quick, capsys, monkeypatch, tmp_path):
    argv = ["cost", "--model", "yolov8n.yaml", "--imgsz", "128", "--device", "cpu", "--threads", "1", "--json",
            "--cache", str(tmp_path / "lat.json")]
    rc, out, err = _cli(argv, capsys, monkeypatch)
    assert rc == 0, err
    r = json.loads(out)
    assert r["gflops"] == pytest.approx(count_gflops(models["yolov8n"], 128), abs=1e-3)
    assert r["params"] == 3157200 and r["latency_ms"] > 0 and r["repeats"] >= QUICK.min_repeats
    assert (r["device"], r["backend"], r["threads"], r["cached"]) == ("cpu", "torch", 1, False)
    rc, out, _ = _cli(argv, capsys, monkeypatch)
    assert rc == 0 and json.loads(out)["cached"] is True
    assert sorted(os.listdir(tmp_path)) == ["lat.json", "lat.json.lock"]
