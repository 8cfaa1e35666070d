"""The runtimes latency is measured in: eager torch, onnxruntime, OpenVINO and TensorRT, each fed the model exported
the way Ultralytics' exporter exports it for that format, so what is timed is what the user ships.

`check_runtime` refuses, in one line, a runtime that cannot run here (its package missing: the line names the extra
to install; a CUDA-only runtime or fp16 without a CUDA device). `open_session` prepares the deployed model in the
runtime and returns a `Session` (one forward pass on a fixed input, and the precision it executes in);
`time_session` times it with `autoprune.cost.timing.time_loop`. `autoprune.cost.latency.measure_latency` uses them.

How each runtime gets the model (the deploy copy: conv+BN fused, eval, float32, the detection head in export mode
with `max_det` clamped and C2f using `forward_split`, as `ultralytics.engine.exporter.Exporter` prepares it):

- torch: the deploy copy itself (float16 on CUDA at fp16).
- onnxruntime: `torch.onnx.export` (Ultralytics' opset, static shape, input "images"), slimmed with onnxslim as
  Ultralytics' default `simplify=True` does, IR version capped at 10; CPU provider in float32, or the CUDA provider
  with the model traced in float16 at fp16 (Ultralytics' `half=True` on a GPU).
- openvino: `openvino.convert_model` on the traced model (Ultralytics' `torch2openvino`), saved with
  `compress_to_fp16` at fp16 (Ultralytics' `half=True`), compiled on the CPU plugin with Ultralytics' config
  (`PERFORMANCE_HINT: LATENCY`) plus the protocol's thread count (`INFERENCE_NUM_THREADS`) and, at fp32,
  `INFERENCE_PRECISION_HINT: f32` so that the figure is an fp32 one on CPUs that would pick bf16. An fp16 IR runs
  in what the CPU plugin picks (bf16 where the CPU has it, else f32): `Session.executed` says which.
- tensorrt: the ONNX above built into an engine by Ultralytics' `onnx2engine` (fp16 builder flag at fp16).
"""

from __future__ import annotations

import contextlib
import logging
import tempfile
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from torch import nn

from autoprune.cost import timing
from autoprune.cost._model import TensorsOut, inference_copy
from autoprune.errors import UserError

BACKENDS = ("torch", "onnxruntime", "openvino", "tensorrt")
PRECISIONS = ("fp32", "fp16")
# The pip extra that installs each optional runtime's package (onnxruntime is a dependency of autoprune itself).
EXTRAS = {"openvino": "openvino", "tensorrt": "tensorrt"}


def check_backend(backend) -> str:
    """Return `backend`, or raise `UserError` unless it is one of `BACKENDS`."""
    if backend not in BACKENDS:
        raise UserError(f"--latency-backend must be one of {', '.join(BACKENDS)}, got {backend!r}")
    return backend


def default_precision(dev: torch.device) -> str:
    """fp16 on a CUDA device (what a GPU deployment runs), fp32 elsewhere."""
    return "fp16" if dev.type == "cuda" else "fp32"


def _missing(backend: str, package: str) -> UserError:
    return UserError(f"--latency-backend {backend} needs the {package} package, which is not installed: "
                     f"pip install 'autoprune[{EXTRAS[backend]}]'")


