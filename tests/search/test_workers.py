"""Several search workers on one study (threads on one SQLite file, processes on SQLite and on PostgreSQL) and a
search killed mid-trial or mid-confirmation that resumes: no trial lost, none evaluated twice, the dead worker's trial
failed once and re-run once. Split from tests/search/test_driver.py, so the suite's workers share the two files' time."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest

from autoprune.search import records as R
from autoprune.search.storage import make_storage

from conftest import CHEAP_SEARCH as CHEAP  # noqa: E402
from conftest import SUITE_PROTOCOL, run_cli  # noqa: E402
from conftest import evaluated_trials as _evaluated  # noqa: E402
from conftest import open_study as _study  # noqa: E402


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    """The tiny model, data and flags of tests/search/test_driver.py's env: a second or two per candidate."""
    from conftest import tiny_search

    return tiny_search(tmp_path_factory.mktemp("workers"))


def test_two_sqlite_workers_never_take_the_same_trial_from_one_state(tmp_path):
    """Two workers (threads, each with its own storage) pop the same queue of WAITING trials and fail the same
    RUNNING ones at once: each trial goes to exactly one of them. Optuna reads a trial's state before it writes the
    next one, and SQLite ignores the row lock it asks for, so without `storage`'s BEGIN IMMEDIATE both can win the
    same trial: a queued genome evaluated twice, or a dead worker's trial failed twice and queued twice."""
    import threading

    from optuna.trial import TrialState

    url = f"sqlite:///{tmp_path / 'race.db'}"
    study = optuna.create_study(study_name="race", storage=make_storage(url, heartbeat=(1, 2)))
    n = 20
    running = [study._storage.create_new_trial(study._study_id) for _ in range(n)]
    for i in range(n):
        study.enqueue_trial({"x": float(i)})
    workers = [optuna.load_study(study_name="race", storage=make_storage(url, heartbeat=(1, 2))) for _ in range(2)]
    won = [{"fail": [], "pop": []} for _ in workers]
    start = threading.Barrier(len(workers))

    def work(k):
        storage = workers[k]._storage
        start.wait()
        for trial_id in running:
            with contextlib.suppress(optuna.exceptions.UpdateFinishedTrialError):
                if storage.set_trial_state_values(trial_id, state=TrialState.FAIL):
                    won[k]["fail"].append(trial_id)
        start.wait()
        while (trial_id := workers[k]._pop_waiting_trial_id()) is not None:
            won[k]["pop"].append(trial_id)

    threads = [threading.Thread(target=work, args=(k,)) for k in range(len(workers))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for kind in ("fail", "pop"):
        first, second = (set(w[kind]) for w in won)
        assert not first & second, (kind, sorted(first & second))
        assert len(first | second) == n, kind


# A search worker for the tests that kill or coordinate workers: `autoprune search` with two hooks, set by
# environment variables, that make the timing of a multi-process test a matter of files, not of sleeps:
# - every proxy evaluation first touches CTL/WORKER.KIND.N (KIND "search" under the study's proxy seed 0, "confirm"
#   under another seed; N counts from 1), so a test knows where each worker is;
# - WORKER_HANG=KIND:N hangs in that evaluation (the test then SIGKILLs the worker mid-trial or mid-confirmation);
# - WORKER_WAIT=F1,F2,... holds the worker's first search evaluation until those files exist in CTL.
# Every trial a worker tells is marked with the user attribute `test_worker` = WORKER, so the study itself says which
# worker evaluated what.
_WORKER = r"""
import json, os, sys, time
from pathlib import Path

import optuna
from autoprune.cost import timing
from autoprune.proxy import ProxyEvaluator
from autoprune.search import settings

# the suite's quick latency protocol (conftest.quick_latency_protocols does this in-process): the workers' latencies
# steer nothing these tests check, and the search's own protocol times each candidate for seconds
timing.DEFAULT_PROTOCOL = settings.SEARCH_TIMING = timing.TimingProtocol(**json.loads(os.environ["WORKER_PROTOCOL"]))

ctl, me = Path(os.environ["WORKER_CTL"]), os.environ["WORKER"]
calls = {"search": 0, "confirm": 0}
evaluate, tell = ProxyEvaluator.evaluate, optuna.study.Study.tell


def hooked_evaluate(self, model, **kw):
    kind = "search" if self.settings.seed == 0 else "confirm"
    calls[kind] += 1
    (ctl / f"{me}.{kind}.{calls[kind]}").touch()
    if os.environ.get("WORKER_HANG") == f"{kind}:{calls[kind]}":
        while True:
            time.sleep(60)
    wait = [f for f in os.environ.get("WORKER_WAIT", "").split(",") if f]
    deadline = time.time() + 600
    while kind == "search" and calls[kind] == 1 and not all((ctl / f).exists() for f in wait):
        assert time.time() < deadline, f"{me}: waited 600 s for {wait}"
        time.sleep(0.2)
    return evaluate(self, model, **kw)


def marked_tell(self, trial, *args, **kwargs):
    if isinstance(trial, optuna.trial.Trial):
        trial.set_user_attr("test_worker", me)
    return tell(self, trial, *args, **kwargs)


ProxyEvaluator.evaluate, optuna.study.Study.tell = hooked_evaluate, marked_tell
from autoprune.cli import main

sys.exit(main(sys.argv[1:]))
"""

# AUTOPRUNE_HEARTBEAT ("interval,grace" seconds) for workers that must never take a live trial for a dead one, however
# loaded the machine: no trial goes 10 minutes without a heartbeat.
NO_STALE = "5,600"


def _spawn(env, cwd, worker, *extra, heartbeat=NO_STALE, hang="", wait=()):
    """A search worker process (`_WORKER`) named `worker`, controlled through the folder cwd/ctl."""
    (cwd / "ctl").mkdir(exist_ok=True)
    return subprocess.Popen(
        [sys.executable, "-c", _WORKER, "search", *env["flags"], *extra],
        cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env={**os.environ, "YOLO_OFFLINE": "1", "AUTOPRUNE_HEARTBEAT": heartbeat, "WORKER_CTL": str(cwd / "ctl"),
             "WORKER": worker, "WORKER_HANG": hang, "WORKER_WAIT": ",".join(wait),
             "WORKER_PROTOCOL": json.dumps(SUITE_PROTOCOL)},
    )


def _wait_for(path: Path, proc, timeout: float = 300.0) -> None:
    """Wait until `path` exists; fail with the worker's output if it ends first or the time runs out."""
    deadline = time.time() + timeout
    while not path.exists():
        if proc.poll() is not None or time.time() > deadline:
            proc.kill()
            out, err = proc.communicate()
            pytest.fail(f"{path.name} never appeared (exit {proc.returncode}):\n{out[-1500:]}\n{err[-3000:]}")
        time.sleep(0.2)


def _kill(proc) -> None:
    proc.send_signal(signal.SIGKILL)
    proc.communicate(timeout=60)
    assert proc.returncode == -signal.SIGKILL


def _finish(proc, timeout: float = 900.0) -> str:
    out, err = proc.communicate(timeout=timeout)
    assert proc.returncode == 0, err[-3000:]
    return out


def _retries(study) -> dict[int, optuna.trial.FrozenTrial]:
    """{number of a trial failed for a stale heartbeat: the trial that re-ran its genome}."""
    return {t.system_attrs["failed_trial"]: t for t in study.trials if "failed_trial" in t.system_attrs}


def _check_shared(study, n_trials):
    evaluated = _evaluated(study)
    assert len(evaluated) == n_trials  # no trial lost, none run beyond the budget
    assert len({t.number for t in evaluated}) == n_trials
    assert [t.number for t in study.trials if t.user_attrs.get(R.KIND) == "uniform"] == [0]
    assert not [t.number for t in study.trials if t.state.name == "RUNNING"]  # queued genomes may wait for a resume
    kept = [json.dumps(t.user_attrs[R.KEPT_CHANNELS], sort_keys=True) for t in evaluated]
    assert len(set(kept)) == len(kept)  # no model evaluated twice


def _by_worker(study) -> dict[str, set[int]]:
    """{worker: numbers of the trials it evaluated}."""
    out: dict[str, set[int]] = {}
    for t in _evaluated(study):
        out.setdefault(t.user_attrs.get("test_worker"), set()).add(t.number)
    return out


@pytest.mark.slow
def test_killed_mid_trial_then_mid_confirmation_a_search_resumes_losing_and_repeating_nothing(
        env, capsys, tmp_path, monkeypatch):
    """One worker at a time, so a short heartbeat grace cannot fail a live trial: only the worker's own trials run, and
    it looks for stale trials only between them. Killed in its third proxy evaluation; resumed with more --trials,
    killed again in its second confirming evaluation; resumed once more, in-process, to finish the confirmation."""
    from autoprune.proxy import ProxyEvaluator

    name, cheap = "killed", [*CHEAP, "--confirm", "1", "--confirm-seeds", "1"]
    db, ctl = tmp_path / f"runs/search/{name}/study.db", tmp_path / "ctl"
    first = _spawn(env, tmp_path, "w1", "--trials", "3", "--name", name, *cheap, heartbeat="1,3", hang="search:3")
    _wait_for(ctl / "w1.search.3", first)
    _kill(first)
    killed_at = time.time()
    before = _study(db, name)
    (hung,) = [t.number for t in before.trials if t.state.name == "RUNNING"]
    snapshot = {t.number: (t.values, t.params, t.user_attrs) for t in before.trials if t.state.name == "COMPLETE"}
    assert len(snapshot) == 2
    last_number = max(t.number for t in before.trials)

    # resumed with more trials: the dead worker's trial is failed once its heartbeat is 3 s old and its genome re-run
    time.sleep(max(0.0, killed_at + 4 - time.time()))
    second = _spawn(env, tmp_path, "w2", "--trials", "5", "--name", name, "--resume", *cheap, heartbeat="1,3",
                    hang="confirm:2")
    _wait_for(ctl / "w2.confirm.2", second)
    _kill(second)
    study = _study(db, name)
    complete = {t.number: (t.values, t.params, t.user_attrs) for t in study.trials if t.state.name == "COMPLETE"}
    assert all(complete[n] == v for n, v in snapshot.items())  # nothing completed was lost or changed
    _check_shared(study, 5)
    assert min(n for n in complete if n not in snapshot) > last_number  # numbering continues
    assert study.trials[hung].state.name == "FAIL" and R.SECONDS not in study.trials[hung].user_attrs
    retry = _retries(study)[hung]
    assert retry.state.name == "COMPLETE" and retry.params == study.trials[hung].params
    assert _by_worker(study) == {"w1": set(snapshot), "w2": set(complete) - set(snapshot)}
    stored = {k: v for k, v in study.user_attrs.items() if k.startswith(R.STUDY_CONFIRM_PREFIX)}
    assert len(stored) == 1  # one confirming score was stored before the kill
    trials = {t.number: (t.state, t.values, t.params) for t in study.trials}

    # the confirmation resumes: only the missing scores are computed, the stored one is kept, no trial runs again
    seeds = []
    real = ProxyEvaluator.evaluate
    monkeypatch.setattr(ProxyEvaluator, "evaluate", lambda self, m, **kw: seeds.append(self.settings.seed) or
                        real(self, m, **kw))
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("AUTOPRUNE_HEARTBEAT", "1,3")
    code, out, err = run_cli(capsys, "search", *env["flags"], "--trials", "5", "--name", name, "--resume", *cheap,
                          "--json")
    assert code == 0, err[-3000:]
    study = _study(db, name)
    records = [R.TrialRecord.from_trial(t) for t in study.trials]
    ranked = sorted((r for r in records if r.feasible), key=lambda r: (-r.map50_95, r.gflops, r.number))
    top = ranked[:1] + [r for r in ranked[1:] if r.kind in R.ONE_SHOT_KINDS]
    keys = {k for k in study.user_attrs if k.startswith(R.STUDY_CONFIRM_PREFIX)}
    assert keys == {R.confirm_key(r.number, 1) for r in top}
    assert all(study.user_attrs[k] == v for k, v in stored.items())
    assert seeds == [1] * (len(keys) - 1)  # the missing confirmations, and no search evaluation
    assert {t.number: (t.state, t.values, t.params) for t in study.trials} == trials
    assert json.loads(out)["confirmed"].keys() == {str(r.number) for r in top}


def _two_workers(env, cwd, name: str, *storage_args: str):
    """Two workers on one study of 4 trials, each held in its first evaluation until the other is in one too, so
    each evaluates trials whatever the machine's load; returns the study."""
    args = ["--trials", "4", "--name", name, "--resume", *CHEAP, *storage_args]
    procs = [_spawn(env, cwd, w, *args, wait=("a.search.1", "b.search.1")) for w in "ab"]
    for p in procs:
        _finish(p)
    url = storage_args[-1] if storage_args else f"sqlite:///{cwd / 'runs/search' / name / 'study.db'}"
    study = optuna.load_study(study_name=name, storage=make_storage(url, heartbeat=None, read_only=True))
    _check_shared(study, 4)
    workers = _by_worker(study)
    assert set(workers) == {"a", "b"} and all(workers.values()), workers  # each worker evaluated trials
    return study


@pytest.mark.slow
def test_two_local_workers_share_one_sqlite_study(env, tmp_path):
    _two_workers(env, tmp_path, "pair")


# AUTOPRUNE_HEARTBEAT for the three-worker test: a survivor fails the killed worker's trial 15 s after its last
# heartbeat; a live worker beats every second from its own thread, which a loaded machine does not stall for 15 s.
TRIO_HEARTBEAT = "1,15"


@pytest.mark.slow
def test_three_workers_one_killed_mid_trial_the_others_rerun_its_trial(env, tmp_path):
    """Worker c makes the study alone, evaluates trial 0 (the uniform genome) and hangs in its second evaluation, the
    first one-shot plan, where it is SIGKILLed. Then workers a and b resume the study; each holds its first evaluation
    until the other is in one too (`_WORKER`), so each evaluates trials whatever the machine's load. Exactly one of
    them fails c's trial once its heartbeat is stale, exactly one retry of it is queued, and one of them pops it and
    scores it (a retry is not a duplicate of the trial it re-runs); until then the survivors wait for it, as the
    study's 4 trials count it as running. Candidates cost only a validation (`CHEAP`): what is tested is the workers'
    coordination, not the proxy."""
    name, ctl = "trio", tmp_path / "ctl"
    args = ["--trials", "4", "--name", name, "--resume", "--no-auto-confirm", *CHEAP]
    c = _spawn(env, tmp_path, "c", *args, heartbeat=TRIO_HEARTBEAT, hang="search:2")
    _wait_for(ctl / "c.search.2", c)
    _kill(c)
    db = tmp_path / f"runs/search/{name}/study.db"
    (hung,) = [t for t in _study(db, name).trials if t.state.name == "RUNNING"]
    assert hung.user_attrs[R.KIND] == "global"  # trial 0 queued the one-shot plans, and the queue comes first
    survivors = [_spawn(env, tmp_path, w, *args, heartbeat=TRIO_HEARTBEAT, wait=("a.search.1", "b.search.1"))
                 for w in "ab"]
    for p in survivors:
        _finish(p)
    study = _study(db, name)
    _check_shared(study, 4)
    (dead,) = [t for t in study.trials if t.state.name == "FAIL"]  # c's: failed for its heartbeat, never told
    assert dead.number == hung.number and R.SECONDS not in dead.user_attrs and "test_worker" not in dead.user_attrs
    retries = [t for t in study.trials if t.system_attrs.get("failed_trial") == dead.number]
    assert len(retries) == 1, [(t.number, t.state.name) for t in retries]  # failed once: one retry queued
    (retry,) = retries
    assert retry.params == dead.params and retry.number > dead.number
    assert retry.state.name == "COMPLETE" and R.MAP50_95 in retry.user_attrs, (retry.state, retry.user_attrs)
    assert retry.user_attrs[R.KIND] == "global" and retry.user_attrs["test_worker"] in ("a", "b")
    workers = _by_worker(study)
    assert workers.pop("c") == {0} and set(workers) == {"a", "b"} and all(workers.values()), workers


def _postgres_url() -> str:
    """The PostgreSQL server of AUTOPRUNE_TEST_POSTGRES, reachable; with AUTOPRUNE_REQUIRE_POSTGRES=1 (CI) a missing
    or unreachable server fails the test instead of skipping it."""
    url = os.environ.get("AUTOPRUNE_TEST_POSTGRES", "")
    problem = None if url else "AUTOPRUNE_TEST_POSTGRES is not set"
    if url:
        try:
            import sqlalchemy

            engine = sqlalchemy.create_engine(url)
            with engine.connect():
                pass
            engine.dispose()
        except Exception as e:  # no driver, a bad URL, no server: all mean the same here
            problem = f"cannot connect to AUTOPRUNE_TEST_POSTGRES: {type(e).__name__}: {str(e).strip()[:300]}"
    if problem:
        if os.environ.get("AUTOPRUNE_REQUIRE_POSTGRES", "") not in ("", "0"):
            pytest.fail(f"AUTOPRUNE_REQUIRE_POSTGRES is set but {problem}")
        pytest.skip(f"no PostgreSQL server ({problem}; .ci/run starts one)")
    return url


@pytest.mark.slow
def test_two_workers_share_one_postgresql_study(env, tmp_path):
    url = _postgres_url()
    name = f"pg-{os.getpid()}-{int(time.time())}"
    try:
        _two_workers(env, tmp_path, name, "--storage", url)
    finally:
        with contextlib.suppress(KeyError):
            optuna.delete_study(study_name=name, storage=make_storage(url, heartbeat=None, read_only=True))
