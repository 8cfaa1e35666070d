"""How much a proxy score would move with another validation subset: a bootstrap over the validation images.

The proxy scores a candidate on a fixed subset of the val split. Another subset of the same size would give
another mAP50-95; how far is estimated without another forward pass by resampling the scored images with
replacement and recomputing mAP50-95 from each image's matching statistics (what Ultralytics' `DetectionValidator`
accumulates per image: `tp`, `conf`, `pred_cls`, `target_cls`) with Ultralytics' own `ap_per_class`.

A classify model's top-1 accuracy is resampled the same way, each image a hit or a miss (`bootstrap_accuracy`).

The resamples depend only on the number of images and `seed`, so every candidate scored on the same images is
resampled the same way: the difference of two candidates' bootstrap scores, resample by resample, is a paired
bootstrap of their difference (`difference_se`), much tighter than the two standard errors combined when both
candidates fail on the same hard images.

Example:
    >>> stats = per_image_stats(validator.metrics.stats)   # before get_stats() clears them
    >>> boot = bootstrap_scores(stats)                     # 200 resampled mAP50-95
    >>> standard_error(boot)
"""

from __future__ import annotations

import math

import numpy as np

RESAMPLES = 200
SEED = 0
KEYS = ("tp", "conf", "pred_cls", "target_cls")


def per_image_stats(stats: dict, tp_key: str = "tp") -> list[dict]:
    """The validator's accumulated statistics (`DetMetrics.stats`: one entry per image under each key) as one dict of
    numpy arrays per image, copied (the validator clears its lists afterwards).

    `tp_key` names the true-positive matrix to resample: 'tp' (box IoU), or 'tp_m' (mask IoU, what
    `SegmentationValidator` adds) to bootstrap mask mAP50-95; it is stored under 'tp' either way."""
    n = len(stats.get(tp_key, []))
    return [{k: np.array(stats[tp_key if k == "tp" else k][i], copy=True) for k in KEYS} for i in range(n)]


def _tp(image: dict) -> np.ndarray:
    """An image's (predictions, 10) true-positive matrix, IoU 0.5 to 0.95."""
    return np.asarray(image["tp"], dtype=bool).reshape(len(image["conf"]), 10)


def map50_95(images: list[dict]) -> float:
    """mAP50-95 over `images` as Ultralytics computes it: the mean over the classes with labels of the AP at IoU
    0.5:0.95 (`ultralytics.utils.metrics.ap_per_class`)."""
    from ultralytics.utils.metrics import ap_per_class

    if not images or not sum(len(im["target_cls"]) for im in images):
        return 0.0
    tp = np.concatenate([_tp(im) for im in images], 0)
    conf = np.concatenate([im["conf"] for im in images])
    if not len(conf):
        return 0.0
    pred_cls = np.concatenate([im["pred_cls"] for im in images])
    target_cls = np.concatenate([im["target_cls"] for im in images])
    return float(ap_per_class(tp, conf, pred_cls, target_cls)[5].mean())


class WeightedMAP:
    """mAP50-95 of the images taken `w[i]` times each (a bootstrap resample), without concatenating copies.

    The predictions are sorted by confidence once; a resample weighs each prediction by its image's count, so the
    cumulative true and false positives, recall and precision are those of the resampled concatenation, and AP is
    Ultralytics' `compute_ap` (the precision envelope, 101-point interpolation) on them. With every count 1 it is
    `map50_95(images)` (up to the order of predictions of equal confidence).
    """

    def __init__(self, images: list[dict]):
        self.n = len(images)
        conf = np.concatenate([im["conf"] for im in images]) if images else np.zeros(0)
        tp = (np.concatenate([_tp(im) for im in images], 0) if images
              else np.zeros((0, 10)))
        pred_cls = np.concatenate([im["pred_cls"] for im in images]) if images else np.zeros(0)
        img = np.concatenate([np.full(len(im["conf"]), i) for i, im in enumerate(images)]) if images else np.zeros(0)
        order = np.argsort(-conf, kind="stable")
        tp, pred_cls, img = tp[order].astype(float), pred_cls[order], img[order].astype(int)
        targets = [np.asarray(im["target_cls"]).astype(int) for im in images]
        self.classes = np.unique(np.concatenate(targets)) if targets else np.zeros(0, dtype=int)
        # labels per image and class, and each class's predictions (best first) with their images
        self.labels = np.zeros((self.n, len(self.classes)))
        for i, t in enumerate(targets):
            for k, c in enumerate(self.classes):
                self.labels[i, k] = int((t == c).sum())
        self.preds = []
        for c in self.classes:
            tp_c, img_c = tp[pred_cls == c], img[pred_cls == c]
            # predictions after the class's last true positive (at any IoU) cannot raise its AP
            last = np.flatnonzero(tp_c.any(1)) if len(tp_c) else np.zeros(0, dtype=int)
            end = int(last[-1]) + 1 if len(last) else min(len(tp_c), 1)
            self.preds.append((tp_c[:end], img_c[:end]))

    def __call__(self, w: np.ndarray) -> float:
        n_l = w @ self.labels
        aps = []
        for k in range(len(self.classes)):
            if n_l[k] <= 0:
                continue  # the class has no label in this resample: Ultralytics leaves it out of the mean
            tp, img = self.preds[k]
            ww = w[img]
            keep = ww > 0
            if not keep.any():
                aps.append(0.0)
                continue
            ww, tp = ww[keep, None], tp[keep]
            tpc = np.cumsum(tp * ww, 0)
            fpc = np.cumsum((1 - tp) * ww, 0)
            aps.append(float(_ap(tpc / (n_l[k] + 1e-16), tpc / (tpc + fpc)).mean()))
        return float(np.mean(aps)) if aps else 0.0


