"""The proxy score: BN recalibration, short finetune, quick validation; built once, repeatable per candidate.

Tiny sizes throughout: the two-class `tiny_data` set at imgsz 64 and a yolov8 layout at width 1/8 (about 0.9 M
parameters), one CPU thread (fast and steady on a shared CPU).
"""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
import torch
import yaml
from torch import nn

from autoprune.errors import UserError
from autoprune.proxy import ProxyEvaluator, ProxyResult, ProxySettings, Stopwatch, recalibrate_bn

SMALL = dict(imgsz=64, calib_batches=2, steps=2, batch=4, val_images=4, train_images=8, device="cpu", threads=1)


@pytest.fixture(scope="session")
def tiny_model_yaml(tmp_path_factory) -> Path:
    """A yolov8 layout at width 1/8 with two classes (matches tiny_data)."""
    from autoprune import _ultralytics  # noqa: F401
    from ultralytics.nn.tasks import yaml_model_load

    d = yaml_model_load("yolov8n.yaml")
    cfg = {"nc": 2, "depth_multiple": 0.33, "width_multiple": 0.125, "max_channels": 1024,
           "backbone": d["backbone"], "head": d["head"]}
    path = tmp_path_factory.mktemp("tiny_model") / "tiny8.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


@pytest.fixture(scope="module")
def tiny_model(tiny_model_yaml) -> nn.Module:
    from autoprune.models import load_model

    return load_model(tiny_model_yaml, seed=0).model


@pytest.fixture(scope="module")
def evaluator(tiny_data) -> ProxyEvaluator:
    return ProxyEvaluator(tiny_data, ProxySettings(**SMALL))


pytestmark = pytest.mark.usefixtures("one_thread")


def _params(model: nn.Module) -> dict:
    return {k: v.detach().cpu().clone() for k, v in model.named_parameters()}


# ---------------------------------------------------------------------------------------------- settings
@pytest.mark.parametrize("field, value", [
    ("imgsz", 100), ("imgsz", 0), ("calib_batches", -1), ("steps", -5), ("batch", 0), ("val_images", 0),
    ("lr", 0.0), ("lr", 2.0), ("seed", -1), ("threads", -1), ("recalibrate", "yes"), ("device", "tpu"),
    ("distill", -1.0), ("distill", float("nan")), ("distill", True),
])
def test_settings_errors_name_the_field(field, value):
    with pytest.raises(UserError) as e:
        ProxySettings(**{field: value})
    assert str(e.value).startswith(field)


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_a_gpu_that_does_not_exist_is_a_user_error():
    with pytest.raises(UserError, match="device 'cuda:0' does not exist"):
        ProxySettings(device="cuda:0")


def test_defaults_are_the_documented_ones():
    s = ProxySettings()
    assert (s.imgsz, s.calib_batches, s.steps, s.seed, s.device) == (320, 20, 50, 0, "auto")
    with pytest.raises(Exception):
        s.steps = 3  # frozen


