"""A latency model: measured latencies per layer configuration, summed to predict a pruned candidate in microseconds.

NetAdapt (Yang et al. 2018) and HALP (Shen et al. 2022) predict a pruned network's latency as the sum of per-layer
latencies looked up in a table measured once on the target runtime. `LatencyTable` does that for the convolutions
of an Ultralytics model, each measured alone (conv + bias + its activation, conv+BN folded as the deployed model
has it) in the chosen runtime, backend, precision, batch and thread count, the same way `measure_latency` times a
whole model (`autoprune.cost.backends`), and filed in a `LatencyCache` under a key that says all of that
(`cache_key` with the layer's configuration as its signature), so that a table survives the process and a second
build measures nothing.

An entry is one distinct layer configuration (`LayerConfig`: operator, input shape, in/out channels, kernel, stride,
padding, groups, activation). A candidate's convs can take thousands of channel combinations, too many to measure,
so every conv of the model is measured at `ANCHORS` points between its smallest prunable shape (every group at its
floor) and its full shape, and a candidate's conv is priced by linear interpolation in its multiply-accumulates
between its own anchors (never below the smallest anchor, never above the largest; anchors made non-decreasing).
Attention blocks (`Attention` in PSA, C2PSA and PSABlock; YOLO12's area attention `AAttn`) are priced the same way
by their matrix products, whose cost follows their head dims (`channels.graph.AttentionInfo`): each block's "attention
core" (`AttentionConfig`, `AttentionCore`: from the qkv conv's output, the split per head, `q^T k`, the softmax and the
mixing of the values, as the block's forward does it, area by area for `AAttn`) is measured alone at `ANCHORS` head
dims from the smallest the pruner allows to the full ones, and priced by interpolation in its multiply-accumulates at
the head dims the candidate's channels leave it (nothing when a depth plan removes its block).
Where the convs and cores alone sum to more than the whole model (OpenVINO), every entry is scaled by the model's time
over that sum (`scale`) and `rest_ms` is 0. The prediction is then a deterministic, non-decreasing function of the kept
channels, which `autoprune.budget` can bisect on. What the convs and attention cores do not account for (concats,
splits, upsampling, pooling, the adds, the Detect head's decoding, runtime overhead) is one constant, `rest_ms`: the
unpruned model measured end to end minus the sum of its convs and attention cores.
The entries are minima (a loaded machine only ever raises a minimum); a model's latency as `cost`, a search and its
budget give it is the median of a timing run, so `predict` scales the sum by the unpruned model's median over its
minimum (`median_ratio`, measured with it) and `predict_min` is the sum itself. Each entry is the layer's time less
the runtime's call overhead (`OVERHEAD`, measured the same way), which a layer
timed alone pays and a layer inside the model does not. An entry measured on a CPU under load (the load average
above the core count, `timing.under_load`) is filed as such, counted in `entries_under_load`, and measured again by
the next build that runs on a quiet machine, so a table built while the machine was busy does not stay wrong.

Operator swaps (`autoprune.swap`) are priced by the layers that replace the conv (`swap_layers`: the depthwise k x k
and the 1x1 of `dws`, the grouped k x k of `group2/4/8`, the k x 1 and the 1 x k of `factor`, each with its own
stride, padding, groups and activation as `swap.swap_convs` builds it). Each replacement layer of each swap kind of
each site has its own anchor curve, measured like the convs' at the site's anchor channels (rounded up to a multiple
of G for a grouped kind) and filed under the key of its own `LayerConfig`; a swapped site is priced by the sum of its
replacement layers interpolated at the candidate's channels instead of the original conv. The sites and kinds given
to the table (`swaps`) are measured by `build`, any other the first time a prediction holds it. A table without
swaps measures the entries it would without swaps priced, and a model without attention its convs' alone. What a
lone layer cannot show is not priced: onnxruntime on a CPU runs some grouped convs outside the blocked NCHWc layout
the convs around it use, so inside a model they pay a layout reorder before and after (a 32 -> 64 3x3 stride-2 conv
at 80 x 80, 1 thread, grouped by 4: 0.2 ms more than the dense conv between two convs, 0.02 ms more alone;
`benchmarks/bench_swap_layout.py`); depthwise, k x 1 and 1 x k convs, and that conv grouped by 2, stay in the layout.

Example:
    >>> table = LatencyTable(model, graph, imgsz=320, backend="onnxruntime", path="runs/latency_lut.json")
    >>> table.build()               # measures what the file does not hold yet
    >>> table.predict(counts)       # milliseconds (the median a timing run would give), in microseconds
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping
from dataclasses import asdict, replace
from pathlib import Path

import torch
from torch import nn

from autoprune.cost import backends, timing
from autoprune.cost.cache import LatencyCache, cache_key
from autoprune.devices import default_threads, resolve_device, torch_threads
from autoprune.latency_layers import (  # noqa: F401  (re-exported: the table's layers were defined here)
    ANCHORS,
    AttentionConfig,
    LayerConfig,
    _attention_sites,
    _interpolate,
    _layer_configs,
    _round_up,
    _sites,
    swap_layers,
)
from autoprune.wrappers import detection_model

# The call overhead of the runtime (one inference request on a trivial layer): every layer measured alone pays it,
# the whole model pays it once, so it is taken off each entry (OpenVINO's is ~0.2 ms a call, 63 convs' worth of it
# would exceed what fusion inside the model saves).
OVERHEAD = ("conv", (8, 8), 1, 1, (1, 1), (1, 1), (0, 0), (1, 1), 1, "Identity")

# A layer alone runs in well under a millisecond: many short runs, and the minimum, which a loaded machine only
# ever raises (the table must not carry the machine's mood of the moment into every prediction).
LAYER_TIMING = timing.TimingProtocol(warmup_runs=5, warmup_s=0.05, min_repeats=20, min_time_s=0.15, max_time_s=2.0)
# The whole model, for `rest_ms`: the same statistic (the minimum) over a longer run.
MODEL_TIMING = timing.TimingProtocol(warmup_runs=3, warmup_s=0.3, min_repeats=15, min_time_s=1.0, max_time_s=10.0)


class LatencyTable:
    """Per-layer measured latencies of `model`'s convs and attention cores in one runtime setting; `predict(counts)`
    sums them.

    `model` is the unpruned model and `graph` its channel analysis (`autoprune.channels.analyze`); `imgsz`, `batch`,
    `device`, `backend`, `precision` and `threads` are what `measure_latency` takes. `path`: the JSON file the
    entries are kept in (a `LatencyCache`; None keeps them in memory only). `measure` replaces how one module is
    timed (tests): `measure(module, in_channels, in_hw) -> ms`, `in_hw` the side of a square input or (height,
    width) of a rectangular one (a `factor` swap's 1 x k layer after a stride), `in_channels` None for the whole
    model; and `load_average` what the machine's load is read from (default `os.getloadavg`'s first figure; with
    `measure`, no load).

    Kept counts may hold a depth plan (`{"depth:<unit id>": kept}`, `autoprune.depth`): the convs of the removed
    elements cost nothing and a concat reader reads fewer channels (which elements go: `element_orders`, as
    `SearchSpace.element_orders`). The adds and concat slots they leave out are not priced (a few microseconds).
    They may hold operator swaps (`{"swap:<site id>": code}`, `autoprune.swap`): a swapped conv is priced by its
    replacement's layers (`swap_layers`) at the channels the widths leave it; a site gone with its depth element, and
    a group kind the channels do not divide, are priced as `swap_convs` leaves them. `swaps` ({site id: kinds}, as
    `swap.find_sites` names sites) are the swaps `build` measures; others are measured when a prediction first
    holds them. The BatchNorms a swap adds (folded in the runtime) cost nothing more.
    """

    def __init__(self, model: nn.Module, graph, *, imgsz: int = 640, batch: int = 1, device="cpu",
                 backend: str = "onnxruntime", precision: str | None = None, threads: int | None = None,
                 path: str | Path | None = None, round_to: int = 8, min_channels: int = 8, measure=None,
                 load_average=None, swaps: Mapping[str, Iterable[str]] | None = None):
        self.model = detection_model(model)
        self.graph = graph
        self.imgsz, self.batch, self.backend = imgsz, batch, backends.check_backend(backend)
        self.device = resolve_device(device)
        self.precision = backends.check_runtime(backend, self.device, precision)
        self.threads = default_threads() if threads is None else threads
        self.cache = LatencyCache(path)
        self._measure = measure
        # the load average a measurement is filed with: the OS's; with `measure` (tests) none unless given
        if load_average is None:
            from autoprune.cost.latency import _load_average

            load_average = _load_average if measure is None else (lambda: None)
        self._load_average = load_average
        from autoprune.depth import find_units
        from autoprune.swap import KINDS, find_sites

        self.units = tuple(find_units(self.model))
        self.element_orders: dict[str, list[int]] = {}  # {depth key: element order} (`depth.rank_elements`)
        self._configs = _layer_configs(self.model, imgsz)
        self.sites = _sites(self._configs, graph, round_to, min_channels, self.units)
        self.attention_sites = _attention_sites(self.model, self._configs, graph, round_to, min_channels, self.units)
        self._site_of = {s.name: s for s in self.sites}
        self.swap_sites = {s.id: s for s in find_sites(self.model)}  # {site id: `swap.SwapSite`}
        self.swaps = {sid: tuple(k for k in ((kinds,) if isinstance(kinds, str) else kinds) if k != "keep")
                      for sid, kinds in (swaps or {}).items()}
        for sid, kinds in self.swaps.items():
            if sid not in self.swap_sites:
                raise ValueError(f"{sid!r} is no swap site of this model (`swap.find_sites`)")
            for k in kinds:
                if k not in KINDS:
                    raise ValueError(f"unknown swap kind {k!r} for {sid!r} (kinds: {', '.join(KINDS)})")
        # {(site id, kind): one curve per replacement layer}, and the entries (less the overhead) of the swapped
        # convs that pruning never changes: their time is in `rest_ms`, which a swap of them takes back
        self._swap_curves: dict[tuple[str, str], list[tuple[list[int], list[float]]]] = {}
        self._fixed_ms: dict[str, float] = {}
        self.measured = 0  # entries measured by this object (0 when the file held them all)
        self._loaded_keys: set[str] = set()  # entries in use that were measured under load (`timing.under_load`)
        self._curves: dict[str, tuple[list[int], list[float]]] | None = None
        self._attention_curves: dict[str, tuple[list[int], list[float]]] = {}  # {attention block: its core's curve}
        self.rest_ms: float | None = None
        self.overhead_ms: float | None = None
        self.scale = 1.0  # < 1 where the convs and attention cores alone sum to more than the model end to end
        self.median_ratio = 1.0  # the unpruned model's median over minimum latency (`build`; `predict` scales by it)
        # (scale, offset_ms) mapping predictions onto end-to-end timings near a latency target
        # (`latency_calibration.calibrate`; (1, 0): not calibrated)
        self.calibration = (1.0, 0.0)

    # -- the entries ---------------------------------------------------------------------------------------------

    def _key(self, signature: str, imgsz: int, protocol) -> str:
        from autoprune.cost.latency import device_label

        return cache_key(signature, imgsz, self.batch, self.device, device_label(self.device), self.backend,
                         self.precision, self.threads, protocol)

    def _time(self, module: nn.Module, ch: int, hw, protocol) -> float:
        if self._measure is not None:
            return float(self._measure(module, ch, hw))
        with torch_threads(self.threads):
            session = _layer_session(self.backend, module, self.device, ch, hw, self.batch, self.precision,
                                     self.threads)
            if session.cuda_events:
                samples, _ = backends.time_session(session, self.device, protocol)
            else:
                samples = _min_loop(session.forward)
            del session
        return min(samples)

    def _load(self) -> float | None:
        """The 1-minute load average where it says something about the timing (a CPU device), else None."""
        return self._load_average() if self.device.type == "cpu" else None

    def _stored(self, key: str) -> float | None:
        """The filed latency of `key`, or None when there is none or when it was measured under load and the
        machine is quiet now (then it is measured again)."""
        hit = self.cache.get(key)
        if hit is None or not isinstance(hit.get("ms"), (int, float)):
            return None
        if hit.get("under_load"):
            if not timing.under_load(self._load(), str(self.device)):
                return None
            self._loaded_keys.add(key)
        return float(hit["ms"])

    def _file(self, key: str, ms: float, **extra) -> None:
        load = self._load()
        loaded = timing.under_load(load, str(self.device))
        if loaded:
            self._loaded_keys.add(key)
        self.measured += 1
        self.cache.put(key, {"ms": ms, **extra, **({"load": load, "under_load": True} if loaded else {})})

    def entry(self, cfg: LayerConfig | AttentionConfig) -> float:
        """The measured latency (ms) of `cfg` alone: from the table, or measured now and filed."""
        key = self._key("layer:" + cfg.key(), cfg.in_hw[0], LAYER_TIMING)
        ms = self._stored(key)
        if ms is None:
            hw = cfg.in_hw[0] if cfg.in_hw[0] == cfg.in_hw[1] else cfg.in_hw
            ms = self._time(cfg.module(), cfg.cin, hw, LAYER_TIMING)
            self._file(key, ms, layer=asdict(cfg))
        return ms

    def _curve(self, cfgs: Iterable[LayerConfig | AttentionConfig]) -> tuple[list[int], list[float]]:
        """(MACs, ms) of the entries of `cfgs` less the call overhead, in MACs order, made non-decreasing."""
        macs, ms = [], []
        for cfg in sorted(cfgs, key=lambda c: c.macs()):
            value = max(self.entry(cfg) - self.overhead_ms, 0.0)
            macs.append(cfg.macs())
            ms.append(max(value, ms[-1]) if ms else value)
        return macs, ms

    def _swap_curve(self, sid: str, kind: str) -> list[tuple[list[int], list[float]]]:
        """One curve per replacement layer of site `sid` swapped to `kind` (measured on first use): the layers at
        the site's anchor channels (a grouped kind's rounded up to a multiple of G), or at its channels when
        pruning never changes it (then its own entry is kept too, for `predict` to take out of `rest_ms`)."""
        if (sid, kind) in self._swap_curves:
            return self._swap_curves[(sid, kind)]
        from autoprune.swap import GROUPS

        site = self.swap_sites[sid]
        full, base = self._configs[site.conv], self._site_of.get(site.conv)
        g = GROUPS.get(kind, 1)
        pairs = [(c.cin, c.cout) for c in base.anchors()] if base is not None else [(full.cin, full.cout)]
        stacks = [swap_layers(replace(full, cin=_round_up(a, g), cout=_round_up(b, g)), kind) for a, b in pairs]
        with self.cache.deferred():
            curves = [self._curve(dict.fromkeys(layers[i] for layers in stacks)) for i in range(len(stacks[0]))]
            if base is None:
                self._fixed_ms[site.conv] = max(self.entry(full) - self.overhead_ms, 0.0)
        self._swap_curves[(sid, kind)] = curves
        return curves

    def _model_ms(self) -> tuple[float, float]:
        """The unpruned model measured end to end over `MODEL_TIMING`: (minimum, median), from the table when it
        holds both (an entry filed before the median was kept is measured again)."""
        from autoprune.cost.signature import architecture_signature

        key = self._key("model:" + architecture_signature(self.model), self.imgsz, MODEL_TIMING)
        ms = self._stored(key)
        if ms is not None and (self._measure is not None or isinstance(self.cache.get(key).get("median_ms"), float)):
            return ms, float(self.cache.get(key).get("median_ms", ms))
        if self._measure is not None:  # a fake timer gives one figure: minimum and median alike
            ms = median = float(self._measure(self.model, None, self.imgsz))
        else:
            from autoprune.cost.latency import measure_latency

            r = measure_latency(self.model, imgsz=self.imgsz, batch=self.batch, device=self.device,
                                backend=self.backend, precision=self.precision, threads=self.threads,
                                protocol=MODEL_TIMING, cache=False)
            ms, median = r.min_ms, r.median_ms
        self._file(key, ms, median_ms=float(median))
        return ms, median

    def build(self) -> LatencyTable:
        """Measure every anchor (of the convs and the attention cores) and the unpruned model that the table does
        not hold yet (or holds as measured under load, when the machine is quiet now), and the replacements of
        `swaps`; returns self."""
        with self.cache.deferred():  # hundreds of small entries: the file is written every few seconds, not each
            self._loaded_keys.clear()
            self.overhead_ms = self.entry(LayerConfig(*OVERHEAD))
            self._curves = {site.name: self._curve(site.anchors()) for site in self.sites}
            self._attention_curves = {s.name: self._curve(s.anchors()) for s in self.attention_sites}
            full_sum = sum(self._layer_ms(s.name, s.full.macs()) for s in self.sites)
            full_sum += sum(_interpolate(self._attention_curves[s.name], s.full.macs()) for s in self.attention_sites)
            model_ms, median_ms = self._model_ms()
            # the search, `cost` and the reports give a model's median latency; the entries are minima (a loaded
            # machine only ever raises them): a prediction is scaled by the unpruned model's median over minimum
            self.median_ratio = max(1.0, median_ms / model_ms) if model_ms > 0 else 1.0
            # Layers alone can sum to more than the model (OpenVINO fuses and schedules inside a compiled model):
            # then the entries (the attention cores' too) are scaled down to the model instead of adding a negative
            # rest.
            self.scale = min(1.0, model_ms / full_sum) if full_sum > 0 else 1.0
            self.rest_ms = model_ms - self.scale * full_sum
            self._swap_curves, self._fixed_ms = {}, {}
            for sid, kinds in self.swaps.items():
                for kind in kinds:
                    self._swap_curve(sid, kind)
        return self

    # -- predictions ---------------------------------------------------------------------------------------------

    def _layer_ms(self, name: str, macs: int) -> float:
        return _interpolate(self._curves[name], macs)

    def swap_ms(self, sid: str, kind: str, cin: int, cout: int) -> float | None:
        """The predicted latency (ms, unscaled) of site `sid` swapped to `kind` at `cin` -> `cout` channels: the sum
        of its replacement layers' curves (`swap_layers`); None where the conv stays (`keep`, or a group kind the
        channels do not divide)."""
        if self._curves is None:
            self.build()
        cfg = replace(self._configs[self.swap_sites[sid].conv], cin=cin, cout=cout)
        layers = swap_layers(cfg, kind)
        if layers == [cfg]:
            return None
        return sum(_interpolate(curve, c.macs()) for curve, c in zip(self._swap_curve(sid, kind), layers))

    def _priced(self, counts: dict | None) -> tuple[dict[str, float], float]:
        """({conv or attention block: predicted ms} of the table's convs, of every swapped conv (its replacement)
        and of the table's attention cores (0 where a depth plan removed the block), the entries of the swapped
        convs that pruning never changes, which `rest_ms` holds)."""
        if self._curves is None:
            self.build()
        swaps = {}
        if counts and any(isinstance(k, str) and k.startswith(("depth:", "swap:")) for k in counts):
            from autoprune.depth import conv_channels
            from autoprune.swap import split_counts

            counts, swaps = split_counts(counts)
            channels = conv_channels(self.graph, list(self.units), counts, self.element_orders)
        else:
            channels = self.graph.conv_channels(counts)
        layers = {s.name: self._layer_ms(s.name, s.config(*channels[s.name]).macs()) if s.name in channels else 0.0
                  for s in self.sites}
        for s in self.attention_sites:
            gone = s.qkv not in channels or s.values not in channels
            layers[s.name] = 0.0 if gone else _interpolate(
                self._attention_curves[s.name], s.config(channels[s.qkv][1], channels[s.values][1]).macs())
        taken = 0.0
        for sid, kind in sorted(swaps.items()):
            site = self.swap_sites.get(sid)
            if site is None:
                raise ValueError(f"the counts swap {sid!r}, which is no swap site of this model (`swap.find_sites`)")
            if site.conv not in channels:
                continue  # gone with its depth element
            ms = self.swap_ms(sid, kind, *channels[site.conv])
            if ms is None:
                continue
            if site.conv not in self._site_of:
                taken += self._fixed_ms[site.conv]
            layers[site.conv] = ms
        return layers, taken

    def layer_latencies(self, counts: dict | None = None) -> dict[str, float]:
        """Each conv's predicted latency (ms) with `counts` kept channels per group (None: unpruned): the table's
        convs, a swapped conv priced as its replacement's layers, and each attention core under its block's path."""
        return self._priced(counts)[0]

    def predict(self, counts: dict | None = None, *, calibrated: bool = True) -> float:
        """The predicted median latency (ms) of the model keeping `counts` channels per group (with its depth plan
        and swaps), the statistic `cost.measure_latency` reports and a search's latency budget is checked on:
        `predict_min` times `median_ratio`, calibrated unless `calibrated` is False (`latency_calibration.apply`).
        Microseconds; deterministic; never falls when a count rises (a group swap that stops dividing the channels
        excepted: the conv stays, as built)."""
        raw = self.median_ratio * self.predict_min(counts)
        if not calibrated or self.calibration == (1.0, 0.0):
            return raw
        from autoprune.latency_calibration import apply

        return apply(self.calibration, raw)

    def predict_min(self, counts: dict | None = None) -> float:
        """The predicted minimum latency (ms): the sum of the convs' and attention cores' entries (each a minimum)
        plus `rest_ms`, what the table is validated against (docs/BENCHMARKS.md, "Latency model")."""
        layers, taken = self._priced(counts)
        return self.scale * (sum(layers.values()) - taken) + self.rest_ms

    @property
    def entries_under_load(self) -> int:
        """How many of the entries the last build used were measured under load."""
        return len(self._loaded_keys)

    def load_note(self) -> str | None:
        """One sentence when some of the table's entries were measured under load, else None."""
        n = self.entries_under_load
        if not n:
            return None
        return (f"{n} of the latency model's entries were measured while the CPU was under load (load average above "
                "its core count), so its predictions may be high and uneven; they are measured again by the next "
                "build on a quiet machine")

    def setup(self) -> dict:
        """What the table's numbers were measured with (backend, precision, batch, threads, device, image size)."""
        from autoprune.cost.latency import device_label

        return {"backend": self.backend, "precision": self.precision, "batch": self.batch, "threads": self.threads,
                "device": str(self.device), "device_name": device_label(self.device), "imgsz": self.imgsz}

    def fingerprint(self) -> str:
        """A short hash of the table's entries (which anchors, which values): two tables that predict alike."""
        if self._curves is None:
            self.build()
        state = {"curves": self._curves, "rest": self.rest_ms, "scale": self.scale}
        if self.median_ratio != 1.0:  # a table measured before the ratio was kept hashes as it did
            state["median_ratio"] = self.median_ratio
        if self.calibration != (1.0, 0.0):  # an uncalibrated table hashes as it always has
            state["calibration"] = self.calibration
        if self._attention_curves:  # a table without attention hashes as it always has
            state["attention"] = self._attention_curves
        if self._swap_curves:  # a table without swaps hashes as it always has
            state["swaps"] = {f"{sid}:{kind}": c for (sid, kind), c in self._swap_curves.items()}
            state["fixed"] = self._fixed_ms
        text = json.dumps(state, sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:16]


