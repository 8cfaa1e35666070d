"""`autoprune groups` and `autoprune prune` from the command line: outputs, and one-line errors for bad input."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from conftest import assert_user_error, run_cli
import torch

from autoprune.cli import main

OLD_DEFAULTS = ("--strategy", "uniform", "--criterion", "l1", "--no-val")  # no data read: these test the pruning


def test_groups_json_lists_groups_and_summary(capsys):
    code, out, _ = run_cli(capsys, "groups", "--model", "yolov8n.yaml", "--imgsz", "320", "--json")
    assert code == 0
    r = json.loads(out)
    assert r["imgsz"] == 320 and len(r["groups"]) == 51
    assert r["prunable_conv_flops_share"] >= 0.85
    g = next(g for g in r["groups"] if g["id"] == "2.cv1")
    assert g["parts"] == 2 and g["channels"] == 16 and "model.2.m.0.cv2" in g["producers"]
    assert 0 < g["flops_share"] < 1
    assert r["gflops"] == pytest.approx(8.7 / 4, rel=0.05)  # Ultralytics reports 8.7 GFLOPs at 640


def test_groups_human_output_ends_with_summary(capsys):
    code, out, _ = run_cli(capsys, "groups", "--model", "yolo11n.yaml")
    assert code == 0
    summary = out.splitlines()[-1]
    assert "fixed boundaries: none" in summary and "kept whole" not in out  # C2PSA's attention prunes too
    assert "prunable share of conv FLOPs" in out


def test_prune_writes_a_smaller_checkpoint_and_reports_before_after(capsys, tmp_path):
    out_path = tmp_path / "p.pt"
    code, out, _ = run_cli(
        capsys, "prune", "--model", "yolov8n.yaml", "--keep", "0.5", "--imgsz", "320", "--out", str(out_path), "--json",
        *OLD_DEFAULTS,
    )
    assert code == 0
    r = json.loads(out)
    assert r["after"]["gflops"] < 0.6 * r["before"]["gflops"]
    assert r["after"]["params"] < r["before"]["params"]
    ckpt = torch.load(out_path, weights_only=False)
    assert ckpt["autoprune"]["kept_channels"] == r["kept_channels"]
    assert next(ckpt["model"].parameters()).dtype == torch.float16  # saved the way Ultralytics saves


def test_prune_with_a_per_group_keep_file(capsys, tmp_path):
    keep = tmp_path / "keep.yaml"
    keep.write_text("'2.cv1': 0.5\n'9.cv1': 0.25\n")
    code, out, _ = run_cli(
        capsys, "prune", "--model", "yolov8n.yaml", "--keep", str(keep), "--out", str(tmp_path / "p.pt"), "--json",
        "--criterion", "l1", "--no-val",  # a file of per-group ratios is uniform's without --strategy
    )
    assert code == 0
    kept = json.loads(out)["kept_channels"]
    assert kept["2.cv1"] == 8 and kept["9.cv1"] == 32 and kept["0"] == 16


def test_prune_default_output_goes_to_a_run_folder_with_args(capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    code, out, _ = run_cli(capsys, "prune", "--model", "yolov3-tinyu.yaml", "--keep", "0.5", "--json",
                           *OLD_DEFAULTS)
    assert code == 0
    r = json.loads(out)
    assert r["out"] == os.path.join("runs", "prune", "exp1", "pruned.pt")
    assert (tmp_path / "runs/prune/exp1/args.yaml").is_file()


@pytest.fixture
def not_a_checkpoint(tmp_path):
    p = tmp_path / "notes.pt"
    p.write_text("this is not a checkpoint\n")
    return p


@pytest.mark.parametrize(
    "args, message",
    [
        (["--model", "missing/model.pt", "--keep", "0.5"], "model file not found: missing/model.pt"),
        (["--model", "yolov8n-cls.yaml", "--keep", "0.5"], "is a classify model"),
        (["--model", "yolov8n.yaml", "--keep", "0"], "keep ratio must lie in (0, 1]"),
        (["--model", "yolov8n.yaml", "--keep", "1.5"], "keep ratio must lie in (0, 1]"),
        (["--model", "yolov8n.yaml", "--keep", "-1"], "keep ratio must lie in (0, 1]"),
        (["--model", "yolov8n.yaml", "--keep", "half"], "--keep must be a ratio"),
        (["--model", "yolov8n.yaml", "--keep", "0.5", "--criterion", "taylr"], "unknown criterion 'taylr'"),
        (["--model", "nonexistent.yaml", "--keep", "0.5"], "model YAML not found"),
        (["--model", "model.onnx", "--keep", "0.5"], "must be a .pt checkpoint or a model .yaml"),
        (["--model", "yolov8n.yaml", "--keep", "0.5", "--imgsz", "100"], "multiple of 32"),
        (["--model", "yolov8n.yaml", "--keep", "0.5", "--out", "x.onnx"], "--out must end in .pt"),
        (["--model", "yolov8n.yaml", "--keep", "0.5", "--strategy", "glob"], "unknown strategy 'glob'"),
        (["--model", "yolov8n.yaml", "--target-gflops", "0.01"], "below the minimum 0.3228 GFLOPs (3.6% of 8.855)"),
        (["--model", "yolov8n.yaml", "--target-gflops", "1%", "--strategy", "global"], "below the minimum 0.3228"),
        (["--model", "yolov8n.yaml", "--target-gflops", "half"], "--target-gflops must be a number of GFLOPs"),
        (["--model", "yolov8n.yaml", "--target-gflops", "-3"], "--target-gflops must be positive"),
        (["--model", "yolov8n.yaml", "--keep", "0.02", "--strategy", "global"], "below the minimum share"),
        (["--model", "yolov8n.yaml", "--keep", "0.5", "--criterion", "taylor", "--data", "missing/data.yaml"],
         "data YAML not found: missing/data.yaml"),
        (["--model", "yolov8n.yaml", "--keep", "0.5", "--reconstruct", "--data", "missing.yaml"], "data YAML not found"),
        (["--model", "yolov8n.yaml", "--keep", "0.5", "--reconstruct", "--ridge", "-1"], "--ridge must be a number >= 0"),
        (["--model", "yolov8n.yaml", "--keep", "0.5", "--reconstruct", "--calib-batches", "0"], "--calib-batches"),
    ],
)
def test_prune_bad_input_is_one_error_line(capsys, tmp_path, monkeypatch, args, message):
    monkeypatch.chdir(tmp_path)
    code, out, err = run_cli(capsys, "prune", *args)
    assert_user_error(code, err, message)
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").rglob("*.pt"))


def test_prune_global_to_a_share_of_the_gflops(capsys, tmp_path):
    code, out, _ = run_cli(capsys, "prune", "--model", "yolov8n.yaml", "--target-gflops", "50%", "--strategy", "global",
                           "--criterion", "lamp", "--imgsz", "320", "--out", str(tmp_path / "g.pt"), "--json",
                           "--no-val")
    assert code == 0
    r = json.loads(out)
    assert r["strategy"] == "global" and r["threshold"] is not None and r["uniform_ratio"] is None
    # the whole model's GFLOPs (what cost and search count), as close under the target as the 8-channel steps allow
    assert 0.47 <= r["after"]["gflops"] / r["before"]["gflops"] <= 0.5 and r["target"] == {"gflops": 1.1069}
    assert min(r["kept_channels"].values()) >= 8
    meta = torch.load(tmp_path / "g.pt", weights_only=False)["autoprune"]
    assert meta["strategy"] == "global" and meta["kept_channels"] == r["kept_channels"]


def test_prune_uniform_to_an_absolute_gflops_target(capsys, tmp_path):
    code, out, _ = run_cli(capsys, "prune", "--model", "yolov8n.yaml", "--target-gflops", "4.0",
                           "--out", str(tmp_path / "u.pt"), "--json", *OLD_DEFAULTS)
    assert code == 0
    r = json.loads(out)
    assert 3.8 <= r["after"]["gflops"] <= 4.0 and 0 < r["uniform_ratio"] < 1
    assert r["target"] == {"gflops": 4.0}


def test_prune_taylor_with_reconstruction_on_data(capsys, tmp_path, tiny_data):
    """A data criterion and --reconstruct read calibration batches from --data; YOLOv3-tiny at tiny sizes."""
    code, out, _ = run_cli(
        capsys, "prune", "--model", "yolov3-tinyu.yaml", "--keep", "0.5", "--criterion", "taylor", "--reconstruct",
        "--data", str(tiny_data), "--calib-imgsz", "64", "--calib-batches", "2", "--batch", "4", "--imgsz", "64",
        "--max-samples", "512", "--out", str(tmp_path / "t.pt"), "--json", "--strategy", "uniform", "--no-val",
    )
    assert code == 0
    r = json.loads(out)["reconstruction"]
    assert r["convs"] > 5
    assert r["detect_input_mse_after"] < 0.7 * r["detect_input_mse_before"]
    assert r["mean_error_after"] < r["mean_error_before"]
    assert torch.load(tmp_path / "t.pt", weights_only=False)["autoprune"]["reconstructed"] is True


@pytest.mark.slow
def test_prune_yolov3_global_at_half_the_gflops(capsys, tmp_path):
    code, out, _ = run_cli(capsys, "prune", "--model", "yolov3u.yaml", "--target-gflops", "50%", "--strategy", "global",
                           "--imgsz", "64", "--out", str(tmp_path / "v3.pt"), "--json", "--criterion", "l1",
                           "--no-val")
    assert code == 0
    r = json.loads(out)
    assert 0.47 <= r["after"]["gflops"] / r["before"]["gflops"] <= 0.5
    assert r["after"]["params"] < 0.7 * r["before"]["params"]


def test_prune_rejects_a_file_that_is_not_a_checkpoint_and_leaves_it_alone(capsys, not_a_checkpoint):
    before = not_a_checkpoint.read_bytes(), not_a_checkpoint.stat().st_mtime_ns
    code, _, err = run_cli(capsys, "prune", "--model", str(not_a_checkpoint), "--keep", "0.5")
    assert_user_error(code, err, "is not a loadable Ultralytics checkpoint")
    assert (not_a_checkpoint.read_bytes(), not_a_checkpoint.stat().st_mtime_ns) == before


def test_prune_rejects_a_checkpoint_of_a_task_it_does_not_handle(capsys, tmp_path):
    from ultralytics.nn.tasks import DepthModel

    from autoprune.models import save_checkpoint

    path = tmp_path / "depth.pt"
    save_checkpoint(DepthModel("yolo26n-depth.yaml", verbose=False), path)
    code, _, err = run_cli(capsys, "prune", "--model", str(path), "--keep", "0.5")
    assert_user_error(code, err, "is a DepthModel, not a model of a task autoprune handles")


def test_prune_refuses_to_overwrite_unless_forced(capsys, tmp_path):
    out_path = tmp_path / "exists.pt"
    out_path.write_bytes(b"user data")
    code, _, err = run_cli(capsys, "prune", "--model", "yolov8n.yaml", "--keep", "0.5", "--out", str(out_path))
    assert_user_error(code, err, "already exists; pass --force")
    assert out_path.read_bytes() == b"user data"
    code, _, _ = run_cli(capsys, "prune", "--model", "yolov8n.yaml", "--keep", "0.5", "--out", str(out_path), "--force",
                         *OLD_DEFAULTS)
    assert code == 0 and out_path.read_bytes() != b"user data"


def test_prune_never_modifies_the_input_checkpoint(capsys, tmp_path):
    src = tmp_path / "src.pt"
    code, _, _ = run_cli(capsys, "prune", "--model", "yolov8n.yaml", "--keep", "0.75", "--out", str(src), *OLD_DEFAULTS)
    assert code == 0
    before = src.read_bytes()
    code, _, _ = run_cli(capsys, "prune", "--model", str(src), "--keep", "0.5", "--out", str(tmp_path / "b.pt"),
                         *OLD_DEFAULTS)
    assert code == 0 and src.read_bytes() == before
    code, _, err = run_cli(capsys, "prune", "--model", str(src), "--keep", "0.5", "--out", str(src), "--force")
    assert_user_error(code, err, "must not be the input model")
    assert src.read_bytes() == before


def test_console_script_error_has_no_traceback(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "autoprune", "prune", "--model", str(tmp_path / "nope.pt"), "--keep", "0.5"],
        capture_output=True,
        text=True,
        env={**os.environ, "YOLO_OFFLINE": "1"},
        timeout=120,
    )
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [f"error: model file not found: {tmp_path / 'nope.pt'} (autoprune never downloads weights)"]
    assert "Traceback" not in proc.stderr


def test_unknown_flag_is_one_error_line(capsys):
    with pytest.raises(SystemExit) as e:
        main(["prune", "--keep", "0.5", "--bogus"])
    err = capsys.readouterr().err
    assert e.value.code == 2
    assert err.strip().startswith("error: ") and len(err.strip().splitlines()) == 1


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--keep", "0.5", "--target-gflops", "50%"], "not allowed with argument --keep"),
        ([], "one of the arguments --keep --target-gflops --target-latency-ms is required"),
    ],
)
def test_exactly_one_target_is_one_error_line(capsys, argv, message):
    with pytest.raises(SystemExit) as e:
        main(["prune", "--model", "yolov8n.yaml", *argv])
    err = capsys.readouterr().err
    assert e.value.code == 2
    assert len(err.strip().splitlines()) == 1 and err.startswith("error: ") and message in err


def test_groups_shows_the_genes_of_the_default_space(capsys):
    """`--space` alone shows search's default space (fine: one gene per group); `--space family` the family's."""
    code, out, _ = run_cli(capsys, "groups", "--model", "yolov8n.yaml", "--space", "--json")
    assert code == 0
    space = json.loads(out)["space"]
    groups = [g["id"] for g in json.loads(out)["groups"]]
    assert space["name"] == "fine"
    assert sorted([gid for g in space["genes"] for gid in g["groups"]] + space["never"]) == sorted(groups)
    assert all(len(g["groups"]) == 1 for g in space["genes"])  # one gene per channel group
    code, out, _ = run_cli(capsys, "groups", "--model", "yolov8n.yaml", "--space", "family", "--json")
    assert code == 0
    space = json.loads(out)["space"]
    assert space["name"] == "yolov8"
    covered = [gid for g in space["genes"] for gid in g["groups"]]
    assert sorted(covered + space["never"]) == sorted(groups)  # every group in exactly one gene or never pruned


@pytest.mark.parametrize("yaml_name, pattern", [
    ("rtdetr-l.yaml", "rtdetr-l.yaml is a model whose task Ultralytics cannot tell (head RTDETRDecoder); autoprune "
                      "handles detect, segment, pose, obb, classify models"),
    ("yolo26n-sem.yaml", "yolo26n-sem.yaml is a semantic model; autoprune handles detect"),
])
def test_a_model_yaml_of_a_task_it_does_not_handle_is_named(capsys, yaml_name, pattern):
    assert_user_error(*run_cli(capsys, "groups", "--model", yaml_name)[::2], pattern)
