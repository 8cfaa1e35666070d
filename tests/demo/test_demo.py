"""The embedded demo: generated dataset, its cache folder, the `autoprune demo` command and the shipped checkpoint."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import autoprune._ultralytics  # noqa: F401  (import Ultralytics now: its log handler must not bind to a test's capsys)
import autoprune.demo as demo
from autoprune.demo.dataset import CLASS_NAMES, generate
from autoprune.errors import UserError

SMALL = "6,4"  # AUTOPRUNE_DEMO_SIZE for tests: 6 train / 4 val images


def _tree_digest(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file() and not p.name.endswith(".cache")
    }


@pytest.fixture
def home(tmp_path, monkeypatch):
    """A private AUTOPRUNE_HOME holding a small demo dataset spec."""
    h = tmp_path / "home"
    monkeypatch.setenv("AUTOPRUNE_HOME", str(h))
    monkeypatch.setenv("AUTOPRUNE_DEMO_SIZE", SMALL)
    return h


def _demo_only_cli(monkeypatch):
    """The real CLI framework with only the demo command registered (so other commands' imports do not matter)."""
    import autoprune.cli as cli

    monkeypatch.setattr(cli, "COMMANDS", {"demo": cli.COMMANDS["demo"]})
    return cli


# ------------------------------------------------------------------------------------------------------- generate
def test_generate_is_deterministic_and_seeded(tmp_path):
    a = generate(tmp_path / "a", n_train=4, n_val=2, seed=0, imgsz=160)
    b = generate(tmp_path / "b", n_train=4, n_val=2, seed=0, imgsz=160)
    c = generate(tmp_path / "c", n_train=4, n_val=2, seed=1, imgsz=160)
    da, db, dc = (_tree_digest(p.parent) for p in (a, b, c))
    assert len(da) == 2 * (4 + 2) + 1  # images + labels + data.yaml
    assert da == db
    differing = [k for k in da if k.startswith("images/") and da[k] != dc.get(k)]
    assert len(differing) == 6  # every image changes with the seed


def test_generate_prefix_stable_and_refuses_nonempty(tmp_path):
    """Image i depends only on (seed, split, i): a small dataset holds the first images of a larger one."""
    small = generate(tmp_path / "s", n_train=2, n_val=2, seed=0, imgsz=160).parent
    large = generate(tmp_path / "l", n_train=5, n_val=3, seed=0, imgsz=160).parent
    ds, dl = _tree_digest(small), _tree_digest(large)
    assert all(dl[k] == v for k, v in ds.items() if k != "data.yaml")
    with pytest.raises(FileExistsError):
        generate(small, n_train=1, n_val=1, seed=0, imgsz=160)


def test_labels_are_valid_yolo_boxes(tmp_path):
    root = generate(tmp_path / "d", n_train=24, n_val=8, seed=3, imgsz=320).parent
    classes, n_boxes = set(), 0
    for split, n in (("train", 24), ("val", 8)):
        images = sorted((root / "images" / split).glob("*.jpg"))
        labels = sorted((root / "labels" / split).glob("*.txt"))
        assert [p.stem for p in images] == [p.stem for p in labels] and len(images) == n
        for p in labels:
            for line in p.read_text().splitlines():
                fields = line.split()
                assert len(fields) == 5, line
                c = int(fields[0])
                cx, cy, w, h = map(float, fields[1:])
                assert 0 <= c < len(CLASS_NAMES)
                assert 0 < w <= 1 and 0 < h <= 1
                assert cx - w / 2 >= -1e-6 and cx + w / 2 <= 1 + 1e-6, line
                assert cy - h / 2 >= -1e-6 and cy + h / 2 <= 1 + 1e-6, line
                assert min(w, h) * 320 >= 4 - 1e-3  # MIN_BOX_PX
                classes.add(c)
                n_boxes += 1
    assert n_boxes >= 32 * 2  # several objects per image on average
    assert len(classes) >= 6


def test_images_are_320_rgb_and_varied(tmp_path):
    import cv2

    root = generate(tmp_path / "d", n_train=6, n_val=1, seed=0, imgsz=320).parent
    ims = [cv2.imread(str(p)) for p in sorted((root / "images" / "train").glob("*.jpg"))]
    assert all(im.shape == (320, 320, 3) for im in ims)
    means = [float(im.mean()) for im in ims]
    assert max(means) - min(means) > 5  # varied backgrounds, not one flat canvas
    assert all(float(im.std()) > 10 for im in ims)


def test_data_yaml_survives_a_rename(tmp_path):
    """The YAML has no `path:`: Ultralytics resolves the splits next to it, so the atomic rename keeps it valid."""
    from autoprune import _ultralytics  # noqa: F401
    from ultralytics.data.utils import check_det_dataset

    y = generate(tmp_path / "tmpname", n_train=2, n_val=2, seed=0, imgsz=160)
    os.rename(y.parent, tmp_path / "final")
    info = check_det_dataset(str(tmp_path / "final" / "data.yaml"))
    assert info["nc"] == len(CLASS_NAMES)
    assert [info["names"][i] for i in range(info["nc"])] == list(CLASS_NAMES)
    assert Path(info["val"]) == (tmp_path / "final" / "images" / "val").resolve()


# ---------------------------------------------------------------------------------------------- home and the cache
def test_default_spec_is_the_real_dataset(monkeypatch):
    monkeypatch.delenv("AUTOPRUNE_DEMO_SIZE", raising=False)
    assert demo.demo_data_spec() == demo.DEMO_DATA
    assert (demo.DEMO_DATA.n_train, demo.DEMO_DATA.n_val, demo.DEMO_DATA.imgsz) == (800, 250, 320)
    assert demo.DEMO_IMGSZ == 320
    with pytest.raises(ValueError, match="n_val"):
        demo.DemoDataSpec(n_val=0)


def test_demo_home_resolution(monkeypatch, tmp_path):
    monkeypatch.setenv("AUTOPRUNE_HOME", str(tmp_path / "x"))
    assert demo.demo_home() == tmp_path / "x"
    monkeypatch.delenv("AUTOPRUNE_HOME")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    assert demo.demo_home() == tmp_path / "cache" / "autoprune"


def test_bad_size_env_is_a_user_error(monkeypatch):
    monkeypatch.setenv("AUTOPRUNE_DEMO_SIZE", "12")
    with pytest.raises(UserError, match="AUTOPRUNE_DEMO_SIZE"):
        demo.demo_data_spec()


def test_ensure_demo_data_generates_once(home, monkeypatch):
    y = demo.ensure_demo_data()
    assert y.is_file() and y.parent.parent == home
    assert "6x4" in y.parent.name  # a small dataset says so in its folder name
    assert len(list((y.parent / "images" / "train").glob("*.jpg"))) == 6
    assert [p.name for p in home.iterdir()] == [y.parent.name]  # no temp folders left

    import autoprune.demo.dataset as ds

    monkeypatch.setattr(ds, "generate", lambda *a, **k: pytest.fail("regenerated an existing dataset"))
    assert demo.ensure_demo_data() == y


def test_ensure_demo_data_loser_of_the_race_uses_the_winner(home, monkeypatch):
    """Another process renames its copy into place while this one generates: this one keeps the winner's folder."""
    import autoprune.demo.dataset as ds

    real = ds.generate
    winner = home / demo.demo_data_spec().folder_name

    def generate_and_lose(root, **kw):
        real(home / "other", **kw)
        os.rename(home / "other", winner)  # the other process wins
        (winner / "winner.txt").write_text("x")
        return real(root, **kw)

    monkeypatch.setattr(ds, "generate", generate_and_lose)
    y = demo.ensure_demo_data()
    assert y == winner / "data.yaml"
    assert (winner / "winner.txt").is_file()  # not replaced by the loser's copy
    assert sorted(p.name for p in home.iterdir()) == [winner.name]  # the loser's temp folder is gone


def test_ensure_demo_data_concurrent_processes(home):
    code = "from autoprune.demo import ensure_demo_data; print(ensure_demo_data())"
    procs = [subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True) for _ in range(3)]
    outs = [p.communicate(timeout=120)[0].strip() for p in procs]
    assert all(p.returncode == 0 for p in procs)
    assert len(set(outs)) == 1
    folder = Path(outs[0]).parent
    assert sorted(p.name for p in home.iterdir()) == [folder.name]
    ref = generate(home.parent / "ref", n_train=6, n_val=4, seed=0, imgsz=320).parent
    assert _tree_digest(folder) == _tree_digest(ref)