def _min_loop(forward, runs: int = 50, warmup: int = 3, max_s: float = 1.0) -> list[float]:
    """Milliseconds of `runs` runs after `warmup` (fewer when they pass `max_s`): the table keeps their minimum."""
    import time

    for _ in range(warmup):
        forward()
    samples, start = [], time.perf_counter()
    while len(samples) < runs and (len(samples) < 5 or time.perf_counter() - start < max_s):
        t = time.perf_counter()
        forward()
        samples.append((time.perf_counter() - t) * 1e3)
    return samples


def _openvino_layer(module: nn.Sequential, x: torch.Tensor):
    """The layer as the OpenVINO graph its converter makes of a conv + bias + activation (Convolution,
    GroupConvolution or, for a transposed conv, ConvolutionBackpropData; Add, the activation op), built with its
    opset directly: converting a traced module takes seconds, this milliseconds."""
    import numpy as np
    import openvino as ov
    import openvino.opset13 as ops

    conv, act = module[0], module[1]
    w = conv.weight.detach().numpy()
    param = ops.parameter(list(x.shape), np.float32)
    args = (list(conv.stride), list(conv.padding), list(conv.padding), list(conv.dilation))
    if isinstance(conv, nn.ConvTranspose2d):  # weight (in, out, kh, kw), as OpenVINO's ConvolutionBackpropData takes it
        if conv.groups != 1:
            raise ValueError("only transposed convs with groups 1 are measured")
        y = ops.convolution_backprop_data(param, ops.constant(w), list(conv.stride), pads_begin=list(conv.padding),
                                          pads_end=list(conv.padding), dilations=list(conv.dilation),
                                          output_padding=list(conv.output_padding))
    elif conv.groups == 1:
        y = ops.convolution(param, ops.constant(w), *args)
    else:
        g = conv.groups
        y = ops.group_convolution(param, ops.constant(w.reshape(g, w.shape[0] // g, *w.shape[1:])), *args)
    y = ops.add(y, ops.constant(conv.bias.detach().numpy().reshape(1, -1, 1, 1)))
    acts = {"SiLU": ops.swish, "ReLU": ops.relu, "Sigmoid": ops.sigmoid, "Hardswish": ops.hswish}
    if type(act).__name__ in acts:
        y = acts[type(act).__name__](y)
    elif not isinstance(act, nn.Identity):
        raise ValueError(f"no OpenVINO op for activation {type(act).__name__}")
    return ov.Model([y], [param])


def _openvino_traced(module: nn.Module, x: torch.Tensor):
    """A layer that is no conv (an attention core) converted as a whole model is (Ultralytics' torch2openvino: a
    trace, static input shape), so that OpenVINO fuses its matrix products as it does inside the model."""
    import contextlib
    import warnings

    import openvino as ov

    with warnings.catch_warnings(), contextlib.redirect_stdout(None), torch.no_grad():
        warnings.simplefilter("ignore")
        traced = torch.jit.trace(module, x, strict=False, check_trace=False)
        return ov.convert_model(traced, input=x.shape, example_input=x)


def _layer_session(backend, module, dev, ch, hw, batch, precision, threads) -> backends.Session:
    """One layer ready to run in `backend`, as `backends.open_session` prepares a model but without its files: a
    single conv needs no slimming, and the runtime's kernel for it is the same."""
    import contextlib
    import io
    import warnings

    x = backends.fixed_input(batch, ch, hw)
    if backend == "onnxruntime" and dev.type == "cpu":
        import onnxruntime as ort

        buf = io.BytesIO()
        with warnings.catch_warnings(), contextlib.redirect_stdout(None), torch.no_grad():
            warnings.simplefilter("ignore")
            torch.onnx.export(module, (x,), buf, opset_version=17, input_names=["images"], dynamo=False)
        so = ort.SessionOptions()
        so.intra_op_num_threads, so.inter_op_num_threads = threads, 1
        so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        so.log_severity_level = 3
        session = ort.InferenceSession(buf.getvalue(), so, providers=["CPUExecutionProvider"])
        feed = {"images": x.numpy()}
        return backends.Session(forward=lambda: session.run(None, feed), outputs=lambda: session.run(None, feed),
                                executed=precision, keep=session)
    if backend == "openvino":
        import openvino as ov

        config = {"PERFORMANCE_HINT": "LATENCY", "INFERENCE_NUM_THREADS": threads}
        if precision == "fp32":
            config["INFERENCE_PRECISION_HINT"] = "f32"
        core = ov.Core()
        layer = _openvino_layer(module, x) if isinstance(module, nn.Sequential) else _openvino_traced(module, x)
        compiled = core.compile_model(layer, "CPU", config)
        request = compiled.create_infer_request()
        x_np = x.numpy()
        return backends.Session(forward=lambda: request.infer({0: x_np}), outputs=lambda: request.infer({0: x_np}),
                                executed=precision, keep=(core, compiled))
    return backends.open_session(backend, module, dev, ch, hw, batch, precision, threads)


def measure_model_ms(model: nn.Module, *, imgsz: int, batch: int = 1, device="cpu", backend: str = "onnxruntime",
                     precision: str | None = None, threads: int | None = None, protocol=MODEL_TIMING) -> float:
    """A whole model's latency as the table's entries are measured: the minimum over a timing run (not cached)."""
    from autoprune.cost.latency import measure_latency

    return measure_latency(model, imgsz=imgsz, batch=batch, device=device, backend=backend, precision=precision,
                           threads=threads, protocol=protocol, cache=False).min_ms


__all__ = ["ANCHORS", "LAYER_TIMING", "MODEL_TIMING", "LatencyTable", "LayerConfig", "measure_model_ms", "swap_layers"]
