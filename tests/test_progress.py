"""Progress on stderr (autoprune.progress): when it shows, what stays, and that stdout and error lines stay clean."""

from __future__ import annotations

import io
import json
import re

import pytest
from conftest import assert_user_error, run_cli

from autoprune import progress as pg


class _Terminal(io.StringIO):
    """A captured stream that says it is a terminal."""

    def isatty(self):
        return True


def test_lines_mode_leaves_one_line_per_step_and_none_for_nested_work(capsys, monkeypatch):
    monkeypatch.setenv(pg.ENV, "1")  # stderr is pytest's capture, not a terminal: only the lines that stay
    for _ in pg.progress(range(3), "outer", unit="items"):
        with pg.stage("inner"):  # nested: shown live only, leaves no line
            pass
    with pg.stage("a step"):
        pass
    out, err = capsys.readouterr()
    assert out == ""
    lines = err.splitlines()
    assert len(lines) == 2, err
    assert re.fullmatch(r"outer: 3/3 items in \d+\.\ds", lines[0]), lines[0]
    assert re.fullmatch(r"a step: done in \d+\.\ds", lines[1]), lines[1]


def test_nothing_when_stderr_is_not_a_terminal_or_when_turned_off(capsys, monkeypatch):
    monkeypatch.delenv(pg.ENV, raising=False)
    list(pg.progress(range(3), "quiet"))
    assert capsys.readouterr().err == ""
    terminal = _Terminal()
    monkeypatch.setattr("sys.stderr", terminal)
    monkeypatch.setenv(pg.ENV, "0")
    list(pg.progress(range(3), "off"))
    assert terminal.getvalue() == ""


def test_a_terminal_gets_a_live_bar_with_an_eta_then_the_line(capsys, monkeypatch):
    monkeypatch.delenv(pg.ENV, raising=False)
    terminal = _Terminal()
    monkeypatch.setattr("sys.stderr", terminal)
    assert pg.mode() == "live"
    for _ in pg.progress(range(4), "refit", unit="convs"):
        pass
    text = terminal.getvalue()
    assert "\r" in text and "0/4" in text and "<?" in text  # tqdm's live bar, with its ETA field
    assert re.fullmatch(r"refit: 4/4 convs in \d+\.\ds\n", text.split("\r")[-1]), text  # after the cleared bar
    assert capsys.readouterr().out == ""


def test_work_that_raises_leaves_no_line(capsys, monkeypatch):
    monkeypatch.setenv(pg.ENV, "1")
    with pytest.raises(RuntimeError):
        for i in pg.progress(range(3), "doomed"):
            if i == 1:
                raise RuntimeError("boom")
    with pytest.raises(RuntimeError):
        with pg.stage("doomed too"):
            raise RuntimeError("boom")
    assert capsys.readouterr().err == ""
    with pg.stage("after"):  # a failed bar does not leave the next one nested (silent)
        pass
    assert capsys.readouterr().err.startswith("after: done in ")


HESSIAN_PRUNE = ("--model", "yolov8n.yaml", "--imgsz", "64", "--keep", "0.5", "--strategy", "global",
                 "--criterion", "hessian", "--calib-imgsz", "64", "--calib-batches", "2", "--batch", "2")


def test_hessian_reconstruct_prune_reports_its_stages_on_stderr_and_only_json_on_stdout(
        capsys, monkeypatch, tmp_path, tiny_data):
    monkeypatch.setenv(pg.ENV, "1")
    code, out, err = run_cli(capsys, "prune", *HESSIAN_PRUNE, "--reconstruct", "--data", tiny_data,
                             "--max-samples", "256", "--out", tmp_path / "p.pt", "--json")
    assert code == 0, err
    assert json.loads(out)["criterion"] == "hessian"  # stdout is the JSON document alone
    assert re.search(r"^gradients for the channel ranking: 2/2 batches in \d", err, re.M), err
    assert re.search(r"^refitting the convs that lost inputs: (\d+)/\1 convs in \d", err, re.M), err


def test_an_error_inside_a_bar_is_still_one_line(capsys, monkeypatch, tmp_path, tiny_data):
    """A user error raised mid-loop (here, on a calibration batch) prints its one line and nothing of the bar."""
    import autoprune.importance as importance
    from autoprune.errors import UserError

    monkeypatch.setenv(pg.ENV, "1")
    opened = []
    real_init = pg.Progress.__init__

    def spy(self, *a, **k):
        real_init(self, *a, **k)
        opened.append(self.desc)

    def bad_batch(b, device):
        raise UserError("the calibration data has class 7 but the model predicts 2 classes")

    monkeypatch.setattr(pg.Progress, "__init__", spy)
    monkeypatch.setattr(importance, "_loss_batch", bad_batch)
    code, out, err = run_cli(capsys, "prune", *HESSIAN_PRUNE, "--data", tiny_data, "--out", tmp_path / "p.pt",
                             "--json")
    assert "gradients for the channel ranking" in opened  # the error came from inside the bar
    assert_user_error(code, err, "class 7")
    assert out == "" and not (tmp_path / "p.pt").exists()


def test_the_demo_dataset_generation_counts_its_images(capsys, monkeypatch, tmp_path):
    from autoprune.demo.dataset import generate

    monkeypatch.setenv(pg.ENV, "1")
    generate(tmp_path / "shapes", n_train=2, n_val=1, imgsz=64)
    err = capsys.readouterr().err
    assert re.fullmatch(rf"generating the demo dataset in {re.escape(str(tmp_path))}: 3/3 images in \d+\.\ds\n", err)


def test_groups_and_cost_report_their_long_steps_under_json(capsys, monkeypatch):
    from autoprune.cost import timing

    monkeypatch.setenv(pg.ENV, "1")
    monkeypatch.setattr(timing, "DEFAULT_PROTOCOL", timing.TimingProtocol(warmup_runs=1, warmup_s=0, min_repeats=3,
                                                                           min_time_s=0, max_time_s=1))
    code, out, err = run_cli(capsys, "groups", "--model", "yolov8n.yaml", "--imgsz", "64", "--json")
    assert code == 0 and json.loads(out)["groups"]
    assert re.fullmatch(r"loading yolov8n.yaml and tracing its channel groups: done in \d+\.\ds", err.strip()), err
    code, out, err = run_cli(capsys, "cost", "--model", "yolov8n.yaml", "--imgsz", "64", "--threads", "1", "--json")
    assert code == 0 and json.loads(out)["latency_ms"] > 0
    assert re.search(r"^measuring latency \(torch fp32 on cpu\): done in \d+\.\ds$", err, re.M), err


def test_a_stage_not_live_draws_nothing_until_its_line(monkeypatch):
    """stage(live=False), for work that shows its own progress (Ultralytics' trainer): only the line at the end."""
    monkeypatch.delenv(pg.ENV, raising=False)
    terminal = _Terminal()
    monkeypatch.setattr("sys.stderr", terminal)
    with pg.stage("finetuning", live=False):
        assert terminal.getvalue() == ""
    assert re.fullmatch(r"finetuning: done in \d+\.\ds\n", terminal.getvalue())
