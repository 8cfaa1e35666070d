"""Reports of a search: the front and its data object, trials.csv, pareto.png/html, the table, and the
`autoprune trials` / `autoprune plot` commands with their one-line errors. Studies are built by hand with Optuna."""

from __future__ import annotations

import csv
import dataclasses
import json
import re

import numpy as np
import optuna
import pytest
from conftest import assert_user_error, run_cli
from optuna.trial import TrialState, create_trial

from autoprune import report
from autoprune.report import plots
from autoprune.search import records as R
from autoprune.search.records import TrialRecord

optuna.logging.set_verbosity(optuna.logging.WARNING)

BUDGET = 4.2
GENES = ("backbone", "neck", "head")


def add(study, kind="search", state="COMPLETE", m=None, g=None, lat=None, feasible=None, reason=None, genome=None,
        spread=None, loaded=None, se=None):
    """Add one finished trial with the user attributes the search stores (records.py)."""
    a = {R.KIND: kind, R.GENOME: genome or {x: 0.5 for x in GENES}}
    if se is not None:
        a[R.MAP50_95_SE] = se
    if spread is not None:
        a[R.LATENCY_SPREAD_MS] = spread
    if loaded is not None:
        a[R.LATENCY_UNDER_LOAD] = loaded
    for key, v in ((R.MAP50_95, m), (R.MAP50, None if m is None else m + 0.2), (R.GFLOPS, g), (R.LATENCY_MS, lat),
                   (R.PARAMS, None if g is None else int(g * 400_000)), (R.REASON, reason)):
        if v is not None:
            a[key] = v
    a[R.FEASIBLE] = bool(feasible) if feasible is not None else (state == "COMPLETE" and g is not None and g <= BUDGET)
    values = [m, g, lat] if state == "COMPLETE" else None
    study.add_trial(create_trial(state=getattr(TrialState, state), values=values, user_attrs=a))


def new_study(url, name="exp1", **attrs):
    study = optuna.create_study(directions=list(R.DIRECTIONS), storage=url, study_name=name)
    for k, v in {R.STUDY_MODEL: "yolov8n.pt", R.STUDY_DATA: "demo", R.STUDY_BUDGET_GFLOPS: BUDGET,
                 R.STUDY_BUDGET_LATENCY_MS: None, R.STUDY_DEVICE: "cpu", **attrs}.items():
        study.set_user_attr(k, v)
    return study


def fill_mixed(study, running=False):
    """0 uniform (dominated by 1); front {1, 2, 7}; 3 dominated; 4 over budget; 5 pruned; 6 failed."""
    add(study, "uniform", m=0.30, g=4.0, lat=20.0, genome={x: 0.7 for x in GENES})
    add(study, m=0.35, g=3.8, lat=19.0)
    add(study, m=0.32, g=3.0, lat=15.0)
    add(study, m=0.28, g=3.5, lat=18.0)
    add(study, m=0.40, g=5.0, lat=25.0)
    add(study, state="PRUNED", g=5.1, reason="over the GFLOPs budget (5.1 > 4.2), repaired into 7")
    add(study, state="FAIL", reason="RuntimeError: boom")
    add(study, "repaired", m=0.33, g=3.9, lat=14.0, genome={"backbone": 0.4, "neck": 0.6, "head": 0.9})
    if running:
        study.enqueue_trial({})
        study.enqueue_trial({})
        study.ask()  # 8: RUNNING (the first waiting trial, asked), 9: WAITING
    return study


@pytest.fixture
def in_tmp(tmp_path, monkeypatch):
    """Work in an empty folder, so `runs/search/NAME/study.db` is local to the test."""
    monkeypatch.chdir(tmp_path)
    return tmp_path


@pytest.fixture(scope="session")
def mixed_db(tmp_path_factory):
    """A SQLite file holding the mixed study `exp1`, built once (creating an Optuna database takes a second)."""
    path = tmp_path_factory.mktemp("mixed") / "study.db"
    fill_mixed(new_study(f"sqlite:///{path}"))
    return path


@pytest.fixture
def mixed(in_tmp, mixed_db):
    """The mixed study in its run folder's SQLite file, as `--study exp1` finds it."""
    import shutil

    run_dir = in_tmp / "runs" / "search" / "exp1"
    run_dir.mkdir(parents=True)
    shutil.copyfile(mixed_db, run_dir / "study.db")
    return run_dir / "study.db"


def mixed_info(running=False, **attrs):
    study = fill_mixed(new_study(optuna.storages.InMemoryStorage(), **attrs), running=running)
    return report.study_info(study)


