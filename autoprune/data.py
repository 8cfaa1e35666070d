"""Datasets: read and check an Ultralytics data YAML (detect, segment, pose, OBB) or classification folder without
ever downloading anything.

Ultralytics' own `check_det_dataset` downloads a dataset when its images are missing; autoprune runs offline and
must say "your images are missing" instead. `load_data_config` parses the YAML, resolves its paths the way
Ultralytics does, checks that the train and val images exist, and returns a frozen `DataConfig`. A classification
dataset is a folder, as Ultralytics' `data=` takes it for classify models (`train/` and `val/` of class folders:
`check_cls_dataset`'s layout); it loads into a `DataConfig` too, whose `task` is 'classify'. Which task's model can
use which data is `check_task`'s answer. Every problem a user can cause is a `UserError` with one clear line.

`data=None` means the embedded demo dataset (`autoprune.demo.ensure_demo_data()`, generated on first use). A bare
name that is no file here but one of Ultralytics' dataset YAMLs (`coco8.yaml`) resolves to the installed
`ultralytics/cfg/datasets/` copy, as `--model yolov8n.yaml` does for models; its images must already be on this
machine (where Ultralytics would have downloaded them), or it is one error line.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import yaml

from autoprune.errors import UserError

# The image suffixes Ultralytics loads (ultralytics.data.utils.IMG_FORMATS), repeated here so that checking a data
# YAML does not import Ultralytics.
IMG_FORMATS = frozenset({"avif", "bmp", "dng", "heic", "heif", "jp2", "jpeg", "jpeg2000", "jpg", "mpo", "png", "tif",
                         "tiff", "webp"})


@dataclass(frozen=True)
class DataConfig:
    """A checked data YAML, or a checked classification dataset folder.

    Attributes:
        yaml: the data YAML file, absolute; for a classification dataset its folder (what Ultralytics' `data=` takes).
        root: the dataset root its relative paths resolve against (the YAML's `path`, else the YAML's folder).
        train: the train image sources, absolute: image folders and/or `.txt` files listing images; for a
            classification dataset its train folder of class folders.
        val: the val image sources, absolute, same forms.
        names: class names by index.
        nc: number of classes.
        channels: image channels (3 unless the YAML says otherwise).
        kpt_shape: (keypoints, values per keypoint: 2 or 3) of a pose dataset (its `kpt_shape`), else None.
        flip_idx: the keypoint order after a horizontal flip (its `flip_idx`), or None.
        kpt_oks_sigmas: a pose dataset's own OKS sigmas, one per keypoint (its `kpt_oks_sigmas`), or None:
            Ultralytics' pose validator and keypoint loss then use COCO's for 17 keypoints, 1/keypoints otherwise.
        class_folders: a classification dataset (images filed in one folder per class, named as the class; names
            sorted as Ultralytics' `check_cls_dataset` sorts them), not a data YAML.
    """

    yaml: Path
    root: Path
    train: tuple[str, ...]
    val: tuple[str, ...]
    names: dict[int, str]
    nc: int
    channels: int = 3
    kpt_shape: tuple[int, int] | None = None
    flip_idx: tuple[int, ...] | None = None
    kpt_oks_sigmas: tuple[float, ...] | None = None
    class_folders: bool = False

    @property
    def task(self) -> str | None:
        """What the labels support, as Ultralytics reads them (`label_task`): 'classify' for a classification
        dataset (class folders), 'pose' where the YAML has a
        `kpt_shape` and label lines hold a box and its keypoints, 'obb' where they hold rotated boxes (four corners,
        9 values), 'segment' where they hold other polygons (`cls x1 y1 x2 y2 ...`, more than 6 values), 'detect'
        where they hold boxes only (`cls cx cy w h`), None where no label file was found."""
        if self.class_folders:
            return "classify"
        return label_task(self.val + self.train, kpt_shape=self.kpt_shape)

    def ultralytics_dict(self) -> dict:
        """The data dictionary Ultralytics' datasets and validators expect (what `check_det_dataset` returns, or
        for a classification dataset `check_cls_dataset`)."""
        if self.class_folders:
            return {"path": self.root, "train": self.train[0], "val": self.val[0], "names": dict(self.names),
                    "nc": self.nc, "channels": self.channels}
        return {
            "yaml_file": str(self.yaml),
            "path": self.root,
            "train": list(self.train) if len(self.train) > 1 else self.train[0],
            "val": list(self.val) if len(self.val) > 1 else self.val[0],
            "names": dict(self.names),
            "nc": self.nc,
            "channels": self.channels,
            **({"kpt_shape": list(self.kpt_shape)} if self.kpt_shape else {}),
            **({"flip_idx": list(self.flip_idx)} if self.flip_idx is not None else {}),
            **({"kpt_oks_sigmas": list(self.kpt_oks_sigmas)} if self.kpt_oks_sigmas is not None else {}),
        }


def load_data_config(path: str | Path | None) -> DataConfig:
    """Read and check a data YAML or a classification dataset folder (`classification_folder`); `None` means the
    embedded demo dataset (detect labels).

    Raises `UserError` for a missing file, a YAML that does not parse, a YAML without `train`, `val` or `names`,
    and train or val images that are missing (a folder that does not exist or holds no images). Never downloads.

    Example:
        >>> cfg = load_data_config("datasets/shapes/data.yaml")
        >>> cfg.nc, cfg.names[0]
        (6, 'box')
    """
    if path is None:
        from autoprune.demo import ensure_demo_data  # lazy: only the demo needs it, and it may generate files

        path = Path(ensure_demo_data())
        if path.is_dir():
            path = path / "data.yaml"
    spec = str(path)
    file = Path(spec).expanduser()
    packaged = None if file.is_file() else ultralytics_dataset(spec)
    if packaged is not None:
        file = packaged
    elif not file.is_file():
        train = file / "train"
        if train.is_dir() and any(d.is_dir() and d.name not in ("images", "labels") for d in train.iterdir()):
            return classification_folder(file)
        what = "is a folder, not a file" if file.is_dir() else "not found"
        raise UserError(f"data YAML {what}: {spec}")
    try:
        data = yaml.safe_load(file.read_text(encoding="utf-8-sig"))
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark is not None else ""
        problem = getattr(e, "problem", None) or type(e).__name__
        raise UserError(f"cannot parse data YAML {spec}{where}: {problem}") from e
    except (OSError, UnicodeDecodeError) as e:
        raise UserError(f"cannot read data YAML {spec}: {e}") from e
    if not isinstance(data, dict):
        raise UserError(f"data YAML {spec} must be a mapping with 'train', 'val' and 'names', got {type(data).__name__}")
    missing = [k for k in ("train", "val", "names") if data.get(k) in (None, "", [], {})]
    if missing:
        raise UserError(f"data YAML {spec} has no {', '.join(repr(k) for k in missing)} (it needs train, val and names)")

    names = _names(data["names"], spec)
    nc = data.get("nc", len(names))
    if isinstance(nc, bool) or not isinstance(nc, int) or nc != len(names):
        raise UserError(f"data YAML {spec}: 'nc: {nc}' does not match the {len(names)} entries of 'names'")
    channels = data.get("channels", 3)
    if channels not in (1, 3):
        raise UserError(f"data YAML {spec}: 'channels' must be 1 or 3, got {channels!r}")
    kpt_shape, flip_idx = _keypoints(data, spec)
    sigmas = _oks_sigmas(data, spec, kpt_shape)

    file = file.resolve()
    root = _root(data.get("path"), file, packaged=packaged is not None)
    try:
        train = _sources(data["train"], root, "train", spec)
        val = _sources(data["val"], root, "val", spec)
    except UserError:
        if packaged is None:
            raise
        raise UserError(f"{spec} is Ultralytics' dataset YAML {file}, and its images are not on this machine "
                        f"({root}); they would have to be downloaded and autoprune never downloads data: fetch them "
                        f"once where a network is reachable (e.g. `yolo val data={spec}`) or pass a local data YAML"
                        ) from None
    return DataConfig(yaml=file, root=root, train=train, val=val, names=names, nc=nc, channels=channels,
                      kpt_shape=kpt_shape, flip_idx=flip_idx, kpt_oks_sigmas=sigmas)


def classification_folder(path: str | Path) -> DataConfig:
    """A classification dataset folder, checked as Ultralytics' `check_cls_dataset` reads it (without its
    download): `train/` of class folders, and `val/` (else `validation/`, its fallback) beside it; the class names
    are the train folder's class folders, sorted. Each split must hold images. A `UserError` names what is missing.

    Example:
        >>> cfg = classification_folder("datasets/shapes-cls")   # train/ellipse/*.jpg, val/ellipse/*.jpg, ...
        >>> cfg.task, cfg.names[0]
        ('classify', 'arrow')
    """
    root = Path(path).expanduser().resolve()
    what = f"classification dataset {path}"
    train = root / "train"
    names = sorted(d.name for d in train.iterdir() if d.is_dir()) if train.is_dir() else []
    if not names:
        raise UserError(f"{what} has no train/ folder of class folders (train/<class name>/*.jpg)")
    val = next((root / v for v in ("val", "validation") if (root / v).is_dir()), None)
    if val is None:
        raise UserError(f"{what} has no val/ folder (val/<class name>/*.jpg): autoprune scores models on it")
    for split, folder in (("train", train), ("val", val)):
        if not any(f.rpartition(".")[-1].lower() in IMG_FORMATS for _, _, files in os.walk(folder) for f in files):
            raise UserError(f"{what} has no {split} images in {folder}")
    return DataConfig(yaml=root, root=root, train=(str(train),), val=(str(val),),
                      names=dict(enumerate(names)), nc=len(names), class_folders=True)


def _keypoints(data: dict, spec: str) -> tuple[tuple[int, int] | None, tuple[int, ...] | None]:
    """The YAML's (kpt_shape, flip_idx), checked as Ultralytics reads them; (None, None) without a kpt_shape."""
    raw = data.get("kpt_shape")
    if raw is None:
        return None, None
    if (not isinstance(raw, (list, tuple)) or len(raw) != 2 or any(isinstance(v, bool) or not isinstance(v, int)
                                                                   for v in raw) or raw[0] < 1 or raw[1] not in (2, 3)):
        raise UserError(f"data YAML {spec}: 'kpt_shape' must be [keypoints, 2 or 3], got {raw!r}")
    flip = data.get("flip_idx")
    if flip is None:
        return (raw[0], raw[1]), None
    if (not isinstance(flip, (list, tuple)) or sorted(flip) != list(range(raw[0]))
            or any(isinstance(v, bool) for v in flip)):
        raise UserError(f"data YAML {spec}: 'flip_idx' must order the {raw[0]} keypoints 0..{raw[0] - 1}, got {flip!r}")
    return (raw[0], raw[1]), tuple(flip)


