"""`autoprune apply --trial N`: rebuild a trial exactly, finetune the pruned object, stock outputs, one-line errors."""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import optuna
import pytest
import torch

from autoprune.cli import main
from autoprune.errors import UserError
from autoprune.search import records as R
from conftest import run_cli

optuna.logging.set_verbosity(optuna.logging.WARNING)
STUDY = "tinystudy"
IMGSZ = 64


def _sha(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def _tiny_model(seed: int):
    from ultralytics.nn.tasks import DetectionModel

    torch.manual_seed(seed)
    m = DetectionModel("yolov8n.yaml", nc=2, verbose=False)
    m.names = {0: "box", 1: "disc"}
    return m


def _create_study(root: Path, attrs: dict) -> optuna.Study:
    """An empty study named STUDY in `root`'s runs/search, as `autoprune search` makes it, with the study `attrs`."""
    from autoprune.search.storage import make_storage, run_dir_for, storage_url

    cwd = os.getcwd()
    os.chdir(root)
    try:
        run_dir_for(STUDY).mkdir(parents=True)
        study = optuna.create_study(study_name=STUDY, storage=make_storage(storage_url(None, STUDY), heartbeat=None),
                                    directions=list(R.DIRECTIONS))
    finally:
        os.chdir(cwd)
    for k, v in attrs.items():
        study.set_user_attr(k, v)
    return study


@pytest.fixture(scope="module")
def env(tmp_path_factory, tiny_data):
    """A folder with a model checkpoint and a study made with the trial schema: trial 0 feasible, 1 failed,
    2 infeasible, 3 pruned (over budget, not scored)."""
    from autoprune.channels import analyze
    from autoprune.cost import count_gflops, count_params
    from autoprune.models import load_model, save_checkpoint
    from autoprune.pruner import keep_counts, prune_to_counts, rank_channels

    root = tmp_path_factory.mktemp("apply")
    model_path = save_checkpoint(_tiny_model(0), root / "model.pt")
    other_path = save_checkpoint(_tiny_model(1), root / "other.pt")
    loaded = load_model(str(model_path))
    graph = analyze(loaded.model, imgsz=IMGSZ)
    counts = keep_counts(graph, 0.5)
    counts["2.cv1"] = 16  # not uniform: per-group counts must come back exactly
    # The study's stored channel order: l1, except one group reversed, so only the stored order rebuilds this model.
    ranking = rank_channels(loaded.model, graph, "l1")
    ranking["4.cv1"] = [o.flip(0) for o in ranking["4.cv1"]]
    pruned = prune_to_counts(loaded.model, counts, graph=graph, ranking=ranking)
    gflops = count_gflops(pruned, IMGSZ)

    study = _create_study(root, {
        R.STUDY_MODEL: str(model_path), R.STUDY_MODEL_FINGERPRINT: loaded.fingerprint, R.STUDY_DATA: str(tiny_data),
        R.STUDY_IMGSZ: IMGSZ, R.STUDY_PROXY: {"imgsz": IMGSZ}, R.STUDY_CRITERION: "l1",
        R.STUDY_RANKING: {g: [o.tolist() for o in orders] for g, orders in ranking.items()}})
    common = {R.MODEL_FINGERPRINT: loaded.fingerprint, R.IMGSZ: IMGSZ, R.CRITERION: "l1"}
    T = optuna.trial.TrialState
    study.add_trial(optuna.trial.create_trial(
        state=T.COMPLETE, values=[0.1, gflops, 1.0],
        user_attrs={**common, R.KEPT_CHANNELS: counts, R.GFLOPS: gflops, R.PARAMS: count_params(pruned),
                    R.FEASIBLE: True, R.MAP50_95: 0.1, R.MAP50: 0.2, R.LATENCY_MS: 1.0}))
    study.add_trial(optuna.trial.create_trial(state=T.FAIL, user_attrs={**common, R.REASON: "RuntimeError: boom"}))
    study.add_trial(optuna.trial.create_trial(
        state=T.COMPLETE, values=[0.1, gflops, 9.0],
        user_attrs={**common, R.KEPT_CHANNELS: counts, R.GFLOPS: gflops, R.FEASIBLE: False,
                    R.CONSTRAINTS: [0.0, 4.0], R.MAP50_95: 0.1, R.LATENCY_MS: 9.0}))
    study.add_trial(optuna.trial.create_trial(state=T.PRUNED, user_attrs={R.REASON: "over the GFLOPs budget"}))
    return {"root": root, "model": model_path, "other": other_path, "counts": counts, "gflops": gflops,
            "params": count_params(pruned), "data": tiny_data, "model_sha": _sha(model_path), "pruned": pruned,
            "ranking": ranking}


def _cli(root: Path, *argv) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    cwd = os.getcwd()
    os.chdir(root)
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            code = main(list(argv))
    finally:
        os.chdir(cwd)
    return code, out.getvalue(), err.getvalue()


QUICK = dict(warmup_runs=1, warmup_s=0.0, min_repeats=3, min_time_s=0.0, max_time_s=0.3, rel_tol=0.5, window_tol=0.5)


@pytest.fixture(scope="module")
def applied(env):
    from autoprune import cost

    attempts = []

    def no_network(*args, **kwargs):
        attempts.append(args[:2])
        raise OSError("no network in tests")

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(cost.timing, "DEFAULT_PROTOCOL", cost.TimingProtocol(**QUICK))  # latency is not what is tested here
        mp.setattr(socket, "getaddrinfo", no_network)
        mp.setattr(socket.socket, "connect", no_network)
        # No --study: the latest (here the only) search in runs/search, as `autoprune apply --trial 17` after a search.
        code, out, err = _cli(env["root"], "apply", "--trial", "0", "--epochs", "1", "--batch", "4",
                              "--device", "cpu", "--export", "onnx", "--name", "done", "--json")
    assert code == 0, err[-3000:]
    return {**json.loads(out), "network_attempts": attempts}


def test_apply_without_name_applies_the_latest_search(applied):
    assert applied["study"] == STUDY  # the only study there (and --json kept stdout pure JSON)


def test_apply_without_name_and_no_search_is_one_line(tmp_path):
    code, out, err = _cli(tmp_path, "apply", "--trial", "0")
    assert code == 2 and err.strip() == "error: --study is required: the study to read (no studies in runs/search)"
    assert not (tmp_path / "runs").exists()


def test_apply_never_tries_the_network(applied):
    assert applied["network_attempts"] == []  # no font, AMP-check weights or dataset downloads


def test_apply_rebuilds_the_trials_channels_and_gflops_exactly(env, applied):
    from autoprune.cost import count_gflops

    ckpt = torch.load(env["root"] / applied["outputs"]["pruned"], weights_only=False)
    assert ckpt["autoprune"]["kept_channels"] == env["counts"]
    assert ckpt["autoprune"]["trial"] == 0 and ckpt["autoprune"]["study"] == STUDY
    model = ckpt["model"].float()
    assert count_gflops(model, IMGSZ) == env["gflops"]
    shapes = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    assert shapes == {k: tuple(v.shape) for k, v in env["pruned"].state_dict().items()}  # every layer's width
    assert applied["after"]["gflops"] == round(env["gflops"], 6) == applied["pruned"]["gflops"]
    assert applied["after"]["params"] == env["params"] < applied["before"]["params"]


def test_apply_report_has_before_and_after(env, applied):
    run_dir = env["root"] / "runs" / "apply" / "done"
    report = json.loads((run_dir / "report.json").read_text())
    for side in ("before", "pruned", "after"):
        for key in ("map50", "map50_95", "params", "gflops", "latency_ms", "file_bytes"):
            assert isinstance(report[side][key], (int, float)), (side, key)
    assert report["after"]["file_bytes"] < 0.5 * report["before"]["file_bytes"]
    assert report["after"]["file_bytes"] == (run_dir / "pruned.pt").stat().st_size
    assert report["imgsz"] == IMGSZ and report["cost_imgsz"] == IMGSZ and report["epochs"] == 1
    assert report["train"]["loss_names"] == ["box_loss", "cls_loss", "dfl_loss", "kd_loss"]  # distilled
    assert report["train"]["amp"] is False  # CPU
    md = (run_dir / "report.md").read_text()
    assert "| mAP50-95 |" in md and "| file size |" in md and "unpruned" in md
    # the two latencies come from one interleaved timing, and the report says so
    assert report["before"]["latency_rounds"] == report["pruned"]["latency_rounds"] == 3
    assert "timed in turn over 3 rounds" in md
    assert (run_dir / "args.yaml").is_file() and (run_dir / "pruned.onnx").is_file()
    from autoprune.finetune import pickled_modules

    for f in ("pruned.pt", "train/weights/best.pt", "train/weights/last.pt"):  # trained with an autoprune criterion
        modules = pickled_modules(run_dir / f)
        assert "ultralytics.nn.tasks" in modules and not any(m.split(".")[0] == "autoprune" for m in modules), f
    assert _sha(env["model"]) == env["model_sha"]  # the original model is never modified


PLAIN = """
import json, sys
import numpy as np
import torch
from ultralytics import YOLO
path, data, onnx, out = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4]
model = YOLO(path)
r = {"params": sum(p.numel() for p in model.model.parameters()), "type": type(model.model).__name__}
# what `autoprune apply` validates with: the val split at the trial's size and apply's batch, default conf and IoU
m = YOLO(path).val(data=data, imgsz=64, batch=4, device="cpu", plots=False, verbose=False, project=out, workers=0,
                   split="val")
r["map50_95"], r["map50"] = float(m.box.map), float(m.box.map50)
import onnxruntime as ort
s = ort.InferenceSession(onnx, providers=["CPUExecutionProvider"])
x = np.random.default_rng(0).random((1, 3, 64, 64), dtype=np.float32)
y = s.run(None, {s.get_inputs()[0].name: x})[0]
with torch.no_grad():
    ref = YOLO(path).model.float().eval()(torch.from_numpy(x))[0].numpy()  # the decoded (1, 4 + nc, anchors)
np.save(out + "/onnx.npy", y)
np.save(out + "/torch.npy", ref)
r["autoprune"] = sorted(k for k in sys.modules if k.split(".")[0] == "autoprune")
print(json.dumps(r))
"""


def test_pruned_checkpoint_loads_validates_and_runs_without_autoprune(env, applied, tmp_path):
    script = tmp_path / "plain.py"
    script.write_text(textwrap.dedent(PLAIN))
    proc = subprocess.run(
        [sys.executable, str(script), str(env["root"] / applied["outputs"]["pruned"]), str(env["data"]),
         str(env["root"] / applied["outputs"]["onnx"]), str(tmp_path / "val")],
        capture_output=True, text=True, env={**os.environ, "YOLO_OFFLINE": "1"}, cwd=tmp_path, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    r = json.loads(proc.stdout.strip().splitlines()[-1])
    assert r["autoprune"] == []  # unpickling pulled in no autoprune module
    assert r["type"] == "DetectionModel" and r["params"] == env["params"]
    # apply's report says what plain Ultralytics measures on the saved file (the report rounds to 5 decimals)
    assert (round(r["map50_95"], 5), round(r["map50"], 5)) == (applied["after"]["map50_95"], applied["after"]["map50"])
    # ONNX Runtime computes what torch computes on the saved checkpoint: boxes in pixels, scores in (0, 1)
    y, ref = np.load(tmp_path / "val" / "onnx.npy"), np.load(tmp_path / "val" / "torch.npy")
    assert y.shape == ref.shape == (1, 4 + 2, 8 * 8 + 4 * 4 + 2 * 2)
    np.testing.assert_allclose(y, ref, rtol=1e-4, atol=1e-4)


@pytest.mark.slow
def test_apply_no_distill_finetunes_without_the_teacher(env, monkeypatch, capsys):
    """`apply --no-distill`: the report and args.yaml say distillation was off, training had no distillation loss,
    and pruned.pt is still the trial's pruned model (its kept channels and GFLOPs)."""
    import yaml

    import autoprune
    from autoprune import cost
    from autoprune.cost import count_gflops

    monkeypatch.setattr(cost.timing, "DEFAULT_PROTOCOL", cost.TimingProtocol(**QUICK))
    monkeypatch.setattr(autoprune, "ENV_OMP_NUM_THREADS", "1")
    monkeypatch.chdir(env["root"])
    code, out, err = run_cli(capsys, "apply", "--study", STUDY, "--trial", "0", "--epochs", "1", "--batch", "4",
                             "--device", "cpu", "--no-distill", "--name", "nodistill", "--json")
    assert code == 0, err[-3000:]
    run_dir = env["root"] / "runs" / "apply" / "nodistill"
    report = json.loads((run_dir / "report.json").read_text())
    assert report["distill"] is None and json.loads(out)["distill"] is None
    assert report["train"]["loss_names"] == ["box_loss", "cls_loss", "dfl_loss"]  # no kd_loss: no teacher
    assert yaml.safe_load((run_dir / "args.yaml").read_text())["distill"] is False
    assert "without distillation" in (run_dir / "report.md").read_text()
    ckpt = torch.load(run_dir / "pruned.pt", weights_only=False)
    assert ckpt["autoprune"]["kept_channels"] == env["counts"]
    assert count_gflops(ckpt["model"].float(), IMGSZ) == env["gflops"]
    assert report["after"]["gflops"] == round(env["gflops"], 6)
    assert _sha(env["model"]) == env["model_sha"]


DEMO_VAL_IMGSZ = 160  # apply's finetune and validation size; the trial's GFLOPs are at the demo's 320


@pytest.fixture(scope="module")
def demo_applied(tmp_path_factory):
    """`autoprune apply` (1 epoch at 160 px) of a uniform keep-0.875 trial of the shipped demo baseline, on the first
    4 train and 8 val images of the demo dataset (the baseline's own val images: it detects them, mAP50-95 ~0.3)."""
    import autoprune
    from autoprune import cost
    from autoprune.channels import analyze
    from autoprune.cost import count_gflops
    from autoprune.demo import DEMO_DATA, demo_model_path
    from autoprune.demo.dataset import generate
    from autoprune.models import load_model
    from autoprune.pruner import keep_counts, prune_to_counts

    root = tmp_path_factory.mktemp("apply_demo")
    data = generate(root / "demo", n_train=4, n_val=8, seed=DEMO_DATA.seed, imgsz=DEMO_DATA.imgsz)
    loaded = load_model(str(demo_model_path()))
    graph = analyze(loaded.model, imgsz=DEMO_DATA.imgsz)
    counts = keep_counts(graph, 0.875)
    gflops = count_gflops(prune_to_counts(loaded.model, counts, graph=graph), DEMO_DATA.imgsz)
    study = _create_study(root, {
        R.STUDY_MODEL: str(demo_model_path()), R.STUDY_MODEL_FINGERPRINT: loaded.fingerprint, R.STUDY_DATA: str(data),
        R.STUDY_IMGSZ: DEMO_DATA.imgsz, R.STUDY_PROXY: {"imgsz": DEMO_VAL_IMGSZ}, R.STUDY_CRITERION: "l1"})
    study.add_trial(optuna.trial.create_trial(
        state=optuna.trial.TrialState.COMPLETE, values=[0.2, gflops, 1.0],
        user_attrs={R.MODEL_FINGERPRINT: loaded.fingerprint, R.IMGSZ: DEMO_DATA.imgsz, R.CRITERION: "l1",
                    R.KEPT_CHANNELS: counts, R.GFLOPS: gflops, R.FEASIBLE: True, R.MAP50_95: 0.2, R.MAP50: 0.3,
                    R.LATENCY_MS: 1.0}))
    with pytest.MonkeyPatch.context() as mp:  # latency is not what is tested here: few runs, one thread
        mp.setattr(cost.timing, "DEFAULT_PROTOCOL", cost.TimingProtocol(**QUICK))
        mp.setattr(autoprune, "ENV_OMP_NUM_THREADS", "1")
        code, out, err = _cli(root, "apply", "--trial", "0", "--epochs", "1", "--batch", "4", "--device", "cpu",
                              "--workers", "0", "--name", "demo", "--json")
    assert code == 0, err[-3000:]
    return {**json.loads(out), "root": root, "data": data}


@pytest.mark.slow
def test_apply_reports_the_map_plain_ultralytics_val_measures(demo_applied, tmp_path):
    """The report's mAP after finetuning is what plain Ultralytics `val` measures on the saved pruned.pt, with
    `finetune.validate_checkpoint`'s settings (val split, apply's image size and batch, default conf and IoU), on a
    model that detects something, so a wrong file or image size changes the number."""
    from ultralytics import YOLO

    r = demo_applied
    assert r["imgsz"] == DEMO_VAL_IMGSZ and r["cost_imgsz"] == 320
    m = YOLO(str(r["root"] / r["outputs"]["pruned"])).val(
        data=str(r["data"]), imgsz=DEMO_VAL_IMGSZ, batch=4, device="cpu", plots=False, workers=0, verbose=False,
        project=str(tmp_path), name="val", save_json=False, split="val")
    plain = {"map50_95": round(float(m.box.map), 5), "map50": round(float(m.box.map50), 5)}
    assert {k: r["after"][k] for k in plain} == plain
    assert plain["map50_95"] > 0.1 and r["before"]["map50_95"] > 0.2  # it detects: the comparison means something
    assert r["after"]["map50_95"] != r["pruned"]["map50_95"]  # finetuning changed the model that was validated


def test_rebuild_raises_on_a_gflops_mismatch(env):
    from autoprune.apply import rebuild
    from autoprune.models import load_model

    loaded = load_model(str(env["model"]))
    attrs = {R.KEPT_CHANNELS: env["counts"], R.GFLOPS: env["gflops"], R.CRITERION: "l1"}
    rec = R.TrialRecord(number=0, state="COMPLETE", map50_95=None, map50=None, gflops=env["gflops"],
                        latency_ms=None, params=None, feasible=True, kind="search", reason=None, attrs=attrs)
    stored = {g: [o.tolist() for o in orders] for g, orders in env["ranking"].items()}
    pruned, counts, gflops = rebuild(loaded, rec, imgsz=IMGSZ, ranking=stored)
    assert gflops == env["gflops"] and counts == env["counts"]
    expected = env["pruned"].state_dict()
    assert all(torch.equal(v, expected[k]) for k, v in pruned.state_dict().items())  # the very channels kept
    recomputed, _, _ = rebuild(loaded, rec, imgsz=IMGSZ)  # no stored order: l1 recomputed, another channel choice
    assert not all(torch.equal(v, expected[k]) for k, v in recomputed.state_dict().items())
    broken = {**stored, "4.cv1": [list(range(3))]}
    with pytest.raises(UserError, match="ranking does not fit group '4.cv1'"):
        rebuild(loaded, rec, imgsz=IMGSZ, ranking=broken)
    bad = R.TrialRecord(**{**rec.__dict__, "attrs": {**attrs, R.GFLOPS: env["gflops"] * 1.01}})
    with pytest.raises(RuntimeError, match="GFLOPs"):  # an invariant, not a user error
        rebuild(loaded, bad, imgsz=IMGSZ)
    data_ranked = R.TrialRecord(**{**rec.__dict__, "attrs": {**attrs, R.CRITERION: "taylor"}})
    with pytest.raises(UserError, match="stores no channel ranking"):  # its channels could not be replayed
        rebuild(loaded, data_ranked, imgsz=IMGSZ)
    assert rebuild(loaded, data_ranked, imgsz=IMGSZ, ranking=stored)[2] == env["gflops"]  # a stored order is enough


def _assert_refused(env, out_name: str, *argv, pattern: str):
    code, out, err = _cli(env["root"], "apply", *argv, "--epochs", "1", "--device", "cpu", "--name", out_name)
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2, err[-2000:]
    assert len(lines) == 1 and lines[0].startswith("error: "), err[-2000:]
    assert pattern in lines[0], lines[0]
    assert not (env["root"] / "runs" / "apply" / out_name).exists()
    assert _sha(env["model"]) == env["model_sha"]
    return lines[0]


def test_unknown_trial_lists_the_trials_that_exist(env):
    line = _assert_refused(env, "x1", "--study", STUDY, "--trial", "99", pattern="no trial 99")
    assert "trials 0-3" in line and "feasible trials: 0" in line


@pytest.mark.parametrize(("trial", "pattern"), [("1", "failed (RuntimeError: boom)"), ("2", "infeasible"),
                                                ("3", "was not scored")])
def test_failed_infeasible_or_unscored_trials_are_refused(env, trial, pattern):
    _assert_refused(env, "x2", "--study", STUDY, "--trial", trial, pattern=pattern)


def test_unknown_study_is_refused(env):
    _assert_refused(env, "x3", "--study", "nosuchstudy", "--trial", "0", pattern="no study named 'nosuchstudy'")


def test_a_model_with_another_fingerprint_is_refused(env):
    _assert_refused(env, "x4", "--study", STUDY, "--trial", "0", "--model", str(env["other"]), pattern="fingerprint")


def test_an_existing_output_folder_is_refused(env):
    existing = env["root"] / "runs" / "apply" / "taken"
    existing.mkdir(parents=True, exist_ok=True)
    code, _, err = _cli(env["root"], "apply", "--study", STUDY, "--trial", "0", "--name", "taken", "--device", "cpu")
    assert code == 2 and err.strip().startswith("error: ") and "already exists" in err and len(err.splitlines()) == 1
    assert list(existing.iterdir()) == []  # nothing written into it


def test_bad_numbers_are_refused_before_anything(env):
    _assert_refused(env, "x5", "--study", STUDY, "--trial", "0", "--kd-temperature", "0", pattern="--kd-temperature")
    _assert_refused(env, "x6", "--study", STUDY, "--trial", "0", "--imgsz", "50", pattern="--imgsz")


def test_apply_draws_the_map_after_every_epoch_beside_the_report(env, applied):
    import yaml

    run_dir = env["root"] / "runs" / "apply" / "done"
    report = json.loads((run_dir / "report.json").read_text())
    assert [p["epoch"] for p in report["curve"]] == [1]  # one point per finetune epoch
    assert report["curve"][-1]["map50_95"] >= 0
    png = run_dir / "finetune_curve.png"
    assert env["root"] / report["outputs"]["curve_png"] == png and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "![finetune curve](finetune_curve.png)" in (run_dir / "report.md").read_text()
    steps = yaml.safe_load((run_dir / "args.yaml").read_text())["finetune_steps"]
    assert len(steps) == 1 and steps[0]["schedule"]["name"] == report["train"]["schedule"]["name"]
    from autoprune.apply import DEFAULT_WARMUP_BIAS_LR

    # the default bias warm-up, as recorded and as the trainer held it after optimizer=auto
    assert steps[0]["schedule"]["warmup_bias_lr"] == report["train"]["schedule"]["warmup_bias_lr"] == 0.1
    assert DEFAULT_WARMUP_BIAS_LR == 0.1


def test_plot_curve_has_one_point_per_epoch(tmp_path):
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    from autoprune.report.apply_report import plot_curve

    curve = [{"epoch": i, "step": 1 + (i > 2), "map50": 0.5, "map50_95": 0.1 * i} for i in range(1, 6)]
    drawn = {}
    real = plt.Axes.plot

    def spy(ax, xs, ys, *a, **k):
        drawn["xs"], drawn["ys"] = list(xs), list(ys)
        return real(ax, xs, ys, *a, **k)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(plt.Axes, "plot", spy)
        path = plot_curve(curve, tmp_path / "c.png", teacher=0.6, untrained=0.05)
    assert drawn["xs"] == [0, 1, 2, 3, 4, 5] and drawn["ys"][0] == 0.05 and drawn["ys"][-1] == pytest.approx(0.5)
    assert Path(path).stat().st_size > 1000
    assert plot_curve([], tmp_path / "none.png", teacher=0.6) is None and not (tmp_path / "none.png").exists()


@pytest.mark.parametrize(("argv", "pattern"), [
    (("--steps", "0"), "--steps must be an integer from 1 to"),
    (("--steps", "100000"), "--steps must be an integer from 1 to"),
    (("--steps", "2"), "needs at least as many --epochs"),  # --epochs 1
    (("--device", "3"), "does not exist"),
    (("--kd-features", "1", "--kd-levels", "40"), "no feature level 40"),
    (("--kd-features", "1", "--kd-levels", "11"), "layer 11 (Concat) is not the output of one conv"),
    (("--kd-levels", "15"), "--kd-features W"),
    (("--lr0", "0"), "--lr0 must be a number > 0"),
    (("--lr-scale", "0"), "--lr-scale must be a number > 0"),
    (("--lr-scale", "nan"), "--lr-scale must be a number > 0"),
    (("--lr-scale", "2", "--lr0", "0.001"), "--lr-scale multiplies the learning rate Ultralytics fits and --lr0"),
    (("--warmup-epochs", "3"), "--warmup-epochs must be a number from 0 to --epochs (1)"),
    (("--warmup-bias-lr", "-0.1"), "--warmup-bias-lr must be a number >= 0"),
    (("--warmup-bias-lr", "inf"), "--warmup-bias-lr must be a number >= 0"),
    (("--schedule", "ultralytics", "--lrf", "0.1"), "--lrf set the short schedule"),
])
def test_bad_finetune_settings_are_one_line_and_write_nothing(env, argv, pattern):
    runs = env["root"] / "runs" / "apply"
    before = sorted(runs.iterdir()) if runs.exists() else []
    code, _, err = _cli(env["root"], "apply", "--trial", "0", "--epochs", "1", *argv,
                        *(() if "--device" in argv else ("--device", "cpu")))
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2 and len(lines) == 1 and lines[0].startswith("error: "), err[-2000:]
    assert pattern in lines[0], lines[0]
    assert (sorted(runs.iterdir()) if runs.exists() else []) == before  # nothing written
    assert _sha(env["model"]) == env["model_sha"]


@pytest.mark.slow
def test_apply_steps_prunes_step_by_step_to_the_trials_model(env, monkeypatch, capsys):
    """--steps 2: two finetunes, the first of a larger model, the second of the trial's channels exactly; the kept
    counts shrink to the trial's; the curve runs through both; the short schedule and the feature term are used."""
    import yaml

    import autoprune
    from autoprune import cost
    from autoprune.cost import count_gflops

    monkeypatch.setattr(cost.timing, "DEFAULT_PROTOCOL", cost.TimingProtocol(**QUICK))
    monkeypatch.setattr(autoprune, "ENV_OMP_NUM_THREADS", "1")
    monkeypatch.chdir(env["root"])
    code, out, err = run_cli(capsys, "apply", "--trial", "0", "--epochs", "2", "--batch", "4", "--device", "cpu",
                             "--steps", "2", "--schedule", "short", "--kd-features", "1", "--json")
    assert code == 0, err[-3000:]
    run_dir = env["root"] / json.loads(out)["run_dir"]
    report = json.loads((run_dir / "report.json").read_text())
    steps = report["train"]["steps"]
    assert [s["epochs"] for s in steps] == [1, 1]
    assert steps[-1]["kept_channels"] == env["counts"]
    first = steps[0]["kept_channels"]
    assert all(env["counts"][g] <= first[g] for g in first) and any(env["counts"][g] < first[g] for g in first)
    assert [(p["epoch"], p["step"]) for p in report["curve"]] == [(1, 1), (2, 2)]
    assert steps[-1]["loss_names"][-1] == "kd_feat" and steps[-1]["schedule_used"]["name"] == "short"
    ckpt = torch.load(run_dir / "pruned.pt", weights_only=False)
    assert count_gflops(ckpt["model"].float(), IMGSZ) == env["gflops"]  # the trial's architecture
    assert yaml.safe_load((run_dir / "args.yaml").read_text())["steps"] == 2
    assert _sha(env["model"]) == env["model_sha"]


def _one_step_plan(schedule: str):
    """`finetune_plan` of a tiny model and an empty trial in one step of 4 epochs on 2 classes, as a function of the
    schedule's settings (`--lr-scale`, `--warmup-bias-lr`, ...) for `schedule`."""
    from autoprune.apply import finetune_plan

    teacher = _tiny_model(0)
    record = R.TrialRecord(number=3, state="COMPLETE", map50_95=None, map50=None, gflops=None, latency_ms=None,
                           params=None, feasible=True, kind="search", reason=None)

    def plan(**given):
        return finetune_plan(teacher, record, {}, imgsz=64, stored_ranking=None, epochs=4, steps=1, nc=2,
                             schedule={"name": schedule, **given}, distill=None)

    return plan


@pytest.mark.parametrize("schedule", ["ultralytics", "short"])
def test_lr_scale_multiplies_the_fitted_rate_in_either_schedule(schedule):
    """--lr-scale K: Ultralytics' schedule finetunes at K x the rate its optimizer=auto picks (the trainer scales it,
    tests/test_finetune.py) and records K; the short schedule starts at K x the same fit; 1 by default."""
    from autoprune.apply import DEFAULT_LR_SCALE
    from autoprune.schedule import ultralytics_adamw_lr

    plan = _one_step_plan(schedule)
    [scaled], [plain] = plan(lr_scale=2.5), plan()
    assert DEFAULT_LR_SCALE == 1.0
    if schedule == "short":
        assert scaled.schedule.lr0 == pytest.approx(2.5 * ultralytics_adamw_lr(2)) and scaled.lr_scale == 1.0
        assert plain.schedule.lr0 == ultralytics_adamw_lr(2)
        assert scaled.as_dict()["schedule"]["lr0"] == scaled.schedule.lr0
    else:
        assert scaled.schedule is None and scaled.lr_scale == 2.5 and scaled.as_dict()["schedule"]["lr_scale"] == 2.5
        assert plain.lr_scale == 1.0 and plain.as_dict()["schedule"]["optimizer"] == "auto"
    with pytest.raises(UserError, match="--lr-scale must be a number > 0"):
        plan(lr_scale=-1.0)


@pytest.mark.parametrize("schedule", ["ultralytics", "short"])
def test_warmup_bias_lr_defaults_by_schedule_and_is_recorded(schedule):
    """--warmup-bias-lr: the trainer gets the value given; by default Ultralytics' schedule warms the biases up
    from DEFAULT_WARMUP_BIAS_LR, the short one from its own 0; args.yaml's finetune_steps record it either way."""
    from autoprune.apply import DEFAULT_WARMUP_BIAS_LR

    plan = _one_step_plan(schedule)
    [given], [default] = plan(warmup_bias_lr=0.05), plan()
    assert given.warmup_bias_lr == 0.05 and given.as_dict()["schedule"]["warmup_bias_lr"] == 0.05
    if schedule == "short":
        assert default.warmup_bias_lr is None and default.as_dict()["schedule"]["warmup_bias_lr"] == 0.0
    else:
        assert default.warmup_bias_lr == DEFAULT_WARMUP_BIAS_LR
        assert default.as_dict()["schedule"]["warmup_bias_lr"] == DEFAULT_WARMUP_BIAS_LR
    with pytest.raises(UserError, match="--warmup-bias-lr must be a number >= 0"):
        plan(warmup_bias_lr=float("nan"))
