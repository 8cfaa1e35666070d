"""A new user's first hour (issue 22): each defect found by trying every command as a newcomer would, one test each."""

from __future__ import annotations

import json
import os

import psutil
import pytest
import torch
from conftest import run_cli

from autoprune import cost
from autoprune.devices import default_threads

QUICK = cost.TimingProtocol(warmup_runs=1, warmup_s=0.0, min_repeats=3, min_time_s=0.0, max_time_s=0.5,
                            max_repeats=5)  # the thread count is tested here, not the latency


def test_cost_times_with_the_same_threads_with_or_without_json(capsys, monkeypatch, one_thread):
    """Ultralytics sets OMP_NUM_THREADS=1 on import, so torch's own thread count depends on import order (1 here, as
    under `cost --json`, which imported Ultralytics first). Latency is timed with `default_threads()` in both modes."""
    monkeypatch.setattr(cost.timing, "DEFAULT_PROTOCOL", QUICK)
    assert torch.get_num_threads() == 1
    argv = ("cost", "--model", "yolov8n.yaml", "--imgsz", "64", "--device", "cpu")
    code, out, _ = run_cli(capsys, *argv, "--json")
    assert code == 0
    json_threads = json.loads(out)["threads"]
    code, out, _ = run_cli(capsys, *argv)
    assert code == 0
    line = next(ln for ln in out.splitlines() if ln.startswith("device"))
    assert json_threads == default_threads()
    assert f"{default_threads()} thread" in line


def test_default_threads_is_the_users_omp_setting_or_the_physical_cores(monkeypatch):
    import autoprune

    monkeypatch.setattr(autoprune, "ENV_OMP_NUM_THREADS", None)
    cores = min(psutil.cpu_count(logical=False) or os.cpu_count(), len(os.sched_getaffinity(0)))
    assert default_threads() == cores
    monkeypatch.setattr(autoprune, "ENV_OMP_NUM_THREADS", "3")
    assert default_threads() == 3


def test_prune_checks_keep_and_target_before_loading_the_model(capsys, monkeypatch):
    """A bad --keep or --target-gflops is one error line before the model loads (loading takes 7-12 s)."""
    import autoprune.models

    def no_loading(*a, **k):
        raise AssertionError("the model was loaded before the arguments were checked")

    monkeypatch.setattr(autoprune.models, "load_model", no_loading)
    for argv, message in ((["--keep", "0"], "keep ratio must lie in (0, 1]"),
                          (["--keep", "nan"], "keep ratio must lie in (0, 1]"),
                          (["--target-gflops", "-3"], "--target-gflops must be positive"),
                          (["--target-gflops", "half"], "--target-gflops must be a number")):
        code, _, err = run_cli(capsys, "prune", "--model", "yolov8n.yaml", *argv)
        assert code == 2 and err.startswith("error: ") and message in err, (argv, err)


FAST_PRUNE = ("--model", "yolov8n.yaml", "--imgsz", "64", "--strategy", "uniform", "--criterion", "l1", "--no-val")


def test_prune_target_above_the_model_warns_and_says_the_size(capsys, tmp_path):
    code, out, err = run_cli(capsys, "prune", *FAST_PRUNE, "--target-gflops", "100", "--out", str(tmp_path / "p.pt"))
    assert code == 0
    assert err.strip().splitlines() == [next(ln for ln in err.splitlines() if ln.startswith("warning: "))]
    assert "nothing to prune" in err and "unpruned copy" in err
    assert "(100.0%)" in out  # the summary line gives the unpruned size


def test_search_budget_above_the_model_is_one_error_line(capsys, monkeypatch, tmp_path):
    monkeypatch.setenv("AUTOPRUNE_DEMO_SIZE", "6,4")
    monkeypatch.chdir(tmp_path)
    code, _, err = run_cli(capsys, "search", "--budget-gflops", "100", "--imgsz", "64", "--trials", "1")
    assert code == 2 and err.startswith("error: ") and len(err.strip().splitlines()) == 1
    assert "nothing to prune" in err
    assert not list(tmp_path.rglob("*.db"))


def test_prune_says_what_was_reached_and_why(capsys, tmp_path):
    """--keep 0.001 lands on the channel floor; a GFLOPs target lands under it by the rounding: one line says so."""
    code, out, _ = run_cli(capsys, "prune", *FAST_PRUNE, "--keep", "0.001", "--out", str(tmp_path / "a.pt"))
    assert code == 0
    note = next(ln for ln in out.splitlines() if ln.startswith("note: "))
    assert "for --keep 0.001" in note and "floor of --min-channels 8" in note and "--round-to 8" in note
    code, out, _ = run_cli(capsys, "prune", *FAST_PRUNE, "--target-gflops", "50%", "--round-to", "32",
                           "--out", str(tmp_path / "b.pt"), "--json")
    assert code == 0
    r = json.loads(out)
    assert r["after"]["gflops"] < 0.98 * r["target"]["gflops"]
    assert r["note"].startswith("reached ") and "under the target" in r["note"] and "--round-to 32" in r["note"]


