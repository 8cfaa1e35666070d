"""Fixed, seeded image batches of a dataset (detect, segment, pose or OBB labels, or class folders): the calibration
batches and the proxy's pools.

BN recalibration, data criteria (taylor, hessian) and least-squares reconstruction all read the same calibration
batches, and `autoprune prune`, every proxy of a search and `autoprune apply` must draw them alike, whatever else
they load. The images are read, resized and letterboxed once by Ultralytics' dataset (val mode: no augmentation) and
kept as uint8 tensors; subsets and batch orders depend only on a seed. A classification dataset's images are
Ultralytics' classification val transform's (shortest side resized to the image size, centre crop), and its batches
hold the images and their classes only.

Example:
    >>> from autoprune.batches import calibration_batches
    >>> batches = calibration_batches("data.yaml", imgsz=320, calib_batches=20, batch=8, seed=0)
    >>> batches[0]["img"].shape
    torch.Size([8, 3, 320, 320])
"""

from __future__ import annotations

from multiprocessing.pool import ThreadPool
from pathlib import Path

import numpy as np
import torch

from autoprune import _ultralytics  # noqa: F401  (offline, quiet Ultralytics before it is used)
from autoprune.data import DataConfig, load_data_config
from autoprune.errors import UserError

# The targets a task's loss and validator read beside cls, bboxes and batch_idx, per image: a segment dataset's
# masks (one per image, overlap_mask: label index per pixel) and a pose dataset's keypoints (objects x K x 2 or 3,
# normalised). An OBB dataset's rotated boxes are its bboxes (x, y, w, h, angle).
TARGETS = ("masks", "keypoints")

# Salts of the seeded draws: each subset or order is its own stream, so changing one never moves another.
VAL_SUBSET, TRAIN_SUBSET, CALIB_ORDER, TRAIN_ORDER = 1, 2, 3, 4


def subset(n: int, k: int, seed: int, salt: int) -> list[int]:
    """A fixed, sorted, seeded choice of min(k, n) indices out of range(n)."""
    if k >= n:
        return list(range(n))
    rng = np.random.default_rng([seed, salt])
    return sorted(rng.choice(n, size=k, replace=False).tolist())


def batch_order(n: int, size: int, seed: int, salt: int) -> list[int]:
    """n indices into a pool of `size` images: concatenated seeded permutations, so each pass sees every image once."""
    rng = np.random.default_rng([seed, salt])
    out: list[int] = []
    while len(out) < n:
        out.extend(rng.permutation(size).tolist())
    return out[:n]


def calibration_size(calib_batches: int, batch: int, train_images: int) -> int:
    """How many train images the calibration subset holds (at least one batch, at most `train_images`)."""
    return min(train_images, max(calib_batches * batch, batch))


def load_items(dataset, indices: list[int]) -> list[dict]:
    """dataset[i] for each index (image read, resize, letterbox, to uint8 CHW tensor), two threads."""
    with ThreadPool(2) as pool:  # cv2 releases the GIL while decoding and resizing
        return pool.map(dataset.__getitem__, indices)


def collate(items: list[dict]) -> dict:
    """Stack cached items into a batch without touching them.

    (Ultralytics' `YOLODataset.collate_fn` adds the image index to each item's `batch_idx` in place, which is fine
    for the fresh items a DataLoader yields but would corrupt items cached for reuse.)
    """
    batch = {"img": torch.stack([it["img"] for it in items]), "cls": torch.cat([it["cls"] for it in items])}
    if "bboxes" in items[0]:  # labels of objects (a classification dataset's items have their class only)
        batch["bboxes"] = torch.cat([it["bboxes"] for it in items])
        batch["batch_idx"] = torch.cat([torch.full((len(it["cls"]),), float(i)) for i, it in enumerate(items)])
    for k in TARGETS:
        if k in items[0]:
            batch[k] = torch.cat([it[k] for it in items])
    for k in ("im_file", "ori_shape", "resized_shape", "ratio_pad"):
        if k in items[0]:
            batch[k] = tuple(it[k] for it in items)
    return batch


def batches_of(pool: list[dict], order: list[int], batch: int, count: int) -> list[dict]:
    """The first `count` batches of `batch` images of `pool`, in `order`."""
    return [collate([pool[i] for i in order[k * batch : (k + 1) * batch]]) for k in range(count)]


def dataset_cfg(imgsz: int, task: str = "detect"):
    """Ultralytics' configuration of the datasets: square letterbox at `imgsz`, no augmentation, no caching. The
    task says what the dataset reads and yields: with 'segment' polygons and each image's masks (Ultralytics'
    overlap_mask form, at a quarter of `imgsz`), with 'pose' each object's keypoints (the data's `kpt_shape`), with
    'obb' rotated boxes (bboxes x, y, w, h, angle): what the task's loss and validator read; 'classify' is the
    configuration of a classification dataset (`build_dataset`)."""
    from ultralytics.cfg import get_cfg

    return get_cfg(overrides={"imgsz": imgsz, "task": task, "rect": False, "cache": False, "single_cls": False,
                              "fraction": 1.0, "split": "val"})


