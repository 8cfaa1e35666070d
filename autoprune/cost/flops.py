"""GFLOPs and parameter counts, and the one per-operation FLOP model every GFLOPs figure in autoprune uses.

The FLOP model (Ultralytics' convention: 2 x multiply-accumulates, the thop rules behind `model.info()`):

- a convolution: `conv_macs` = output channels x input channels per group x kernel elements x output positions
  (input positions for a transposed convolution, which scatters each input through its kernel; bias not counted);
- a norm (batch, group, layer, instance): `norm_macs` = 4 per element for an affine norm, 2 without affine;
- the rest (nearest upsampling, pooling, matrix products, attention) in `_flop_handles`.

`count_gflops` applies it to a traced model with fvcore; the channel graph's conv GFLOPs
(`ChannelGraph.conv_gflops`) and the search space's prediction for a genome use `conv_flops` and `norm_flops`, so
that a predicted count and the count of the pruned model agree (tests/cost/test_flops.py checks it).
"""

from __future__ import annotations

import logging
import math
import warnings

import torch
from torch import nn

from autoprune.cost._model import TensorsOut, inference_copy, input_channels
from autoprune.cost.signature import architecture_signature
from autoprune.imgsz import check_imgsz
from autoprune.wrappers import detection_model

FLOPS_PER_MAC = 2  # Ultralytics' GFLOPs count a multiply-accumulate as two operations
AFFINE_NORM_MACS_PER_ELEMENT = 4  # thop: 2 per element, doubled for an affine norm (fvcore: 2 in eval, 5 in train)
PLAIN_NORM_MACS_PER_ELEMENT = 2


def conv_macs(out_channels: int, in_channels_per_group: int, kernel_elements: int, positions: int) -> int:
    """Multiply-accumulates of a convolution: every weight once per output position (bias not counted).

    Example:
        >>> conv_macs(16, 3, 9, 320 * 320)  # a 3x3 conv from 3 to 16 channels, stride 1, at 320
        44236800
    """
    return out_channels * in_channels_per_group * kernel_elements * positions


def conv_flops(out_channels: int, in_channels_per_group: int, kernel_elements: int, positions: int) -> int:
    """FLOPs (2 x multiply-accumulates) of a convolution; see `conv_macs`."""
    return FLOPS_PER_MAC * conv_macs(out_channels, in_channels_per_group, kernel_elements, positions)


def norm_macs(elements: int, *, affine: bool = True) -> int:
    """Multiply-accumulates of a norm layer over `elements` values (thop's rule).

    Example:
        >>> norm_macs(10), norm_macs(10, affine=False)
        (40, 20)
    """
    return elements * (AFFINE_NORM_MACS_PER_ELEMENT if affine else PLAIN_NORM_MACS_PER_ELEMENT)


def norm_flops(elements: int, *, affine: bool = True) -> int:
    """FLOPs (2 x multiply-accumulates) of a norm layer over `elements` values; see `norm_macs`."""
    return FLOPS_PER_MAC * norm_macs(elements, affine=affine)


def count_params(model: nn.Module) -> int:
    """Number of parameters (each shared tensor once), as Ultralytics' `model.info()` reports it.

    Example:
        >>> count_params(nn.Conv2d(3, 16, 3, bias=False))
        432
    """
    return int(sum(p.numel() for p in detection_model(model).parameters()))


def _import_fvcore():
    with warnings.catch_warnings():  # fvcore scripts a loss with torch.jit.script at import: a FutureWarning
        warnings.simplefilter("ignore")
        from fvcore.nn import FlopCountAnalysis
        from fvcore.nn.jit_handles import get_shape
    return FlopCountAnalysis, get_shape