# ------------------------------------------------------------------------------------------------------ the command
def test_cli_demo_json(home, monkeypatch, capsys):
    cli = _demo_only_cli(monkeypatch)
    assert cli.main(["demo", "--json", "--val-images", "3"]) == 0
    out = json.loads(capsys.readouterr().out)
    expected = {"home", "data", "data_seed", "classes", "train_images", "train_boxes", "val_images", "val_boxes",
                "model", "model_sha256", "model_mb", "imgsz", "validated_images", "mAP50", "mAP50-95",
                "metrics_cached"}  # fmt: skip
    assert set(out) == expected
    assert out["classes"] == list(CLASS_NAMES)
    assert (out["train_images"], out["val_images"], out["validated_images"]) == (6, 4, 3)
    assert out["imgsz"] == 320 and Path(out["model"]) == demo.demo_model_path()
    assert 0 <= out["mAP50-95"] <= out["mAP50"] <= 1
    assert out["mAP50"] > 0.1  # the shipped baseline detects the demo objects
    assert out["metrics_cached"] is False

    assert cli.main(["demo", "--json", "--val-images", "3"]) == 0
    again = json.loads(capsys.readouterr().out)
    assert again["metrics_cached"] is True
    assert (again["mAP50"], again["mAP50-95"]) == (out["mAP50"], out["mAP50-95"])
    cache = json.loads((home / "metrics.json").read_text())
    assert len(cache) == 1 and next(iter(cache)).startswith(out["model_sha256"])