def build_dataset(cfg, data: DataConfig, split: str, batch: int):
    """Ultralytics' YOLODataset of one split, in val mode (for a classification dataset its ClassificationDataset,
    items as `ClassFolderItems` gives them); unreadable images are a `UserError` naming the data."""
    from ultralytics.data import ClassificationDataset, build_yolo_dataset

    udata = data.ultralytics_dict()
    img_path = udata[split]
    try:
        if data.class_folders:
            return ClassFolderItems(ClassificationDataset(img_path, cfg, augment=False, prefix=split,
                                                          names=dict(data.names)))
        return build_yolo_dataset(cfg, img_path, batch, udata, mode="val", rect=False, stride=32)
    except (FileNotFoundError, RuntimeError) as e:  # no readable images / no valid images
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise UserError(f"{data.yaml}: cannot load images from {img_path}: {first}") from e


class ClassFolderItems:
    """The items of Ultralytics' `ClassificationDataset` (val transform) in the form the batches keep: the image as
    uint8 (its float tensor is the PIL image's bytes divided by 255, so this loses nothing) and the class as a
    one-element tensor, as detection items hold one class per object."""

    def __init__(self, dataset):
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, i: int) -> dict:
        it = self.dataset[i]
        return {"img": it["img"].mul(255).round_().to(torch.uint8), "cls": torch.tensor([it["cls"]]),
                "im_file": self.dataset.samples[i][0]}


def mean_loss(model: torch.nn.Module, batch: dict, preds=None) -> torch.Tensor:
    """The model's own loss (Ultralytics' criterion of its task, `model.loss`) on `batch`, per image: the detection
    criteria return per-term sums scaled by the batch size, the classification one (cross-entropy) its batch mean."""
    from ultralytics.utils.loss import v8ClassificationLoss

    loss, _ = model.loss(batch, preds)
    if isinstance(model.criterion, v8ClassificationLoss):
        return loss.sum()
    return loss.sum() / batch["img"].shape[0]


def module_inputs(net: torch.nn.Module, paths: list[str], batches, cap: int | None = None) -> dict[str, list]:
    """{path: the first inputs of the module at `path`} over the calibration `batches` (dicts with "img", or image
    tensors; uint8 scaled to [0, 1]), run through `net` in eval mode on its device; with `cap`, at most about `cap`
    values per module (later batches are dropped past it). `net`'s mode is restored."""
    from collections.abc import Mapping

    inputs: dict[str, list[torch.Tensor]] = {p: [] for p in paths}
    sizes = dict.fromkeys(paths, 0)

    def hook_for(path):
        def hook(_mod, args):
            x = args[0].detach()
            if cap is None or sizes[path] < cap:
                inputs[path].append(x)
                sizes[path] += x.numel()
        return hook

    hooks = [net.get_submodule(p).register_forward_pre_hook(hook_for(p)) for p in paths]
    was = net.training
    net.eval()
    device = next(net.parameters()).device
    try:
        with torch.no_grad():
            for b in batches:
                img = (b["img"] if isinstance(b, Mapping) else b).to(device)
                net(img.float() / 255 if img.dtype == torch.uint8 else img.float())
    finally:
        for h in hooks:
            h.remove()
        net.train(was)
    return inputs


def calibration_batches(data: str | Path | DataConfig | None, *, imgsz: int, calib_batches: int, batch: int = 8,
                        seed: int = 0, train_images: int = 512, task: str = "detect") -> list[dict]:
    """The fixed calibration batches (collated dicts, uint8 images on the CPU) of `data`'s train split.

    The same batches `ProxyEvaluator(data, ProxySettings(...)).calibration_batches()` gives for the same image size,
    batch count, batch size, seed and `train_images`, without loading the val split or a finetune pool. `task`
    says which targets the batches carry besides the boxes (`dataset_cfg`: masks, keypoints, rotated boxes; a
    classification dataset's batches carry images and classes only).
    """
    from autoprune._ultralytics import no_label_caches, quiet

    if calib_batches < 1:
        raise ValueError(f"calibration_batches needs calib_batches >= 1, got {calib_batches}")
    data = data if isinstance(data, DataConfig) else load_data_config(data)
    with quiet(), no_label_caches():
        train = build_dataset(dataset_cfg(imgsz, task), data, "train", batch)
        pool = load_items(train, subset(len(train), calibration_size(calib_batches, batch, train_images), seed,
                                        TRAIN_SUBSET))
    order = batch_order(calib_batches * batch, len(pool), seed, CALIB_ORDER)
    return batches_of(pool, order, batch, calib_batches)


__all__ = ["TARGETS", "ClassFolderItems", "batch_order", "batches_of", "build_dataset", "calibration_batches",
           "calibration_size", "collate", "dataset_cfg", "load_items", "mean_loss", "module_inputs", "subset"]
