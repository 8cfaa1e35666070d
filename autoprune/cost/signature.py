"""The architecture signature: a short hash that identifies what a model costs, whatever its weights.

It keys the GFLOPs cache (`autoprune.cost.flops`) and the latency cache (`autoprune.cost.cache`).
"""

from __future__ import annotations

import hashlib

from torch import nn

from autoprune.wrappers import detection_model

# Plain attributes of non-torch modules that change what a forward pass computes without showing in any tensor
# shape: Ultralytics' graph wiring (f: from-layers, i: index), concat dims, residual flags, head settings.
_SIGNATURE_ATTRS = ("f", "i", "d", "add", "shortcut", "nc", "nl", "reg_max", "end2end", "max_det", "legacy",
                    "num_heads", "key_dim", "head_dim", "area", "scale", "c", "c_", "e", "n", "k", "s", "g")


def _plain(v):
    if isinstance(v, (bool, int, float, str)) or v is None:
        return v
    if isinstance(v, (list, tuple)) and all(isinstance(x, (bool, int, float, str)) or x is None for x in v):
        return list(v)
    return None


def architecture_signature(model: nn.Module) -> str:
    """A short hash of a model's architecture: every module's name and type, every parameter and buffer shape, the
    layer hyper-parameters (kernel, stride, padding, groups, ...) and Ultralytics' wiring; never the weight values.

    Two models with the same signature cost the same: it keys the latency and GFLOPs caches. Pruning one channel
    changes it; fine-tuning, BN recalibration or a dtype change does not.

    Example:
        >>> a, b = nn.Conv2d(3, 8, 3), nn.Conv2d(3, 8, 3)
        >>> architecture_signature(a) == architecture_signature(b)
        True
        >>> architecture_signature(a) == architecture_signature(nn.Conv2d(3, 7, 3))
        False
    """
    model = detection_model(model)
    h = hashlib.sha256()
    for name, m in model.named_modules():
        t = type(m)
        parts = [name, f"{t.__module__}.{t.__qualname__}"]
        for pname, p in m.named_parameters(recurse=False):
            parts.append(f"{pname}{tuple(p.shape)}")
        for bname, b in m.named_buffers(recurse=False):
            if b is not None:
                parts.append(f"{bname}{tuple(b.shape)}")
        if isinstance(m, nn.modules.batchnorm._NormBase):
            parts.append(f"bn({m.num_features},{m.affine},{m.track_running_stats})")  # not eps/momentum
        elif t.__module__.startswith("torch.nn"):
            parts.append(m.extra_repr())  # kernel, stride, padding, dilation, groups, mode, inplace, ...
        else:
            for attr in _SIGNATURE_ATTRS:
                if attr in m.__dict__:
                    v = _plain(m.__dict__[attr])
                    if v is not None:
                        parts.append(f"{attr}={v!r}")
        fwd = m.__dict__.get("forward")  # Ultralytics' fuse() swaps forward per instance
        if fwd is not None:
            parts.append(f"forward={getattr(fwd, '__name__', type(fwd).__name__)}")
        h.update(("|".join(parts) + "\n").encode())
    return h.hexdigest()[:16]