@pytest.mark.parametrize(
    "argv, message",
    [
        (["demo", "--epochs", "3"], "--epochs only applies with --train"),
        (["demo", "--train", "--val-images", "3"], "--val-images does not apply with --train"),
        (["demo", "--train", "--imgsz", "100"], "--imgsz must be a multiple of 32"),
        (["demo", "--train", "--device", "gpu"], "device must be auto, cpu, cuda"),
        (["demo", "--train", "--name", "a/b"], "--name must be a plain folder name"),
        (["demo", "--task", "segment"], "--task only applies with --train"),
        (["demo", "--train", "--task", "segment", "--init", "missing.pt"], "--init must be an Ultralytics .pt"),
        (["demo", "--train", "--model", "yolo11n.yaml", "--task", "pose"], "is a detect model, not pose (--task)"),
        (["demo", "--train", "--model", "yolo11n-cls.yaml"], "the demo trains detect, segment, pose and obb models"),
        (["demo", "--train", "--model", "m.pt"], "--model must be an Ultralytics model YAML"),
    ],
)
def test_cli_demo_user_errors(argv, message, home, monkeypatch, capsys, tmp_path):
    cli = _demo_only_cli(monkeypatch)
    monkeypatch.chdir(tmp_path)
    assert cli.main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("error: ") and message in err[-1]
    assert not (tmp_path / "runs").exists()  # nothing written before the inputs are checked
    assert not home.exists()  # and no dataset generated


def test_cli_demo_train_writes_a_run_and_keeps_the_shipped_file(home, monkeypatch, capsys, tmp_path):
    cli = _demo_only_cli(monkeypatch)
    monkeypatch.chdir(tmp_path)
    shipped = demo.demo_model_path()
    before = demo.file_sha256(shipped)
    argv = ["demo", "--train", "--epochs", "1", "--imgsz", "64", "--batch", "2", "--name", "t", "--json"]
    assert cli.main(argv) == 0
    out = json.loads(capsys.readouterr().out)
    run = tmp_path / "runs" / "demo" / "t"
    assert Path(out["run_dir"]) == run.resolve()
    assert (run / "args.yaml").is_file() and "epochs: 1" in (run / "args.yaml").read_text()
    assert Path(out["weights"]).is_file() and Path(out["weights"]).is_relative_to(run.resolve())
    assert out["epochs_run"] == 1
    assert demo.file_sha256(shipped) == before
    assert cli.main(argv) == 2  # the same --name again is refused, not overwritten
    assert "already exists" in capsys.readouterr().err


