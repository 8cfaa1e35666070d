"""Output locations and what commands show of their inputs: an unwritable or invalid output is one `error:` line
(exit 2) before any model loads and before anything is written; a corrupt checkpoint is one plain sentence; a storage
URL's password is never shown or written.

The read-only folder is a real one for whoever runs the suite: a folder without write permission for a normal user,
and for root (whom permission bits do not stop) a folder of a file system that refuses new files, such as `/sys`.
"""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

import pytest
from conftest import assert_user_error, run_cli
import yaml

from autoprune.cli import main
from autoprune.errors import UserError
from autoprune.runs import check_writable, save_args
from autoprune.search.storage import mask_url


def _refuses_new_files(folder: Path) -> bool:
    """Whether creating a file in `folder` fails for this process (tried for real, removed if it works)."""
    try:
        fd, probe = tempfile.mkstemp(dir=folder)
    except OSError:
        return True
    os.close(fd)
    os.unlink(probe)
    return False


@pytest.fixture
def read_only(tmp_path) -> Path:
    """A folder in which this process cannot create files: a chmod 555 folder, or for root a pseudo file system."""
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    try:
        if _refuses_new_files(ro):
            yield ro
            return
        for candidate in (Path("/sys"), Path("/proc")):  # root writes through permission bits; these refuse anyone
            if candidate.is_dir() and _refuses_new_files(candidate):
                yield candidate
                return
        pytest.skip("no folder on this machine refuses new files to this process")
    finally:
        ro.chmod(0o755)


@pytest.fixture
def in_tmp(tmp_path, monkeypatch) -> Path:
    """An empty working folder (beside the `read_only` one)."""
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    return work


@pytest.fixture
def no_model_loads(monkeypatch):
    """Every way a command loads a model fails the test: output checks must come before any model loads."""
    import autoprune.models

    original = autoprune.models.load_model

    def refuse(*args, **kwargs):
        raise AssertionError("a model was loaded before the output locations were checked")

    for name, module in list(sys.modules.items()):
        if name.startswith("autoprune") and getattr(module, "load_model", None) is original:
            monkeypatch.setattr(module, "load_model", refuse)


def _listing(folder: Path) -> set[str]:
    return {str(p.relative_to(folder)) for p in folder.rglob("*")}


# ------------------------------------------------------------------------------------------------ check_writable
def test_check_writable_accepts_new_nested_paths_and_creates_nothing(tmp_path):
    before = _listing(tmp_path)
    assert check_writable(tmp_path / "a" / "b" / "x.pt") == tmp_path / "a" / "b" / "x.pt"
    assert check_writable(tmp_path / "runs" / "prune", kind="folder") == tmp_path / "runs" / "prune"
    (tmp_path / "old.pt").write_bytes(b"x")
    check_writable(tmp_path / "old.pt")
    assert _listing(tmp_path) == before | {"old.pt"}


@pytest.mark.parametrize("kind", ["file", "folder"])
def test_check_writable_refuses_a_read_only_folder(read_only, kind):
    with pytest.raises(UserError, match="is not writable"):
        check_writable(read_only / "sub" / "x.pt", kind=kind)
    with pytest.raises(UserError, match="is not writable"):
        check_writable(read_only / "x.pt", kind=kind)


def test_check_writable_refuses_the_wrong_kind_of_existing_path(tmp_path):
    (tmp_path / "FILE").write_text("user's file")
    (tmp_path / "DIR").mkdir()
    with pytest.raises(UserError, match="FILE is a file, not a folder"):
        check_writable(tmp_path / "FILE" / "p.pt")
    with pytest.raises(UserError, match="FILE is a file, not a folder"):
        check_writable(tmp_path / "FILE" / "deeper" / "plots", kind="folder")
    with pytest.raises(UserError, match="existing folder, and a file is expected"):
        check_writable(tmp_path / "DIR")
    with pytest.raises(UserError, match="existing file, and a folder is expected"):
        check_writable(tmp_path / "FILE", kind="folder")
    assert (tmp_path / "FILE").read_text() == "user's file" and _listing(tmp_path) == {"FILE", "DIR"}