def rec(n, m, g, lat, feasible=True, state="COMPLETE", kind="search"):
    return TrialRecord(n, state, m, None if m is None else m + 0.2, g, lat, 1000, feasible, kind, None)


# ------------------------------------------------------------------------------------------ records and front


def test_the_package_exports_what_commands_benchmarks_and_the_search_use():
    """`autoprune.report` re-exports its modules' public names; the CLI, benchmarks and the search import them."""
    used = {"CSV_COLUMNS", "ParetoInfo", "comparison_line", "confirmed_lines", "format_front_table",
            "format_trials_table", "load_records", "local_study_names", "newest_local_study", "over_budget_text",
            "pareto_info", "plot_pareto_html", "plot_pareto_png", "read_study", "record_dict", "study_info",
            "write_reports", "write_trials_csv"}
    assert used <= set(report.__all__) and all(callable(getattr(report, n)) for n in used - {"CSV_COLUMNS"})


def test_load_records_reads_every_trial_with_state_kind_and_genome():
    study = fill_mixed(new_study(optuna.storages.InMemoryStorage()), running=True)
    recs = report.load_records(study)
    assert [r.number for r in recs] == list(range(10))
    assert [r.state for r in recs] == ["COMPLETE"] * 5 + ["PRUNED", "FAIL", "COMPLETE", "RUNNING", "WAITING"]
    assert recs[0].kind == "uniform" and recs[7].kind == "repaired"
    assert recs[7].genome == {"backbone": 0.4, "neck": 0.6, "head": 0.9}
    assert recs[5].reason.startswith("over the GFLOPs budget") and not recs[5].feasible
    assert recs[4].map50_95 == 0.40 and not recs[4].feasible


def test_pareto_info_classifies_trials_and_finds_best_and_baseline():
    info = mixed_info()
    assert sorted(info.front_numbers) == [1, 2, 7]
    assert [r.number for r in info.dominated] == [0, 3]
    assert [r.number for r in info.infeasible] == [4]
    assert [r.number for r in info.uniform] == [0]
    assert info.best.number == 1 and info.baseline.number == 0
    assert info.gain == pytest.approx(0.05)
    assert info.counts == {"trials": 8, "COMPLETE": 6, "PRUNED": 1, "FAIL": 1, "RUNNING": 0, "WAITING": 0,
                           "feasible": 5, "feasible_incomplete": 0, "front": 3, "infeasible": 1,
                           "latency_under_load": 0}
    assert info.budget_gflops == BUDGET and info.budget_latency_ms is None
    assert info.model == "yolov8n.pt" and info.study_name == "exp1"
    assert info.panels[0].attr == "gflops" and info.panels[0].budget == BUDGET and info.panels[1].budget is None
    # the trade-off line of each panel: front members not beaten in that panel's two dimensions, by cost
    assert info.panels[0].curve == (2, 1)  # 7 (3.9 GFLOPs, 0.33) is beaten by 1 (3.8, 0.35) in this projection
    assert info.panels[1].curve == (7, 1)  # 2 (15 ms, 0.32) is beaten by 7 (14 ms, 0.33)


def test_front_property_on_random_trial_sets():
    """No front member is dominated by a feasible trial; every other trial is dominated, infeasible or unfinished;
    the front is `records.pareto_front` and the best trial `records.best_trial` (what `search` reports), the
    highest mAP50-95 with ties to fewer GFLOPs, lower latency, lower number. Values come from small grids so that
    ties are common."""
    for seed in range(300):
        check_front_property(seed)


def check_front_property(seed):
    rng = np.random.default_rng(seed)
    n = int(rng.integers(0, 40))
    recs = []
    for i in range(n):
        state = rng.choice(["COMPLETE"] * 6 + ["PRUNED", "FAIL", "RUNNING"])
        done = state == "COMPLETE"
        m = float(rng.integers(0, 8)) / 10 if done else None
        recs.append(rec(i, m, float(rng.integers(1, 6)) if done else None, float(rng.integers(1, 6)) if done else None,
                        feasible=bool(done and rng.random() < 0.7), state=str(state)))
    info = report.pareto_info(recs, {})
    feasible = [r for r in recs if r.feasible]
    front = info.front_numbers
    for r in recs:
        if r.number in front:
            assert r.feasible and not any(R.dominates(o, r) for o in feasible), (seed, r)
        else:
            assert not r.feasible or any(R.dominates(o, r) for o in feasible), (seed, r)
    assert sorted(front) == [r.number for r in R.pareto_front(recs)], seed
    assert info.best == R.best_trial(recs), seed
    if feasible:
        first = min(feasible, key=lambda r: (-r.map50_95, r.gflops, r.latency_ms, r.number))
        assert info.best.number in front and info.best.number == first.number, seed
    else:
        assert info.best is None and not front