def test_pruned_checkpoint_carries_its_own_record_not_the_parents_metrics(capsys, tmp_path):
    """The parent's train_metrics/train_results describe another model; the pruned file records what autoprune did
    under "autoprune" and still loads with plain ultralytics.YOLO."""
    from autoprune.models import load_model, save_checkpoint

    parent = tmp_path / "parent.pt"
    loaded = load_model("yolov8n.yaml")
    base = {"train_metrics": {"metrics/mAP50-95(B)": 0.548}, "train_results": {"epoch": [1]},
            "train_args": {"data": "coco8.yaml", "imgsz": 320, "epochs": 300, "lr0": 0.01}}
    save_checkpoint(loaded.model, parent, base_ckpt=base)
    out = tmp_path / "pruned.pt"
    code, _, _ = run_cli(capsys, "prune", *FAST_PRUNE[2:], "--model", str(parent), "--keep", "0.5",
                         "--out", str(out))
    assert code == 0
    ckpt = torch.load(out, weights_only=False)
    assert "train_metrics" not in ckpt and "train_results" not in ckpt
    assert ckpt["train_args"]["data"] == "coco8.yaml" and ckpt["train_args"]["epochs"] != 300
    meta = ckpt["autoprune"]
    assert meta["source_fingerprint"] == load_model(str(parent)).fingerprint
    assert meta["criterion"] == "l1" and meta["kept_channels"]
    assert meta["gflops"]["after"] < meta["gflops"]["before"]
    from ultralytics import YOLO

    assert YOLO(str(out)).model.yaml is not None


def test_args_yaml_records_resolved_values_not_null(capsys, monkeypatch, tmp_path):
    import yaml

    monkeypatch.chdir(tmp_path)
    code, out, _ = run_cli(capsys, "prune", *FAST_PRUNE, "--keep", "0.5", "--json")
    assert code == 0
    args = yaml.safe_load((tmp_path / "runs/prune/exp1/args.yaml").read_text())
    assert args["model"] == "yolov8n.yaml" and args["out"] == json.loads(out)["out"]


def test_version_seed_help_and_the_space_error(capsys):
    import pytest

    from autoprune import __version__
    from autoprune.cli import build_parser, main

    with pytest.raises(SystemExit) as e:
        main(["--version"])
    assert e.value.code == 0 and capsys.readouterr().out.strip() == f"autoprune {__version__}"
    parser = build_parser()
    for name, sub in parser._subparsers._group_actions[0].choices.items():
        for action in sub._actions:
            if "--seed" in action.option_strings:
                assert action.help, f"{name} --seed has no help text"
    code, _, err = run_cli(capsys, "groups", "--model", "yolov8n.yaml", "--imgsz", "64", "--space", "fne")
    assert code == 2 and "family" in err and "fine" in err


@pytest.mark.slow
def test_prune_defaults_are_the_best_measured_and_report_the_map(capsys, monkeypatch, tmp_path):
    """`prune --keep 0.5` with nothing else: global hessian (uniform l1 left the demo model finding no box), ranked and
    BN-recalibrated on the demo data, which it names; the saved model's mAP on the val split; finetuning advised."""
    monkeypatch.setenv("AUTOPRUNE_DEMO_SIZE", "16,8")
    small = ("--keep", "0.5", "--calib-batches", "2", "--batch", "4")
    code, out, _ = run_cli(capsys, "prune", *small, "--out", str(tmp_path / "a.pt"))
    assert code == 0
    assert "(global, hessian" in out.splitlines()[0]
    data_line = next(ln for ln in out.splitlines() if ln.startswith("data: "))
    assert "(the demo data)" in data_line and "ranking and BatchNorm recalibration" in data_line
    val_line = next(ln for ln in out.splitlines() if ln.startswith("val: mAP50-95 "))
    assert "on 8 val images at 320" in val_line
    assert out.strip().splitlines()[-1].startswith("note: a pruned model needs finetuning before use")
    code, out, _ = run_cli(capsys, "prune", *small, "--out", str(tmp_path / "b.pt"), "--json")
    assert code == 0
    r = json.loads(out)
    assert (r["strategy"], r["criterion"], r["bn_recalibrated"], r["needs_finetune"]) == ("global", "hessian", True,
                                                                                          True)
    assert r["val"]["images"] == 8 and r["map50_95"] == r["val"]["map50_95"] > 0.2  # it finds boxes
    assert f"{r['map50_95']:.4f}" in val_line  # the same model, the same score
    meta = torch.load(tmp_path / "b.pt", weights_only=False)["autoprune"]
    assert meta["bn_recalibrated"] is True and meta["val"]["map50_95"] == r["map50_95"]
    assert meta["calibration_data"] == r["calibration"]["data"]


