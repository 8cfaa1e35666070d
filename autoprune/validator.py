"""The validator the proxy scores candidates with: Ultralytics' `DetectionValidator`, made repeatable."""

from __future__ import annotations

import math
from pathlib import Path

import torch

__all__ = ["make_validator"]


def make_validator(imgsz: int, device: torch.device):
    """Ultralytics' DetectionValidator with its NMS time limit lifted (a time-dependent cut is not repeatable)."""
    import tempfile

    from ultralytics.models.yolo.detect import DetectionValidator
    from ultralytics.utils import nms

    class _ProxyValidator(DetectionValidator):
        def postprocess(self, preds):
            # DetectionValidator.postprocess, word for word, but with max_time_img=inf: Ultralytics stops NMS after
            # 2 s + 50 ms per image, which a slow or loaded CPU can hit on a badly damaged candidate and would
            # then score differently from run to run.
            outputs = nms.non_max_suppression(
                preds,
                self.args.conf,
                self.args.iou,
                nc=0,
                multi_label=True,
                agnostic=self.args.single_cls or self.args.agnostic_nms,
                max_det=self.args.max_det,
                end2end=self.end2end,
                rotated=False,
                max_time_img=math.inf,
            )
            return [{"bboxes": x[:, :4], "conf": x[:, 4], "cls": x[:, 5], "extra": x[:, 6:]} for x in outputs]

    args = {"task": "detect", "mode": "val", "imgsz": imgsz, "conf": 0.001, "iou": 0.7, "max_det": 300,
            "plots": False, "save_json": False, "save_txt": False, "verbose": False, "split": "val"}
    # Ultralytics creates save_dir on construction and, with no plots, JSON or txt, never writes to it. A private
    # folder removed at once: nothing is left behind even by a killed worker, and a write would fail, not litter /tmp.
    with tempfile.TemporaryDirectory(prefix="autoprune-val-") as save_dir:
        v = _ProxyValidator(save_dir=Path(save_dir), args=args)
    v.device = device
    return v
