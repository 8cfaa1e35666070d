"""The embedded default: a generated detection dataset and the baseline model shipped with autoprune.

Every command run without `--model` / `--data` uses these. The dataset (see `autoprune.demo.dataset`) is generated
on first use into `demo_home()`, deterministically from a seed and without network; the baseline is an Ultralytics
yolov8n trained on it by `autoprune demo --train` (see `autoprune.demo.train`), shipped as `baseline.pt`.

Example:
    >>> from autoprune.demo import ensure_demo_data, demo_model_path, DEMO_IMGSZ
    >>> data_yaml = ensure_demo_data()          # generates on first use (about 15 s), then returns at once
    >>> model_path = demo_model_path()          # .../autoprune/demo/baseline.pt
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from autoprune.errors import UserError
from autoprune.progress import stage

DEMO_IMGSZ = 320  # the image size the baseline was trained at (and the demo data is drawn at)


@dataclass(frozen=True)
class DemoDataSpec:
    """What the demo dataset is made of; the cache folder's name encodes all of it, so specs never share a folder.

    Attributes:
        n_train: training images.
        n_val: validation images.
        seed: generator seed.
        imgsz: image side in pixels.
    """

    n_train: int = 800
    n_val: int = 250
    seed: int = 0
    imgsz: int = DEMO_IMGSZ

    def __post_init__(self):
        for field in ("n_train", "n_val"):
            v = getattr(self, field)
            if not isinstance(v, int) or v < 1:
                raise ValueError(f"DemoDataSpec.{field} must be an integer >= 1, got {v!r}")
        if not isinstance(self.imgsz, int) or self.imgsz < 64:
            raise ValueError(f"DemoDataSpec.imgsz must be an integer >= 64, got {self.imgsz!r}")
        if not isinstance(self.seed, int):
            raise ValueError(f"DemoDataSpec.seed must be an integer, got {self.seed!r}")

    @property
    def folder_name(self) -> str:
        from autoprune.demo.dataset import GENERATOR_VERSION

        return f"data-v{GENERATOR_VERSION}-seed{self.seed}-{self.n_train}x{self.n_val}-{self.imgsz}px"


# The real demo dataset. Tests make a small one by setting AUTOPRUNE_DEMO_SIZE="N_TRAIN,N_VAL" (or monkeypatching
# this); the folder name then says so, so a small dataset never stands in for the real one.
DEMO_DATA = DemoDataSpec()
_SIZE_ENV = "AUTOPRUNE_DEMO_SIZE"
_STALE_TMP_S = 3600  # temp folders older than this are left-overs of a killed process


def demo_home() -> Path:
    """The folder that holds the generated demo data and cached demo metrics.

    `$AUTOPRUNE_HOME` when set, else `$XDG_CACHE_HOME/autoprune`, else `~/.cache/autoprune`. Not created here.

    Example:
        >>> demo_home()
        PosixPath('/home/me/.cache/autoprune')
    """
    env = os.environ.get("AUTOPRUNE_HOME")
    if env:
        return Path(env).expanduser()
    cache = os.environ.get("XDG_CACHE_HOME") or str(Path("~/.cache").expanduser())
    return Path(cache).expanduser() / "autoprune"


def demo_data_spec() -> DemoDataSpec:
    """The dataset spec in force: `DEMO_DATA`, with the sizes from `$AUTOPRUNE_DEMO_SIZE` ("N_TRAIN,N_VAL") if set."""
    env = os.environ.get(_SIZE_ENV, "").strip()
    if not env:
        return DEMO_DATA
    try:
        n_train, n_val = (int(x) for x in env.split(","))
        return DemoDataSpec(n_train=n_train, n_val=n_val, seed=DEMO_DATA.seed, imgsz=DEMO_DATA.imgsz)
    except ValueError as e:
        raise UserError(f"{_SIZE_ENV} must be 'N_TRAIN,N_VAL' with two positive integers, got {env!r}") from e


def ensure_demo_data(task: str = "detect") -> Path:
    """Return the path of the demo dataset's data YAML, generating the dataset first if it is not there yet.

    `task` 'segment', 'pose' or 'obb' gives the same images with that task's labels (polygons, extreme points as
    keypoints, rotated boxes: `autoprune.demo.dataset.generate`), in a folder of its own (the detect folder's name
    plus '-segment', '-pose' or '-obb'); 'classify' gives the objects of the same scenes cropped into class folders
    ('-classify'), and the path returned is that folder (a classification dataset has no YAML).

    Safe when many processes start at once: each generates into its own temporary folder next to the final one and
    renames it into place atomically; a process that loses the race deletes its copy and uses the winner's. Every
    process therefore sees either no dataset or a complete one.

    Example:
        >>> ensure_demo_data()
        PosixPath('/home/me/.cache/autoprune/data-v1-seed0-800x250-320px/data.yaml')
    """
    from autoprune.demo.dataset import generate

    spec = demo_data_spec()
    home = demo_home()
    final = home / (spec.folder_name + ("" if task == "detect" else f"-{task}"))
    yaml_path = final if task == "classify" else final / "data.yaml"  # what `generate` returns
    if yaml_path.exists():
        return yaml_path
    if final.exists():
        raise UserError(f"demo data folder {final} exists but has no data.yaml; delete it to regenerate")
    try:
        home.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UserError(f"cannot create the autoprune cache folder {home} ({e}); set AUTOPRUNE_HOME") from e
    _remove_stale_tmp(home, final.name)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.tmp-", dir=home))
    try:
        generate(tmp, n_train=spec.n_train, n_val=spec.n_val, seed=spec.seed, imgsz=spec.imgsz, task=task)
        try:
            os.rename(tmp, final)  # atomic; fails if another process renamed its copy first
        except OSError:
            if not yaml_path.exists():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)  # gone already when the rename won
    return yaml_path


def _remove_stale_tmp(home: Path, name: str) -> None:
    now = time.time()
    for p in home.glob(f".{name}.tmp-*"):
        try:
            if now - p.stat().st_mtime > _STALE_TMP_S:
                shutil.rmtree(p, ignore_errors=True)
        except OSError:
            pass


def demo_model_path() -> Path:
    """The shipped baseline checkpoint (an Ultralytics yolov8n trained on the demo data), inside the package.

    Example:
        >>> demo_model_path().name
        'baseline.pt'
    """
    return Path(__file__).resolve().parent / "baseline.pt"


def file_sha256(path: str | Path) -> str:
    """SHA-256 of a file's bytes, as hex."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def dataset_stats(data_yaml: str | Path) -> dict:
    """Images and boxes per split of a dataset written by `generate` (counted from its files)."""
    root = Path(data_yaml).parent
    out = {}
    for split in ("train", "val"):
        labels = sorted((root / "labels" / split).glob("*.txt"))
        boxes = sum(len([ln for ln in p.read_text().splitlines() if ln.strip()]) for p in labels)
        out[split] = {"images": len(list((root / "images" / split).glob("*.jpg"))), "boxes": boxes}
    return out


