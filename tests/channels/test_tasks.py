"""The task heads (Segment, Pose, OBB, Classify and their YOLO26 forms) under the channel analysis and the pruner.

Each model is built from the installed Ultralytics YAML at its smallest scale with the width multiple halved, so
the whole file runs in seconds: the heads' structure (branches, Proto, the classifier) does not depend on width.
"""

from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
import textwrap

import pytest
import torch
from conftest import (
    assert_user_error,
    make_removed_channels_constant,
    randomize_bn,
    replicate_padding,
    run_cli,
)

from autoprune.channels import analyze
from autoprune.models import save_checkpoint
from autoprune.pruner import apply_indices, prune

TASK_YAMLS = {
    "yolov8n-seg": "segment",
    "yolov8n-pose": "pose",
    "yolov8n-obb": "obb",
    "yolo11n-cls": "classify",
    "yolo11n-seg": "segment",
    "yolo26n-seg": "segment",
    "yolo26n-pose": "pose",
    "yolo26n-obb": "obb",
}
IMGSZ = 64


def _cfg(name: str) -> dict:
    """The YAML's config at its `n` scale with half of that scale's width multiple."""
    from ultralytics.nn.tasks import yaml_model_load

    cfg = yaml_model_load(f"{name}.yaml")
    depth, width, max_ch = cfg["scales"]["n"]
    cfg["scales"] = {"n": [depth, width / 2, max_ch]}
    cfg["scale"] = "n"
    return cfg


def _build(name: str):
    from ultralytics.nn.tasks import ClassificationModel, OBBModel, PoseModel, SegmentationModel

    cls = {"segment": SegmentationModel, "pose": PoseModel, "obb": OBBModel, "classify": ClassificationModel}
    torch.manual_seed(0)
    return cls[TASK_YAMLS[name]](_cfg(name), verbose=False).eval()


def task_outputs(model, x) -> dict[str, torch.Tensor]:
    """The raw outputs that define the task, by name: boxes, scores, mask coefficients, prototypes, keypoints,
    angles (per head, one-to-many and one-to-one), or class logits. Undecoded, so an end-to-end head's top-k order
    cannot hide a difference."""
    return _unpack(model.eval()(x))


def _unpack(out) -> dict[str, torch.Tensor]:
    flat: dict[str, torch.Tensor] = {}

    def walk(p, key):
        if isinstance(p, dict):
            for k in sorted(p):
                if k != "feats":  # the head's inputs, which pruning may narrow
                    walk(p[k], f"{key}.{k}" if key else k)
        elif isinstance(p, (list, tuple)):
            for i, q in enumerate(p):
                walk(q, f"{key}.{i}")
        else:
            flat[key] = p

    if isinstance(out[1], torch.Tensor):  # Classify: (probabilities, logits)
        return {"logits": out[1]}
    walk(out[1], "")
    if isinstance(out[0], tuple):  # Segment: ((detections, prototypes), raw)
        flat["proto"] = out[0][1]
    return flat


@pytest.fixture(scope="module")
def built():
    cache = {}

    def get(name):
        if name not in cache:
            model = _build(name)
            graph = analyze(model, imgsz=IMGSZ)
            cache[name] = (model, graph, prune(model, 0.5, graph=graph))
        return cache[name]

    return get


X = torch.rand(1, 3, IMGSZ, IMGSZ, generator=torch.Generator().manual_seed(1))