# ---------------------------------------------------------------------------------------------- BN recalibration
def _bn_input_stats(model: nn.Module, bn: nn.BatchNorm2d, batches) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean over batches of the per-batch channel mean and unbiased variance of what `bn` sees in train mode."""
    m = copy.deepcopy(model).train()
    bn_copy = dict(m.named_modules())[next(n for n, x in model.named_modules() if x is bn)]
    seen = []
    handle = bn_copy.register_forward_pre_hook(lambda mod, inp: seen.append(inp[0].detach().clone()))
    with torch.no_grad():
        for b in batches:
            m(b)
    handle.remove()
    means = torch.stack([x.mean((0, 2, 3)) for x in seen])
    vars_ = torch.stack([x.var((0, 2, 3), unbiased=True) for x in seen])
    return means.mean(0), vars_.mean(0)


def test_recalibrate_bn_matches_the_batch_statistics_of_the_calibration_data(tiny_model):
    model = copy.deepcopy(tiny_model)
    bns = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    first, deep = bns[0], bns[len(bns) // 2]
    g = torch.Generator().manual_seed(0)
    batches = [torch.rand(4, 3, 64, 64, generator=g) * (i + 1) / 3 for i in range(3)]  # different stats per batch
    want_first = _bn_input_stats(model, first, batches)
    want_deep = _bn_input_stats(model, deep, batches)
    before = (deep.running_mean.clone(), deep.running_var.clone())
    params = _params(model)
    momentum = first.momentum

    out = recalibrate_bn(model, batches)

    assert out is model and not model.training
    assert not torch.allclose(deep.running_mean, before[0])  # it changed ...
    for bn, (mean, var) in ((first, want_first), (deep, want_deep)):  # ... to the calibration data's statistics
        torch.testing.assert_close(bn.running_mean, mean, rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(bn.running_var, var, rtol=1e-4, atol=1e-5)
        assert int(bn.num_batches_tracked) == len(batches)
    assert first.momentum == momentum  # restored
    assert all(torch.equal(p, params[k]) for k, p in _params(model).items())  # no parameter moved


def test_evaluate_recalibrates_on_the_fixed_calibration_batches(evaluator, tiny_model):
    import contextlib

    ref = copy.deepcopy(tiny_model).to(memory_format=torch.channels_last)
    amp = torch.autocast("cpu", dtype=evaluator.amp_dtype) if evaluator.amp_dtype else contextlib.nullcontext()
    with amp:  # the same precision as the evaluator's
        recalibrate_bn(ref, [(b["img"].float() / 255).contiguous(memory_format=torch.channels_last)
                             for b in evaluator.calibration_batches()])
    m = copy.deepcopy(tiny_model)
    r = evaluator.evaluate(m, steps=0)
    assert r.recalibrated and r.steps == 0
    for (name, a), b in zip(m.named_buffers(), ref.buffers()):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5, msg=name)

    untouched = copy.deepcopy(tiny_model)
    evaluator.evaluate(untouched, recalibrate=False, steps=0)
    for (name, a), b in zip(untouched.named_buffers(), tiny_model.buffers()):
        assert torch.equal(a, b), name


# ---------------------------------------------------------------------------------------------- finetune steps
def test_zero_steps_leave_the_weights_unchanged_and_steps_change_them(evaluator, tiny_model):
    before = _params(tiny_model)
    m0 = copy.deepcopy(tiny_model)
    r0 = evaluator.evaluate(m0, steps=0)
    assert r0.train_loss == () and "train" not in r0.breakdown
    assert all(torch.equal(p, before[k]) for k, p in _params(m0).items())

    m2 = copy.deepcopy(tiny_model)
    r2 = evaluator.evaluate(m2, steps=2)
    assert r2.steps == 2 and len(r2.train_loss) == 2 and r2.breakdown["train"] > 0
    after = _params(m2)
    changed = [k for k in after if not torch.equal(after[k], before[k])]
    assert len(changed) > len(after) // 2
    assert not any(".dfl" in k for k in changed)  # the DFL projection stays frozen, as in Ultralytics
    assert all(torch.equal(p, before[k]) for k, p in _params(tiny_model).items())  # the caller's original is intact


# ---------------------------------------------------------------------------------------------- distillation
def _teacher(tiny_model) -> nn.Module:
    t = copy.deepcopy(tiny_model)
    with torch.no_grad():
        for p in t.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=torch.Generator().manual_seed(p.numel())))
    return t


def test_distillation_adds_the_weighted_head_term_to_the_loss(tiny_data, tiny_model):
    teacher = _teacher(tiny_model)
    first = {}
    for w in (0.0, 1.0, 2.0):
        ev = ProxyEvaluator(tiny_data, ProxySettings(**SMALL, distill=w))
        ev.set_teacher(teacher)
        first[w] = ev.evaluate(copy.deepcopy(tiny_model), steps=2).train_loss[0]  # the first step's loss
    kd = first[1.0] - first[0.0]
    assert kd > 0  # the teacher differs from the student
    assert first[2.0] - first[0.0] == pytest.approx(2 * kd, rel=1e-4)  # linear in the weight, same detection term


def test_teacher_outputs_are_computed_once_and_the_teacher_is_left_alone(tiny_data, tiny_model, monkeypatch):
    teacher = _teacher(tiny_model).train()
    before = _params(teacher)
    ev = ProxyEvaluator(tiny_data, ProxySettings(**SMALL, distill=1.0))
    ev.set_teacher(teacher)
    calls = []
    inner = ev._teacher.forward
    monkeypatch.setattr(ev._teacher, "forward", lambda *a, **k: calls.append(1) or inner(*a, **k))
    r1 = ev.evaluate(copy.deepcopy(tiny_model), steps=2)
    assert len(calls) == 2  # one forward per finetune batch
    r2 = ev.evaluate(copy.deepcopy(tiny_model), steps=2)
    assert len(calls) == 2 and (r1.map50_95, r1.train_loss) == (r2.map50_95, r2.train_loss)
    ev.evaluate(copy.deepcopy(tiny_model), steps=3)
    assert len(calls) == 3  # only the new batch
    assert teacher.training and all(torch.equal(p, before[k]) for k, p in _params(teacher).items())
    assert all(p.requires_grad for p in teacher.parameters())


def test_distillation_without_a_teacher_is_a_programming_error(tiny_data, tiny_model):
    ev = ProxyEvaluator(tiny_data, ProxySettings(**SMALL, distill=1.0))
    with pytest.raises(ValueError, match="set_teacher"):
        ev.evaluate(copy.deepcopy(tiny_model), steps=1)


# ---------------------------------------------------------------------------------------------- determinism
def test_the_same_candidate_scores_the_same_whatever_ran_before(evaluator, tiny_model, tiny_data):
    other = copy.deepcopy(tiny_model)
    with torch.no_grad():
        for p in other.parameters():
            p.add_(0.01 * torch.randn_like(p))

    a = copy.deepcopy(tiny_model)
    r1 = evaluator.evaluate(a, steps=3)
    evaluator.evaluate(other, steps=5)  # a different candidate in between, with a different number of steps
    b = copy.deepcopy(tiny_model)
    r2 = evaluator.evaluate(b, steps=3)

    assert isinstance(r1, ProxyResult)
    assert (r1.map50, r1.map50_95, r1.precision, r1.recall) == (r2.map50, r2.map50_95, r2.precision, r2.recall)
    assert r1.train_loss == r2.train_loss and len(r1.train_loss) == 2
    pa, pb = _params(a), _params(b)
    assert all(torch.equal(pa[k], pb[k]) for k in pa)  # the finetune itself is bit-for-bit repeatable

    fresh = ProxyEvaluator(tiny_data, ProxySettings(**SMALL))  # another process would build this one
    c = copy.deepcopy(tiny_model)
    r3 = fresh.evaluate(c, steps=3)
    assert (r3.map50, r3.map50_95, r3.train_loss) == (r1.map50, r1.map50_95, r1.train_loss)
    assert all(torch.equal(v, pa[k]) for k, v in _params(c).items())


def test_the_seed_picks_the_subsets_and_the_batch_order(tiny_data):
    a = ProxyEvaluator(tiny_data, ProxySettings(**{**SMALL, "val_images": 2, "seed": 0}))
    b = ProxyEvaluator(tiny_data, ProxySettings(**{**SMALL, "val_images": 2, "seed": 0}))
    c = ProxyEvaluator(tiny_data, ProxySettings(**{**SMALL, "val_images": 2, "seed": 1}))
    files = [[f for batch in e._val_batches for f in batch["im_file"]] for e in (a, b, c)]
    assert files[0] == files[1] and len(files[0]) == 2
    assert a._train_order == b._train_order
    assert (files[0], a._train_order) != (files[2], c._train_order)


# ---------------------------------------------------------------------------------------------- built once
def test_datasets_and_validator_are_built_once_not_per_candidate(tiny_data, tiny_model, monkeypatch):
    import ultralytics.data

    import autoprune.batches as batches
    import autoprune.proxy as proxy

    counts = {"dataset": 0, "validator": 0, "load": 0}

    def counting(name, fn):
        def wrapper(*a, **k):
            counts[name] += 1
            return fn(*a, **k)

        return wrapper

    monkeypatch.setattr(ultralytics.data, "build_yolo_dataset", counting("dataset", ultralytics.data.build_yolo_dataset))
    monkeypatch.setattr(proxy, "make_validator", counting("validator", proxy.make_validator))
    monkeypatch.setattr(batches, "load_items", counting("load", batches.load_items))
    ev = ProxyEvaluator(tiny_data, ProxySettings(**{**SMALL, "steps": 1}))
    built = dict(counts)
    assert built == {"dataset": 2, "validator": 1, "load": 2}  # train + val, once each
    for _ in range(3):
        ev.evaluate(copy.deepcopy(tiny_model))
    assert counts == built


def test_calibration_images_do_not_depend_on_the_finetune_length(tmp_path):
    # A data criterion ranks channels on the calibration batches: `prune` (no finetune) and a search whose proxy
    # finetunes for many steps must rank alike. 16 train images: 8 calibrate; 1, 4 and 12 steps of 4 draw pools of
    # 8, 16 and 16 (capped by train_images) images.
    from conftest import make_tiny_dataset

    data = make_tiny_dataset(tmp_path, n_train=16)
    files = sorted(tmp_path.rglob("*"))
    base = {**SMALL, "train_images": 16}

    def calib(steps):
        ev = ProxyEvaluator(data, ProxySettings(**{**base, "steps": steps}))
        return ev, [(b["img"].sum().item(), b["cls"].flatten().tolist()) for b in ev.calibration_batches()]

    ev0, want = calib(0)
    for steps in (1, 4, 12):
        ev, got = calib(steps)
        assert got == want, steps
    assert ev0.train_pool_images == 8 and ev.train_pool_images == 16  # the finetune pool did grow
    assert len({x[0] for x in want}) == len(want)  # distinct batches: the check compares something
    assert sorted(tmp_path.rglob("*")) == files  # no labels/*.cache written into the dataset


def test_calibration_batches_alone_are_the_evaluators(tiny_data):
    # apply, prune and the benchmarks draw calibration batches without building an evaluator; they must be the very
    # batches a search's proxy recalibrates and ranks channels on.
    from autoprune.batches import calibration_batches

    settings = ProxySettings(**{**SMALL, "steps": 3, "seed": 1})
    want = ProxyEvaluator(tiny_data, settings).calibration_batches()
    got = calibration_batches(tiny_data, imgsz=settings.imgsz, calib_batches=settings.calib_batches,
                              batch=settings.batch, seed=settings.seed, train_images=settings.train_images)
    assert len(got) == len(want) == settings.calib_batches
    for g, w in zip(got, want):
        assert torch.equal(g["img"], w["img"]) and torch.equal(g["cls"], w["cls"])
        assert torch.equal(g["bboxes"], w["bboxes"]) and torch.equal(g["batch_idx"], w["batch_idx"])
    other = calibration_batches(tiny_data, imgsz=settings.imgsz, calib_batches=settings.calib_batches,
                                batch=settings.batch, seed=2, train_images=settings.train_images)
    assert any(not torch.equal(o["img"], w["img"]) for o, w in zip(other, want))  # the seed matters


def test_evaluate_leaves_the_cached_batches_alone(evaluator, tiny_model):
    def snapshot():
        val = [(b["img"].sum().item(), b["batch_idx"].tolist(), b["bboxes"].sum().item()) for b in evaluator._val_batches]
        pool = [(it["img"].sum().item(), it["batch_idx"].tolist(), it["cls"].tolist()) for it in evaluator._pool]
        return val, pool

    before = snapshot()
    evaluator.evaluate(copy.deepcopy(tiny_model), steps=2)
    assert snapshot() == before


# ---------------------------------------------------------------------------------------------- validation wiring
class _Oracle(nn.Module):
    """Returns, batch after batch, the ground-truth boxes as raw predictions (xywh pixels + class scores)."""

    def __init__(self, batches, nc: int, imgsz: int):
        super().__init__()
        self.names = {i: str(i) for i in range(nc)}
        self.outputs = []
        for b in batches:
            n = len(b["img"])
            per_image = [(b["batch_idx"] == i).nonzero().flatten() for i in range(n)]
            a = max(1, max(len(ix) for ix in per_image))
            out = torch.zeros(n, 4 + nc, a)
            for i, ix in enumerate(per_image):
                out[i, :4, : len(ix)] = (b["bboxes"][ix] * imgsz).T
                out[i, 4 + b["cls"][ix].long().flatten(), torch.arange(len(ix))] = 0.9
            self.outputs.append(out)

    def forward(self, x):
        return self.outputs.pop(0), {}


def test_perfect_predictions_score_map_one(evaluator):
    oracle = _Oracle(evaluator._val_batches, nc=2, imgsz=64)
    m = evaluator._validate(oracle, Stopwatch(torch.device("cpu")))
    # 0.995 is a perfect score under Ultralytics' 101-point interpolated AP
    assert m["metrics/mAP50(B)"] == pytest.approx(0.995, abs=1e-6)
    assert m["metrics/mAP50-95(B)"] == pytest.approx(0.995, abs=1e-6)
    assert m["metrics/precision(B)"] == pytest.approx(1.0) and m["metrics/recall(B)"] == pytest.approx(1.0)


def test_a_model_for_other_classes_is_a_user_error(evaluator):
    from autoprune.models import load_model

    with pytest.raises(UserError, match="predicts 80 classes"):
        evaluator.evaluate(load_model("yolov8n.yaml").model)


# ---------------------------------------------------------------------------------------------- command line
@pytest.fixture
def cli(monkeypatch):
    """Run `autoprune proxy ...` in-process with only this command registered (others may not exist yet)."""
    import autoprune.cli as cli_mod

    monkeypatch.setattr(cli_mod, "COMMANDS", {"proxy": cli_mod.COMMANDS["proxy"]})
    return lambda *argv: cli_mod.main(["proxy", *map(str, argv)])


def test_cli_scores_a_model(cli, capsys, tiny_data, tiny_model_yaml):
    code = cli("--model", tiny_model_yaml, "--data", tiny_data, "--imgsz", 64, "--calib-batches", 1, "--steps", 1,
               "--batch", 4, "--val-images", 4, "--device", "cpu", "--threads", 1, "--json")
    out = capsys.readouterr().out
    assert code == 0
    res = json.loads(out)
    assert 0.0 <= res["map50_95"] <= res["map50"] <= 1.0
    assert res["val_images"] == 4 and res["seconds"] > 0 and set(res["breakdown"]) >= {"calibrate", "train"}
    assert res["gflops"] > 0 and res["latency_ms"] > 0


def test_cli_distils_as_a_search_with_proxy_distill_does(cli, capsys, tiny_data, tiny_model_yaml):
    common = ["--model", tiny_model_yaml, "--data", tiny_data, "--keep", 0.5, "--criterion", "l1", "--imgsz", 64,
              "--calib-batches", 1, "--steps", 2, "--batch", 4, "--val-images", 4, "--device", "cpu", "--threads", 1,
              "--no-latency", "--json"]
    assert cli(*common) == 0
    plain = json.loads(capsys.readouterr().out)
    assert cli(*common, "--distill", 1) == 0
    distilled = json.loads(capsys.readouterr().out)
    assert plain["settings"]["distill"] == 0.0 and distilled["settings"]["distill"] == 1.0
    assert distilled["train_loss"] != plain["train_loss"]  # the same batches, plus the distillation term
    assert cli(*common, "--distill", -1) == 2
    assert capsys.readouterr().err.startswith("error: distill must be a number >= 0")


def test_cli_prunes_by_keep_and_by_genome(cli, capsys, tmp_path, tiny_data, tiny_model, tiny_model_yaml, monkeypatch):
    import autoprune.pruner
    from autoprune.channels import analyze
    from autoprune.cost import count_gflops
    from autoprune.space import load_space

    ranked = []  # (criterion, whether calibration batches came with it) of every ranking the command asks for
    real = autoprune.pruner.rank_channels

    def spy(model, graph, criterion="l1", ctx=None, *, batches=None, **kw):
        ranked.append((criterion, bool(batches)))
        return real(model, graph, criterion, ctx, batches=batches, **kw)

    monkeypatch.setattr(autoprune.pruner, "rank_channels", spy)

    common = ["--model", tiny_model_yaml, "--data", tiny_data, "--imgsz", 64, "--calib-batches", 1, "--steps", 0,
              "--batch", 4, "--val-images", 4, "--device", "cpu", "--no-latency", "--json"]
    full = count_gflops(tiny_model, 64)
    assert cli(*common, "--keep", 0.5) == 0
    by_keep = json.loads(capsys.readouterr().out)
    assert 0 < by_keep["gflops"] < 0.6 * full and by_keep["keep"] == 0.5
    assert ranked == [("hessian", True)]  # the search's default ranking, on the proxy's calibration batches
    assert cli(*common, "--keep", 0.5, "--criterion", "l1") == 0
    assert json.loads(capsys.readouterr().out)["gflops"] == by_keep["gflops"] and ranked[-1] == ("l1", False)
    import autoprune.candidate as candidate

    refits = []  # calibration batches handed to each refit
    real_build = candidate.build
    monkeypatch.setattr(candidate, "build", lambda *a, **k: (k.get("batches") is not None
                                                             and refits.append(len(k["batches"]))) or real_build(*a, **k))
    assert cli(*common, "--keep", 0.5, "--reconstruct") == 0
    refit = json.loads(capsys.readouterr().out)
    assert refit["reconstruct"] is True and refit["gflops"] == by_keep["gflops"] and refits == [1]

    space = load_space("fine", analyze(tiny_model), tiny_model)  # the default --space, as the search's
    genome = tmp_path / "genome.yaml"
    genome.write_text(yaml.safe_dump({name: space.gene(name).low for name in space.names}))
    assert cli(*common, "--genome", genome) == 0
    by_genome = json.loads(capsys.readouterr().out)
    assert 0 < by_genome["gflops"] < full and by_genome["genome"] == str(genome)

    # depth and swap genes: the elements and fits a search would make (measured order, swaps fitted on the images)
    from autoprune.depth import rank_elements

    ops = load_space("yolov8-ops", analyze(tiny_model), tiny_model)
    genome.write_text(yaml.safe_dump({**ops.highs(), **{g.name: g.low for g in ops.depth_genes}}))
    built = []
    monkeypatch.setattr(candidate, "build", lambda *a, **k: built.append(k) or real_build(*a, **k))
    assert cli(*common, "--genome", genome, "--space", "yolov8-ops") == 0
    kw, = built
    assert kw["swap_batches"] is not None and len(kw["swap_batches"]) == 1
    orders = {k: v for k, v in kw["ranking"].items() if k.startswith("depth:")}
    assert orders and orders == {k: v for k, v in rank_elements(tiny_model, kw["swap_batches"]).items() if k in orders}

    genome.write_text("no_such_gene: 0.5\n")
    assert cli(*common, "--genome", genome) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error:") and "no_such_gene" in err[0]


def _broken(tmp_path, tiny_data):
    p = tmp_path / "broken.yaml"
    p.write_text("train: images/train\nval: [images/val\n")
    return p


def _no_images(tmp_path, tiny_data):
    p = tmp_path / "noimages.yaml"
    p.write_text("train: nowhere/train\nval: nowhere/val\nnames: [a, b]\n")
    return p


@pytest.mark.parametrize("args, words", [
    (lambda tmp, data: ["--data", tmp / "missing.yaml"], "data YAML not found"),
    (lambda tmp, data: ["--data", _no_images(tmp, data)], "images not found"),
    (lambda tmp, data: ["--data", _broken(tmp, data)], "cannot parse data YAML"),
    (lambda tmp, data: ["--data", data, "--imgsz", 100], "imgsz must be a positive multiple of 32"),
    (lambda tmp, data: ["--data", data, "--device", "tpu"], "device must be"),
    (lambda tmp, data: ["--data", data, "--keep", 1.5], "--keep must lie in (0, 1]"),
    (lambda tmp, data: ["--data", data, "--keep", 0.5, "--calib-batches", 0], "--calib-batches 0 leaves none"),
    (lambda tmp, data: ["--data", data, "--keep", 0.5, "--criterion", "taylr"], "unknown criterion 'taylr'"),
    (lambda tmp, data: ["--data", data, "--keep", 0.5, "--criterion", "l1", "--calib-batches", 0, "--reconstruct"],
     "--reconstruct refits convs on the calibration batches"),
    pytest.param(lambda tmp, data: ["--data", data, "--device", "cuda:0"], "does not exist",
                 marks=pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")),
])
def test_cli_bad_inputs_are_one_error_line(cli, capsys, tmp_path, tiny_data, tiny_model_yaml, args, words):
    code = cli("--model", tiny_model_yaml, "--device", "cpu", *args(tmp_path, tiny_data))
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2
    assert len(err) == 1 and err[0].startswith("error:") and words in err[0], err


def test_mixed_precision_leaves_no_patch_behind(evaluator, tiny_model, tiny_data):
    m = copy.deepcopy(tiny_model)
    evaluator.evaluate(m, steps=1)
    assert "_inference" not in vars(m.model[-1])  # the float32-decode patch is gone again
    fp32 = ProxyEvaluator(tiny_data, ProxySettings(**{**SMALL, "amp": False}))
    assert fp32.amp_dtype is None and fp32.precision == "fp32"
    r = fp32.evaluate(copy.deepcopy(tiny_model), steps=1)
    assert len(r.train_loss) == 2
