"""The runtimes latency is measured in: eager torch and onnxruntime (the model exported to ONNX as Ultralytics does).

Each `measure_*` function takes the caller's model, makes the copy that is deployed (`deploy_copy`: conv+BN fused,
eval, float32; float16 on CUDA), runs it through `autoprune.cost.timing.time_loop` and returns the samples in
milliseconds and whether the median settled. `autoprune.cost.latency.measure_latency` picks one by name.
"""

from __future__ import annotations

import contextlib
import tempfile
import time
import warnings
from pathlib import Path
from typing import Callable

import torch
from torch import nn

from autoprune.cost import timing
from autoprune.cost._model import TensorsOut, inference_copy
from autoprune.errors import UserError

BACKENDS = ("torch", "onnxruntime")


def check_backend(backend) -> str:
    """Return `backend`, or raise `UserError` unless it is one of `BACKENDS`."""
    if backend not in BACKENDS:
        raise UserError(f"--backend must be one of {', '.join(BACKENDS)}, got {backend!r}")
    return backend


def check_onnxruntime(dev: torch.device) -> None:
    """Raise `UserError` unless onnxruntime is installed, with its CUDA provider when `dev` is a CUDA device."""
    try:
        import onnxruntime as ort
    except ImportError:
        raise UserError("--backend onnxruntime needs the onnxruntime package (pip install onnxruntime)") from None
    if dev.type == "cuda" and "CUDAExecutionProvider" not in ort.get_available_providers():
        raise UserError("--backend onnxruntime on a CUDA device needs onnxruntime-gpu (its CUDA provider is missing); "
                        "use --device cpu or --backend torch")


def _input(batch, ch, imgsz) -> torch.Tensor:
    """A fixed random image batch in [0, 1): the same numbers on every call, unlike zeros never a special case."""
    return torch.rand(batch, ch, imgsz, imgsz, generator=torch.Generator().manual_seed(0))


def deploy_copy(model: nn.Module) -> nn.Module:
    """The copy that latency is measured on: float32, eval, no gradients, conv+BN fused like Ultralytics' predict."""
    m = inference_copy(model).float()
    if hasattr(m, "fuse") and hasattr(m, "is_fused"):  # an Ultralytics BaseModel
        with contextlib.redirect_stdout(None):
            m = m.fuse(verbose=False)
    return m


def measure_torch(model, dev, ch, imgsz, batch, protocol) -> tuple[list[float], bool]:
    """Time the deploy copy in eager torch: wall clock on the CPU, CUDA events in float16 on a GPU."""
    m = deploy_copy(model).to(dev)
    x = _input(batch, ch, imgsz).to(dev)
    if dev.type == "cuda":
        m, x = m.half(), x.half()
        return _cuda_loop(lambda: m(x), dev, protocol)

    def run_once() -> float:
        t = time.perf_counter()
        m(x)
        return (time.perf_counter() - t) * 1e3

    with torch.inference_mode():
        return timing.time_loop(run_once, protocol)


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


def _export_onnx(model: nn.Module, x: torch.Tensor, path: Path) -> None:
    """Export `model` (a deploy copy, on x's device and dtype) to ONNX the way Ultralytics' exporter prepares it."""
    import onnx

    from ultralytics.nn.modules import C2f, Detect
    from ultralytics.utils.export.engine import best_onnx_opset

    imgsz = x.shape[-1]
    strides = [int(s) for s in getattr(model, "stride", torch.tensor([8, 16, 32])).tolist()]
    for m in model.modules():
        if isinstance(m, Detect):
            m.dynamic, m.export, m.format, m.shape = False, True, "onnx", None
            m.max_det = min(getattr(m, "max_det", 300), sum((imgsz // s) ** 2 for s in strides))
        elif isinstance(m, C2f):
            m.forward = m.forward_split  # what Ultralytics exports: split instead of chunk
    with warnings.catch_warnings(), contextlib.redirect_stdout(None), torch.no_grad():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            TensorsOut(model),
            (x,),
            str(path),
            opset_version=best_onnx_opset(onnx),
            input_names=["images"],
            do_constant_folding=True,
            dynamo=False,
        )


def measure_onnxruntime(model, dev, ch, imgsz, batch, threads, protocol) -> tuple[list[float], bool]:
    """Export the deploy copy to ONNX in a temporary folder and time an onnxruntime session with `threads`."""
    import onnxruntime as ort

    cuda = dev.type == "cuda"
    m = deploy_copy(model).to(dev)
    x = _input(batch, ch, imgsz).to(dev)
    if cuda:
        m, x = m.half(), x.half()
    with tempfile.TemporaryDirectory(prefix="autoprune-cost-") as tmp:
        path = Path(tmp) / "model.onnx"
        _export_onnx(m, x, path)
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
    if not cuda:

        def run_once() -> float:
            t = time.perf_counter()
            session.run(None, {name: x_np})
            return (time.perf_counter() - t) * 1e3

        return timing.time_loop(run_once, protocol)

    # CUDA: input and outputs stay on the device (IO binding), so a run is the model, not host<->device copies;
    # run_with_iobinding returns once the provider's stream is done, and synchronize_outputs makes that explicit.
    binding = session.io_binding()
    x_dev = ort.OrtValue.ortvalue_from_numpy(x_np, "cuda", dev.index or 0)
    binding.bind_ortvalue_input(name, x_dev)
    for out in session.get_outputs():
        binding.bind_output(out.name, "cuda", dev.index or 0)

    def run_cuda() -> float:
        t = time.perf_counter()
        session.run_with_iobinding(binding)
        binding.synchronize_outputs()
        return (time.perf_counter() - t) * 1e3

    return timing.time_loop(run_cuda, protocol)
