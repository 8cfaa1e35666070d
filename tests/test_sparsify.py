"""Sparse training through Ultralytics' trainer: the penalty drives prunable gammas down, lambda follows its
schedule, hooks never outlive training, and the checkpoint is a stock Ultralytics one."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest
import torch

from autoprune.cli import main
from autoprune.errors import UserError
from autoprune.sparsify import (
    SparsifySettings,
    growing_lambda,
    l1_lambda,
    prunable_bn_masks,
    prunable_gammas,
    share_below,
    sparsify,
)
from conftest import run_cli

TINY = {"nc": 2, "depth_multiple": 0.33, "width_multiple": 0.125, "max_channels": 1024}
# A few plain SGD steps: one optimizer step per batch of 4 (nbs=4), no warmup, no validation until the end.
FAST = dict(optimizer="SGD", lr0=0.01, momentum=0.9, warmup_epochs=0, nbs=4, seed=0)


@pytest.fixture(scope="module")
def small_gamma_ckpt(tmp_path_factory):
    """A yolov8 layout at width 1/8 for the two tiny classes, its BN gammas uniform in [0, 0.05]."""
    from ultralytics.nn.tasks import DetectionModel, yaml_model_load

    from autoprune.models import save_checkpoint

    d = yaml_model_load("yolov8n.yaml")
    torch.manual_seed(0)
    model = DetectionModel({**TINY, "backbone": d["backbone"], "head": d["head"]}, verbose=False)
    g = torch.Generator().manual_seed(0)
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.weight.data = torch.rand(m.num_features, generator=g) * 0.05
    return save_checkpoint(model, tmp_path_factory.mktemp("sparsify") / "small_gamma.pt")


def _run(ckpt, data, tmp_path, name, **kw):
    run_dir = tmp_path / name
    run_dir.mkdir()
    settings = SparsifySettings(**{"epochs": 2, "imgsz": 64, "batch": 4, "workers": 0, "val": False,
                                   "train_args": FAST, **kw})
    return sparsify(str(ckpt), str(data), run_dir, settings)


def test_lambda_schedules():
    assert [round(l1_lambda(1e-2, e, 10), 6) for e in (0, 5, 9)] == [0.01, 0.0055, 0.0019]
    assert l1_lambda(0.5, 0, 1) == 0.5
    assert [growing_lambda(1e-2, e) for e in (0, 1, 99)] == pytest.approx([0.01, 0.02, 1.0])


@pytest.mark.parametrize(
    "kw, message",
    [
        ({"epochs": 0}, "epochs must be an integer >= 1"),
        ({"epochs": 1, "l1": -1e-3}, "l1 must be a number >= 0"),
        ({"epochs": 1, "l1_beta": float("nan")}, "l1-beta must be a number >= 0"),
        ({"epochs": 1, "reg_keep": 1.0}, "reg-keep must lie in (0, 1)"),
        ({"epochs": 1, "imgsz": 100}, "imgsz must be a positive multiple of 32"),
        ({"epochs": 1, "train_args": {"amp": True}}, "without AMP"),
    ],
)
def test_settings_are_validated(kw, message):
    with pytest.raises(UserError, match=message.replace("(", r"\(").replace(")", r"\)")):
        SparsifySettings(**kw)


def test_l1_penalty_drives_gammas_down_and_the_checkpoint_is_stock(small_gamma_ckpt, tiny_data, tmp_path):
    plain = _run(small_gamma_ckpt, tiny_data, tmp_path, "plain", l1=0.0)
    sparse = _run(small_gamma_ckpt, tiny_data, tmp_path, "sparse", l1=0.5)
    before = plain["gamma_share_below"]["before"]
    assert sparse["gamma_share_below"]["before"] == before > 0.1
    assert sparse["gamma_share_below"]["after"] > plain["gamma_share_below"]["after"] + 0.1
    assert [x["gamma"] for x in sparse["lambdas"]] == pytest.approx([l1_lambda(0.5, e, 2) for e in range(2)])
    assert [x["epoch"] for x in sparse["lambdas"]] == [0, 1]
    head = [torch.load(p, weights_only=False)["model"].model[-1] for p in (small_gamma_ckpt, plain["checkpoint"])]
    assert not all(torch.equal(a, b) for a, b in zip(*(h.parameters() for h in head)))  # plain did train (the head:
    # with every gamma near 0.025 the signal, and the loss gradient, vanish within a few layers)

    ckpt = sparse["checkpoint"]
    assert os.path.getsize(sparse["histogram"]) > 10_000  # a drawn PNG
    script = textwrap.dedent(
        """
        import json, sys, torch
        from ultralytics import YOLO
        m = YOLO(sys.argv[1]).model.float()
        g = torch.cat([b.weight.detach().abs() for b in m.modules() if isinstance(b, torch.nn.BatchNorm2d)])
        hooks = sum(len(p._backward_hooks or {}) for p in m.parameters())
        print(json.dumps({"n_bn": int(g.numel()), "hooks": hooks,
                          "autoprune": sorted(k for k in sys.modules if k.startswith("autoprune"))}))
        """
    )
    proc = subprocess.run([sys.executable, "-c", script, ckpt], capture_output=True, text=True, timeout=300,
                          env={**os.environ, "YOLO_OFFLINE": "1"})
    assert proc.returncode == 0, proc.stderr[-2000:]
    r = json.loads(proc.stdout.strip().splitlines()[-1])
    assert r["autoprune"] == [] and r["hooks"] == 0 and r["n_bn"] > 0
    stored = torch.load(ckpt, weights_only=False)
    model = stored["model"].float()
    assert share_below(prunable_gammas(model, prunable_bn_masks(model))) == pytest.approx(
        sparse["gamma_share_below"]["after"], abs=0.02)  # FP16 storage moves a few values across 1e-2
    assert stored["autoprune"]["sparsify"]["l1"] == 0.5


def test_growing_regularisation_shrinks_the_chosen_channels_most(small_gamma_ckpt, tiny_data, tmp_path):
    from autoprune.models import load_model

    loaded = load_model(str(small_gamma_ckpt))
    base = loaded.model
    r = _run(small_gamma_ckpt, tiny_data, tmp_path, "greg", l1=20.0, growing_reg=True, reg_keep=0.5)
    assert r["mode"] == "growing_reg"
    assert [x["gamma"] for x in r["lambdas"]] == pytest.approx([20.0, 40.0])
    assert r["penalised_channels"] > 0.3 * r["prunable_gammas"]
    trained = torch.load(r["checkpoint"], weights_only=False)["model"].float()
    from autoprune.sparsify import growing_masks

    from autoprune.channels import analyze

    chosen = growing_masks(base, analyze(base), 0.5)
    all_masks = prunable_bn_masks(base)
    others = {k: m & ~chosen.get(k, torch.zeros_like(m)) for k, m in all_masks.items()}
    shrink_chosen = prunable_gammas(trained, chosen).mean() / prunable_gammas(base, chosen).mean()
    shrink_others = prunable_gammas(trained, others).mean() / prunable_gammas(base, others).mean()
    assert shrink_chosen < 0.8 * shrink_others


def test_cli_sparsify_growing_reg_shrinks_the_channels_a_prune_would_remove(small_gamma_ckpt, tiny_data, tmp_path,
                                                                           monkeypatch, capsys):
    """`autoprune sparsify --growing-reg --reg-keep 0.5`: the BN gammas of the channels a bn_scale prune at keep 0.5
    removes shrink well below the input's, while the other prunable gammas keep most of theirs."""
    import yaml
    from ultralytics.utils import DEFAULT_CFG

    from autoprune.channels import analyze
    from autoprune.models import load_model
    from autoprune.sparsify import growing_masks

    for k, v in FAST.items():  # the trainer's defaults, which the command leaves in place: a few plain SGD steps
        monkeypatch.setattr(DEFAULT_CFG, k, v)
    monkeypatch.chdir(tmp_path)
    code, out, err = run_cli(capsys, "sparsify", "--model", small_gamma_ckpt, "--data", tiny_data, "--epochs", "2",
                             "--growing-reg", "--reg-keep", "0.5", "--l1", "20", "--imgsz", "64", "--batch", "4",
                             "--workers", "0", "--no-val", "--name", "greg", "--json")
    assert code == 0, err[-3000:]
    r = json.loads(out)
    assert r["mode"] == "growing_reg" and [x["gamma"] for x in r["lambdas"]] == pytest.approx([20.0, 40.0])
    run_dir = tmp_path / "runs" / "sparsify" / "greg"
    assert yaml.safe_load((run_dir / "args.yaml").read_text())["growing_reg"] is True
    stored = torch.load(run_dir / "sparse.pt", weights_only=False)
    assert stored["autoprune"]["sparsify"]["growing_reg"] is True and stored["autoprune"]["sparsify"]["reg_keep"] == 0.5

    base = load_model(str(small_gamma_ckpt)).model
    chosen = growing_masks(base, analyze(base), 0.5)
    others = {k: m & ~chosen.get(k, torch.zeros_like(m)) for k, m in prunable_bn_masks(base).items()}
    trained = stored["model"].float()
    shrink_chosen = float(prunable_gammas(trained, chosen).abs().mean() / prunable_gammas(base, chosen).abs().mean())
    shrink_others = float(prunable_gammas(trained, others).abs().mean() / prunable_gammas(base, others).abs().mean())
    assert shrink_chosen < 0.8 * shrink_others