def _oks_sigmas(data: dict, spec: str, kpt_shape: tuple[int, int] | None) -> tuple[float, ...] | None:
    """The YAML's `kpt_oks_sigmas` (one positive number per keypoint, as Ultralytics' pose validator and loss
    check them), or None without them."""
    raw = data.get("kpt_oks_sigmas")
    if raw is None:
        return None
    if kpt_shape is None:
        raise UserError(f"data YAML {spec}: 'kpt_oks_sigmas' needs a 'kpt_shape' (they are the keypoints' OKS sigmas)")
    if (not isinstance(raw, (list, tuple)) or len(raw) != kpt_shape[0]
            or any(isinstance(v, bool) or not isinstance(v, (int, float)) or not v > 0 for v in raw)):
        raise UserError(f"data YAML {spec}: 'kpt_oks_sigmas' must be {kpt_shape[0]} positive numbers (one per "
                        f"keypoint of kpt_shape {list(kpt_shape)}), got {raw!r}")
    return tuple(float(v) for v in raw)


# How many label files `label_task` reads at most: enough to see polygons in any segment dataset, cheap on a large one.
TASK_SAMPLE = 64


def label_task(sources: tuple[str, ...] | list[str], kpt_shape: tuple[int, int] | None = None) -> str | None:
    """The task the first `TASK_SAMPLE` label files of the image `sources` (folders or .txt lists, as in a
    `DataConfig`) hold labels of, as Ultralytics reads them. With a `kpt_shape` (the YAML's), 'pose' if a line has
    a box and that many keypoint values (5 + keypoints x values). Otherwise 'segment' if a line holds a polygon
    (more than 6 values, Ultralytics' own test) of other than four corners, 'obb' if every polygon line has four
    corners (9 values: Ultralytics' OBB labels; a segment dataset whose masks are all quadrilaterals reads the same,
    and a segment model accepts it), 'detect' if they hold box lines only; None if none was found or all
    are empty. Labels sit where Ultralytics looks: `/images/` -> `/labels/`, suffix `.txt`."""
    pose = 5 + kpt_shape[0] * kpt_shape[1] if kpt_shape else None
    seen_boxes = seen_corners = False
    for label in _label_files(sources):
        try:
            text = label.read_text(encoding="utf-8-sig")
        except (OSError, UnicodeDecodeError):
            continue
        for line in text.splitlines():
            n = len(line.split())
            if n == pose:
                return "pose"
            if n > 6 and n != 9:
                return "segment"
            seen_corners = seen_corners or n == 9
            seen_boxes = seen_boxes or n == 5
    return "obb" if seen_corners else "detect" if seen_boxes else None


