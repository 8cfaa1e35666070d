"""The deployment runtimes latency is measured in (autoprune.cost.backends): onnxruntime and openvino time the model
Ultralytics would ship for them and compute what torch computes; every latency says what produced it; a runtime
that cannot run here is one error line; a search stores its runtime and refuses to resume with another."""

from __future__ import annotations

import builtins
import json

import numpy as np
import pytest
import torch

from autoprune.cost import LatencyCache, TimingProtocol, backends, measure_latency
from autoprune.cost.cache import cache_key
from autoprune.errors import UserError
from conftest import assert_user_error, run_cli

pytestmark = pytest.mark.usefixtures("one_thread")

QUICK = TimingProtocol(warmup_runs=1, warmup_s=0.0, min_repeats=3, min_time_s=0.05, max_time_s=2.0)
CPU = torch.device("cpu")
IMGSZ = 64
RUNTIMES = ("onnxruntime", "openvino")


@pytest.fixture(scope="module")
def model():
    from autoprune.models import load_model

    return load_model("yolov8n.yaml").model


@pytest.mark.parametrize("backend", RUNTIMES)
def test_runtime_computes_what_torch_computes(model, backend):
    """The exported model is the model: its detections equal eager torch's on the same batch of 2 (within 1e-3)."""
    with torch.no_grad():
        expected = model.eval()(backends.fixed_input(2, 3, IMGSZ))
    expected = (expected[0] if isinstance(expected, (list, tuple)) else expected).numpy()
    session = backends.open_session(backend, model, CPU, 3, IMGSZ, 2, "fp32", 1)
    out = session.outputs()
    assert len(out) == 1 and out[0].shape == expected.shape  # the export-mode head: one (batch, 4 + nc, anchors) tensor
    np.testing.assert_allclose(out[0], expected, atol=1e-3, rtol=1e-3)
    assert session.executed == "fp32"
    if backend == "openvino":  # the thread count the protocol asked for, not the plugin's default
        assert int(session.keep[1].get_property("INFERENCE_NUM_THREADS")) == 1


@pytest.mark.parametrize("backend", RUNTIMES)
def test_latency_says_what_produced_it(model, backend):
    r = measure_latency(model, imgsz=IMGSZ, batch=2, backend=backend, threads=1, protocol=QUICK, cache=False)
    assert r.median_ms > 0 and r.repeats >= 3
    assert (r.backend, r.precision, r.executed_precision, r.batch, r.threads) == (backend, "fp32", "fp32", 2, 1)
    assert r.device == "cpu" and r.device_name


def test_cache_key_holds_backend_batch_and_precision():
    key = lambda **kw: cache_key(**{**dict(signature="s", imgsz=64, batch=1, dev=CPU, device_name="x",  # noqa: E731
                                           backend="torch", precision="fp32", threads=1, protocol=QUICK), **kw})
    keys = {key(), key(backend="onnxruntime"), key(backend="openvino"), key(batch=2), key(precision="fp16")}
    assert len(keys) == 5


def test_openvino_fp16_says_what_it_computes_in(model):
    """An fp16-compressed IR on the CPU plugin runs in f32 or bf16, and the result says which."""
    r = measure_latency(model, imgsz=IMGSZ, backend="openvino", precision="fp16", threads=1, protocol=QUICK,
                        cache=LatencyCache())
    assert r.precision == "fp16" and r.executed_precision in ("fp32", "bf16", "fp16")