@pytest.mark.parametrize("name", sorted(TASK_YAMLS))
def test_removing_gamma_zero_channels_leaves_the_task_outputs_unchanged(name):
    """Half of every group's channels, their BN gammas set to 0, are removed: every task output stays the same
    (replicate padding, so a constant channel is constant at the border too; see tests/test_pruner.py)."""
    model = _build(name)
    randomize_bn(model)
    graph = analyze(model, imgsz=IMGSZ)
    head = f"{len(model.model) - 1}."
    assert any(g.id.startswith(head) for g in graph.groups), f"{name}: nothing in the head prunes"
    gen = torch.Generator().manual_seed(0)
    indices = {g.id: [torch.randperm(g.size, generator=gen)[: g.size // 2].sort().values for _ in g.parts]
               for g in graph.groups}
    make_removed_channels_constant(model, graph, indices)
    pruned = apply_indices(model, graph, indices)
    assert analyze(pruned, imgsz=IMGSZ).conv_gflops() < 0.95 * graph.conv_gflops()
    for m in (model, pruned):
        m.double()
        replicate_padding(m)
    x = X.double()
    with torch.no_grad():
        ref, got = task_outputs(model, x), task_outputs(pruned, x)
    assert ref.keys() == got.keys()
    for key in ref:
        assert got[key].shape == ref[key].shape, (name, key)
        scale = ref[key].abs().max().clamp_min(1e-12)
        assert (got[key] - ref[key]).abs().max() <= 1e-5 * scale, (name, key)


@pytest.mark.parametrize("name", sorted(TASK_YAMLS))
def test_keep_half_shrinks_the_model_and_keeps_every_task_output_shape(name, built):
    model, graph, pruned = built(name)
    after = analyze(pruned, imgsz=IMGSZ).conv_gflops()
    assert after <= 0.6 * graph.conv_gflops(), f"{name}: GFLOPs fell only to {after / graph.conv_gflops():.0%}"
    ref, got = task_outputs(model, X), task_outputs(pruned, X)
    assert ref.keys() == got.keys()
    assert {k: v.shape for k, v in got.items()} == {k: v.shape for k, v in ref.items()}
    head, small = model.model[-1], pruned.model[-1]
    for attr in ("nc", "nm", "kpt_shape", "ne"):
        assert getattr(small, attr, None) == getattr(head, attr, None)
    if TASK_YAMLS[name] == "segment":  # Proto's transposed conv loses inputs and outputs; the prototypes stay
        up, small_up = head.proto.upsample, small.proto.upsample
        assert small_up.in_channels < up.in_channels and small_up.out_channels < up.out_channels, name
        assert small_up.weight.shape == (small_up.in_channels, small_up.out_channels, *up.kernel_size)
        assert small.proto.cv3.conv.out_channels == head.proto.cv3.conv.out_channels


def test_keep_one_leaves_a_segment_model_unchanged_and_its_transposed_conv_prunes(built):
    """Proto's upsampling (an nn.ConvTranspose2d) is a pruned layer: it consumes cv1's group and produces the group
    cv2 reads; keeping everything changes nothing."""
    model, graph, _ = built("yolov8n-seg")
    up = f"model.{len(model.model) - 1}.proto.upsample"
    assert graph.convs[up].transposed and up not in graph.fixed_blocks
    assert [g.consumers for g in graph.groups if up in g.producers] == [(up.replace("upsample", "cv2"),)]
    assert [g.producers for g in graph.groups if up in g.consumers] == [(up.replace("upsample", "cv1"),)]
    same = prune(model, 1.0, graph=graph)
    ref, got = task_outputs(model, X), task_outputs(same, X)
    assert ref.keys() == got.keys()
    assert all((got[k] - ref[k]).abs().max() <= 1e-5 for k in ref)


def test_a_transposed_conv_gets_the_mean_of_a_removed_inputs_pattern():
    """A constant input channel reaches a transposed conv's output as its kernel tiled every stride; the pruner folds
    that pattern's mean into the bias: what removing half of Proto's cv1 channels (gamma 0) changes at the
    upsampling's output averages to zero over every 2x2 stride cell, and is not zero."""
    model = _build("yolov8n-seg")
    randomize_bn(model)
    graph = analyze(model, imgsz=IMGSZ)
    proto = f"model.{len(model.model) - 1}.proto"
    group = next(g for g in graph.groups if f"{proto}.upsample" in g.consumers)
    indices = {group.id: [torch.arange(0, group.size, 2)]}
    make_removed_channels_constant(model, graph, indices)
    with torch.no_grad():  # kernels that vary again (the helper flattened the removed inputs' ones)
        model.model[-1].proto.upsample.weight.normal_(generator=torch.Generator().manual_seed(2))
    pruned = apply_indices(model, graph, indices)
    seen = []
    for m in (model, pruned):
        h = m.model[-1].proto.upsample.register_forward_hook(lambda mod, i, o: seen.append(o))
        with torch.no_grad():
            m.eval()(X)
        h.remove()
    diff = seen[1] - seen[0]
    assert diff.abs().max() > 1e-2
    assert torch.nn.functional.avg_pool2d(diff, 2).abs().max() <= 1e-5


def test_pruned_task_checkpoints_load_and_predict_without_autoprune(built, tmp_path):
    """Each pruned checkpoint loads with `ultralytics.YOLO` in a process that never imports autoprune, keeps its task,
    and gives the in-memory pruned model's outputs within FP16 storage."""
    names = sorted(TASK_YAMLS)
    expected = {}
    for i, name in enumerate(names):
        _, _, pruned = built(name)
        save_checkpoint(pruned, tmp_path / f"m{i}.pt")
        expected[i] = task_outputs(copy.deepcopy(pruned).half().float(), X)
    torch.save(X, tmp_path / "x.pt")
    script = textwrap.dedent(
        f"""
        import sys, json, torch
        from ultralytics import YOLO
        x = torch.load({str(tmp_path / "x.pt")!r})
        outs, tasks = {{}}, {{}}
        for i in range({len(names)}):
            yolo = YOLO({str(tmp_path)!r} + f"/m{{i}}.pt")
            tasks[i] = yolo.task
            outs[i] = yolo.model.float().eval()(x)
            yolo.predict(x, imgsz={IMGSZ}, verbose=False)
        torch.save(outs, {str(tmp_path / "outs.pt")!r})
        print(json.dumps([tasks, sorted(m for m in sys.modules if m.startswith("autoprune"))]))
        """
    )
    env = {**os.environ, "YOLO_OFFLINE": "1"}
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    tasks, imported = json.loads(proc.stdout.strip().splitlines()[-1])
    assert imported == []
    assert [tasks[str(i)] for i in range(len(names))] == [TASK_YAMLS[n] for n in names]
    outs = torch.load(tmp_path / "outs.pt")
    for i, name in enumerate(names):
        got = _unpack(outs[i])
        for key, ref in expected[i].items():
            assert torch.allclose(got[key], ref, rtol=1e-3, atol=1e-3), (name, key)


@pytest.fixture(scope="module")
def seg_yaml(tmp_path_factory):
    """yolov8n-seg at half its n width, as a model YAML file the commands can be given."""
    import yaml

    path = tmp_path_factory.mktemp("seg") / "yolov8n-seg.yaml"  # the name says its scale, or Ultralytics warns
    path.write_text(yaml.safe_dump(_cfg("yolov8n-seg")))
    return path


def test_prune_command_prunes_a_segmentation_model_without_data(capsys, tmp_path, seg_yaml):
    from ultralytics.nn.tasks import load_checkpoint

    out = tmp_path / "seg.pt"
    code, stdout, err = run_cli(capsys, "prune", "--model", seg_yaml, "--keep", "0.5", "--criterion", "l1",
                                "--no-val", "--imgsz", IMGSZ, "--out", out, "--json")
    assert code == 0, err
    assert json.loads(stdout)["gflops_ratio"] < 0.6
    model, _ = load_checkpoint(out)
    assert type(model).__name__ == "SegmentationModel" and model.args["task"] == "segment"


@pytest.mark.parametrize("argv,pattern", [
    (["prune", "--keep", "0.5", "--no-val"], "--criterion hessian takes gradients of the loss on labelled data, "
                                             "and this is a segment model: pass --data with segment labels"),
    (["prune", "--keep", "0.5", "--criterion", "l1", "--val"], "--val scores a segment model on segment labels: "
                                                               "pass --data with them"),
    (["prune", "--keep", "0.5", "--data"], "the model is a segment model, and "),
    (["proxy"], "the model is a segment model, and "),
    (["sparsify", "--epochs", "1"], "the model is a segment model, and "),
    (["search", "--budget-gflops", "0.01"], "the model is a segment model, and "),
])
def test_commands_that_read_labels_refuse_other_tasks_in_one_line(capsys, tmp_path, monkeypatch, seg_yaml, tiny_data,
                                                                  argv, pattern):
    """Without data, or with detection data (the tiny dataset, so no demo data is generated first): proxy and search
    score segment models, and refuse detect labels for one."""
    monkeypatch.chdir(tmp_path)  # run folders would go under ./runs
    data = [] if argv[0] == "prune" and argv[-1] != "--data" else ["--data", tiny_data]
    argv = [a for a in argv if a != "--data"]
    code, _, err = run_cli(capsys, *argv, "--model", seg_yaml, *data)
    line = assert_user_error(code, err, pattern)
    assert "segment" in line
    assert not any(tmp_path.iterdir()), "nothing is written before the error"