def _label_files(sources):
    sa, sb = f"{os.sep}images{os.sep}", f"{os.sep}labels{os.sep}"
    count = 0
    for image in _images(sources):
        label = Path(sb.join(image.rsplit(sa, 1)).rsplit(".", 1)[0] + ".txt")
        if label.is_file():
            yield label
            count += 1
            if count >= TASK_SAMPLE:
                return


def _images(sources):
    for src in sources:
        p = Path(src)
        if p.is_dir():
            for dirpath, dirs, files in os.walk(p):
                dirs.sort()
                for f in sorted(files):
                    if f.rpartition(".")[-1].lower() in IMG_FORMATS:
                        yield os.path.join(dirpath, f)
        elif p.is_file():
            try:
                lines = p.read_text(encoding="utf-8-sig").splitlines()
            except (OSError, UnicodeDecodeError):
                continue
            parent = str(p.parent) + os.sep
            for line in lines:
                line = line.strip()
                if line:
                    yield line.replace("./", parent, 1) if line.startswith("./") else line


# What each task's model needs of the labels: the label kinds it trains and is scored on (`label_task`'s answers),
# what they are called in the error, and the label line it wants.
_LABELS = {"detect": "boxes only", "segment": "polygons", "pose": "boxes and keypoints",
           "obb": "four-corner polygons: rotated boxes, or segment masks that are all quadrilaterals"}
