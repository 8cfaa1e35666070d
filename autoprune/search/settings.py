"""What a search is asked for and what it answers: `SearchSettings` (checked before anything is created or
written), `SearchResult`, and the wording of a settings mismatch when a study is resumed."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from pathlib import Path

from autoprune.errors import UserError
from autoprune.imgsz import check_imgsz
from autoprune.search import records
from autoprune.search.engines import ENGINES, SAMPLERS


def _search_timing():
    from autoprune.cost import TimingProtocol

    # A search times every candidate: half a second of samples is enough to rank them (a few percent), and a busy
    # machine must not stall it. `apply` reports the final model with the full protocol.
    return TimingProtocol(min_time_s=0.5, max_time_s=8.0)


SEARCH_TIMING = _search_timing()
# --latency-model: every candidate timed end to end, or priced by the per-layer table (`search.latency`)
LATENCY_MODELS = ("measured", "predicted")
MAX_REJECTED_IN_A_ROW = 200  # proposals in a row that were duplicates or over budget: the space is exhausted


@dataclass(frozen=True)
class SearchSettings:
    """Everything a search needs; validated by `Search` before anything is created or written."""

    budget_gflops: float | None = None  # one of the two budgets at least
    budget_latency_ms: float | None = None
    budget_floor: float = 0.8  # candidates under this share of the budget are filled up to it first
    model: str | None = None  # None: the embedded demo model
    data: str | None = None  # None: the embedded demo dataset
    engine: str = "deap"
    sampler: str | None = None
    trials: int | None = None
    generations: int | None = None
    population: int = 8
    proxy_steps: int = 50
    proxy_distill: float = 0.0  # head distillation from the unpruned model in the proxy's finetune (0: off)
    reconstruct: bool = False  # refit each candidate's convs that lost inputs by least squares before its proxy
    calib_batches: int = 20
    proxy_imgsz: int = 320
    val_images: int = 200
    imgsz: int = 640  # GFLOPs and latency are measured at the deployment size
    latency_backend: str = "torch"  # the runtime latency is measured in (`autoprune.cost.BACKENDS`)
    latency_batch: int = 1
    latency_precision: str | None = None  # fp32 or fp16; None: fp16 on a CUDA device, else fp32
    # how each candidate's latency is priced: measured end to end, or predicted by the latency model with the final
    # front re-measured end to end (`autoprune.search.latency`)
    latency_model: str = "measured"
    # end-to-end timings of the one-shot plan at the latency budget that calibrate the latency model (0: none)
    latency_calibration: int = 0
    criterion: str = "hessian"  # gradient criteria keep a pruned model working; docs/BENCHMARKS.md "Methods"
    space: str | None = "fine"  # one gene per group; None or "family": the model family's space (`load_space`)
    storage: str | None = None
    name: str | None = None  # the run folder PROJECT/NAME (default: `study`, else the next free expN)
    resume: bool = False
    project: str | None = None  # the folder of the run folders (default runs/search)
    study: str | None = None  # the Optuna study's name (default: the run folder's name)
    exist_ok: bool = False  # an existing run folder without a study may take the new one
    seed: int = 0
    device: str = "auto"
    heartbeat_interval: int = 10
    grace_period: int = 40
    confirm: int = 0  # re-score the best N feasible trials under more proxy seeds once the trials are done
    confirm_seeds: int = 2  # how many more: seeds seed+1 .. seed+confirm_seeds
    # without --confirm: re-score the leader and the one-shot plans under 2 more seeds when the leader's lead over
    # the plans is within noise (`confirm.auto_confirm`, at most 6 scores)
    auto_confirm: bool = True

    @property
    def target_trials(self) -> int:
        """Candidates to evaluate in all: --trials, or --generations x --population, or 3 generations."""
        if self.trials is not None:
            return self.trials
        return (self.generations or 3) * self.population


@dataclass
class SearchResult:
    name: str
    run_dir: Path
    storage: str
    evaluated: int
    feasible: int
    front: list[records.TrialRecord]
    uniform: records.TrialRecord | None
    best: records.TrialRecord | None
    outputs: dict = field(default_factory=dict)
    confirmed: dict = field(default_factory=dict)  # {trial: {proxy seed: mAP50-95}} (`Search.confirm`)
    recommended: records.TrialRecord | None = None  # `records.recommendation`
    recommendation_reason: str | None = None  # why that trial (`records.Recommendation.reason`)
    confirm_cost: dict = field(default_factory=dict)  # auto-confirmation's extra cost: {evaluations, seconds}
    # --latency-model predicted: the front's end-to-end re-measurement, {measured, seconds} (empty: measured mode)
    remeasure_cost: dict = field(default_factory=dict)

    def as_dict(self) -> dict:
        def rec(r):
            if r is None:
                return None
            out = {k: v for k, v in asdict(r).items() if k != "attrs"}
            if records.LATENCY_PREDICTED_MS in r.attrs:  # --latency-model predicted: the prediction beside it
                out["latency_predicted_ms"] = r.attrs[records.LATENCY_PREDICTED_MS]
            return out

        beats = None
        if self.best is not None and self.uniform is not None and self.uniform.feasible:
            beats = self.best.map50_95 - self.uniform.map50_95
        out = {
            "name": self.name,
            "run_dir": str(self.run_dir),
            "storage": self.storage,
            "evaluated": self.evaluated,
            "feasible": self.feasible,
            "front": [rec(r) for r in self.front],
            "uniform": rec(self.uniform),
            "best": rec(self.best),
            "best_beats_uniform_by": beats,
            "confirmed": {str(n): {str(k): v for k, v in by_seed.items()} for n, by_seed in self.confirmed.items()},
            "recommended": rec(self.recommended),
            "recommendation_reason": self.recommendation_reason,
            "auto_confirm": dict(self.confirm_cost),
            "outputs": {k: str(v) for k, v in self.outputs.items()},
        }
        if self.remeasure_cost:
            out["remeasured_latency"] = dict(self.remeasure_cost)
        return out


def check_settings(s: SearchSettings) -> None:
    """A `UserError` naming the flag for the first setting out of range or in conflict with another."""
    def positive(name, value, integer=False):
        if value is None:
            return
        bad = isinstance(value, bool) or (integer and not isinstance(value, int)) or not value > 0
        if bad or (isinstance(value, float) and not math.isfinite(value)):
            what = "integer" if integer else "number"
            raise UserError(f"--{name.replace('_', '-')} must be a positive {what}, got {value}")

    if s.budget_gflops is None and s.budget_latency_ms is None:
        raise UserError("give a budget: --budget-gflops G, --budget-latency-ms L, or both")
    positive("budget_gflops", s.budget_gflops)
    positive("budget_latency_ms", s.budget_latency_ms)
    if not 0 <= s.budget_floor < 1:
        raise UserError(f"--budget-floor must be in [0, 1), got {s.budget_floor}")
    for name in ("trials", "generations", "population", "latency_batch"):
        positive(name, getattr(s, name), integer=True)
    from autoprune.cost.backends import PRECISIONS, check_backend

    check_backend(s.latency_backend)
    if s.latency_model not in LATENCY_MODELS:
        raise UserError(f"--latency-model must be one of {', '.join(LATENCY_MODELS)}, got {s.latency_model!r}")
    calibration = s.latency_calibration
    if isinstance(calibration, bool) or not isinstance(calibration, int) or calibration < 0:
        raise UserError(f"--latency-calibration must be 0 or a positive integer, got {s.latency_calibration}")
    if s.latency_calibration and s.budget_latency_ms is None:
        raise UserError("--latency-calibration calibrates the latency model at --budget-latency-ms: give one")
    if s.latency_precision is not None and s.latency_precision not in PRECISIONS:
        raise UserError(f"--latency-precision must be one of {', '.join(PRECISIONS)}, got {s.latency_precision!r}")
    if s.proxy_steps < 0:
        raise UserError(f"--proxy-steps must be 0 or more, got {s.proxy_steps}")
    if isinstance(s.confirm, bool) or not isinstance(s.confirm, int) or s.confirm < 0:
        raise UserError(f"--confirm must be an integer >= 0, got {s.confirm}")
    positive("confirm_seeds", s.confirm_seeds, integer=True)
    if not isinstance(s.auto_confirm, bool):
        raise UserError(f"auto_confirm must be true or false, got {s.auto_confirm!r}")
    if not (isinstance(s.proxy_distill, (int, float)) and math.isfinite(s.proxy_distill) and s.proxy_distill >= 0):
        raise UserError(f"--proxy-distill must be a number >= 0, got {s.proxy_distill}")
    for name in ("imgsz", "proxy_imgsz"):
        check_imgsz(getattr(s, name), f"--{name.replace('_', '-')}")
    if s.engine not in ENGINES:
        raise UserError(f"--engine must be one of {', '.join(ENGINES)}, got {s.engine!r}")
    if s.sampler is not None and s.sampler not in SAMPLERS:
        raise UserError(f"--sampler must be one of {', '.join(SAMPLERS)}, got {s.sampler!r}")
    if s.engine == "deap" and s.sampler not in (None, "nsga2"):
        raise UserError(f"--engine deap runs NSGA-II; --sampler {s.sampler} needs --engine optuna")
    if s.engine == "deap" and isinstance(s.population, int) and s.population < 4:  # before the model loads
        raise UserError(f"--population must be at least 4 for NSGA-II, got {s.population}")
    if s.trials is not None and s.generations is not None:
        raise UserError("give --trials or --generations (with --population), not both")
    if s.resume and s.name is None and s.study is None:
        raise UserError("--resume needs the --name (or --study) of the search to continue")


def resume_flag(key: str, value, mine=None) -> str | None:
    """The `autoprune search` flags that ask for the stored `value` of study attribute `key` (this run's: `mine`),
    where there are."""
    from autoprune.space import shipped_spaces

    if key == records.STUDY_CRITERION and isinstance(value, str):
        return f"--criterion {value}"
    if key == records.STUDY_SPACE and isinstance(value, dict) and value.get("name") in shipped_spaces():
        return f"--space {value['name']}"
    if key == records.STUDY_BUDGET_GFLOPS and isinstance(value, (int, float)):
        return f"--budget-gflops {value:g}"
    if key == records.STUDY_SEED and isinstance(value, int):
        return f"--seed {value}"
    if key in _LATENCY_FLAGS and value is not None:
        return f"{_LATENCY_FLAGS[key]} {value}"
    if key == records.STUDY_PROXY and isinstance(value, dict):  # the proxy's seed is --seed's
        mine = mine if isinstance(mine, dict) else {}
        flags = [f"{flag} {value[k]}" for flag, k in (("--proxy-steps", "steps"), ("--proxy-imgsz", "imgsz"),
                                                      ("--calib-batches", "calib_batches"),
                                                      ("--val-images", "val_images")) if k in value and
                 value[k] != mine.get(k)]
        if value.get("distill", 0.0) != mine.get("distill", 0.0):
            flags.append(f"--proxy-distill {value.get('distill', 0.0):g}")
        if bool(value.get("reconstruct")) != bool(mine.get("reconstruct")):
            flags.append("--reconstruct" if value.get("reconstruct") else "without --reconstruct")
        return " ".join(flags) or None
    return None


def difference(key: str, stored, mine) -> str:
    """`key stored (this run: mine)`, for a mapping only the entries that differ (`proxy.reconstruct ...`)."""
    if isinstance(stored, dict) and isinstance(mine, dict):
        return "; ".join(f"{key}.{k} {short(stored.get(k))} (this run: {short(mine.get(k))})"
                         for k in sorted(set(stored) | set(mine), key=str) if stored.get(k) != mine.get(k))
    return f"{key} {short(stored)} (this run: {short(mine)})"


def short(value) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


_LATENCY_FLAGS = {records.STUDY_LATENCY_BACKEND: "--latency-backend", records.STUDY_LATENCY_BATCH: "--latency-batch",
                  records.STUDY_LATENCY_PRECISION: "--latency-precision", records.STUDY_LATENCY_MODEL: "--latency-model"}


def _with_latency_defaults(stored: dict) -> dict:
    """`stored` with the latency settings a study made before they were stored was measured with: torch, batch 1,
    fp16 on a CUDA device, else fp32."""
    device = str(stored.get(records.STUDY_DEVICE) or "cpu")
    defaults = {records.STUDY_LATENCY_BACKEND: "torch", records.STUDY_LATENCY_BATCH: 1,
                records.STUDY_LATENCY_PRECISION: "fp16" if device.startswith("cuda") else "fp32",
                records.STUDY_LATENCY_MODEL: "measured"}
    return {**defaults, **stored}


def check_resumable(name: str, stored: dict, attrs: dict) -> None:
    """A `UserError` naming every setting study `name` was made with (`stored`) that this run (`attrs`) changes,
    and the flags that ask for the stored ones."""
    stored = _with_latency_defaults(stored)
    keys = (records.STUDY_MODEL_FINGERPRINT, records.STUDY_BUDGET_GFLOPS, records.STUDY_BUDGET_LATENCY_MS,
            records.STUDY_BUDGET_FLOOR, records.STUDY_IMGSZ, records.STUDY_SPACE, records.STUDY_CRITERION,
            records.STUDY_ENGINE, records.STUDY_SAMPLER, records.STUDY_SEED, records.STUDY_PROXY,
            records.STUDY_POPULATION, records.STUDY_LATENCY_BACKEND, records.STUDY_LATENCY_BATCH, records.STUDY_LATENCY_PRECISION,
            records.STUDY_LATENCY_MODEL)
    differ = [key for key in keys if stored.get(key) != attrs[key]]
    if differ:
        what = "; ".join(difference(key, stored.get(key), attrs[key]) for key in differ)
        flags = " ".join(f for f in (resume_flag(key, stored.get(key), attrs[key]) for key in differ) if f)
        raise UserError(f"study {name!r} was made with other settings: {what}; resume it with the same "
                        f"settings{f' ({flags})' if flags else ''} or pick a new --name")


__all__ = ["MAX_REJECTED_IN_A_ROW", "SEARCH_TIMING", "SearchResult", "SearchSettings", "check_resumable",
           "check_settings", "difference", "resume_flag"]
