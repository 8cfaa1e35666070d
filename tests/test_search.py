"""The search end to end on a tiny model and dataset: trials, front, reports, resume after SIGKILL, several
workers on SQLite and on PostgreSQL, failed candidates, and one-line errors for bad input."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
import yaml

from autoprune.cli import main
from autoprune.search import records as R
from autoprune.search.storage import make_storage

BUDGET = "0.2"  # GFLOPs at 128 px; the unpruned 2-class yolov8n has 0.33


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    """A 2-class yolov8n YAML, a small dataset and the flags that keep each candidate to a second or two."""
    import ultralytics
    from conftest import make_tiny_dataset

    root = tmp_path_factory.mktemp("search")
    data = make_tiny_dataset(root / "data", n_train=16, n_val=8)
    cfg = yaml.safe_load((Path(ultralytics.__file__).parent / "cfg/models/v8/yolov8.yaml").read_text())
    cfg.update(nc=2, scale="n")
    model = root / "yolov8n-2cls.yaml"
    model.write_text(yaml.safe_dump(cfg))
    flags = ["--model", str(model), "--data", str(data), "--budget-gflops", BUDGET, "--imgsz", "128",
             "--proxy-imgsz", "64", "--proxy-steps", "2", "--calib-batches", "2", "--val-images", "8",
             "--population", "4", "--device", "cpu"]
    return {"root": root, "flags": flags}


def _cli(capsys, *argv):
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def _study(path: Path, name: str):
    return optuna.load_study(study_name=name, storage=make_storage(f"sqlite:///{path}", heartbeat=None, read_only=True))


def _evaluated(study):
    return [t for t in study.trials if t.state.is_finished() and R.SECONDS in t.user_attrs]


def _spawn(env, cwd, *extra, heartbeat="1,3"):
    return subprocess.Popen(
        [sys.executable, "-m", "autoprune", "search", *env["flags"], *extra],
        cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env={**os.environ, "YOLO_OFFLINE": "1", "AUTOPRUNE_HEARTBEAT": heartbeat},
    )


@pytest.mark.slow
def test_search_end_to_end(env, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    code, out, err = _cli(capsys, "search", *env["flags"], "--trials", "6", "--name", "e2e", "--json")
    assert code == 0, err
    summary = json.loads(out)
    run = tmp_path / "runs/search/e2e"
    for f in ("study.db", "args.yaml", "trials.csv", "pareto.png", "pareto.html"):
        assert (run / f).is_file(), f
    assert summary["evaluated"] == 6 and summary["feasible"] >= 1 and summary["front"]

    study = _study(run / "study.db", "e2e")
    # the defaults: hessian ranking, one gene per channel group
    assert study.user_attrs[R.STUDY_CRITERION] == "hessian" and study.user_attrs[R.STUDY_SPACE]["name"] == "fine"
    trials = {t.number: t for t in study.trials}
    first = trials[0]
    assert first.user_attrs[R.KIND] == "uniform"
    assert len(set(first.params.values())) == 1  # the same ratio for every gene
    seed = trials[1]  # one-shot global pruning by the criterion, projected onto the genes, at the budget
    assert seed.user_attrs[R.KIND] == "global" and seed.params != first.params
    per_flop = trials[2]  # the same by importance per FLOP
    assert per_flop.user_attrs[R.KIND] == "global-per-flop" and per_flop.params not in (first.params, seed.params)
    assert per_flop.params == study.user_attrs[R.STUDY_GLOBAL_PER_FLOP]
    evaluated = _evaluated(study)
    assert len(evaluated) == 6
    for t in evaluated:
        a = t.user_attrs
        for key in (R.GENOME, R.KEEP, R.KEPT_CHANNELS, R.GFLOPS, R.PARAMS, R.LATENCY_MS, R.MAP50, R.MAP50_95,
                    R.MODEL_FINGERPRINT, R.IMGSZ, R.CRITERION, R.SEED):
            assert key in a, key
        assert a[R.GFLOPS] <= float(BUDGET) + 1e-9  # cheap rejection/repair: nothing over budget reaches the proxy
    kept = [json.dumps(t.user_attrs[R.KEPT_CHANNELS], sort_keys=True) for t in evaluated]
    assert len(set(kept)) == len(kept)  # no model evaluated twice
    for t in study.trials:  # rejected genomes were over budget and point at their repaired replacement
        if t.user_attrs.get(R.KIND) == "rejected":
            assert t.state.name == "PRUNED" and R.REPAIRED_INTO in t.user_attrs and R.SECONDS not in t.user_attrs
    records = [R.TrialRecord.from_trial(t) for t in study.trials]
    front = R.pareto_front(records)
    assert {r.number for r in front} == {r["number"] for r in summary["front"]}
    feasible = [r for r in records if r.feasible]
    assert all(not any(R.dominates(o, f) for o in feasible) for f in front)
    assert all(any(R.dominates(f, o) for f in front) or o in front for o in feasible)
    args = yaml.safe_load((run / "args.yaml").read_text())
    assert args["budget_gflops"] == float(BUDGET) and args["name"] == "e2e"

    # the study rereads: trials --json agrees with the search's summary
    code, out, _ = _cli(capsys, "trials", "--name", "e2e", "--pareto", "--json")
    assert code == 0
    assert set(json.loads(out)["front"]) == {r["number"] for r in summary["front"]}

    # a name that exists needs --resume, and nothing of the study is touched
    before = (run / "study.db").read_bytes()
    code, _, err = _cli(capsys, "search", *env["flags"], "--trials", "6", "--name", "e2e")
    assert code == 2 and err.strip().startswith("error: a study named 'e2e' already exists")
    assert (run / "study.db").read_bytes() == before


def test_a_data_criterion_search_stores_its_ranking(env, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # taylor ranks channels with gradients on the proxy's calibration batches
    code, out, err = _cli(capsys, "search", *env["flags"], "--trials", "2", "--criterion", "taylor", "--name", "ty",
                          "--json")
    assert code == 0, err
    study = _study(tmp_path / "runs/search/ty/study.db", "ty")
    assert study.user_attrs[R.STUDY_CRITERION] == "taylor" and study.user_attrs[R.STUDY_RANKING]
    assert len(_evaluated(study)) == 2


def test_a_distilling_proxy_is_part_of_the_study(env, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    code, _, err = _cli(capsys, "search", *env["flags"], "--trials", "2", "--proxy-distill", "1", "--name", "kd")
    assert code == 0, err
    study = _study(tmp_path / "runs/search/kd/study.db", "kd")
    assert study.user_attrs[R.STUDY_PROXY]["distill"] == 1.0 and len(_evaluated(study)) == 2
    # resuming with another proxy would mix scores of two proxies in one front: refused, nothing touched
    before = (tmp_path / "runs/search/kd/study.db").read_bytes()
    code, _, err = _cli(capsys, "search", *env["flags"], "--trials", "3", "--name", "kd", "--resume")
    assert code == 2 and err.startswith("error: study 'kd' was made with other settings: proxy.distill 1.0 (this "
                                        "run: None); resume it with the same settings (--proxy-distill 1)"), err
    assert (tmp_path / "runs/search/kd/study.db").read_bytes() == before
    # every setting that differs is named in the one line, with the flags that ask for what the study has
    code, _, err = _cli(capsys, "search", *env["flags"], "--trials", "3", "--name", "kd", "--resume",
                        "--proxy-distill", "1", "--criterion", "l1", "--space", "family", "--seed", "3")
    assert code == 2 and len(err.strip().splitlines()) == 1, err
    assert "space.name 'fine' (this run: 'yolov8')" in err and "criterion 'hessian' (this run: 'l1')" in err
    assert "seed 0 (this run: 3)" in err and "proxy.seed 0 (this run: 3)" in err
    assert "(--space fine --criterion hessian --seed 0)" in err
    assert (tmp_path / "runs/search/kd/study.db").read_bytes() == before


@pytest.mark.slow
def test_a_reconstructing_proxy_refits_every_candidate_and_apply_replays_it(env, capsys, tmp_path, monkeypatch):
    import torch

    import autoprune.reconstruct as rec
    from autoprune.channels import analyze
    from autoprune.apply import rebuild, search_calibration_batches
    from autoprune.data import load_data_config
    from autoprune.models import load_model
    from autoprune.pruner import select_indices

    monkeypatch.chdir(tmp_path)
    calls = []
    real = rec.prune_reconstructed
    monkeypatch.setattr(rec, "prune_reconstructed", lambda *a, **k: calls.append(a[1]) or real(*a, **k))
    code, _, err = _cli(capsys, "search", *env["flags"], "--trials", "2", "--reconstruct", "--name", "rc")
    assert code == 0, err
    study = _study(tmp_path / "runs/search/rc/study.db", "rc")
    assert study.user_attrs[R.STUDY_PROXY]["reconstruct"] is True
    evaluated = _evaluated(study)
    assert len(evaluated) == 2 and [t.user_attrs[R.KEPT_CHANNELS] for t in evaluated] == calls
    # resuming without it would mix two proxies: refused, naming the flag
    code, _, err = _cli(capsys, "search", *env["flags"], "--trials", "3", "--name", "rc", "--resume")
    assert code == 2 and err.startswith("error: study 'rc' was made with other settings: proxy.") and \
        "proxy.reconstruct True (this run: None)" in err and "(--reconstruct)" in err, err
    # apply rebuilds the same architecture, refit on the search's calibration images: closer to the unpruned model
    record = R.TrialRecord.from_trial(evaluated[0])
    loaded = load_model(study.user_attrs[R.STUDY_MODEL])
    data = load_data_config(study.user_attrs[R.STUDY_DATA])
    batches = search_calibration_batches(data, study.user_attrs[R.STUDY_PROXY])
    ranking = study.user_attrs[R.STUDY_RANKING]
    plain, counts, gflops = rebuild(loaded, record, imgsz=128, ranking=ranking)
    refit, counts2, gflops2 = rebuild(loaded, record, imgsz=128, ranking=ranking, batches=batches)
    assert counts == counts2 and gflops == gflops2 == record.gflops
    assert [p.shape for p in plain.parameters()] == [p.shape for p in refit.parameters()]
    graph = analyze(loaded.model, imgsz=128)
    indices = select_indices(graph, counts, {g: [torch.tensor(o) for o in per] for g, per in ranking.items()})
    before = rec.feature_errors(loaded.model, plain, graph, indices, batches)["detect_inputs_mean"]
    after = rec.feature_errors(loaded.model, refit, graph, indices, batches)["detect_inputs_mean"]
    assert after < 0.9 * before, (before, after)
    code, out, err = _cli(capsys, "apply", "--name", "rc", "--trial", str(record.number), "--epochs", "1",
                          "--batch", "4", "--device", "cpu", "--json")
    assert code == 0, err[-2000:]
    report = json.loads(out)
    assert report["reconstructed"] is True and report["pruned"]["gflops"] == pytest.approx(record.gflops, abs=1e-5)
    assert "refit by least squares" in Path(report["outputs"]["report_md"]).read_text()


@pytest.mark.slow
def test_confirm_rescores_the_best_trials_under_more_proxy_seeds(env, capsys, tmp_path, monkeypatch):
    from autoprune.proxy import ProxyEvaluator

    monkeypatch.chdir(tmp_path)
    seen = []
    real = ProxyEvaluator.evaluate

    def spy(self, model, **kw):
        seen.append(self.settings.seed)
        return real(self, model, **kw)

    monkeypatch.setattr(ProxyEvaluator, "evaluate", spy)
    code, out, err = _cli(capsys, "search", *env["flags"], "--trials", "4", "--name", "cf", "--confirm", "2",
                          "--confirm-seeds", "2", "--json")
    assert code == 0, err
    summary = json.loads(out)
    study = _study(tmp_path / "runs/search/cf/study.db", "cf")
    records = [R.TrialRecord.from_trial(t) for t in study.trials]
    ranked = sorted((r for r in records if r.feasible), key=lambda r: (-r.map50_95, r.gflops, r.number))
    top = ranked[:2] + [r for r in ranked[2:] if r.kind in R.ONE_SHOT_KINDS]  # and the one-shot plans, wherever they rank
    assert {r.kind for r in records} >= set(R.ONE_SHOT_KINDS)
    assert {r.number for r in top} >= {r.number for r in records if r.kind in R.ONE_SHOT_KINDS}
    keys = sorted(k for k in study.user_attrs if k.startswith(R.STUDY_CONFIRM_PREFIX))
    assert keys == sorted(R.confirm_key(r.number, seed) for r in top for seed in (1, 2))
    assert seen.count(0) == 4 and seen.count(1) == seen.count(2) == len(top)  # the search, then the confirmations
    confirmed = R.confirmed_scores(study.user_attrs, records)
    assert set(confirmed) == {r.number for r in top} and all(list(v) == [0, 1, 2] for v in confirmed.values())
    means = {n: sum(v.values()) / 3 for n, v in confirmed.items()}
    assert summary["recommended"]["number"] == max(means, key=lambda n: (means[n], -n))
    assert summary["confirmed"] == {str(n): {str(k): x for k, x in v.items()} for n, v in confirmed.items()}

    # resuming the finished study confirms nothing twice; `trials` shows the same recommendation
    seen.clear()
    code, _, err = _cli(capsys, "search", *env["flags"], "--trials", "4", "--name", "cf", "--resume", "--confirm", "2")
    assert code == 0 and seen == [], err
    code, out, _ = _cli(capsys, "trials", "--name", "cf")
    assert code == 0 and "confirmed under proxy seeds 0, 1, 2" in out
    assert f"trial {summary['recommended']['number']}: " in out.split("apply this one")[0].splitlines()[-1]


def test_a_genome_that_prunes_to_an_evaluated_model_is_a_duplicate():
    from types import SimpleNamespace

    from autoprune.search.driver import Search

    def counts(genome):  # two genes whose ratios round to the same channels below 0.5 and above it
        return {g: 8 if v < 0.5 else 16 for g, v in genome.items()}

    done = SimpleNamespace(number=0, user_attrs={R.SECONDS: 1.0, R.GENOME: {"a": 0.3, "b": 0.7},
                                                 R.KEPT_CHANNELS: {"a": 8, "b": 16}})
    fake = SimpleNamespace(space=SimpleNamespace(counts=counts),
                           study=SimpleNamespace(get_trials=lambda deepcopy=False: [done]))
    asked = SimpleNamespace(number=1)
    assert Search._evaluated_twin(fake, asked, {"a": 0.35, "b": 0.8}) == 0  # another genome, the same channels
    assert Search._evaluated_twin(fake, asked, {"a": 0.6, "b": 0.8}) is None


def test_the_seeded_global_trials_are_the_one_shot_plans_of_prune(env, tmp_path, monkeypatch):
    """In the fine space, trials 1 and 2 are exactly the largest global plans (by the criterion's scores and by its
    importance per FLOP) whose full GFLOPs fit the budget: what `prune --strategy global` would plan."""
    from autoprune.cost import count_gflops
    from autoprune.pruner import prune_to_counts
    from autoprune.search.driver import Search, SearchSettings
    from autoprune.strategies import per_flop_scores, plan_counts

    monkeypatch.chdir(tmp_path)
    f = env["flags"]
    opt = {k.lstrip("-").replace("-", "_"): v for k, v in zip(f[::2], f[1::2])}
    search = Search(SearchSettings(budget_gflops=float(BUDGET), model=opt["model"], data=opt["data"], imgsz=128,
                                   proxy_imgsz=64, calib_batches=2, val_images=8, device="cpu", name="seeds",
                                   space="fine", criterion="bn_scale"), log=lambda *_: None)
    base, graph, budget = search.loaded.model, search.graph, float(BUDGET)
    scores = search._channel_scores()
    stored = search.study.user_attrs
    for key, sc in ((R.STUDY_GLOBAL, scores), (R.STUDY_GLOBAL_PER_FLOP, per_flop_scores(graph, scores))):
        counts = search.space.counts(stored[key])
        assert count_gflops(prune_to_counts(base, counts, graph=graph), 128) <= budget
        # the largest: one notch lower threshold (a conv target a little above) would be over the budget
        plan = plan_counts(graph, "global", target_gflops=graph.conv_gflops(counts) * 1.0, scores=sc)
        assert plan.counts == counts
        bigger = plan_counts(graph, "global", target_gflops=graph.conv_gflops(counts) * 1.03, scores=sc)
        assert bigger.counts != counts and count_gflops(prune_to_counts(base, bigger.counts, graph=graph), 128) > budget


def test_a_candidate_under_the_budget_floor_is_filled_up_before_it_is_scored(env, tmp_path, monkeypatch):
    from autoprune.search.driver import Search, SearchSettings

    monkeypatch.chdir(tmp_path)
    f = env["flags"]
    opt = {k.lstrip("-").replace("-", "_"): v for k, v in zip(f[::2], f[1::2])}
    search = Search(SearchSettings(budget_gflops=float(BUDGET), model=opt["model"], data=opt["data"], imgsz=128,
                                   proxy_imgsz=64, device="cpu", name="floor"), log=lambda *_: None)
    lows = {g.name: g.low for g in search.space.genes}
    assert search.space.gflops(lows, 128, base_gflops=search.base_gflops) < 0.8 * float(BUDGET)
    search.study.enqueue_trial(lows)
    trial = next(t for t in iter(search.study.ask, None) if search._genome(t) == lows)  # the queue comes first
    assert search.evaluate(trial) == "rejected"  # no proxy spent on it
    attrs = search.study.trials[trial.number].user_attrs
    assert attrs[R.KIND] == "rejected" and "under the budget floor" in attrs[R.REASON]
    filled = attrs[R.REPAIRED_INTO]
    gflops = search.space.gflops(filled, 128, base_gflops=search.base_gflops)
    assert 0.8 * float(BUDGET) <= gflops <= float(BUDGET)
    assert all(filled[k] >= v for k, v in lows.items())  # the same shape, moved up toward the highs
    queued = next(t for t in iter(search.study.ask, None) if t.user_attrs.get(R.KIND) not in R.ONE_SHOT_KINDS)
    assert search._genome(queued) == filled and queued.user_attrs[R.KIND] == "filled"


@pytest.mark.slow
def test_optuna_tpe_engine_and_a_failing_candidate(env, tmp_path, monkeypatch):
    """A candidate that raises is recorded as failed with its reason, and the search goes on."""
    from autoprune.proxy import ProxyEvaluator
    from autoprune.search.driver import Search, SearchSettings

    monkeypatch.chdir(tmp_path)
    real = ProxyEvaluator.evaluate
    calls = {"n": 0}

    def flaky(self, model, **kw):
        calls["n"] += 1
        if calls["n"] == 2:
            raise RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return real(self, model, **kw)

    monkeypatch.setattr(ProxyEvaluator, "evaluate", flaky)
    f = dict(zip(env["flags"][::2], env["flags"][1::2]))
    settings = SearchSettings(
        budget_gflops=float(BUDGET), model=f["--model"], data=f["--data"], engine="optuna", sampler="tpe",
        trials=4, population=4, proxy_steps=2, calib_batches=2, proxy_imgsz=64, val_images=8, imgsz=128,
        device="cpu", name="tpe",
    )
    result = Search(settings, log=lambda *_: None).run()
    study = _study(tmp_path / "runs/search/tpe/study.db", "tpe")
    failed = [t for t in study.trials if t.state.name == "FAIL"]
    assert len(failed) == 1 and "out of memory" in failed[0].user_attrs[R.REASON]
    assert result.evaluated == 4 and len([t for t in study.trials if t.state.name == "COMPLETE"]) == 3


@pytest.mark.slow
def test_resume_after_sigkill_loses_and_repeats_nothing(env, tmp_path):
    name = "killed"
    db = tmp_path / f"runs/search/{name}/study.db"
    proc = _spawn(env, tmp_path, "--trials", "6", "--name", name)
    deadline = time.time() + 240
    done_before = []
    while time.time() < deadline and proc.poll() is None:
        time.sleep(1)
        if db.exists():
            try:
                done_before = [t for t in _study(db, name).trials if t.state.name == "COMPLETE"]
            except Exception:
                continue
            if len(done_before) >= 2:
                break
    assert len(done_before) >= 2, proc.communicate(timeout=5)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    snapshot = {t.number: (t.values, t.params) for t in _study(db, name).trials if t.state.name == "COMPLETE"}
    last_number = max(t.number for t in _study(db, name).trials)

    resumed = _spawn(env, tmp_path, "--trials", "6", "--name", name, "--resume")
    out, err = resumed.communicate(timeout=300)
    assert resumed.returncode == 0, err[-2000:]

    study = _study(db, name)
    complete = {t.number: (t.values, t.params) for t in study.trials if t.state.name == "COMPLETE"}
    assert all(complete[n] == v for n, v in snapshot.items())  # nothing completed was lost or changed
    assert len(_evaluated(study)) == 6
    assert max(study.trials, key=lambda t: t.number).number > last_number  # numbering continues
    genomes = [tuple(sorted(p.items())) for _, p in complete.values()]
    assert len(genomes) == len(set(genomes))  # no completed genome evaluated twice
    assert sum(1 for t in study.trials if t.user_attrs.get(R.KIND) == "uniform" and t.state.name == "COMPLETE") == 1


def _workers(env, cwd, storage_args, name, n_trials=6):
    procs = [_spawn(env, cwd, "--trials", str(n_trials), "--name", name, "--resume", *storage_args) for _ in range(2)]
    outs = [p.communicate(timeout=400) for p in procs]
    for p, (_, err) in zip(procs, outs):
        assert p.returncode == 0, err[-2000:]
    return procs


def _check_shared(study, n_trials):
    evaluated = _evaluated(study)
    assert len(evaluated) == n_trials  # no trial lost, none run beyond the budget
    assert len({t.number for t in evaluated}) == n_trials
    assert [t.number for t in study.trials if t.user_attrs.get(R.KIND) == "uniform"] == [0]
    assert not [t for t in study.trials if t.state.name in ("RUNNING",)]


@pytest.mark.slow
def test_two_local_workers_share_one_sqlite_study(env, tmp_path):
    _workers(env, tmp_path, [], "pair")
    _check_shared(_study(tmp_path / "runs/search/pair/study.db", "pair"), 6)


def _postgres_url():
    url = os.environ.get("AUTOPRUNE_TEST_POSTGRES")
    if not url:
        if os.environ.get("AUTOPRUNE_REQUIRE_POSTGRES"):
            pytest.fail("AUTOPRUNE_REQUIRE_POSTGRES is set but AUTOPRUNE_TEST_POSTGRES is not")
        pytest.skip("no PostgreSQL server (set AUTOPRUNE_TEST_POSTGRES; .ci/run starts one)")
    return url


@pytest.mark.slow
def test_two_workers_share_one_postgresql_study(env, tmp_path):
    url = _postgres_url()
    name = f"pg-{os.getpid()}-{int(time.time())}"
    _workers(env, tmp_path, ["--storage", url], name)
    study = optuna.load_study(study_name=name, storage=make_storage(url, heartbeat=None, read_only=True))
    _check_shared(study, 6)
    optuna.delete_study(study_name=name, storage=make_storage(url, heartbeat=None, read_only=True))


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--budget-gflops", "0.01"], "is below what the search space can reach: the smallest model it allows has"),
        (["--budget-gflops", "-3"], "--budget-gflops must be a positive number"),
        (["--storage", "postgres//nowhere"], "--storage must be a database URL"),
        (["--storage", "sqlite:relative.db"], "a SQLite --storage URL starts with sqlite:///"),
        (["--space", "missing-space.yaml"], "missing-space.yaml"),
        (["--engine", "cma"], "--engine must be one of"),
        (["--budget-floor", "1"], "--budget-floor must be in [0, 1)"),
        (["--proxy-distill", "-1"], "--proxy-distill must be a number >= 0"),
        (["--confirm", "-1"], "--confirm must be an integer >= 0"),
        (["--confirm", "2", "--confirm-seeds", "0"], "--confirm-seeds must be a positive integer"),
        (["--resume"], "--resume needs the --name"),
        (["--calib-batches", "0"], "--criterion hessian ranks channels by gradients on the calibration batches"),
        (["--calib-batches", "0", "--criterion", "l1", "--reconstruct"],
         "--reconstruct refits convs on the calibration batches, and --calib-batches 0 leaves none"),
    ],
)
def test_bad_input_is_one_error_line_and_writes_nothing(env, capsys, tmp_path, monkeypatch, extra, message):
    monkeypatch.chdir(tmp_path)
    flags = list(env["flags"])
    if "--budget-gflops" in extra:
        i = flags.index("--budget-gflops")
        del flags[i : i + 2]
    code, _, err = _cli(capsys, "search", *flags, "--trials", "2", *extra)
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and lines[0].startswith("error: "), err
    assert message in lines[0]
    assert not (tmp_path / "runs").exists()


def test_a_failure_while_ranking_channels_leaves_no_half_made_study(env, capsys, tmp_path, monkeypatch):
    """The ranking and the global plans are computed before the study is written: the same --name then starts anew."""
    from autoprune.errors import UserError
    from autoprune.search.driver import Search

    monkeypatch.chdir(tmp_path)

    def fail(self):
        raise UserError("the calibration data has class 7 but the model predicts 2 classes")

    monkeypatch.setattr(Search, "_channel_scores", fail)
    code, _, err = _cli(capsys, "search", *env["flags"], "--trials", "1", "--name", "half")
    assert code == 2 and err.strip() == "error: the calibration data has class 7 but the model predicts 2 classes"
    assert not (tmp_path / "runs" / "search" / "half").exists()
    monkeypatch.undo()
    monkeypatch.chdir(tmp_path)
    code, _, err = _cli(capsys, "search", *env["flags"], "--trials", "1", "--name", "half")
    assert code == 0, err
    assert len(_evaluated(_study(tmp_path / "runs" / "search" / "half" / "study.db", "half"))) == 1


def test_broken_and_invalid_spaces_are_one_error_line(env, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    broken = tmp_path / "broken.yaml"
    broken.write_text("genes:\n  a: {groups: [unclosed\n")
    invalid = tmp_path / "invalid.yaml"
    invalid.write_text("genes:\n  all: {groups: '*', lowest: 0.2}\n")
    for space, message in ((broken, "broken.yaml"), (invalid, "lowest")):
        code, _, err = _cli(capsys, "search", *env["flags"], "--trials", "2", "--space", str(space))
        lines = err.strip().splitlines()
        assert code == 2 and len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], err
    assert not (tmp_path / "runs").exists()
