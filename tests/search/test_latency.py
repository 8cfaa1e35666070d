"""`--latency-model predicted` (autoprune/search/latency.py): candidates are priced by the latency model without being
timed, and the final front and the recommended trial are timed end to end afterwards, both figures kept. Timing is a
deterministic function of the architecture here (tests/search/test_plan.py's fakes), measured end to end at 1.5x
what the table predicts, so the two figures differ."""

from __future__ import annotations

import json

import optuna
import pytest
from optuna.distributions import FloatDistribution
from optuna.trial import TrialState, create_trial

from autoprune.search import records as R
from conftest import run_cli

MEASURED_OVER_PREDICTED = 1.5
MS_PER_GFLOP = 10.0
FAST_SEARCH = ("--imgsz", 64, "--proxy-imgsz", 64, "--proxy-steps", 1, "--val-images", 4, "--calib-batches", 1,
               "--criterion", "l1", "--no-auto-confirm", "--latency-backend", "onnxruntime")


def fake_layer(module, ch, hw) -> float:
    """The latency table's timing: 10 ms per GFLOP of the layer (or of the whole model, `ch` None)."""
    import torch

    from autoprune.cost import count_gflops

    if ch is None:
        return MS_PER_GFLOP * count_gflops(module, hw)
    conv = module[0]
    h, w = (hw, hw) if isinstance(hw, int) else hw  # (h, w): a swap's 1 x k layer after a stride
    with torch.no_grad():
        out = conv(torch.zeros(1, ch, h, w))
    return MS_PER_GFLOP * 2 * conv.weight.numel() * out.shape[-1] * out.shape[-2] / 1e9


def fake_latency(model, *, imgsz=640, batch=1, backend="torch", precision=None, **_):
    """End-to-end timing: 1.5 x 10 ms per GFLOP."""
    from autoprune.cost import LatencyResult

    ms = MEASURED_OVER_PREDICTED * fake_layer(model, None, imgsz)
    return LatencyResult(median_ms=ms, p10_ms=ms, p90_ms=ms, min_ms=ms, repeats=1, device="cpu",
                         device_name="fake", backend=backend, precision=precision or "fp32", threads=1, imgsz=imgsz,
                         batch=batch, signature="fake", stable=True)


def _load(summary):
    from autoprune.search.storage import make_storage

    return optuna.load_study(study_name=summary["name"], storage=make_storage(summary["storage"], heartbeat=None))


@pytest.mark.slow
def test_predicted_search_times_only_the_final_front(capsys, monkeypatch, tmp_path):
    import autoprune.cost
    import autoprune.latency_model as lut
    from autoprune.proxy import ProxyEvaluator
    from autoprune.report import format_front_table, study_info
    monkeypatch.setenv("AUTOPRUNE_DEMO_SIZE", "6,4")
    monkeypatch.chdir(tmp_path)
    original = lut.LatencyTable.__init__
    monkeypatch.setattr(lut.LatencyTable, "__init__", lambda self, *a, **kw: original(self, *a, **{**kw, "measure": fake_layer}))
    timed, events = [], []  # every end-to-end timing of a candidate; timings and proxy scores in order
    real_score = ProxyEvaluator.evaluate

    def score(self, model):
        events.append("scored")
        return real_score(self, model)

    def measure(model, **kw):
        timed.append(model)
        events.append("timed")
        return fake_latency(model, **kw)

    monkeypatch.setattr(ProxyEvaluator, "evaluate", score)

    monkeypatch.setattr(autoprune.cost, "measure_latency", measure)
    code, out, err = run_cli(capsys, "search", *map(str, FAST_SEARCH), "--budget-gflops", "0.03",
                             "--latency-model", "predicted", "--trials", "4", "--population", "4", "--json")
    assert code == 0, err
    summary = json.loads(out)
    study = _load(summary)
    evaluated = [t for t in study.trials if t.state == TrialState.COMPLETE]
    assert len(evaluated) == 4
    for t in evaluated:  # each candidate priced by the model: its stored latency is the prediction
        assert t.user_attrs[R.LATENCY_SOURCE] == "predicted"
        assert t.user_attrs[R.LATENCY_MS] == t.user_attrs[R.LATENCY_PREDICTED_MS] > 0
    remeasured = {int(k.split(":")[1]) for k in study.user_attrs if k.startswith(R.STUDY_MEASURED_LATENCY_PREFIX)}
    assert len(timed) == len(remeasured) == summary["remeasured_latency"]["measured"] >= 1  # only those were timed
    assert events.index("timed") > max(i for i, e in enumerate(events) if e == "scored")  # none during the trials
    recs = R.load_records(study)
    front = R.pareto_front(recs)
    assert {r.number for r in front} | {summary["recommended"]["number"]} <= remeasured  # (and any that left it)
    for r in front:  # the front shows the measured latency, the prediction beside it
        assert r.attrs[R.LATENCY_SOURCE] == "measured"
        assert r.latency_ms == pytest.approx(MEASURED_OVER_PREDICTED * r.attrs[R.LATENCY_PREDICTED_MS], rel=0.05)
    assert summary["recommended"]["latency_ms"] != summary["recommended"]["latency_predicted_ms"]
    table = format_front_table(study_info(study))
    assert "latency predicted -> measured end to end after the search: trial" in table