def check_runtime(backend: str, dev: torch.device, precision: str | None = None) -> str:
    """Return the precision `backend` runs at on `dev` (`precision`, or `default_precision`), or raise `UserError`
    in one line where it cannot run here: its package missing (naming the extra to install), a CUDA-only runtime
    or fp16 without a CUDA device, a runtime that does not run on `dev`, an unknown precision.

    Example:
        >>> check_runtime("onnxruntime", torch.device("cpu"))
        'fp32'
    """
    check_backend(backend)
    precision = default_precision(dev) if precision is None else precision
    if precision not in PRECISIONS:
        raise UserError(f"--latency-precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    cuda = dev.type == "cuda"
    if backend == "torch":
        if precision == "fp16" and not cuda:
            raise UserError("--latency-precision fp16 with --latency-backend torch needs a CUDA device (torch's CPU "
                            "kernels are fp32); on the CPU use fp32, or fp16 with --latency-backend openvino")
    elif backend == "onnxruntime":
        try:
            import onnxruntime as ort
        except ImportError:
            raise UserError("--latency-backend onnxruntime needs the onnxruntime package: pip install onnxruntime "
                            f"(on a CUDA device onnxruntime-gpu: pip install 'autoprune[tensorrt]')") from None
        if cuda and "CUDAExecutionProvider" not in ort.get_available_providers():
            raise UserError("--latency-backend onnxruntime on a CUDA device needs onnxruntime-gpu (its CUDA provider "
                            "is missing): pip install 'autoprune[tensorrt]', or use --device cpu")
        if precision == "fp16" and not cuda:
            raise UserError("--latency-precision fp16 with --latency-backend onnxruntime needs a CUDA device "
                            "(its CPU provider runs most fp16 operators through casts to fp32); on the CPU use fp32, "
                            "or fp16 with --latency-backend openvino")
    elif backend == "openvino":
        if cuda:
            raise UserError("--latency-backend openvino runs on the CPU (its GPU plugin is for Intel GPUs): use "
                            "--device cpu, or --latency-backend tensorrt on a CUDA device")
        try:
            import openvino  # noqa: F401
        except ImportError:
            raise _missing("openvino", "openvino") from None
    elif backend == "tensorrt":
        if not cuda:
            raise UserError(f"--latency-backend tensorrt needs a CUDA device (got --device {dev}); on the CPU use "
                            "--latency-backend onnxruntime or openvino")
        try:
            import tensorrt  # noqa: F401
        except ImportError:
            raise _missing("tensorrt", "tensorrt") from None
    return precision


def runtime_version(backend: str) -> str | None:
    """The installed version of `backend`'s runtime package (None for torch, whose version every key holds)."""
    if backend == "torch":
        return None
    module = __import__(backend)
    return str(getattr(module, "__version__", None) or getattr(module, "get_version", lambda: "?")())


# An id for how each runtime gets the model, part of the cache key: change it when the export changes what is timed.
EXPORTS = {"torch": "deploy-copy", "onnxruntime": "ultralytics-onnx-slim", "openvino": "ultralytics-openvino",
           "tensorrt": "ultralytics-onnx2engine"}


def check_onnxruntime(dev: torch.device) -> None:
    """Raise `UserError` unless onnxruntime is installed, with its CUDA provider when `dev` is a CUDA device."""
    check_runtime("onnxruntime", dev)


def fixed_input(batch, ch, imgsz) -> torch.Tensor:
    """A fixed random image batch in [0, 1): the same numbers on every call, unlike zeros never a special case.
    `imgsz` is a side, or (height, width) for a rectangular input (a 1 x k conv after a stride-2 k x 1 one)."""
    h, w = imgsz if isinstance(imgsz, (tuple, list)) else (imgsz, imgsz)
    return torch.rand(batch, ch, h, w, generator=torch.Generator().manual_seed(0))


def deploy_copy(model: nn.Module, imgsz: int | None = None) -> nn.Module:
    """The copy that latency is measured on: float32, eval, no gradients, conv+BN fused like Ultralytics' predict
    and export."""
    m = inference_copy(model).float()
    if hasattr(m, "fuse") and hasattr(m, "is_fused"):  # an Ultralytics BaseModel
        with contextlib.redirect_stdout(None):
            m = m.fuse(verbose=False, **({} if imgsz is None else {"imgsz": imgsz}))
    return m


def export_copy(model: nn.Module, imgsz: int, fmt: str) -> nn.Module:
    """The deploy copy prepared as Ultralytics' `Exporter` prepares a model for format `fmt`: the detection head in
    export mode (static shape, `max_det` clamped to the anchors there are), C2f through `forward_split`."""
    from ultralytics.nn.modules import C2f, Detect

    m = deploy_copy(model, imgsz)
    strides = [int(s) for s in getattr(m, "stride", torch.tensor([8, 16, 32])).tolist()]
    for mod in m.modules():
        if isinstance(mod, Detect):
            mod.dynamic, mod.export, mod.format, mod.shape = False, True, fmt, None
            mod.max_det = min(getattr(mod, "max_det", 300), sum((imgsz // s) ** 2 for s in strides))
        elif isinstance(mod, C2f):
            mod.forward = mod.forward_split  # what Ultralytics exports: split instead of chunk
    return m


def export_onnx(model: nn.Module, x: torch.Tensor, path: Path) -> None:
    """Export `model` (an `export_copy` on x's device and dtype) to ONNX at `path` as Ultralytics' ONNX export
    does: its opset, input "images", static shape, slimmed by onnxslim, IR version at most 10."""
    import onnx

    from ultralytics.utils.export.engine import best_onnx_opset

    with warnings.catch_warnings(), contextlib.redirect_stdout(None), torch.no_grad():
        warnings.simplefilter("ignore")
        torch.onnx.export(TensorsOut(model), (x,), str(path), opset_version=best_onnx_opset(onnx),
                          input_names=["images"], output_names=["output0"], do_constant_folding=True, dynamo=False)
    proto = onnx.load(str(path))
    with contextlib.suppress(Exception):  # Ultralytics keeps the unslimmed model when slimming fails
        import onnxslim

        with contextlib.redirect_stdout(None):
            proto = onnxslim.slim(proto)
    if getattr(proto, "ir_version", 0) > 10:
        proto.ir_version = 10
    onnx.save(proto, str(path))


def _to_numpy(y) -> list[np.ndarray]:
    if isinstance(y, (list, tuple)):
        return [a for v in y for a in _to_numpy(v)]
    if isinstance(y, dict):
        return [a for v in y.values() for a in _to_numpy(v)]
    if isinstance(y, torch.Tensor):
        return [y.detach().float().cpu().numpy()]
    return [np.asarray(y)]


@dataclass
class Session:
    """A deployed model ready to run: `forward()` runs one batch on the fixed input and returns when it is done;
    `outputs()` runs it and returns the outputs as float32 arrays; `executed` is the precision the runtime computes
    in; `cuda_events` says to time it with CUDA events instead of the wall clock."""

    forward: Callable[[], object]
    outputs: Callable[[], list[np.ndarray]]
    executed: str
    cuda_events: bool = False
    keep: object = None  # what must stay alive while the session is used (temporary files' owners, buffers)


def open_session(backend: str, model: nn.Module, dev: torch.device, ch: int, imgsz: int, batch: int,
                 precision: str, threads: int) -> Session:
    """Prepare `model` in `backend` at `precision` for a `batch` x `ch` x `imgsz` x `imgsz` input on `dev`
    (`check_runtime` first: this assumes the runtime can run)."""
    opener = {"torch": _torch_session, "onnxruntime": _onnxruntime_session, "openvino": _openvino_session,
              "tensorrt": _tensorrt_session}[backend]
    return opener(model, dev, ch, imgsz, batch, precision, threads)


def time_session(session: Session, dev: torch.device, protocol) -> tuple[list[float], bool]:
    """Time `session.forward` by `protocol`: milliseconds per run and whether the median settled."""
    if session.cuda_events:
        return _cuda_loop(session.forward, dev, protocol)

    def run_once() -> float:
        t = time.perf_counter()
        session.forward()
        return (time.perf_counter() - t) * 1e3

    with torch.inference_mode():
        return timing.time_loop(run_once, protocol)


def _torch_session(model, dev, ch, imgsz, batch, precision, threads) -> Session:
    m = deploy_copy(model).to(dev)
    x = fixed_input(batch, ch, imgsz).to(dev)
    if precision == "fp16":
        m, x = m.half(), x.half()

    def outputs():
        with torch.inference_mode():
            return _to_numpy(m(x))

    return Session(forward=lambda: m(x), outputs=outputs, executed=precision, cuda_events=dev.type == "cuda")


def _cuda_loop(forward: Callable[[], object], dev: torch.device, protocol) -> tuple[list[float], bool]:
    """Time `forward` on a CUDA device with CUDA events around each run (cuDNN autotuning on while it runs)."""
    benchmark = torch.backends.cudnn.benchmark
    torch.backends.cudnn.benchmark = True
    try:
        with torch.cuda.device(dev), torch.inference_mode():
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            torch.cuda.synchronize(dev)

            def run_once() -> float:
                start.record()
                forward()
                end.record()
                end.synchronize()
                return start.elapsed_time(end)  # milliseconds

            return timing.time_loop(run_once, protocol)
    finally:
        torch.backends.cudnn.benchmark = benchmark


def _onnxruntime_session(model, dev, ch, imgsz, batch, precision, threads) -> Session:
    import onnxruntime as ort

    cuda = dev.type == "cuda"
    m = export_copy(model, imgsz, "onnx").to(dev)
    x = fixed_input(batch, ch, imgsz).to(dev)
    if precision == "fp16":  # CUDA only (`check_runtime`): Ultralytics traces a half model on a GPU
        m, x = m.half(), x.half()
    with tempfile.TemporaryDirectory(prefix="autoprune-cost-") as tmp:
        path = Path(tmp) / "model.onnx"
        export_onnx(m, x, path)
        del m
        so = ort.SessionOptions()
        so.intra_op_num_threads = threads
        so.inter_op_num_threads = 1
        so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        so.log_severity_level = 3
        if cuda:
            providers = [("CUDAExecutionProvider", {"device_id": dev.index or 0}), "CPUExecutionProvider"]
        else:
            providers = ["CPUExecutionProvider"]
        session = ort.InferenceSession(str(path), so, providers=providers)
    x_np = x.cpu().numpy()
    name = session.get_inputs()[0].name

    def outputs():
        return [np.asarray(y, dtype=np.float32) for y in session.run(None, {name: x_np})]

    if not cuda:
        return Session(forward=lambda: session.run(None, {name: x_np}), outputs=outputs, executed=precision)

    # CUDA: input and outputs stay on the device (IO binding), so a run is the model, not host<->device copies;
    # run_with_iobinding returns once the provider's stream is done, and synchronize_outputs makes that explicit.
    binding = session.io_binding()
    x_dev = ort.OrtValue.ortvalue_from_numpy(x_np, "cuda", dev.index or 0)
    binding.bind_ortvalue_input(name, x_dev)
    for out in session.get_outputs():
        binding.bind_output(out.name, "cuda", dev.index or 0)

    def forward():
        session.run_with_iobinding(binding)
        binding.synchronize_outputs()

    return Session(forward=forward, outputs=outputs, executed=precision, keep=(session, x_dev))


_OV_PRECISIONS = {"f32": "fp32", "bf16": "bf16", "f16": "fp16"}


def _openvino_session(model, dev, ch, imgsz, batch, precision, threads) -> Session:
    import openvino as ov

    m = export_copy(model, imgsz, "openvino")
    x = fixed_input(batch, ch, imgsz)
    with warnings.catch_warnings(), contextlib.redirect_stdout(None), torch.no_grad():
        warnings.simplefilter("ignore")
        # Ultralytics' torch2openvino: convert a trace (not the module), static input shape.
        ts = torch.jit.trace(TensorsOut(m), x, strict=False, check_trace=False)
        ov_model = ov.convert_model(ts, input=x.shape, example_input=x)
    del m, ts
    core = ov.Core()
    config = {"PERFORMANCE_HINT": "LATENCY", "INFERENCE_NUM_THREADS": threads}
    if precision == "fp32":
        config["INFERENCE_PRECISION_HINT"] = "f32"
    with tempfile.TemporaryDirectory(prefix="autoprune-cost-") as tmp:
        xml = Path(tmp) / "model.xml"
        ov.save_model(ov_model, str(xml), compress_to_fp16=precision == "fp16")  # Ultralytics' half=True
        compiled = core.compile_model(core.read_model(str(xml)), "CPU", config)
    request = compiled.create_infer_request()
    x_np = x.numpy()
    hint = compiled.get_property("INFERENCE_PRECISION_HINT")  # an openvino Type: what the plugin computes in
    hint = hint.get_type_name() if hasattr(hint, "get_type_name") else str(hint)
    executed = _OV_PRECISIONS.get(hint, hint)

    def outputs():
        result = request.infer({0: x_np})
        return [np.asarray(result[o], dtype=np.float32) for o in compiled.outputs]

    return Session(forward=lambda: request.infer({0: x_np}), outputs=outputs, executed=executed,
                   keep=(core, compiled))


def _tensorrt_session(model, dev, ch, imgsz, batch, precision, threads) -> Session:
    import tensorrt as trt

    from ultralytics.utils.export.engine import onnx2engine

    m = export_copy(model, imgsz, "engine").to(dev)
    x = fixed_input(batch, ch, imgsz).to(dev)
    with tempfile.TemporaryDirectory(prefix="autoprune-cost-") as tmp:
        onnx_path, engine_path = Path(tmp) / "model.onnx", Path(tmp) / "model.engine"
        export_onnx(m, x, onnx_path)  # Ultralytics builds the engine from an fp32 ONNX, fp16 by a builder flag
        del m
        log = logging.getLogger("ultralytics")
        was_disabled, log.disabled = log.disabled, True  # the builder's progress lines are not ours to print
        try:
            onnx2engine(str(onnx_path), engine_path, quantize=16 if precision == "fp16" else None,
                        shape=tuple(x.shape))
        finally:
            log.disabled = was_disabled
        runtime = trt.Runtime(trt.Logger(trt.Logger.WARNING))
        engine = runtime.deserialize_cuda_engine(engine_path.read_bytes())
    context = engine.create_execution_context()
    buffers = {}
    for i in range(engine.num_io_tensors):
        name = engine.get_tensor_name(i)
        dtype = torch.from_numpy(np.empty(0, dtype=trt.nptype(engine.get_tensor_dtype(name)))).dtype
        shape = tuple(engine.get_tensor_shape(name))
        if engine.get_tensor_mode(name) == trt.TensorIOMode.INPUT:
            buffers[name] = x.to(dtype).contiguous()
        else:
            buffers[name] = torch.empty(shape, dtype=dtype, device=dev)
        context.set_tensor_address(name, buffers[name].data_ptr())
    stream = torch.cuda.current_stream(dev)  # the stream `_cuda_loop` records its CUDA events on

    def forward():
        context.execute_async_v3(stream.cuda_stream)

    def outputs():
        forward()
        stream.synchronize()
        return [b.float().cpu().numpy() for n, b in buffers.items()
                if engine.get_tensor_mode(n) == trt.TensorIOMode.OUTPUT]

    return Session(forward=forward, outputs=outputs, executed=precision, cuda_events=True,
                   keep=(runtime, engine, context, buffers))