def _fail_import(monkeypatch, name):
    real = builtins.__import__

    def fake(module, *args, **kwargs):
        if module == name or module.startswith(name + "."):
            raise ImportError(f"No module named {name!r}")
        return real(module, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", fake)


def test_missing_runtime_names_the_extra(monkeypatch, capsys):
    _fail_import(monkeypatch, "openvino")
    with pytest.raises(UserError, match=r"pip install 'autoprune\[openvino\]'"):
        backends.check_runtime("openvino", CPU)
    code, out, err = run_cli(capsys, "cost", "--imgsz", IMGSZ, "--latency-backend", "openvino")
    assert_user_error(code, err, "pip install 'autoprune[openvino]'")
    assert out == ""


@pytest.mark.parametrize("argv, pattern", [
    (["--latency-backend", "onnxruntime", "--latency-precision", "fp16"], "fp16 with --latency-backend onnxruntime "
                                                                           "needs a CUDA device"),
    (["--backend", "tensorrt"], "--latency-backend tensorrt needs a CUDA device"),
    (["--latency-precision", "fp16"], "fp16 with --latency-backend torch needs a CUDA device"),
    (["--latency-backend", "tflite"], "--latency-backend must be one of torch, onnxruntime, openvino, tensorrt"),
    (["--latency-backend", "openvino", "--latency-batch", "0"], "--latency-batch (--batch) must be a positive integer"),
])
def test_cost_refuses_what_cannot_run_here(capsys, monkeypatch, argv, pattern):
    import autoprune.models

    monkeypatch.setattr(autoprune.models, "load_model", lambda *a, **k: pytest.fail("checked after the model loaded"))
    code, out, err = run_cli(capsys, "cost", "--imgsz", IMGSZ, "--device", "cpu", *argv)
    assert_user_error(code, err, pattern)


def test_cost_cli_openvino_json(capsys):
    code, out, err = run_cli(capsys, "cost", "--model", "yolov8n.yaml", "--imgsz", IMGSZ, "--device", "cpu",
                             "--latency-backend", "openvino", "--latency-batch", 2, "--threads", 1, "--json")
    assert code == 0, err
    r = json.loads(out)
    assert (r["backend"], r["precision"], r["batch"], r["threads"]) == ("openvino", "fp32", 2, 1)
    assert r["executed_precision"] == "fp32" and r["latency_ms"] > 0 and r["device_name"]


@pytest.fixture(scope="module")
def search_env(tmp_path_factory):
    """tests/search/test_driver.py's tiny search: a 2-class yolov8n YAML, a small dataset, flags for second-long
    trials."""
    from conftest import tiny_search

    return tiny_search(tmp_path_factory.mktemp("search-runtime"))


@pytest.mark.slow
def test_search_measures_in_openvino_and_resumes_only_with_it(search_env, capsys, tmp_path, monkeypatch):
    import optuna

    from autoprune.search import records
    from autoprune.search.storage import make_storage

    monkeypatch.chdir(tmp_path)
    flags = [*search_env["flags"], "--name", "ov"]
    code, out, err = run_cli(capsys, "search", *flags, "--trials", 2, "--latency-backend", "openvino", "--json")
    assert code == 0, err
    study = optuna.load_study(study_name="ov", storage=make_storage(
        f"sqlite:///{tmp_path / 'runs/search/ov/study.db'}", heartbeat=None, read_only=True))
    assert study.user_attrs[records.STUDY_LATENCY_BACKEND] == "openvino"
    stored = study.user_attrs
    assert (stored[records.STUDY_LATENCY_BATCH], stored[records.STUDY_LATENCY_PRECISION]) == (1, "fp32")
    timed = [t for t in study.trials if records.LATENCY_SETUP in t.user_attrs]
    assert len(timed) >= 2
    assert all(t.user_attrs[records.LATENCY_SETUP]["backend"] == "openvino" for t in timed)

    for argv, pattern in ((["--latency-backend", "onnxruntime"],
                           "latency_backend 'openvino' (this run: 'onnxruntime')"),
                          (["--latency-backend", "openvino", "--latency-batch", 2],
                           "latency_batch 1 (this run: 2)")):
        code, out, err = run_cli(capsys, "search", *flags, "--trials", 3, "--resume", *argv)
        line = assert_user_error(code, err, pattern)
        assert "--latency-backend openvino" in line or "--latency-batch 1" in line


def test_apply_measures_as_the_search_did_unless_told():
    from autoprune.apply import study_latency
    from autoprune.search import records

    ov = {records.STUDY_LATENCY_BACKEND: "openvino", records.STUDY_LATENCY_BATCH: 2,
          records.STUDY_LATENCY_PRECISION: "fp16"}
    assert study_latency(ov, CPU) == {"backend": "openvino", "batch": 2, "precision": "fp16"}
    assert study_latency({}, CPU) == {"backend": "torch", "batch": 1, "precision": "fp32"}  # a study from before
    assert study_latency(ov, CPU, {"backend": "onnxruntime", "batch": None, "precision": None}) == {
        "backend": "onnxruntime", "batch": 2, "precision": "fp32"}
    with pytest.raises(UserError, match="tensorrt needs a CUDA device"):
        study_latency(ov, CPU, {"backend": "tensorrt"})
    with pytest.raises(UserError, match="--latency-batch must be a positive integer"):
        study_latency(ov, CPU, {"batch": 0})