def test_cli_demo_train_another_model_yaml(home, monkeypatch, capsys, tmp_path):
    """`--model yolo11n.yaml` trains that YAML on its task's demo data, from random weights (the shipped yolov8n's
    would not fit it) unless --init says otherwise."""
    import autoprune.demo.train

    cli = _demo_only_cli(monkeypatch)
    monkeypatch.chdir(tmp_path)
    seen = {}
    monkeypatch.setattr(autoprune.demo.train, "train_baseline", lambda run_dir, **kw: seen.update(kw) or {"run": 1})
    assert cli.main(["demo", "--train", "--model", "yolo11n-seg.yaml", "--epochs", "1", "--json"]) == 0
    assert (seen["task"], seen["model_yaml"], seen["init"]) == ("segment", "yolo11n-seg.yaml", None)
    args = next((tmp_path / "runs" / "demo").glob("*/args.yaml")).read_text()
    assert "model: yolo11n-seg.yaml" in args and "task: segment" in args


def test_cli_demo_train_a_task_starts_from_the_detection_baseline(home, monkeypatch, capsys, tmp_path):
    """`--task segment` trains yolov8n-seg on the scenes' masks from the shipped detector's weights: its first conv is
    still the baseline's after one short epoch (a random start would not be), and the mask mAP is reported."""
    import torch

    cli = _demo_only_cli(monkeypatch)
    monkeypatch.chdir(tmp_path)
    argv = ["demo", "--train", "--task", "segment", "--epochs", "1", "--imgsz", "64", "--batch", "2", "--name", "s",
            "--json"]  # fmt: skip
    assert cli.main(argv) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["metric"] == "mask mAP50-95" and 0 <= out["metric_map50_95"] <= 1
    args = (tmp_path / "runs" / "demo" / "s" / "args.yaml").read_text()
    assert "task: segment" in args and f"init: {demo.demo_model_path()}" in args
    trained = torch.load(out["weights"], weights_only=False)["model"]
    base = torch.load(demo.demo_model_path(), weights_only=False)["model"]
    assert type(trained).__name__ == "SegmentationModel"
    a, b = (m.model[0].conv.weight.float().flatten() for m in (trained, base))
    assert torch.nn.functional.cosine_similarity(a, b, dim=0) > 0.9


# ------------------------------------------------------------------------------------------------ shipped checkpoint
def test_shipped_checkpoint_is_small_and_loads_without_autoprune():
    path = demo.demo_model_path()
    assert path.is_file()
    assert path.stat().st_size <= 7 * 2**20
    code = f"""
import json, os, sys
os.environ["YOLO_OFFLINE"] = "1"
import torch
from ultralytics import YOLO
m = YOLO({str(path)!r})
assert not any(k.startswith("autoprune") for k in sys.modules)
dtypes = {{str(p.dtype) for p in torch.load({str(path)!r}, weights_only=False)["model"].parameters()}}
print(json.dumps({{"task": m.task, "names": [m.names[i] for i in range(len(m.names))], "dtypes": sorted(dtypes),
                  "yaml": m.model.yaml.get("yaml_file"), "nc": m.model.yaml["nc"]}}))
"""
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=path.parent)
    assert r.returncode == 0, r.stderr[-2000:]
    info = json.loads(r.stdout.strip().splitlines()[-1])
    assert info["task"] == "detect"
    assert info["names"] == list(CLASS_NAMES) and info["nc"] == len(CLASS_NAMES)
    assert info["dtypes"] == ["torch.float16"]  # Ultralytics' stripped FP16 checkpoint
    assert info["yaml"] == "yolov8n.yaml"


def test_load_model_none_is_the_demo_baseline():
    from autoprune.models import load_model

    lm = load_model(None)
    assert lm.source == str(demo.demo_model_path())
    assert [lm.names[i] for i in range(len(lm.names))] == list(CLASS_NAMES)
    n_params = sum(p.numel() for p in lm.model.parameters())
    assert 2.9e6 < n_params < 3.2e6  # a yolov8n
    x = np.zeros((1, 3, 320, 320), np.float32)
    import torch

    with torch.no_grad():
        y = lm.model(torch.from_numpy(x))
    y = y[0] if isinstance(y, (list, tuple)) else y
    assert y.shape[1] == 4 + len(CLASS_NAMES)