def test_front_over_the_objectives_trials_carry_when_no_latency_was_measured(tmp_path):
    recs = [rec(0, 0.3, 4.0, None), rec(1, 0.35, 3.0, None), rec(2, 0.2, 3.5, None)]
    info = report.pareto_info(recs, {})
    assert info.objectives == ("map50_95", "gflops") and sorted(info.front_numbers) == [1]
    assert info.panels[1].curve == ()
    assert report.plot_pareto_png(info, tmp_path / "p.png").stat().st_size > 10_000  # a latency panel without data


def test_a_feasible_trial_missing_a_value_others_have_is_left_off_the_front():
    recs = [rec(0, 0.3, 4.0, 10.0), rec(1, 0.9, 1.0, None)]
    info = report.pareto_info(recs, {})
    assert sorted(info.front_numbers) == [0] and info.counts["feasible_incomplete"] == 1
    # the search's front and best trial (`records`) are the report's
    assert [r.number for r in R.pareto_front(recs)] == [0] and R.best_trial(recs).number == 0 == info.best.number
    assert "1 feasible trial(s) lack an objective value" in report.format_front_table(info)


def test_best_trial_breaks_ties_by_gflops_then_latency_then_number():
    """The trial `search` prints as best and the one the table stars: on an mAP50-95 tie, fewer GFLOPs; on a tie
    in both, lower latency (the slower one is dominated, off the front); then the lower trial number."""
    recs = [rec(0, 0.5, 3.0, 12.0), rec(1, 0.5, 3.0, 11.0), rec(2, 0.5, 3.5, 9.0), rec(3, 0.4, 1.0, 1.0),
            rec(4, 0.6, 1.0, 1.0, feasible=False), rec(5, None, None, None, state="FAIL", feasible=False)]
    info = report.pareto_info(recs, {})
    assert R.best_trial(recs).number == 1 == info.best.number and 0 not in info.front_numbers
    assert [r.number for r in R.ranked_trials(recs)] == [1, 0, 2, 3]  # what `search --confirm N` re-scores
    assert R.best_trial(recs[:1] + [rec(6, 0.5, 3.0, 12.0)]).number == 0
    assert R.best_trial(recs[2:]).number == 2 and R.best_trial(recs[3:]).number == 3
    assert R.best_trial(recs[4:]) is None and report.pareto_info(recs[4:], {}).best is None


# ------------------------------------------------------------------------------------------------------ CSV


def test_trials_csv_has_one_row_per_trial_the_fixed_columns_then_genes(tmp_path):
    info = mixed_info(running=True)
    path = report.write_trials_csv(list(info.records), tmp_path / "trials.csv", info.front_numbers)
    with open(path, newline="") as f:
        rows = list(csv.reader(f))
    assert rows[0] == list(report.CSV_COLUMNS) + list(GENES)
    assert len(rows) == 1 + 10
    by_number = {int(r[0]): dict(zip(rows[0], r)) for r in rows[1:]}
    assert [n for n, r in by_number.items() if r["on_front"] == "True"] == [1, 2, 7]
    assert by_number[0]["kind"] == "uniform" and by_number[0]["backbone"] == "0.7"
    assert by_number[5]["state"] == "PRUNED" and by_number[5]["map50_95"] == ""  # missing value: empty cell
    assert by_number[5]["reason"] == "over the GFLOPs budget (5.1 > 4.2), repaired into 7"  # comma kept by quoting
    assert by_number[4]["feasible"] == "False" and float(by_number[4]["gflops"]) == 5.0
    assert by_number[8]["state"] == "RUNNING" and by_number[8]["gflops"] == ""
    assert float(by_number[7]["head"]) == 0.9 and float(by_number[1]["latency_ms"]) == 19.0


def test_trials_csv_renames_a_gene_that_collides_with_a_column(tmp_path):
    r = TrialRecord(0, "COMPLETE", 0.3, 0.5, 1.0, 2.0, 10, True, "search", None, genome={"kind": 0.5, "a": 1.0})
    path = report.write_trials_csv([r], tmp_path / "t.csv", [0])
    header = path.read_text().splitlines()[0].split(",")
    assert header[-2:] == ["gene_kind", "a"] and header.count("kind") == 1


