"""autoprune.wrappers: the one place that opens the wrappers a caller may hand over."""

import pytest
from torch import nn

from autoprune.models import LoadedModel
from autoprune.wrappers import detection_model


def test_detection_model_opens_every_accepted_wrapper():
    from ultralytics import YOLO
    from ultralytics.nn.tasks import DetectionModel

    net = DetectionModel("yolov8n.yaml", verbose=False)
    yolo = YOLO("yolov8n.yaml")
    loaded = LoadedModel(model=net, source="x", ckpt={}, fingerprint="f")
    assert detection_model(net) is net
    assert detection_model(yolo) is yolo.model
    assert detection_model(loaded) is net
    assert detection_model(LoadedModel(model=yolo, source="x", ckpt={}, fingerprint="f")) is yolo.model


def test_a_module_with_a_plain_model_attribute_is_not_opened():
    class Holder(nn.Module):
        def __init__(self):
            super().__init__()
            self.model = nn.ModuleList([nn.Conv2d(3, 3, 1)])

    h = Holder()
    assert detection_model(h) is h
    with pytest.raises(TypeError):
        detection_model(object())