def test_a_predicted_candidate_with_swaps_is_priced_by_the_table(monkeypatch, tmp_path):
    """With swap genes, the search's latency model measures every kind its swap genes can choose when it is built,
    and a candidate's predicted latency prices its swaps (another swap choice measures nothing more)."""
    from types import SimpleNamespace

    import autoprune.latency_model as lut
    from autoprune.channels import analyze
    from autoprune.demo import demo_model_path
    from autoprune.models import load_model
    from autoprune.search.latency import candidate_latency
    from autoprune.space import load_space

    monkeypatch.chdir(tmp_path)  # runs/latency_lut.json
    original = lut.LatencyTable.__init__
    monkeypatch.setattr(lut.LatencyTable, "__init__",
                        lambda self, *a, **kw: original(self, *a, **{**kw, "measure": fake_layer}))
    model = load_model(str(demo_model_path())).model
    graph = analyze(model, imgsz=64)
    space = load_space("yolov8-ops", graph, model)
    settings = SimpleNamespace(latency_model="predicted", latency_backend="onnxruntime", latency_batch=1, imgsz=64)
    search = SimpleNamespace(settings=settings, loaded=SimpleNamespace(model=model), graph=graph, space=space,
                             device="cpu", latency_precision="fp32", log=lambda *a: None)
    genome = space.uniform(0.5)
    widths = space.counts(genome)
    lows = {g.name: g.low for g in space.swap_genes}  # every swap at its first choice (dws on the stride-2 convs)
    swapped = space.counts({**genome, **lows})
    lat = candidate_latency(search, None, swapped)
    table = search.latency_table
    assert table.swaps == {sid: tuple(k for k in g.choices if k != "keep") for g in space.swap_genes for sid in g.units}
    assert lat.median_ms == table.predict(swapped) != table.predict(widths)
    measured = table.measured
    other = space.counts({**genome, **{g.name: g.high - 1 for g in space.swap_genes}})
    assert table.predict(other) not in (table.predict(widths), lat.median_ms) and table.measured == measured


class _Search:
    """What `remeasure_front` reads of a search: its settings, study and log."""

    def __init__(self, study):
        self.settings = type("S", (), {"latency_model": "predicted"})()
        self.study = study
        self.log = lambda *a: None


def _predicted_trial(study, map_, gflops, ms):
    attrs = {R.MAP50_95: map_, R.GFLOPS: gflops, R.LATENCY_MS: ms, R.LATENCY_PREDICTED_MS: ms,
             R.LATENCY_SOURCE: "predicted", R.FEASIBLE: True, R.CONSTRAINTS: [0.0, ms - 10.0], R.SECONDS: 1.0,
             R.KIND: "search", R.KEPT_CHANNELS: {}}
    study.add_trial(create_trial(state=TrialState.COMPLETE, params={"g": 0.5},
                                 distributions={"g": FloatDistribution(0.0, 1.0)}, values=[map_, gflops, ms],
                                 user_attrs=attrs))


def test_a_front_trial_measured_over_the_latency_budget_leaves_the_front_and_the_next_is_measured(monkeypatch):
    from autoprune.search import latency

    study = optuna.create_study(directions=list(R.DIRECTIONS))
    study.set_user_attr(R.STUDY_BUDGET_LATENCY_MS, 10.0)
    _predicted_trial(study, 0.50, 2.0, 9.0)  # 0: the leader; measured at 12 ms, over the 10 ms budget
    _predicted_trial(study, 0.40, 2.0, 9.5)  # 1: dominated by 0 as predicted; on the front once 0 is out
    _predicted_trial(study, 0.30, 1.0, 5.0)  # 2: on the front throughout
    measured = {0: 12.0, 1: 9.8, 2: 6.0}
    calls = []

    def measure_trial(search, r):
        calls.append(r.number)
        ms = measured[r.number]
        return type("L", (), {"median_ms": ms, "p10_ms": ms, "p90_ms": ms, "load": None, "device": "cpu",
                              **{k: None for k in ("backend", "precision", "executed_precision", "batch", "threads",
                                                   "device_name")}})()

    monkeypatch.setattr(latency, "measure_trial", measure_trial)
    cost = latency.remeasure_front(_Search(study))
    assert sorted(calls) == [0, 1, 2] and cost["measured"] == 3  # each once; 1 only once 0 had left the front
    recs = {r.number: r for r in R.load_records(study)}
    assert not recs[0].feasible and "over the latency budget measured end to end" in recs[0].reason
    assert [r.number for r in R.pareto_front(list(recs.values()))] == [1, 2]
    assert all(recs[n].latency_ms == measured[n] and recs[n].attrs[R.LATENCY_PREDICTED_MS] != measured[n]
               for n in measured)
    assert latency.remeasure_front(_Search(study))["measured"] == 0  # nothing left to time
    measured_search = _Search(study)
    measured_search.settings.latency_model = "measured"
    assert latency.remeasure_front(measured_search) == {}  # nothing to say: the search's summary prints no line
