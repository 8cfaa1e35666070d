"""Shared test fixtures: everything offline, CPU-only and small."""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np
import pytest

os.environ.setdefault("YOLO_OFFLINE", "1")

# The suite leaves the machine's own state alone: Ultralytics' settings.json and autoprune's home (demo data, demo
# metrics) live in folders made for this session and removed at its end, never in ~/.config/Ultralytics or
# ~/.cache/autoprune. Set before Ultralytics is first imported (it reads YOLO_CONFIG_DIR once, at import); the
# subprocesses tests start inherit both.
SESSION_DIR = Path(tempfile.mkdtemp(prefix="autoprune-tests-"))
atexit.register(shutil.rmtree, SESSION_DIR, ignore_errors=True)
os.environ["YOLO_CONFIG_DIR"] = str(SESSION_DIR / "yolo_config")
os.environ["AUTOPRUNE_HOME"] = str(SESSION_DIR / "autoprune_home")

import autoprune._ultralytics  # noqa: E402,F401  (offline Ultralytics whose logs follow sys.stdout)
from ultralytics.utils import SETTINGS  # noqa: E402

if SESSION_DIR not in Path(SETTINGS.file).parents:  # Ultralytics was imported before this file set YOLO_CONFIG_DIR
    raise RuntimeError(f"Ultralytics' settings are {SETTINGS.file}, outside the test session's folder {SESSION_DIR}")


def pytest_xdist_auto_num_workers(config):
    """`-n auto` (the README's test command) starts two workers per usable core, at most --maxprocesses: a third of a
    worker's time is spent waiting (search worker subprocesses starting, heartbeats going stale, Ultralytics' data
    loaders), so one worker per core left the CPU idle. On a 2-core AMD EPYC the suite took 447 s with four workers,
    against 654 s with two. PYTEST_XDIST_AUTO_NUM_WORKERS still decides when it is set."""
    if os.environ.get("PYTEST_XDIST_AUTO_NUM_WORKERS"):
        return None  # xdist's own hook reads it
    return 2 * len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else 2 * (os.cpu_count() or 1)