_NEEDS = {"segment": (("segment", "obb"), "segment labels (`cls x1 y1 x2 y2 ...`)"),
          "pose": (("pose",), "pose labels (`cls cx cy w h x1 y1 v1 ...`) and `kpt_shape` in the YAML"),
          "obb": (("obb",), "OBB labels (`cls x1 y1 x2 y2 x3 y3 x4 y4`)")}


def check_task(data: DataConfig, task: str, kpt_shape: tuple[int, ...] | list[int] | None = None) -> None:
    """A `UserError` naming both tasks where `data`'s labels cannot train or score a `task` model.

    A classify model needs a classification dataset (class folders), and no other model can use one. A segment
    model needs polygons (an OBB dataset's four corners are polygons too); a pose model needs keypoints, and with
    the model's `kpt_shape`, as many as it predicts; an OBB model needs rotated boxes. A detect model reads any label
    kind of a data YAML (Ultralytics takes each label's box). Data YAMLs whose labels were not found
    (`DataConfig.task` None) are left to the loaders.
    """
    if (task == "classify") != data.class_folders:
        if task == "classify":
            held = f"holds {data.task} labels ({_LABELS[data.task]})" if data.task else "is a data YAML"
            raise UserError(f"the model is a classify model, and {data.yaml} {held}: pass a classification dataset "
                            "folder (train/ and val/ of class folders)")
        raise UserError(f"the model is {_a(task)} model, and {data.yaml} is a classification dataset (a folder of "
                        f"class folders): pass a data YAML with {task if task != 'obb' else 'OBB'} labels")
    if task in _NEEDS:
        kinds, wanted = _NEEDS[task]
        found = data.task
        if found is not None and found not in kinds:
            raise UserError(f"the model is {_a(task)} model, and {data.yaml} holds {found} labels ({_LABELS[found]}): "
                            f"pass a data YAML with {wanted}")
    if task == "pose" and kpt_shape is not None and data.kpt_shape is not None \
            and tuple(kpt_shape) != tuple(data.kpt_shape):
        raise UserError(f"the model predicts keypoints of shape {list(kpt_shape)}, and {data.yaml} has "
                        f"kpt_shape {list(data.kpt_shape)}: use a model trained on this dataset")


def _a(task: str) -> str:
    return f"an {task.upper()}" if task == "obb" else f"a {task}"