def test_cli_sparsify_yolov3_tiny(capsys, tmp_path, tiny_data, monkeypatch):
    monkeypatch.chdir(tmp_path)
    code = main(["sparsify", "--model", "yolov3-tinyu.yaml", "--data", str(tiny_data), "--epochs", "1", "--imgsz", "64",
                 "--batch", "4", "--workers", "0", "--no-val", "--name", "v3", "--json"])
    out = capsys.readouterr().out
    assert code == 0
    r = json.loads(out)
    assert r["run_dir"] == os.path.join("runs", "sparsify", "v3")
    assert (tmp_path / "runs/sparsify/v3/sparse.pt").is_file() and (tmp_path / "runs/sparsify/v3/args.yaml").is_file()
    assert r["prunable_gammas"] > 1000 and r["lambdas"] == [{"epoch": 0, "gamma": 0.01, "beta": 0.0}]
    model = torch.load(tmp_path / "runs/sparsify/v3/sparse.pt", weights_only=False)["model"]
    assert model.model[-1].nc == 2 and model.yaml["backbone"][0][2] == "Conv"


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--epochs", "0"], "epochs must be an integer >= 1"),
        (["--epochs", "2", "--l1", "-0.1"], "l1 must be a number >= 0"),
        (["--epochs", "2", "--data", "missing.yaml"], "data YAML not found: missing.yaml"),
        (["--epochs", "2", "--model", "missing.pt"], "model file not found: missing.pt"),
        (["--epochs", "2", "--lr0", "3"], "--lr0 must lie in (0, 1)"),
    ],
)
def test_cli_sparsify_bad_input_is_one_error_line(capsys, tmp_path, monkeypatch, tiny_data, argv, message):
    monkeypatch.chdir(tmp_path)
    if "--data" not in argv:
        argv = [*argv, "--data", str(tiny_data)]
    code = main(["sparsify", *argv])
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert code == 2 and len(err) == 1 and err[0].startswith("error: ") and message in err[0]
    assert not (tmp_path / "runs").exists()