def validate(
    model_path: str | Path,
    data_yaml: str | Path,
    *,
    imgsz: int = DEMO_IMGSZ,
    val_images: int | None = None,
    batch: int = 16,
    device: str = "cpu",
) -> dict:
    """Measure mAP50 and mAP50-95 of a checkpoint on the val split with Ultralytics' validator (no plots, no files).

    `val_images` limits validation to the first N val images (sorted by name), for speed; None means all of them.

    Example:
        >>> validate(demo_model_path(), ensure_demo_data())["mAP50-95"]
        0.5484
    """
    from autoprune._ultralytics import LOGGER  # offline before ultralytics is imported
    from ultralytics import YOLO

    data_yaml = Path(data_yaml)
    if val_images is not None and val_images < 1:
        raise UserError(f"--val-images must be >= 1, got {val_images}")
    level = LOGGER.level
    LOGGER.setLevel(max(level, logging.WARNING))  # Ultralytics' validation chatter is not ours to print
    try:
        with tempfile.TemporaryDirectory(prefix="autoprune-val-") as tmp:
            data = data_yaml
            n = len(list((data_yaml.parent / "images" / "val").glob("*.jpg")))
            if val_images is not None:
                data, n = _subset_yaml(data_yaml, val_images, Path(tmp)), min(n, val_images)
            t0 = time.perf_counter()
            metrics = YOLO(str(model_path)).val(
                data=str(data), imgsz=imgsz, batch=batch, device=device, plots=False, workers=0,
                project=tmp, name="val", verbose=False, save_json=False,
            )  # fmt: skip
            seconds = time.perf_counter() - t0
    finally:
        LOGGER.setLevel(level)
    return {
        "images": n,
        "mAP50": round(float(metrics.box.map50), 4),
        "mAP50-95": round(float(metrics.box.map), 4),
        "seconds": round(seconds, 1),
    }


def _subset_yaml(data_yaml: Path, n: int, dest: Path) -> Path:
    """A data YAML whose val split is the first n val images of data_yaml's dataset (listed in a text file)."""
    import yaml

    root = data_yaml.parent.resolve()
    images = sorted((root / "images" / "val").glob("*.jpg"))[:n]
    listing = dest / "val_subset.txt"
    listing.write_text("".join(f"{p}\n" for p in images))
    cfg = yaml.safe_load(data_yaml.read_text())
    cfg.update({"path": str(root), "train": "images/train", "val": str(listing)})
    out = dest / "data_subset.yaml"
    out.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return out


def demo_metrics(model_path: str | Path | None = None, *, val_images: int | None = None, refresh: bool = False) -> dict:
    """Validation metrics of a model (default: the shipped baseline) on the demo val split, cached by file hash.

    The numbers are always measured: the cache (`demo_home()/metrics.json`) is keyed by the SHA-256 of the model file,
    the dataset folder, the image size and the subset size, so a changed model or dataset is measured again.
    """
    model_path = Path(model_path or demo_model_path())
    if not model_path.is_file():
        raise UserError(f"model file not found: {model_path}")
    data_yaml = ensure_demo_data()
    sha = file_sha256(model_path)
    key = f"{sha}|{data_yaml.parent.name}|{DEMO_IMGSZ}|{val_images or 'all'}"
    cache_file = demo_home() / "metrics.json"
    cache = _read_json(cache_file)
    if not refresh and key in cache:
        return {**cache[key], "cached": True}
    with stage(f"validating {model_path.name} on the demo val split"):
        result = validate(model_path, data_yaml, imgsz=DEMO_IMGSZ, val_images=val_images)
    cache = _read_json(cache_file)  # re-read: another process may have added entries meanwhile
    cache[key] = result
    tmp = cache_file.with_name(f".{cache_file.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(cache, indent=1, sort_keys=True))
    tmp.replace(cache_file)
    return {**result, "cached": False}


def _read_json(path: Path) -> dict:
    try:
        data = json.loads(path.read_text())
        return data if isinstance(data, dict) else {}
    except (OSError, ValueError):
        return {}


__all__ = [
    "DEMO_DATA",
    "DEMO_IMGSZ",
    "DemoDataSpec",
    "dataset_stats",
    "demo_data_spec",
    "demo_home",
    "demo_metrics",
    "demo_model_path",
    "ensure_demo_data",
    "file_sha256",
    "validate",
]