def _names(raw, spec: str) -> dict[int, str]:
    if isinstance(raw, (list, tuple)):
        return {i: str(n) for i, n in enumerate(raw)}
    if isinstance(raw, dict):
        try:
            names = {int(k): str(v) for k, v in raw.items()}
        except (TypeError, ValueError):
            raise UserError(f"data YAML {spec}: 'names' keys must be class indices 0..n-1") from None
        if sorted(names) != list(range(len(names))):
            raise UserError(f"data YAML {spec}: 'names' keys must be the class indices 0..{len(names) - 1}")
        return names
    raise UserError(f"data YAML {spec}: 'names' must be a list or an index -> name mapping, got {type(raw).__name__}")


def ultralytics_dataset(spec: str) -> Path | None:
    """Ultralytics' own dataset YAML named `spec` (a bare name such as "coco8.yaml"), found in the installed package
    without importing it, or None.

    Example:
        >>> ultralytics_dataset("coco8.yaml").name
        'coco8.yaml'
    """
    if Path(spec).name != spec or not spec.endswith((".yaml", ".yml")):
        return None
    import importlib.util

    found = importlib.util.find_spec("ultralytics")
    if found is None or not found.origin:
        return None
    path = Path(found.origin).parent / "cfg" / "datasets" / spec
    return path if path.is_file() else None


def _root(path_value, yaml_file: Path, packaged: bool = False) -> Path:
    """The dataset root, resolved like Ultralytics (cwd, then its datasets folder) but also beside the YAML. For one
    of Ultralytics' own dataset YAMLs (`packaged`), a relative root is under its datasets folder, as it resolves it."""
    if not path_value:
        return yaml_file.parent
    p = Path(str(path_value)).expanduser()
    if p.is_absolute():
        return p
    candidates = [Path.cwd() / p, yaml_file.parent / p]
    try:
        from ultralytics.utils import DATASETS_DIR  # Ultralytics' fallback for relative roots; reading it is cheap

        candidates.append(Path(DATASETS_DIR) / p)
    except Exception:  # pragma: no cover - Ultralytics is a dependency; never fail on its settings file
        pass
    if packaged:
        candidates.remove(yaml_file.parent / p)  # never inside the installed package
    for c in candidates:
        if c.exists():
            return c.resolve()
    if packaged and len(candidates) > 1:
        return candidates[-1]  # Ultralytics' datasets folder, where it would download to
    return (yaml_file.parent / p).resolve()  # does not exist: the image check below names it


def _sources(raw, root: Path, split: str, spec: str) -> tuple[str, ...]:
    items = raw if isinstance(raw, (list, tuple)) else [raw]
    if not all(isinstance(x, str) and x for x in items):
        raise UserError(f"data YAML {spec}: '{split}' must be a path or a list of paths")
    out = []
    for x in items:
        p = Path(x).expanduser()
        if not p.is_absolute():
            p = root / p
            if not p.exists() and x.startswith("../"):  # Ultralytics' own fallback for '../' paths
                p = root / x[3:]
        p = p.resolve()
        _check_images(p, split, spec)
        out.append(str(p))
    return tuple(out)


def _check_images(p: Path, split: str, spec: str) -> None:
    """Raise a UserError unless `p` is a folder holding images or a list file naming at least one existing image."""
    if p.is_dir():
        for _, _, files in os.walk(p):
            if any(f.rpartition(".")[-1].lower() in IMG_FORMATS for f in files):
                return
        raise UserError(f"data YAML {spec}: no {split} images in {p}")
    if p.is_file():
        if p.suffix.lower().lstrip(".") in IMG_FORMATS:
            raise UserError(f"data YAML {spec}: '{split}' must be an image folder or a .txt list of images, got {p}")
        try:
            lines = p.read_text(encoding="utf-8-sig").strip().splitlines()
        except (OSError, UnicodeDecodeError) as e:
            raise UserError(f"data YAML {spec}: cannot read the {split} image list {p}: {e}") from e
        parent = str(p.parent) + os.sep
        for line in lines:
            line = line.strip()
            f = Path(line.replace("./", parent, 1) if line.startswith("./") else line)
            if f.suffix.lower().lstrip(".") in IMG_FORMATS and f.is_file():
                return
        raise UserError(f"data YAML {spec}: the {split} image list {p} names no existing images")
    raise UserError(f"data YAML {spec}: {split} images not found: {p} does not exist (autoprune never downloads data)")