def make_tiny_dataset(root: Path, n_train: int = 8, n_val: int = 4, size: int = 64, seed: int = 0) -> Path:
    """Write a tiny two-class YOLO detection dataset (filled rectangles and discs on noise); return its YAML.

    For tests that need real Ultralytics data loading without the demo dataset or any download.
    """
    import cv2

    rng = np.random.default_rng(seed)
    for split, n in (("train", n_train), ("val", n_val)):
        (root / "images" / split).mkdir(parents=True, exist_ok=True)
        (root / "labels" / split).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            img = rng.integers(0, 80, (size, size, 3), dtype=np.uint8)
            lines = []
            for _ in range(int(rng.integers(1, 4))):
                cls = int(rng.integers(0, 2))
                w, h = (int(v) for v in rng.integers(size // 6, size // 2, 2))
                x0, y0 = int(rng.integers(0, size - w)), int(rng.integers(0, size - h))
                color = tuple(int(c) for c in rng.integers(120, 256, 3))
                if cls == 0:
                    cv2.rectangle(img, (x0, y0), (x0 + w - 1, y0 + h - 1), color, -1)
                else:
                    cv2.ellipse(img, (x0 + w // 2, y0 + h // 2), (w // 2, h // 2), 0, 0, 360, color, -1)
                lines.append(f"{cls} {(x0 + w / 2) / size:.6f} {(y0 + h / 2) / size:.6f} {w / size:.6f} {h / size:.6f}")
            cv2.imwrite(str(root / "images" / split / f"{i:03d}.png"), img)
            (root / "labels" / split / f"{i:03d}.txt").write_text("\n".join(lines) + "\n")
    yaml_path = root / "data.yaml"
    yaml_path.write_text(f"path: {root}\ntrain: images/train\nval: images/val\nnames:\n  0: box\n  1: disc\n")
    return yaml_path


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory) -> Path:
    """Path to the data YAML of a tiny two-class detection dataset, built once per test session."""
    return make_tiny_dataset(tmp_path_factory.mktemp("tiny_data"))


TINY_SEARCH_BUDGET = "0.2"  # GFLOPs at 128 px; the unpruned 2-class yolov8n has 0.33


def tiny_search(root: Path) -> dict:
    """A 2-class yolov8n YAML, a small dataset under `root` and the `autoprune search` flags that keep each candidate
    to a second or two: {"root": root, "flags": [...]}."""
    import ultralytics
    import yaml

    data = make_tiny_dataset(root / "data", n_train=16, n_val=8)
    cfg = yaml.safe_load((Path(ultralytics.__file__).parent / "cfg/models/v8/yolov8.yaml").read_text())
    cfg.update(nc=2, scale="n")
    model = root / "yolov8n-2cls.yaml"
    model.write_text(yaml.safe_dump(cfg))
    flags = ["--model", str(model), "--data", str(data), "--budget-gflops", TINY_SEARCH_BUDGET, "--imgsz", "128",
             "--proxy-imgsz", "64", "--proxy-steps", "2", "--calib-batches", "2", "--val-images", "8",
             "--population", "4", "--device", "cpu"]
    return {"root": root, "flags": flags}


# Small synthetic detectors for the hard cases of the channel analysis. Stock Ultralytics modules, tiny widths.
SYNTH_C2F = {
    "nc": 2,
    "backbone": [
        [-1, 1, "Conv", [16, 3, 2]],  # 0
        [-1, 1, "C2f", [32, True]],  # 1: split halves, residual bottleneck
        [-1, 1, "Conv", [32, 3, 2]],  # 2
    ],
    "head": [
        [-1, 1, "nn.Upsample", [None, 2, "nearest"]],  # 3
        [[-1, 1], 1, "Concat", [1]],  # 4: concat of groups "2" and "1.cv2"
        [-1, 1, "Conv", [32, 1, 1]],  # 5: 1x1 consumer of the concat
        [[5, 2], 1, "Detect", ["nc"]],  # 6: legacy branches (v8 style)
    ],
}

SYNTH_C3K2 = {
    "nc": 2,
    "backbone": [
        [-1, 1, "Conv", [16, 3, 2]],  # 0
        [-1, 1, "C3k2", [32, True]],  # 1: C3k inside a C2f-style split
        [-1, 1, "Conv", [64, 3, 2]],  # 2
        [-1, 1, "SPPF", [64, 5]],  # 3
        [-1, 1, "C2PSA", [64]],  # 4: attention with one head
    ],
    "head": [
        [-1, 1, "nn.Upsample", [None, 2, "nearest"]],  # 5
        [[-1, 1], 1, "Concat", [1]],  # 6
        [-1, 1, "C3k2", [32, False]],  # 7
        [[7, 4], 1, "Detect", ["nc"]],  # 8: YOLO11 branches with depthwise convs
    ],
}


# Flags that make a search candidate cost only its pruning, GFLOPs, latency and a validation: no gradient ranking, no
# BN recalibration, no finetune. For tests of how the search treats candidates, not of what the proxy scores.
CHEAP_SEARCH = ["--criterion", "l1", "--calib-batches", "0", "--proxy-steps", "0"]


def open_study(db: Path, name: str):
    """The search study `name` in the SQLite file `db`, read-only."""
    import optuna

    from autoprune.search.storage import make_storage

    return optuna.load_study(study_name=name, storage=make_storage(f"sqlite:///{db}", heartbeat=None, read_only=True))


def evaluated_trials(study) -> list:
    """The trials a search evaluated (finished, with the seconds their evaluation took)."""
    from autoprune.search import records as R

    return [t for t in study.trials if t.state.is_finished() and R.SECONDS in t.user_attrs]


def demo_model_yaml(root: Path, base: str, name: str, **extra) -> Path:
    """A tiny model YAML for the demo's classes: the installed Ultralytics' `cfg/models/<base>` ("v8/yolov8-pose.yaml")
    at scale n with width 0.125, written to root/name (the name says its scale, or Ultralytics warns); `extra` sets
    other keys (kpt_shape, ...)."""
    import ultralytics
    import yaml

    from autoprune.demo.dataset import CLASS_NAMES

    cfg = yaml.safe_load((Path(ultralytics.__file__).parent / f"cfg/models/{base}").read_text())
    cfg.update(nc=len(CLASS_NAMES), scales={"n": [0.33, 0.125, 1024]}, scale="n", **extra)
    path = root / name
    path.write_text(yaml.safe_dump(cfg))
    return path


def build_synthetic(cfg: dict, seed: int = 0):
    """A DetectionModel from one of the synthetic configs, with reproducible random weights."""
    import copy

    import torch
    from ultralytics.nn.tasks import DetectionModel

    torch.manual_seed(seed)
    return DetectionModel(copy.deepcopy(cfg), verbose=False).eval()


def randomize_bn(model, seed: int = 0) -> None:
    """Give every BatchNorm non-trivial statistics, so folding and equivalence checks mean something."""
    import torch

    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            n = m.num_features
            m.weight.data = torch.rand(n, generator=g) + 0.5
            m.bias.data = torch.randn(n, generator=g) * 0.5
            m.running_mean = torch.randn(n, generator=g) * 0.5
            m.running_var = torch.rand(n, generator=g) + 0.5


def make_removed_channels_constant(model, graph, indices) -> None:
    """Make every channel `indices` removes (`autoprune.pruner.apply_indices`' argument) emit a constant, whose removal
    the pruner's folding must then make invisible: BN gamma 0 for a producer with a BatchNorm, zero weights for one
    without (it emits its bias). A transposed conv reading removed channels gets flat kernels on them (each tap their
    mean): through a kernel that varies, a constant input becomes a pattern repeating every stride, of which the
    pruner can fold only the mean."""
    import torch

    from autoprune.importance import conv_layout

    modules = dict(model.named_modules(remove_duplicate=False))
    for gid, per_part in indices.items():
        group = graph.group(gid)
        for pi, kept in zip(group.parts, per_part):
            part = graph.parts[pi]
            removed = torch.ones(part.size, dtype=torch.bool)
            removed[kept] = False
            rm = removed.nonzero().flatten()
            for prod in part.producers:
                p = graph.producers[prod]
                if p.bn is not None:
                    modules[p.bn].weight.data[p.offset + rm] = 0.0
                elif not p.depthwise:
                    conv = modules[p.conv]
                    conv_layout(conv, conv.weight.data)[p.offset + rm] = 0.0
            for c in part.consumers:
                conv = modules[c.conv]
                if isinstance(conv, torch.nn.ConvTranspose2d):
                    w = conv.weight.data  # (in, out, kh, kw)
                    w[c.offset + rm] = w[c.offset + rm].mean((2, 3), keepdim=True)


def replicate_padding(model) -> None:
    """Pad every conv (and every zero-padding layer) by repeating its border instead of with zeros, so a constant
    channel stays constant: a removed channel's folded constant is then exact everywhere, not only away from the
    border (equivalence tests at 64 px, where the border reaches everywhere after a few layers)."""
    import torch

    for parent in model.modules():
        for name, m in parent.named_children():
            if isinstance(m, torch.nn.Conv2d) and any(m.padding):
                m.padding_mode = "replicate"
            elif type(m) is torch.nn.ZeroPad2d:
                pad = torch.nn.ReplicationPad2d(m.padding)
                pad.f, pad.i = m.f, m.i  # the layer's place in the model's graph
                setattr(parent, name, pad)


def run_cli(capsys, *argv):
    """Run `autoprune ARGV...` in process; (exit code, stdout, stderr)."""
    from autoprune.cli import main

    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def assert_user_error(code, err, pattern):
    """A user's mistake: exit code 2 and exactly one stderr line, `error: ...` containing `pattern`; returns it."""
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2, err
    assert len(lines) == 1, err
    assert lines[0].startswith("error: ")
    assert pattern in lines[0], lines[0]
    return lines[0]


# The timing protocol of the latencies tests measure in process without naming a protocol (`cost.timing.
# DEFAULT_PROTOCOL`: cost, prune, apply) and of every search candidate (`search.settings.SEARCH_TIMING`): one warm-up
# run, at least 3 timed runs, at most 0.5 s of sampling. The product's protocols (0.5 s of warm-up, then at least
# 0.5-1 s of samples and up to 8-30 s while the median moves) cost every trial of every test search 1-8 s, for figures
# no test reads beyond "positive" and "recorded". Tests about latency itself pass their own protocol or set these again.
SUITE_PROTOCOL = dict(warmup_runs=1, warmup_s=0.0, min_repeats=3, min_time_s=0.0, max_time_s=0.5,
                      collect_garbage=False)


@pytest.fixture(autouse=True)
def quick_latency_protocols(monkeypatch):
    """In-process latency measurements use SUITE_PROTOCOL unless a test says otherwise."""
    from autoprune.cost import timing
    from autoprune.search import settings

    quick = timing.TimingProtocol(**SUITE_PROTOCOL)
    monkeypatch.setattr(timing, "DEFAULT_PROTOCOL", quick)
    monkeypatch.setattr(settings, "SEARCH_TIMING", quick)


@pytest.fixture(scope="module")
def one_thread():
    """One CPU thread for a module's tests: tiny tensors gain nothing from two, and a shared CPU makes two slower.
    A module opts in with `pytestmark = pytest.mark.usefixtures("one_thread")`."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