# ------------------------------------------------------------------------------------------------ every command
def test_prune_out_in_a_read_only_folder(read_only, in_tmp, no_model_loads, capsys):
    code, _, err = run_cli(capsys, "prune", "--keep", "0.5", "--out", read_only / "x.pt")
    assert_user_error(code, err, f"cannot write --out {read_only / 'x.pt'}: the folder {read_only} is not writable")
    assert _listing(in_tmp) == set()


def test_prune_from_inside_a_read_only_folder(read_only, monkeypatch, no_model_loads, capsys):
    monkeypatch.chdir(read_only)
    code, _, err = run_cli(capsys, "prune", "--keep", "0.5")
    assert_user_error(code, err, f"cannot write run folder runs/prune/exp1: the folder {read_only} is not writable")


def test_prune_out_under_an_existing_file(in_tmp, no_model_loads, capsys):
    (in_tmp / "FILE").write_text("user's file")
    code, _, err = run_cli(capsys, "prune", "--keep", "0.5", "--out", "FILE/p.pt")
    assert_user_error(code, err, "cannot write --out FILE/p.pt: FILE is a file, not a folder")
    assert _listing(in_tmp) == {"FILE"} and (in_tmp / "FILE").read_text() == "user's file"


def test_prune_out_that_is_an_existing_folder(in_tmp, no_model_loads, capsys):
    (in_tmp / "d.pt").mkdir()
    code, _, err = run_cli(capsys, "prune", "--keep", "0.5", "--out", "d.pt", "--force")
    assert_user_error(code, err, "cannot write --out d.pt: it is an existing folder, and a file is expected")
    assert _listing(in_tmp) == {"d.pt"}


@pytest.mark.parametrize("where", ["read-only", "under a file"])
def test_plot_out(where, read_only, in_tmp, capsys):
    import optuna

    (in_tmp / "runs" / "search" / "exp1").mkdir(parents=True)
    verbosity = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    try:
        optuna.create_study(storage=f"sqlite:///{in_tmp}/runs/search/exp1/study.db", study_name="exp1",
                            directions=["maximize", "minimize"])
    finally:
        optuna.logging.set_verbosity(verbosity)
    (in_tmp / "FILE").write_text("user's file")
    before = _listing(in_tmp)
    out = read_only / "plots" if where == "read-only" else Path("FILE/plots")
    code, _, err = run_cli(capsys, "plot", "--study", "exp1", "--project", out.parent, "--name", out.name)
    assert_user_error(code, err, f"cannot write run folder {out}" if where == "read-only"
                      else "--project must be a folder, but FILE is a file")
    assert _listing(in_tmp) == before


@pytest.mark.parametrize("where", ["read-only", "a folder"])
def test_cost_cache(where, read_only, in_tmp, no_model_loads, capsys):
    (in_tmp / "cache").mkdir()
    cache = read_only / "cache.json" if where == "read-only" else Path("cache")
    code, _, err = run_cli(capsys, "cost", "--cache", cache, "--device", "cpu")
    assert_user_error(code, err, f"cannot write --cache {cache}")
    assert _listing(in_tmp) == {"cache"}


def test_search_from_inside_a_read_only_folder(read_only, monkeypatch, no_model_loads, capsys):
    monkeypatch.chdir(read_only)
    code, _, err = run_cli(capsys, "search", "--budget-gflops", "5")
    assert_user_error(code, err, "cannot write run folder runs/search")
    code, _, err = run_cli(capsys, "search", "--budget-gflops", "5", "--name", "mine")
    assert_user_error(code, err, "cannot write run folder runs/search/mine")


def test_search_sqlite_storage_in_a_read_only_folder(read_only, in_tmp, no_model_loads, capsys):
    code, _, err = run_cli(capsys, "search", "--budget-gflops", "5", "--storage", f"sqlite:///{read_only}/s.db")
    assert_user_error(code, err, f"cannot write --storage {read_only}/s.db")
    assert _listing(in_tmp) == set()