def _flop_handles() -> dict:
    """fvcore operator rules (multiply-adds) aligned with thop, the counter behind Ultralytics' GFLOPs.

    fvcore and thop agree on convolutions (weights x output positions, no bias), linear layers and matrix products;
    the convolution rule is `conv_macs`, the one the channel graph prices genomes with. They differ on the cheap
    elementwise layers, where thop's rules are adopted:

    - batch norm: `norm_macs`, thop's 2 ops per element, doubled for an affine norm (4); fvcore charges 2 (eval) or
      5 (train); the same for group/layer/instance norm;
    - nearest upsampling: thop 0, fvcore 1 per output element; bilinear: thop 11, fvcore 4; bicubic thop 259;
    - adaptive average pooling: thop one add per input plus one divide per output;
    - average pooling: 0, because Ultralytics' blocks (ADown) call it functionally and thop counts only modules;
    - matrix products: output elements x contracted length (fvcore's own rule undercounts broadcast operands);
    - scaled dot-product attention, which fvcore does not know: thop's QK^T + AV rule.

    Elementwise activations, additions, softmax and the box decoding stay uncounted in both. Without these rules
    fvcore reads 0.6% below Ultralytics on yolov8n and the gap grows as pruning shrinks the convolutions faster than
    the norms (channels^2 against channels).
    """
    _, get_shape = _import_fvcore()

    def numel(v) -> int:
        shape = get_shape(v)
        return math.prod(shape) if shape is not None else 0

    def conv(inputs, outputs):
        # inputs: 0 input, 1 weight (out, in / groups, *kernel), ..., 6 transposed; a transposed conv runs each
        # weight once per input position, any other once per output position
        x, w, out = get_shape(inputs[0]), get_shape(inputs[1]), get_shape(outputs[0])
        positions = (x if inputs[6].toIValue() else out)[2:]
        return x[0] * conv_macs(w[0], w[1], math.prod(w[2:]), math.prod(positions))

    def norm(affine_index: int):
        def rule(inputs, outputs):
            affine = affine_index < len(inputs) and get_shape(inputs[affine_index]) is not None
            return norm_macs(numel(inputs[0]), affine=affine)

        return rule

    def per_output(ops: int):
        return lambda inputs, outputs: ops * numel(outputs[0])

    def adaptive_avg_pool(inputs, outputs):
        return numel(inputs[0]) + numel(outputs[0])

    def matmul(inputs, outputs):
        a = get_shape(inputs[0])
        return numel(outputs[0]) * (a[-1] if a else 0)

    def free(inputs, outputs):  # fvcore's None only adds to its ignore list and keeps a built-in rule running
        return 0

    def sdpa(inputs, outputs):
        q, k, v = (get_shape(x) for x in inputs[:3])
        return numel(outputs[0]) // v[-1] * k[-2] * (q[-1] + v[-1])

    return {
        "aten::_convolution": conv,
        "aten::batch_norm": norm(1),
        "aten::group_norm": norm(2),
        "aten::layer_norm": norm(2),
        "aten::instance_norm": norm(1),
        "aten::upsample_nearest2d": free,
        "aten::upsample_nearest3d": free,
        "aten::upsample_linear1d": per_output(5),
        "aten::upsample_bilinear2d": per_output(11),
        "aten::upsample_bicubic2d": per_output(259),
        "aten::upsample_trilinear3d": per_output(31),
        "aten::adaptive_avg_pool2d": adaptive_avg_pool,
        "aten::avg_pool2d": free,
        "aten::matmul": matmul,
        "aten::mm": matmul,
        "aten::bmm": matmul,
        "aten::scaled_dot_product_attention": sdpa,
    }


_GFLOPS_CACHE: dict[tuple, float] = {}
_GFLOPS_CACHE_MAX = 4096


def count_gflops(model: nn.Module, imgsz: int = 640) -> float:
    """GFLOPs of one forward pass of a batch-1 `imgsz` x `imgsz` image: 2 x fvcore's multiply-adds / 1e9.

    Counted on a copy of the model as given (not fused, eval mode), like Ultralytics' `model.info()`; works for any
    channel counts, so for pruned models too. Results are remembered per `architecture_signature` and size.

    Example:
        >>> from autoprune.models import load_model
        >>> round(count_gflops(load_model("yolov8n.yaml").model, 640), 1)
        8.9
    """
    imgsz = check_imgsz(imgsz)
    model = detection_model(model)
    ch = input_channels(model)
    key = (architecture_signature(model), imgsz, ch)
    if key in _GFLOPS_CACHE:
        return _GFLOPS_CACHE[key]
    FlopCountAnalysis, _ = _import_fvcore()
    m = inference_copy(model)
    p = next(m.parameters(), None)
    x = torch.zeros(1, ch, imgsz, imgsz, device=p.device if p is not None else "cpu", dtype=torch.float32)
    m.float()
    analysis = (
        FlopCountAnalysis(TensorsOut(m), (x,))
        .set_op_handle(**_flop_handles())
        .unsupported_ops_warnings(False)
        .uncalled_modules_warnings(False)
        .tracer_warnings("none")
    )
    fv_logger = logging.getLogger("fvcore")
    level = fv_logger.level
    fv_logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")  # TracerWarnings from the head's shape-dependent code
            macs = analysis.total()
    finally:
        fv_logger.setLevel(level)
    gflops = float(FLOPS_PER_MAC) * macs / 1e9
    if len(_GFLOPS_CACHE) >= _GFLOPS_CACHE_MAX:
        _GFLOPS_CACHE.clear()
    _GFLOPS_CACHE[key] = gflops
    return gflops
