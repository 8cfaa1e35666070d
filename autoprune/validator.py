"""The validator the proxy scores candidates with: Ultralytics' `DetectionValidator` (or `SegmentationValidator` for
a segment model), made repeatable."""

from __future__ import annotations

import math
from pathlib import Path

import torch

__all__ = ["make_validator"]


def make_validator(imgsz: int, device: torch.device, task: str = "detect"):
    """Ultralytics' DetectionValidator (task 'detect') or SegmentationValidator (task 'segment': box and mask
    metrics, mask IoU matching) with its NMS time limit lifted (a time-dependent cut is not repeatable)."""
    import tempfile

    from ultralytics.models.yolo.detect import DetectionValidator
    from ultralytics.models.yolo.segment import SegmentationValidator
    from ultralytics.utils import nms

    def _nms(v, preds):
        # DetectionValidator.postprocess, word for word, but with max_time_img=inf: Ultralytics stops NMS after
        # 2 s + 50 ms per image, which a slow or loaded CPU can hit on a badly damaged candidate and would
        # then score differently from run to run.
        outputs = nms.non_max_suppression(
            preds,
            v.args.conf,
            v.args.iou,
            nc=0 if v.args.task == "detect" else v.nc,
            multi_label=True,
            agnostic=v.args.single_cls or v.args.agnostic_nms,
            max_det=v.args.max_det,
            end2end=v.end2end,
            rotated=False,
            max_time_img=math.inf,
        )
        return [{"bboxes": x[:, :4], "conf": x[:, 4], "cls": x[:, 5], "extra": x[:, 6:]} for x in outputs]

    class _ProxyValidator(DetectionValidator):
        def postprocess(self, preds):
            return _nms(self, preds)

    class _ProxySegmentValidator(SegmentationValidator):
        def postprocess(self, preds):
            # SegmentationValidator.postprocess with the NMS above; the prototypes in float32 (under autocast they
            # come out in bfloat16, and the masks are a product of prototypes and float32 coefficients).
            proto = preds[0][1] if isinstance(preds[0], tuple) else preds[1]
            proto = proto.float()
            out = _nms(self, preds[0][0] if isinstance(preds[0], tuple) else preds[0])
            size = [4 * x for x in proto.shape[2:]]
            for i, pred in enumerate(out):
                pred["masks"] = self.process(proto[i], pred.pop("extra"), pred["bboxes"], shape=size)
            return out

    if task not in ("detect", "segment"):
        raise ValueError(f"make_validator handles detect and segment, got {task!r}")
    cls = _ProxySegmentValidator if task == "segment" else _ProxyValidator
    args = {"task": task, "mode": "val", "imgsz": imgsz, "conf": 0.001, "iou": 0.7, "max_det": 300,
            "plots": False, "save_json": False, "save_txt": False, "verbose": False, "split": "val"}
    # Ultralytics creates save_dir on construction and, with no plots, JSON or txt, never writes to it. A private
    # folder removed at once: nothing is left behind even by a killed worker, and a write would fail, not litter /tmp.
    with tempfile.TemporaryDirectory(prefix="autoprune-val-") as save_dir:
        v = cls(save_dir=Path(save_dir), args=args)
    v.device = device
    return v