def test_apply_from_inside_a_read_only_folder(read_only, monkeypatch, tmp_path, no_model_loads, capsys):
    monkeypatch.chdir(read_only)
    code, _, err = run_cli(capsys, "apply", "--trial", "0", "--study", "exp1",
                           "--storage", f"sqlite:///{tmp_path}/study.db")
    assert_user_error(code, err, "cannot write run folder runs/apply")


def test_sparsify_and_demo_train_from_inside_a_read_only_folder(read_only, monkeypatch, no_model_loads, capsys):
    monkeypatch.chdir(read_only)
    code, _, err = run_cli(capsys, "sparsify", "--epochs", "1")
    assert_user_error(code, err, "cannot write run folder runs/sparsify")
    code, _, err = run_cli(capsys, "demo", "--train", "--epochs", "1")
    assert_user_error(code, err, "cannot write run folder runs/demo/exp1")


# ------------------------------------------------------------------------------------------------ corrupt checkpoints
@pytest.mark.parametrize("kind", ["empty", "text", "no-directory", "cut"])
def test_corrupt_checkpoint_is_one_plain_sentence(kind, in_tmp, capsys):
    """Torch reports a cut zip archive in two ways: no central directory (a short file) or EINVAL (a longer one)."""
    import torch

    path = in_tmp / f"{kind}.pt"
    if kind == "empty":
        path.write_bytes(b"")
    elif kind == "text":
        path.write_text("not a checkpoint\n" * 20)
    else:
        torch.save({"weights": torch.zeros(4096)}, path)
        path.write_bytes(path.read_bytes()[:1000 if kind == "no-directory" else 9000])
    code, _, err = run_cli(capsys, "prune", "--keep", "0.5", "--model", path.name, "--out", "p.pt")
    line = assert_user_error(code, err, f"error: {path.name} is not a loadable Ultralytics checkpoint: ")
    assert line.count(path.name) == 1 and line.count("loadable") == 1 and "ERROR" not in line, line
    assert line.count(".") - line.count(path.name) <= 0, line  # one sentence: no full stop but the file name's
    assert not (in_tmp / "p.pt").exists()


# ------------------------------------------------------------------------------------------------ storage passwords
@pytest.mark.parametrize("url, masked", [
    ("postgresql://u:secret@127.0.0.1:1/db", "postgresql://u:***@127.0.0.1:1/db"),
    ("postgresql+psycopg://user:se@cr/et@host:5432/db", "postgresql+psycopg://user:***@host:5432/db"),
    ("mysql://:secret@host/db", "mysql://:***@host/db"),
    ("postgresql://host/db?user=u&password=secret&sslmode=off", "postgresql://host/db?user=u&password=***&sslmode=off"),
    ("postgresql://u@host/db", "postgresql://u@host/db"),
    ("sqlite:////tmp/a:b@c/study.db", "sqlite:////tmp/a:b@c/study.db"),
    ("runs/search/exp1", "runs/search/exp1"),
])
def test_mask_url(url, masked):
    assert mask_url(url) == masked


@pytest.mark.parametrize("command", [["trials", "--study", "a"], ["plot", "--study", "a", "--name", "plots"],
                                     ["search", "--budget-gflops", "5", "--name", "a"],
                                     ["apply", "--trial", "0", "--study", "a"]])
def test_storage_errors_never_show_the_password(command, in_tmp, no_model_loads, capsys):
    url = "postgresql://u:secret@127.0.0.1:1/db"
    code, _, err = run_cli(capsys, *command, "--storage", url)
    line = assert_user_error(code, err, "postgresql://u:***@127.0.0.1:1/db")
    assert "secret" not in line


def test_args_yaml_never_holds_the_password(tmp_path):
    path = save_args(tmp_path, {"storage": "postgresql://u:secret@host/db", "name": "a"},
                     storage_url="postgresql://u:secret@host/db")
    text = path.read_text()
    assert "secret" not in text
    assert yaml.safe_load(text) == {"storage": "postgresql://u:***@host/db", "name": "a",
                                    "storage_url": "postgresql://u:***@host/db"}