def _ap(recall: np.ndarray, precision: np.ndarray) -> np.ndarray:
    """Ultralytics' `compute_ap` for every column of (N, k) recall and precision curves at once: sentinels, the
    precision envelope, the 101-point COCO interpolation."""
    k = recall.shape[1]
    mrec = np.concatenate((np.zeros((1, k)), recall, recall[-1:], np.ones((1, k))), 0)
    mpre = np.concatenate((np.ones((1, k)), precision, np.zeros((2, k))), 0)
    mpre = np.flip(np.maximum.accumulate(np.flip(mpre, 0), 0), 0)
    x = np.linspace(0, 1, 101)
    return np.array([_TRAPZ(np.interp(x, mrec[:, j], mpre[:, j]), x) for j in range(k)])


_TRAPZ = getattr(np, "trapezoid", None) or np.trapz


def resample_counts(n: int, resamples: int = RESAMPLES, seed: int = SEED) -> np.ndarray:
    """(resamples, n): how often each of n images is drawn in each resample (n draws with replacement); the same for
    every candidate scored on n images."""
    idx = np.random.default_rng([seed, n]).integers(0, n, size=(resamples, n))
    return np.stack([np.bincount(row, minlength=n) for row in idx]).astype(float) if n else np.zeros((resamples, 0))


def bootstrap_scores(images: list[dict], resamples: int = RESAMPLES, seed: int = SEED) -> list[float]:
    """mAP50-95 of each bootstrap resample of `images` (`resample_counts`); empty for fewer than two images."""
    if len(images) < 2:
        return []
    score = WeightedMAP(images)
    return [score(w) for w in resample_counts(len(images), resamples, seed)]


def bootstrap_accuracy(hits, resamples: int = RESAMPLES, seed: int = SEED) -> list[float]:
    """Top-1 accuracy of each bootstrap resample of a classify model's images, `hits` one bool per image (its best
    class is its label), resampled as `bootstrap_scores` resamples images; empty for fewer than two images.

    Example:
        >>> boot = bootstrap_accuracy([True, False, True, True])
        >>> len(boot), all(0 <= a <= 1 for a in boot)
        (200, True)
    """
    hits = np.asarray(hits, dtype=float)
    if len(hits) < 2:
        return []
    return [float(w @ hits / w.sum()) for w in resample_counts(len(hits), resamples, seed)]


def standard_error(boot: list[float]) -> float | None:
    """The standard deviation of bootstrap scores: the standard error of the score they resample (None for fewer
    than two)."""
    if len(boot) < 2:
        return None
    return float(np.std(np.asarray(boot, dtype=float), ddof=1))


def difference_se(boot_a: list[float] | None, boot_b: list[float] | None, se_a: float | None = None,
                  se_b: float | None = None) -> float | None:
    """The standard error of score a - score b: paired (the spread of the resample-by-resample differences) when
    both candidates were resampled alike (bootstrap lists of equal length), else sqrt(se_a^2 + se_b^2); None when
    neither is known.

    Example:
        >>> difference_se([0.30, 0.32, 0.34], [0.29, 0.31, 0.33])   # moves together: the difference is sure
        0.0
        >>> round(difference_se(None, None, 0.03, 0.04), 3)
        0.05
    """
    if boot_a and boot_b and len(boot_a) == len(boot_b) and len(boot_a) >= 2:
        d = np.asarray(boot_a, dtype=float) - np.asarray(boot_b, dtype=float)
        return round(float(np.std(d, ddof=1)), 12)
    if se_a is None or se_b is None:
        return None
    return math.sqrt(se_a**2 + se_b**2)


# Where a validation subset is too small to rank candidates. Measured on the demo (docs/BENCHMARKS.md, issue 24,
# benchmarks/bench_val_size.py): the bootstrap SE of one score matches how far the score moves over other subsets of
# the same size (0.039 against 0.041 at 12 images, 0.0095 against 0.0092 at 200), and the paired SE of two close
# candidates' difference is about 0.6 of it, so one score's SE of 0.01 resolves differences of about 0.012 (two
# paired SEs); the differences between the leading candidates at one budget are a few thousandths to a hundredth.
# Below 50 images or 200 boxes the bootstrap has too little to resample to be trusted on other data.
MIN_IMAGES = 50
MIN_BOXES = 200
MAX_SE = 0.01


def too_small(images: int, boxes: int, se: float | None, figure: str = "mAP50-95") -> str | None:
    """Why a validation subset of `images` images with `boxes` labelled objects (one per image for a classifier),
    whose scores (`figure`: mAP50-95, or the task's own) move by `se` (the bootstrap standard error), cannot rank
    candidates, with what to do; None when it can.

    Example:
        >>> too_small(500, 3000, 0.004) is None
        True
        >>> too_small(12, 20, 0.03).startswith("the proxy scores candidates on 12 validation images")
        True
    """
    if images >= MIN_IMAGES and boxes >= MIN_BOXES and (se is None or se <= MAX_SE):
        return None
    moves = f", and their {figure} moves by about {se:.3f} (one standard error) with another subset" if se else ""
    labels = "" if boxes == images else f" ({boxes} labelled objects)"
    return (f"the proxy scores candidates on {images} validation images{labels}{moves}: too few to tell "
            "close candidates apart; use more validation images (--val-images, a larger val split), --confirm N, "
            "or a larger --proxy-steps")