@pytest.mark.slow
def test_prune_val_needs_the_models_classes(capsys, monkeypatch, tmp_path):
    """The default --val is skipped with a note when the model's classes are not the data's; an explicit --val is one
    error line before any work."""
    monkeypatch.setenv("AUTOPRUNE_DEMO_SIZE", "6,4")
    argv = ("prune", "--model", "yolov8n.yaml", "--imgsz", "64", "--calib-imgsz", "64", "--keep", "0.5",
            "--criterion", "l1", "--calib-batches", "1", "--batch", "2")
    code, _, err = run_cli(capsys, *argv, "--val", "--out", str(tmp_path / "a.pt"))
    assert code == 2 and err.startswith("error: --val needs data with the model's classes") and "--no-val" in err
    assert not (tmp_path / "a.pt").exists()
    code, out, _ = run_cli(capsys, *argv, "--out", str(tmp_path / "b.pt"), "--json")
    r = json.loads(out)
    assert code == 0 and r["val"] is None and r["val_note"].startswith("no mAP: the model predicts 80 classes")
    assert r["bn_recalibrated"] is True  # the data still recalibrates BatchNorm


def test_every_command_defaults_device_to_auto_with_one_help(capsys, monkeypatch):
    """--device: one default (auto) and one help text, with Ultralytics' spellings, in every command that has it."""
    from autoprune.cli import COMMANDS, build_parser
    from autoprune.devices import DEVICE_HELP

    commands = build_parser()._subparsers._group_actions[0].choices
    with_device = {}
    for name in COMMANDS:
        for action in commands[name]._actions:
            if "--device" in action.option_strings:
                with_device[name] = action
    assert {"search", "apply", "prune", "sparsify", "proxy", "demo", "cost"} <= set(with_device)
    for name, action in with_device.items():
        assert action.default == "auto", name
        assert action.help.endswith(DEVICE_HELP) and "mps" in action.help and "0,1" in action.help, name
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)  # demo's help names mps; it is checked
    code, _, err = run_cli(capsys, "demo", "--train", "--device", "mps", "--epochs", "1")
    assert code == 2 and len(err.strip().splitlines()) == 1 and "device 'mps' does not exist: MPS" in err


def test_apply_report_says_the_image_size_of_each_figure():
    """apply finetunes and validates at the search's proxy size (320 here) while the budget is at 640: each row of
    report.md says its size, and the finetune line says where the size came from."""
    from autoprune.report.apply_report import format_report

    side = {"map50": 0.5, "map50_95": 0.3, "params": 1000, "gflops": 4.0, "latency_ms": 10.0, "file_bytes": 2e6,
            "latency_device": "cpu", "latency_threads": 2}
    r = {"study": "s", "trial": 3, "model": "m.pt", "data": "d.yaml", "epochs": 2, "imgsz": 320, "cost_imgsz": 640,
         "imgsz_from": "the search's proxy size", "reconstructed": False, "distill": None,
         "before": side, "pruned": side, "after": side, "trial_record": {},
         "train": {"batch": 16, "seconds": 5.0, "device": "cpu", "amp": False}}
    md = format_report(r)
    rows = {ln.split("|")[1].strip(): ln for ln in md.splitlines() if ln.startswith("| ") and "---" not in ln}
    for name in ("mAP50", "mAP50-95"):
        assert "| 320 px |" in rows[name], rows[name]
    for name in ("GFLOPs", "latency (ms)"):
        assert "| 640 px |" in rows[name], rows[name]
    assert "epochs at 320 px (the search's proxy size)" in md
    assert "- schedule:" not in md  # none recorded, none shown
    r["train"]["schedule"] = {"name": "ultralytics", "optimizer": "AdamW", "lr0": 0.002, "lrf": 0.01, "cos_lr": False,
                              "warmup_epochs": 1.0, "ema": "EMA", "lr_scale": 2.0}
    line = "- schedule: ultralytics (AdamW, lr0 0.002 (2 x the fitted rate, --lr-scale), linear decay"
    assert line in format_report(r)


def test_data_names_an_ultralytics_dataset_as_model_names_a_model(monkeypatch, tmp_path):
    """`--data coco8.yaml` is Ultralytics' own YAML, as `--model yolov8n.yaml` is; its images are looked for where
    Ultralytics would have downloaded them, and their absence is one error line, never a download."""
    import ultralytics.utils

    from autoprune.data import load_data_config
    from autoprune.errors import UserError

    monkeypatch.chdir(tmp_path)
    datasets = tmp_path / "datasets"
    monkeypatch.setattr(ultralytics.utils, "DATASETS_DIR", datasets)
    with pytest.raises(UserError) as e:
        load_data_config("coco8.yaml")
    line = str(e.value)
    assert "\n" not in line and "Ultralytics' dataset YAML" in line and "would have to be downloaded" in line
    assert str(datasets / "coco8") in line and not datasets.exists()
    for split in ("train", "val"):
        (datasets / "coco8" / "images" / split).mkdir(parents=True)
        (datasets / "coco8" / "images" / split / "a.jpg").write_bytes(b"")
    cfg = load_data_config("coco8.yaml")
    assert cfg.yaml.parts[-4:] == ("ultralytics", "cfg", "datasets", "coco8.yaml") and cfg.nc == 80
    assert cfg.train == (str((datasets / "coco8" / "images" / "train").resolve()),)