# ---------------------------------------------------------------------------------------------------- plots

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def assert_png_drawn(path):
    import matplotlib.image

    assert path.read_bytes()[:8] == PNG_MAGIC
    img = matplotlib.image.imread(path)
    assert img.shape[0] > 400 and img.shape[1] > 1000  # two panels side by side
    assert img[..., :3].std() > 0.05  # not a blank canvas


def assert_html_offline(path, numbers):
    """pareto.html loads plotly.js from the one plotly.min.js beside it (no CDN) and labels every trial."""
    text = path.read_text()
    assert len(text) < 300_000  # plotly.js is not embedded ...
    scripts = re.findall(r"<script[^>]*\bsrc\s*=\s*\"([^\"]*)\"", text, re.IGNORECASE)
    assert scripts == ["plotly.min.js"]  # ... but loaded from beside the file, so it opens offline
    js = path.parent / "plotly.min.js"
    assert js.stat().st_size > 1_000_000 and "Plotly" in js.read_text()[:5000]
    assert "Plotly.newPlot" in text
    labels = {t for group in re.findall(r'"text":\[([^\]]*)\]', text) for t in re.findall(r'"([^"]*)"', group)}
    for n in numbers:
        assert str(n) in labels  # every trial's label
        assert re.search(rf"\[{n},\"", text)  # the hover data of that trial
    assert "trial %{customdata[0]}" in text and "latency %{customdata[6]} ms" in text


def test_plots_are_written_and_non_trivial(tmp_path):
    info = mixed_info(running=True, **{R.STUDY_BUDGET_LATENCY_MS: 22.0,
                                       R.STUDY_BASE: {"gflops": 8.7, "params": 3_157_200, "latency_ms": 40.0}})
    png = report.plot_pareto_png(info, tmp_path / "sub" / "pareto.png")
    html = report.plot_pareto_html(info, tmp_path / "sub" / "pareto.html")
    assert_png_drawn(png)
    assert_html_offline(html, [0, 1, 2, 3, 4, 7])
    text = html.read_text()
    assert "budget 4.2 GFLOPs" in text and "budget 22 ms" in text
    assert "(in progress)" in text
    assert "6 complete (5 feasible), 1 pruned, 1 failed, 1 running, 1 waiting; 3 on the front" in text
    assert not list(tmp_path.glob("sub/.*tmp"))  # no temporary file left behind


