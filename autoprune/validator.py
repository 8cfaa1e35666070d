"""The validator the proxy scores candidates with: Ultralytics' validator of the model's task (`DetectionValidator`,
`SegmentationValidator`, `PoseValidator`, `OBBValidator`, `ClassificationValidator`), made repeatable."""

from __future__ import annotations

import math
from pathlib import Path

import torch

__all__ = ["make_validator"]


def make_validator(imgsz: int, device: torch.device, task: str = "detect"):
    """Ultralytics' validator of `task` with its NMS time limit lifted (a time-dependent cut is not repeatable):
    DetectionValidator ('detect'), SegmentationValidator ('segment': box and mask metrics, mask IoU matching),
    PoseValidator ('pose': box and keypoint metrics, keypoint OKS matching), OBBValidator ('obb': rotated boxes,
    probabilistic IoU matching, rotated NMS) or ClassificationValidator ('classify': top-1 and top-5 accuracy, no
    NMS)."""
    import tempfile

    from ultralytics.models.yolo.classify import ClassificationValidator
    from ultralytics.models.yolo.detect import DetectionValidator
    from ultralytics.models.yolo.obb import OBBValidator
    from ultralytics.models.yolo.pose import PoseValidator
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
            rotated=v.args.task == "obb",
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

    class _ProxyPoseValidator(PoseValidator):
        def postprocess(self, preds):
            # PoseValidator.postprocess with the NMS above: each detection's keypoints from its extra columns
            out = _nms(self, preds)
            for pred in out:
                pred["keypoints"] = pred.pop("extra").view(-1, *self.kpt_shape)
            return out

    class _ProxyOBBValidator(OBBValidator):
        def postprocess(self, preds):
            # OBBValidator.postprocess with the NMS above (rotated): each box with its angle
            out = _nms(self, preds)
            for pred in out:
                pred["bboxes"] = torch.cat([pred["bboxes"], pred.pop("extra")], dim=-1)
            return out

    class _ProxyClassificationValidator(ClassificationValidator):
        def postprocess(self, preds):
            # ClassificationValidator.postprocess (the probabilities of the (probabilities, logits) pair), in float32:
            # under autocast they come out in bfloat16, whose ties would reorder the top-5
            return super().postprocess(preds).float()

    classes = {"detect": _ProxyValidator, "segment": _ProxySegmentValidator, "pose": _ProxyPoseValidator,
               "obb": _ProxyOBBValidator, "classify": _ProxyClassificationValidator}
    if task not in classes:
        raise ValueError(f"make_validator handles {', '.join(classes)}, got {task!r}")
    cls = classes[task]
    args = {"task": task, "mode": "val", "imgsz": imgsz, "conf": 0.001, "iou": 0.7, "max_det": 300,
            "plots": False, "save_json": False, "save_txt": False, "verbose": False, "split": "val"}
    # Ultralytics creates save_dir on construction and, with no plots, JSON or txt, never writes to it. A private
    # folder removed at once: nothing is left behind even by a killed worker, and a write would fail, not litter /tmp.
    with tempfile.TemporaryDirectory(prefix="autoprune-val-") as save_dir:
        v = cls(save_dir=Path(save_dir), args=args)
    v.device = device
    return v
