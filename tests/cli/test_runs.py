"""Ultralytics' run vocabulary: `--project/--name/--exist-ok` say where a command's run folder goes, `--study` which
study it reads; the old spellings (`cli._common.DEPRECATED_FLAGS`) still work with one warning line."""

from __future__ import annotations

import json
import os
from types import SimpleNamespace

import pytest
import yaml

from autoprune.errors import UserError
from autoprune.runs import run_dir_path
from conftest import assert_user_error, run_cli

FAST_PRUNE = ("--model", "yolov8n.yaml", "--imgsz", "64", "--strategy", "uniform", "--criterion", "l1", "--no-val",
              "--keep", "0.5")


@pytest.fixture
def in_tmp(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    return tmp_path


def _listing(root) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*")}


def _empty_study(root, name="exp1"):
    import optuna

    (root / "runs" / "search" / name).mkdir(parents=True)
    verbosity = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    try:
        optuna.create_study(storage=f"sqlite:///{root}/runs/search/{name}/study.db", study_name=name,
                            directions=["maximize", "minimize"])
    finally:
        optuna.logging.set_verbosity(verbosity)


def _warnings(err: str) -> list[str]:
    return [line for line in err.splitlines() if line.startswith("warning:")]


# ------------------------------------------------------------------------------------------------ runs.run_dir_path
def test_run_dir_path_names_defaults_and_exist_ok(tmp_path):
    assert run_dir_path("prune", root=tmp_path) == tmp_path / "prune" / "exp1"
    (tmp_path / "prune" / "exp1").mkdir(parents=True)
    assert run_dir_path("prune", root=tmp_path) == tmp_path / "prune" / "exp2"  # a default is always a new folder
    assert run_dir_path("prune", tmp_path / "p", "x") == tmp_path / "p" / "x"
    with pytest.raises(UserError, match="exp1 already exists; pass --exist-ok to write into it, or pick another --name"):
        run_dir_path("prune", name="exp1", root=tmp_path)
    assert run_dir_path("prune", name="exp1", exist_ok=True, root=tmp_path) == tmp_path / "prune" / "exp1"
    assert run_dir_path("apply", name=None, default="s-trial3", root=tmp_path) == tmp_path / "apply" / "s-trial3"
    (tmp_path / "apply" / "s-trial3").mkdir(parents=True)
    assert run_dir_path("apply", default="s-trial3", root=tmp_path) == tmp_path / "apply" / "s-trial3-2"
    assert not (tmp_path / "prune" / "exp2").exists() and not (tmp_path / "p").exists()  # nothing is created


# ------------------------------------------------------------------------------------------------ where runs land
def test_prune_project_name_and_exist_ok(in_tmp, capsys):
    code, out, err = run_cli(capsys, "prune", *FAST_PRUNE, "--project", "mine", "--name", "half", "--json")
    assert code == 0, err
    pt = in_tmp / "mine" / "half" / "pruned.pt"
    assert json.loads(out)["out"] == str(pt.relative_to(in_tmp)) and pt.is_file() and not (in_tmp / "runs").exists()
    args = yaml.safe_load((pt.parent / "args.yaml").read_text())
    assert (args["project"], args["name"], args["exist_ok"]) == ("mine", "half", False)
    before = pt.stat().st_mtime_ns
    code, _, err = run_cli(capsys, "prune", *FAST_PRUNE, "--project", "mine", "--name", "half")
    assert_user_error(code, err, "mine/half already exists; pass --exist-ok")
    assert pt.stat().st_mtime_ns == before
    code, _, err = run_cli(capsys, "prune", *FAST_PRUNE, "--project", "mine", "--name", "half", "--exist-ok")
    assert code == 0, err
    assert pt.stat().st_mtime_ns != before and yaml.safe_load((pt.parent / "args.yaml").read_text())["exist_ok"]


def test_sparsify_and_demo_train_land_in_project_name(in_tmp, monkeypatch, capsys):
    import autoprune.data
    import autoprune.demo.train
    import autoprune.models
    import autoprune.sparsify

    monkeypatch.setattr(autoprune.models, "load_model", lambda spec: SimpleNamespace(source="m.pt", task="detect",
                                                                                      model=None))
    monkeypatch.setattr(autoprune.data, "load_data_config", lambda spec: SimpleNamespace(yaml="d.yaml"))
    monkeypatch.setattr(autoprune.models, "keypoint_shape", lambda model: None)  # the fakes have no tasks to check
    monkeypatch.setattr(autoprune.data, "check_task", lambda data, task, kpt_shape=None: None)
    seen = {}
    monkeypatch.setattr(autoprune.sparsify, "sparsify", lambda loaded, data, run_dir, s: seen.setdefault("s", run_dir)
                        and {"run": str(run_dir)})
    monkeypatch.setattr(autoprune.demo.train, "train_baseline", lambda run_dir, **kw: seen.setdefault("d", run_dir)
                        and {"run": str(run_dir)})
    code, _, err = run_cli(capsys, "sparsify", "--epochs", "1", "--device", "cpu", "--project", "sp", "--name", "a",
                           "--json")
    assert code == 0, err
    assert seen["s"] == in_tmp.joinpath("sp", "a").relative_to(in_tmp) and (in_tmp / "sp/a/args.yaml").is_file()
    code, _, err = run_cli(capsys, "demo", "--train", "--epochs", "1", "--device", "cpu", "--project", "dm",
                           "--name", "b", "--json")
    assert code == 0, err
    assert str(seen["d"]) == os.path.join("dm", "b") and (in_tmp / "dm/b/args.yaml").is_file()
    assert_user_error(*run_cli(capsys, "demo", "--exist-ok")[::2], "--exist-ok only applies with --train")


def test_plot_lands_in_project_name_and_apply_gets_them(in_tmp, monkeypatch, capsys):
    _empty_study(in_tmp)
    code, out, err = run_cli(capsys, "plot", "--study", "exp1", "--project", "figs", "--name", "v1", "--json")
    assert code == 0, err
    assert json.loads(out)["png"] == os.path.join("figs", "v1", "pareto.png") and (in_tmp / "figs/v1/pareto.png").is_file()
    assert_user_error(*run_cli(capsys, "plot", "--study", "exp1", "--project", "figs", "--name", "v1")[::2],
                      "figs/v1 already exists; pass --exist-ok")
    assert run_cli(capsys, "plot", "--study", "exp1", "--project", "figs", "--name", "v1", "--exist-ok")[0] == 0
    code, out, _ = run_cli(capsys, "plot", "--study", "exp1", "--json")  # default: the search's own run folder
    assert code == 0 and json.loads(out)["run_dir"] == os.path.join("runs", "search", "exp1")

    import autoprune.apply

    calls = []
    monkeypatch.setattr(autoprune.apply, "apply_study_trial",
                        lambda study, number, **kw: calls.append((study.study_name, number, kw)) or {})
    code, _, err = run_cli(capsys, "apply", "--study", "exp1", "--trial", "3", "--project", "out", "--name", "small",
                           "--exist-ok", "--device", "cpu", "--json")
    assert code == 0, err
    study, number, kw = calls[-1]
    assert (study, number, kw["project"], kw["run_name"], kw["exist_ok"]) == ("exp1", 3, "out", "small", True)


def test_search_run_folder_is_project_name(in_tmp, monkeypatch, capsys):
    """An existing PROJECT/NAME without a study is refused without --exist-ok (and nothing is written in it)."""
    import autoprune.models

    def stop(spec):
        raise UserError("stopped at the model load")

    monkeypatch.setattr(autoprune.models, "load_model", stop)
    (in_tmp / "p" / "n").mkdir(parents=True)
    argv = ("search", "--budget-gflops", "5", "--device", "cpu", "--project", "p", "--name", "n")
    assert_user_error(*run_cli(capsys, *argv)[::2], "p/n already exists; pass --exist-ok to start the search in it")
    assert_user_error(*run_cli(capsys, *argv, "--exist-ok")[::2], "stopped at the model load")
    assert _listing(in_tmp) == {"p", "p/n"}


# ------------------------------------------------------------------------------------------------ bad values
COMMANDS = {
    "prune": ["prune", *FAST_PRUNE],
    "sparsify": ["sparsify", "--epochs", "1", "--device", "cpu"],
    "demo": ["demo", "--train", "--epochs", "1", "--device", "cpu"],
    "search": ["search", "--budget-gflops", "5", "--device", "cpu"],
    "apply": ["apply", "--trial", "0", "--study", "exp1", "--device", "cpu"],
    "plot": ["plot", "--study", "exp1"],
}


@pytest.mark.parametrize("command", sorted(COMMANDS))
@pytest.mark.parametrize("bad, pattern", [
    (("--project", "FILE"), "--project must be a folder, but FILE is a file"),
    (("--name", "a/b"), "--name must be a plain folder name (the run folder inside --project), got 'a/b'"),
    (("--name", ".."), "--name must be a plain folder name"),
])
def test_bad_project_or_name_is_one_error_line_and_writes_nothing(command, bad, pattern, in_tmp, monkeypatch, capsys):
    import autoprune.models

    def refuse(*args, **kwargs):
        raise AssertionError("a model was loaded before --project/--name were checked")

    monkeypatch.setattr(autoprune.models, "load_model", refuse)
    _empty_study(in_tmp)
    (in_tmp / "FILE").write_text("user's file")
    before = _listing(in_tmp)
    code, _, err = run_cli(capsys, *COMMANDS[command], *bad)
    assert_user_error(code, err, pattern)
    assert _listing(in_tmp) == before and (in_tmp / "FILE").read_text() == "user's file"


def test_prune_out_with_a_run_folder_flag_is_refused(in_tmp, capsys):
    code, _, err = run_cli(capsys, "prune", *FAST_PRUNE, "--out", "p.pt", "--name", "x")
    assert_user_error(code, err, "--out names the checkpoint file itself; --name place pruned.pt in a run folder")
    assert _listing(in_tmp) == set()


# ------------------------------------------------------------------------------------------------ old spellings
def test_old_trials_and_plot_spellings_work_with_one_warning(in_tmp, capsys):
    _empty_study(in_tmp)
    code, out, err = run_cli(capsys, "trials", "--name", "exp1", "--json")
    assert code == 0 and json.loads(out)["study"] == "exp1"
    assert _warnings(err) == ["warning: --name is deprecated, use --study; the old spelling will be removed in "
                              "autoprune 0.2.0"]
    code, out, err = run_cli(capsys, "plot", "--name", "exp1", "--out", "plots", "--json")
    assert code == 0 and json.loads(out)["png"] == os.path.join("plots", "pareto.png")
    assert len(_warnings(err)) == 1 and "--name is deprecated, use --study; --out is deprecated" in err
    assert (in_tmp / "plots" / "pareto.html").is_file()
    code, _, err = run_cli(capsys, "plot", "--study", "exp1", "--out", "plots")  # an existing --out folder: reused
    assert code == 0 and len(_warnings(err)) == 1
    code, _, err = run_cli(capsys, "trials", "--study", "exp1")
    assert code == 0 and _warnings(err) == []
    assert_user_error(*run_cli(capsys, "trials", "--study", "exp1", "--name", "exp1")[::2],
                      "--name is the old spelling of --study: give --study only")


def test_old_apply_spellings_follow_the_rule(in_tmp, monkeypatch, capsys):
    """apply --name S without --study reads study S when S is a study and runs/apply/S no run; otherwise --name is
    the output run's name. --out NAME is --name NAME."""
    import autoprune.apply

    _empty_study(in_tmp)
    _empty_study(in_tmp, "other")
    calls = []
    monkeypatch.setattr(autoprune.apply, "apply_study_trial",
                        lambda study, number, **kw: calls.append((study.study_name, kw["run_name"])) or {})
    base = ("apply", "--trial", "1", "--device", "cpu", "--json")
    code, _, err = run_cli(capsys, *base, "--name", "exp1", "--out", "small")
    assert code == 0 and calls[-1] == ("exp1", "small")
    assert _warnings(err) == ["warning: --name is deprecated, use --study; --out is deprecated, use --name; the old "
                              "spellings will be removed in autoprune 0.2.0"]
    code, _, err = run_cli(capsys, *base, "--name", "fresh")  # no study: the output run; the study is the latest
    assert code == 0 and calls[-1][1] == "fresh" and _warnings(err) == []
    (in_tmp / "runs" / "apply" / "exp1").mkdir(parents=True)  # a run of that name: --name is the run
    code, _, err = run_cli(capsys, *base, "--name", "exp1", "--exist-ok")
    assert code == 0 and calls[-1][1] == "exp1" and _warnings(err) == []
    assert_user_error(*run_cli(capsys, *base, "--study", "exp1", "--name", "x", "--out", "y")[::2],
                      "--out is the old spelling of --project/--name: give --project/--name only")