def test_every_point_is_labelled_dominated_ones_grey_and_labels_do_not_overlap():
    info = mixed_info()
    view = plots.panel_view(info, 0)
    assert sorted(p.number for p in view.points) == [0, 1, 2, 3, 4, 7]  # every completed trial with a value
    assert all(p.label == str(p.number) for p in view.points)
    cats = {p.number: p.category for p in view.points}
    assert cats == {1: "front", 2: "front", 7: "front3", 0: "dominated", 3: "dominated", 4: "infeasible"}
    assert plots._LABEL_COLOUR["dominated"] == plots._LABEL_COLOUR["infeasible"] != plots._LABEL_COLOUR["front"]
    # four labels on one spot go to four different sides, so none covers another
    assert len(set(plots.place_labels([(1.0, 1.0)] * 4, ["10", "11", "12", "13"]))) == 4
    xy = [(i % 5, i // 5) for i in range(25)] + [(2.02, 2.02)]
    spots = plots.place_labels(xy, [str(i) for i in range(26)], size_pt=(300, 300))
    assert spots[-1] != spots[12]  # the two labels of (2, 2) and (2.02, 2.02) went to different sides


def test_latency_panel_has_its_own_front_and_a_robust_axis(tmp_path):
    """A noisy 2,561 ms among 57-150 ms is drawn at the axis' edge with its value; the panel's front is its own."""
    info = report.study_info(loaded_study())
    gflops, latency = plots.panel_view(info, 0), plots.panel_view(info, 1)
    assert {p.number: p.category for p in gflops.points}[3] == "front"
    assert {p.number: p.category for p in latency.points}[3] == "front3"  # beaten by 1 on latency
    assert gflops.hi is None and latency.hi is not None and 150.0 < latency.hi < 1000.0
    outlier = next(p for p in latency.points if p.number == 0)
    assert outlier.clipped and outlier.x == latency.hi and outlier.label == "0! (2561 ms)" and outlier.loaded
    assert not any(p.clipped for p in latency.points if p.number != 0)
    assert plots.robust_limit([57.0, 60.0, 88.0, 145.0]) is None  # nothing far out: the automatic range
    png = report.plot_pareto_png(info, tmp_path / "p.png")
    assert_png_drawn(png)
    html = report.plot_pareto_html(info, tmp_path / "p.html").read_text()
    assert "0! (2561 ms)" in html and "triangle-right" in html and "measured under load" in html


def test_scores_show_their_standard_error_in_tables_and_plots(tmp_path):
    """A score stored with its bootstrap standard error shows it: `trials`, the front table, the hover text and
    the error bars of both plots; a study without one claims none."""
    study = new_study(optuna.storages.InMemoryStorage())
    add(study, "uniform", m=0.30, g=4.0, lat=20.0, se=0.0123)
    add(study, m=0.35, g=3.8, lat=19.0, se=0.0087)
    info = report.study_info(study)
    table, front = report.format_trials_table(info), report.format_front_table(info)
    assert re.search(r"^    1  COMPLETE search .* 0\.3500 ±0\.0087 ", table, re.MULTILINE)
    assert "mAP50-95 ±SE" in table and "0.3500 ±0.0087" in front and "(±SE: how far mAP50-95" in front
    html = report.plot_pareto_html(info, tmp_path / "p.html").read_text()
    assert r'"0.3500 \u00b10.0087"' in html  # the hover text (plotly writes non-ASCII escaped)
    assert '"error_y":{"array":[0.0087]' in html and '"error_y":{"array":[0.0123]' in html
    png = tmp_path / "p.png"
    assert_png_drawn(report.plot_pareto_png(info, png))
    bare = report.pareto_info([dataclasses.replace(r, map50_95_se=None) for r in info.records], {})
    assert "±SE" not in report.format_trials_table(bare) + report.format_front_table(bare)
    assert_png_drawn(report.plot_pareto_png(bare, tmp_path / "bare.png"))
    assert png.read_bytes() != (tmp_path / "bare.png").read_bytes()  # the bars were drawn


def test_plots_of_an_empty_study_say_so(tmp_path):
    info = report.pareto_info([], {})
    assert_png_drawn(report.plot_pareto_png(info, tmp_path / "p.png"))
    html = report.plot_pareto_html(info, tmp_path / "p.html").read_text()
    assert "no completed trial yet" in html


def test_write_reports_writes_the_three_files(tmp_path):
    study = fill_mixed(new_study(optuna.storages.InMemoryStorage()))
    paths = report.write_reports(study, tmp_path / "run")
    assert set(paths) == {"trials.csv", "pareto.png", "pareto.html"}
    assert all(p.parent == tmp_path / "run" and p.is_file() for p in paths.values())
    assert len(paths["trials.csv"].read_text().splitlines()) == 1 + 8
    assert_png_drawn(paths["pareto.png"])


# ---------------------------------------------------------------------------------------------------- table


def test_front_table_lists_the_front_and_the_gain_over_uniform():
    info = mixed_info(**{R.STUDY_BASE: {"gflops": 8.0}})
    text = report.format_front_table(info)
    rows = {int(m.group(2)): m.group(1) for m in re.finditer(r"^  ([* ]) +(\d+)  ", text, re.MULTILINE)}
    assert rows == {2: " ", 1: "*", 7: " ", 0: " "}  # the front, best starred, then the uniform reference row
    assert text.index("\n  *     1") < text.index("uniform baseline, not on the front") < text.index("\n        0")
    assert "3.80 (48%)" in text  # GFLOPs with the share of the unpruned model's
    assert ("best feasible trial 1 beats the uniform baseline (trial 0) by +0.0500 mAP50-95 (0.3500 vs 0.3000, "
            "+16.7%) at 3.8 GFLOPs and 19 ms, uniform at 4 GFLOPs and 20 ms") in text
    assert text.splitlines()[-1] == "apply the recommended trial:  autoprune apply --study exp1 --trial 1"
    assert "     3  " not in text  # dominated trial 3 is no row
    assert "study still in progress" not in text


def test_front_table_of_a_running_study_says_it_is_provisional():
    text = report.format_front_table(mixed_info(running=True))
    assert text.splitlines()[0] == "study still in progress (1 running, 1 waiting): this front is provisional"
    assert "beats the uniform baseline" in text


def test_front_table_without_feasible_trials_names_the_reasons():
    recs = [TrialRecord(i, "PRUNED", None, None, None, None, None, False, "rejected",
                        f"over the GFLOPs budget ({5 + i / 10:.2f} > 4.2); a repaired genome was queued instead")
            for i in range(3)] + [rec(3, 0.4, 6.0, 20.0, feasible=False), rec(4, None, None, None, False, "RUNNING")]
    text = report.format_front_table(report.pareto_info(recs, {}))
    assert "Pareto front: no feasible trial yet (5 trials: 1 complete (0 feasible), 3 pruned, 1 running)" in text
    assert "  3 x over the GFLOPs budget; a repaired genome was queued instead" in text  # figures set aside
    assert "completed but over budget: trial 3" in text
    assert "autoprune apply" not in text


def test_comparison_line_cases():
    assert "no uniform baseline trial" in report.comparison_line(report.pareto_info([rec(0, 0.3, 1.0, 1.0)], {}))
    pruned_u = TrialRecord(0, "PRUNED", None, None, 9.0, None, None, False, "uniform", "over the latency budget")
    line = report.comparison_line(report.pareto_info([pruned_u, rec(1, 0.3, 1.0, 1.0)], {}))
    assert line == ("the uniform baseline (trial 0) is PRUNED: over the latency budget: nothing to compare against")
    only_u = report.pareto_info([rec(0, 0.3, 2.0, 2.0, kind="uniform"), rec(1, 0.2, 2.5, 2.5)], {})
    assert "is still the best feasible trial" in report.comparison_line(only_u)
    over_u = report.pareto_info([rec(0, 0.5, 5.0, 2.0, feasible=False, kind="uniform"), rec(1, 0.4, 2.5, 2.5)], {})
    assert "trial 1 trails the uniform baseline (trial 0) (itself over budget) by -0.1000" in (
        report.comparison_line(over_u))


def loaded_study():
    """Latencies with their spread; the uniform trial 0 measured under load (2,561 ms against 57-145 ms)."""
    study = new_study(optuna.storages.InMemoryStorage())
    add(study, "uniform", m=0.30, g=4.0, lat=2561.2, spread=900.0, loaded=True)
    add(study, m=0.35, g=3.8, lat=145.0, spread=6.2, loaded=False)
    add(study, m=0.32, g=3.0, lat=57.31, spread=4.08, loaded=False)
    add(study, m=0.34, g=2.5, lat=150.0, spread=3.0, loaded=False)  # on the 3-objective front, beaten on latency
    return study


def test_latency_shows_its_spread_and_a_mark_when_measured_under_load(tmp_path):
    info = report.study_info(loaded_study())
    assert info.counts["latency_under_load"] == 1
    table = report.format_trials_table(info)
    assert re.search(r"^    0  COMPLETE uniform .* 2561\.2 ±900\.0 !$", table, re.MULTILINE)
    assert re.search(r"^    2  COMPLETE search .* 57\.3 ±4\.1$", table, re.MULTILINE)
    assert "! latency measured under load (load average above the core count): noisy" in table
    front = report.format_front_table(info)  # the search summary and `trials --pareto`
    assert " 57.3 ±4.1 " in front and " 2561.2 ±900.0 ! " in front and "measured under load" in front
    assert "(latency: median ms ± spread, p90 - p10 of the timed runs)" in front
    quiet = report.format_front_table(report.pareto_info([rec(1, 0.3, 1.0, 1.0)], {}))
    assert "under load" not in quiet and "±" not in quiet  # nothing stored, nothing claimed
    by_number = {d["number"]: d for d in (report.record_dict(r) for r in info.records)}
    assert by_number[0]["latency_spread_ms"] == 900.0 and by_number[0]["latency_under_load"] is True
    assert by_number[2]["latency_under_load"] is False
    rows = list(csv.DictReader(report.write_trials_csv(list(info.records), tmp_path / "t.csv", []).open()))
    assert (rows[0]["latency_spread_ms"], rows[0]["latency_under_load"]) == ("900.0", "True")


def test_each_panel_draws_its_own_front():
    """The latency panel's front is the trials not beaten in mAP50-95 and latency, not the 3-objective front."""
    info = report.study_info(loaded_study())
    assert sorted(info.front_numbers) == [1, 2, 3]
    gflops, latency = info.panels
    assert gflops.curve == (3, 1) and latency.curve == (2, 1)  # 3: fewest GFLOPs, beaten by 1 on latency
    assert report.pareto_info([rec(0, 0.4, 3.0, 9.0), rec(1, 0.3, 2.0, 10.0), rec(2, 0.35, 3.5, 5.0)],
                              {}).panels[1].curve == (2, 0)


# ------------------------------------------------------------------------------------------------------ CLI


def test_cli_trials_json_returns_records_and_front(mixed, capsys):
    code, out, _ = run_cli(capsys, "trials", "--study", "exp1", "--json")
    assert code == 0
    r = json.loads(out)
    assert r["front"] == [1, 2, 7] and r["best"] == 1 and r["uniform"] == 0
    assert r["gain_map50_95"] == pytest.approx(0.05) and r["in_progress"] is False
    assert [t["number"] for t in r["trials"]] == list(range(8))
    assert [t["number"] for t in r["trials"] if t["on_front"]] == [1, 2, 7]
    assert r["trials"][5]["reason"].startswith("over the GFLOPs budget") and r["trials"][5]["state"] == "PRUNED"
    assert r["storage"].startswith("sqlite:///runs/search/exp1/study.db")

    code, out, _ = run_cli(capsys, "trials", "--study", "exp1", "--pareto", "--json")
    assert code == 0 and [t["number"] for t in json.loads(out)["trials"]] == [1, 2, 7]


def test_cli_trials_human_view_lists_trials_then_the_front(mixed, capsys):
    code, out, _ = run_cli(capsys, "trials", "--study", "exp1")
    assert code == 0
    lines = out.splitlines()
    assert lines[0].split()[:4] == ["trial", "state", "kind", "feas"]
    assert re.search(r"^\s+6  FAIL +search .* RuntimeError: boom$", out, re.MULTILINE)
    assert "beats the uniform baseline (trial 0) by +0.0500" in out
    code, out, _ = run_cli(capsys, "trials", "--study", "exp1", "--pareto")
    assert code == 0 and "FAIL" not in out and out.startswith("Pareto front of search 'exp1'")


def test_cli_trials_reads_a_study_through_storage_url_while_it_runs(in_tmp, capsys):
    url = f"sqlite:///{in_tmp / 'shared.db'}"
    fill_mixed(new_study(url, name="team"), running=True)
    new_study(url, name="other")
    code, out, _ = run_cli(capsys, "trials", "--storage", url, "--study", "team", "--json")
    assert code == 0
    r = json.loads(out)
    assert r["in_progress"] is True and r["counts"]["RUNNING"] == 1 and r["counts"]["WAITING"] == 1
    code, out, _ = run_cli(capsys, "trials", "--storage", url, "--study", "team", "--pareto")
    assert "this front is provisional" in out
    assert out.splitlines()[-1] == f"apply the recommended trial:  autoprune apply --storage {url} --study team --trial 1"


def test_cli_trials_prints_the_apply_command_with_the_password_masked(monkeypatch, in_tmp, capsys):
    """The apply hint is a real command for the recommended trial; a storage password is never printed."""
    from autoprune.cli import trials

    url = "postgresql://user:s3cret@db.example:5432/studies"
    study = fill_mixed(new_study(optuna.storages.InMemoryStorage(), name="team"))
    monkeypatch.setattr(report, "read_study", lambda storage, name: study)
    code, out, _ = run_cli(capsys, "trials", "--storage", url, "--study", "team", "--pareto")
    assert code == 0 and "s3cret" not in out
    assert out.splitlines()[-1] == ("apply the recommended trial:  autoprune apply --storage "
                                    "'postgresql://user:***@db.example:5432/studies' --study team --trial 1  "
                                    "(password elided: put yours in place of ***)")
    assert trials.apply_hint(None, "my run", None) == "autoprune apply --study 'my run' --trial N"


def test_cli_plot_writes_into_the_run_folder_or_out(mixed, in_tmp, capsys):
    code, out, _ = run_cli(capsys, "plot", "--study", "exp1")
    assert code == 0
    run_dir = in_tmp / "runs" / "search" / "exp1"
    assert out.splitlines()[-2:] == [str(run_dir.relative_to(in_tmp) / "pareto.png"),
                                     str(run_dir.relative_to(in_tmp) / "pareto.html")]
    assert_png_drawn(run_dir / "pareto.png")

    code, out, _ = run_cli(capsys, "plot", "--study", "exp1", "--project", str(in_tmp), "--name", "plots", "--json")
    assert code == 0
    r = json.loads(out)
    assert r["png"] == str(in_tmp / "plots" / "pareto.png") and r["front"] == [1, 2, 7]
    assert_html_offline(in_tmp / "plots" / "pareto.html", [1, 2, 7])


def test_cli_reading_leaves_the_study_file_unchanged(mixed, in_tmp, capsys):
    db = in_tmp / "runs" / "search" / "exp1" / "study.db"
    before = db.read_bytes()
    assert run_cli(capsys, "trials", "--study", "exp1", "--json")[0] == 0
    assert db.read_bytes() == before


@pytest.mark.parametrize("cmd", ["trials", "plot"])
def test_cli_without_name_reads_the_latest_search(in_tmp, capsys, cmd):
    import os

    assert_user_error(*run_cli(capsys, cmd)[::2], "--study is required: the study to read (no studies in runs/search)")
    for age, name in ((100, "older"), (50, "newer"), (200, "oldest")):
        db = in_tmp / "runs" / "search" / name / "study.db"
        db.parent.mkdir(parents=True)
        fill_mixed(new_study(f"sqlite:///{db}", name=name))
        os.utime(db, (db.stat().st_atime, db.stat().st_mtime - age))
    code, out, _ = run_cli(capsys, cmd, "--json")
    assert code == 0 and json.loads(out)["study"] == "newer"
    code, out, _ = run_cli(capsys, cmd)
    assert code == 0 and out.splitlines()[0] == "study 'newer': the latest search in runs/search (pick another with --study)"
    assert "search 'newer'" in out  # and what follows is that study's
    code, out, _ = run_cli(capsys, cmd, "--study", "older")
    assert code == 0 and "latest search" not in out and "search 'older'" in out


@pytest.mark.parametrize("cmd", ["trials", "plot"])
def test_cli_errors_are_one_line(mixed, in_tmp, capsys, cmd):
    assert_user_error(*run_cli(capsys, cmd, "--study", "nope")[::2], "no study named 'nope'")
    assert_user_error(*run_cli(capsys, cmd, "--study", "nope")[::2], "studies here: exp1")
    assert_user_error(*run_cli(capsys, cmd, "--storage", "nonsense", "--study", "exp1")[::2],
                      "--storage must be a database URL")
    assert_user_error(*run_cli(capsys, cmd, "--storage", "sqlite://relative.db", "--study", "exp1")[::2],
                      "a SQLite --storage URL starts with sqlite:///")
    missing = in_tmp / "missing.db"
    assert_user_error(*run_cli(capsys, cmd, "--storage", f"sqlite:///{missing}", "--study", "exp1")[::2],
                      f"no SQLite study file at {missing}")
    assert not missing.exists()  # reading never creates a database
    (in_tmp / "notes.db").write_text("not a database")
    assert_user_error(*run_cli(capsys, cmd, "--storage", "sqlite:///notes.db", "--study", "exp1")[::2],
                      "notes.db is not a SQLite database")
    url = "sqlite:///runs/search/exp1/study.db"
    assert_user_error(*run_cli(capsys, cmd, "--storage", url, "--study", "x")[::2], "studies there: exp1")


@pytest.mark.parametrize("cmd", ["trials", "plot"])
def test_cli_storage_without_name_reads_its_only_study(in_tmp, capsys, cmd):
    """One study: read it. Several: --study is required, naming them. None: say so, and do not ask for --study."""
    url = f"sqlite:///{in_tmp / 's.db'}"
    fill_mixed(new_study(url, name="only"))
    out_args = ("--name", "plots", "--exist-ok") if cmd == "plot" else ()
    code, out, _ = run_cli(capsys, cmd, "--storage", url, *out_args)
    assert code == 0 and out.splitlines()[0] == "study 'only': the only study in --storage"
    assert "search 'only'" in out
    code, out, _ = run_cli(capsys, cmd, "--storage", url, *out_args, "--json")
    assert code == 0 and json.loads(out)["study"] == "only"
    new_study(url, name="second")
    assert_user_error(*run_cli(capsys, cmd, "--storage", url)[::2],
                      "--study is required: the study to read (studies there: only, second)")
    empty = f"sqlite:///{in_tmp / 'empty.db'}"
    optuna.storages.RDBStorage(empty)  # Optuna's tables, no study
    code, _, err = run_cli(capsys, cmd, "--storage", empty)
    assert_user_error(code, err, f"--storage '{empty}' holds no study yet: nothing to read")
    assert "--study" not in err


def test_cli_errors_for_a_sqlite_file_of_another_program_and_an_out_file(in_tmp, capsys):
    import sqlite3

    con = sqlite3.connect(in_tmp / "app.db")
    con.execute("CREATE TABLE things (x)")
    con.commit()
    con.close()
    before = (in_tmp / "app.db").read_bytes()
    assert_user_error(*run_cli(capsys, "trials", "--storage", "sqlite:///app.db", "--study", "a")[::2],
                      "app.db is a SQLite database but holds no Optuna studies")
    assert (in_tmp / "app.db").read_bytes() == before  # untouched: no Optuna tables were created in it
    (in_tmp / "file").write_text("x")
    assert_user_error(*run_cli(capsys, "plot", "--study", "exp1", "--project", "file")[::2],
                      "--project must be a folder, but file is a file")
    assert_user_error(*run_cli(capsys, "trials")[::2], "(no studies in runs/search)")
