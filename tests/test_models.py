"""A pruned checkpoint is a stock Ultralytics checkpoint: plain Ultralytics, without autoprune, loads it, predicts,
validates, trains and exports it to ONNX."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import torch

from autoprune.models import load_model, save_checkpoint
from autoprune.pruner import prune

# Ultralytics' Model.train() rebuilds the network from the checkpoint's YAML, which cannot describe per-group
# channel counts; handing the trainer the loaded model is the documented way to train a pruned checkpoint.
PLAIN_ULTRALYTICS = """
import json, sys
import numpy as np
from ultralytics import YOLO
from ultralytics.models.yolo.detect import DetectionTrainer

class TrainLoadedModel(DetectionTrainer):
    def get_model(self, cfg=None, weights=None, verbose=True):
        return weights  # the pruned model itself, not one rebuilt from its YAML

ckpt, data, out = sys.argv[1], sys.argv[2], sys.argv[3]
result = {}
model = YOLO(ckpt)
params = sum(p.numel() for p in model.model.parameters())
pred = model.predict(np.zeros((64, 64, 3), dtype=np.uint8), imgsz=64, verbose=False)
result["predict"] = len(pred)
metrics = YOLO(ckpt).val(data=data, imgsz=64, batch=4, device="cpu", plots=False, verbose=False, project=out, name="val")
result["val_map50_95"] = float(metrics.box.map)
trained = YOLO(ckpt)
trained.train(trainer=TrainLoadedModel, data=data, epochs=1, imgsz=64, batch=4, device="cpu", workers=0,
              plots=False, amp=False, project=out, name="train", verbose=False, val=False)
result["params"] = [params, sum(p.numel() for p in YOLO(out + "/train/weights/last.pt").model.parameters())]
onnx = YOLO(ckpt).export(format="onnx", imgsz=64, opset=17, simplify=False)
import onnxruntime as ort
sess = ort.InferenceSession(onnx, providers=["CPUExecutionProvider"])
import torch
x = np.random.default_rng(0).random((1, 3, 64, 64), dtype=np.float32)
y = sess.run(None, {sess.get_inputs()[0].name: x})[0]
with torch.no_grad():
    ref = YOLO(ckpt).model.float().eval()(torch.from_numpy(x))[0].numpy()  # the decoded (1, 4 + nc, anchors)
np.save(out + "/onnx.npy", y)
np.save(out + "/torch.npy", ref)
result["onnx_shape"] = list(y.shape)
result["autoprune_modules"] = sorted(m for m in sys.modules if m.startswith("autoprune"))
print(json.dumps(result))
"""


def test_plain_ultralytics_loads_predicts_validates_trains_and_exports(tmp_path, tiny_data):
    loaded = load_model("yolov8n.yaml")
    model = loaded.model
    model.names = {0: "box", 1: "disc"}
    pruned = prune(model, 0.5)
    ckpt = save_checkpoint(pruned, tmp_path / "pruned.pt")
    script = tmp_path / "plain.py"
    script.write_text(textwrap.dedent(PLAIN_ULTRALYTICS))
    proc = subprocess.run(
        [sys.executable, str(script), str(ckpt), str(tiny_data), str(tmp_path / "runs")],
        capture_output=True,
        text=True,
        env={**os.environ, "YOLO_OFFLINE": "1"},
        cwd=tmp_path,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    r = json.loads(proc.stdout.strip().splitlines()[-1])
    assert r["autoprune_modules"] == []
    assert r["predict"] == 1
    assert 0.0 <= r["val_map50_95"] <= 1.0
    n_pruned = sum(p.numel() for p in pruned.parameters())
    assert r["params"] == [n_pruned, n_pruned]  # it trained the pruned network, not a rebuilt one
    assert r["onnx_shape"][0] == 1 and r["onnx_shape"][1] == 4 + 80  # yolov8n.yaml has 80 classes
    # ONNX Runtime computes what torch computes: boxes in pixels, scores in (0, 1); BN fused on export
    y, ref = np.load(tmp_path / "runs" / "onnx.npy"), np.load(tmp_path / "runs" / "torch.npy")
    assert y.shape == ref.shape
    np.testing.assert_allclose(y, ref, rtol=1e-4, atol=1e-4)  # measured: 3e-8 here
    assert n_pruned < 0.5 * sum(p.numel() for p in model.parameters())
    assert torch.load(ckpt, weights_only=False)["model"].yaml == model.yaml
