"""Operator swaps (autoprune/swap.py, the `swap:` key of search spaces, `prune --swap`): the least-squares init beats
a fresh module and reproduces a conv that has the replacement's structure, GFLOPs of widths + depth + swaps are
predicted exactly, replay is exact, plain Ultralytics loads, fuses, predicts and exports a swapped checkpoint, bad
input is one error line."""

import copy
import json
import math
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch
from conftest import assert_user_error, run_cli

from autoprune.candidate import build, rank, ranking_as_lists, replay
from autoprune.channels import analyze
from autoprune.cost import count_gflops
from autoprune.errors import UserError
from autoprune.models import load_model, save_checkpoint
from autoprune.space import load_space, read_space_file
from autoprune.space.build import SPACES_DIR
from autoprune.swap import KINDS, _fit_site, _new_module, _pre_act, find_sites, swap_convs, swap_key

IMGSZ = 64
X = torch.rand(2, 3, IMGSZ, IMGSZ, generator=torch.Generator().manual_seed(0))


@pytest.fixture(scope="module")
def v8():
    torch.manual_seed(0)
    m = load_model("yolov8n.yaml").model.eval()
    return m, analyze(m, imgsz=IMGSZ)


def _conv(c1, c2, s, seed):
    """An Ultralytics Conv with random weights and BatchNorm statistics (eval mode)."""
    from ultralytics.nn.modules.conv import Conv

    torch.manual_seed(seed)
    m = Conv(c1, c2, 3, s).eval()
    m.bn.running_mean.uniform_(-0.5, 0.5)
    m.bn.running_var.uniform_(0.5, 2.0)
    m.bn.weight.data.uniform_(0.5, 1.5)
    m.bn.bias.data.uniform_(-0.5, 0.5)
    return m


def _structured(m, kind, seed):
    """Give Conv `m` a weight its `kind` replacement represents exactly."""
    g = torch.Generator().manual_seed(seed)
    c2, c1, k, _ = m.conv.weight.shape
    if kind == "dws":
        w = torch.randn(c2, c1, 1, 1, generator=g) * torch.randn(1, c1, k, k, generator=g)
    elif kind.startswith("group"):
        gr = int(kind[5:])
        w = torch.zeros(c2, c1, k, k)
        a, b = c1 // gr, c2 // gr
        for j in range(gr):
            w[j * b:(j + 1) * b, j * a:(j + 1) * a] = torch.randn(b, a, k, k, generator=g)
    else:  # factor: a sum of min(c1, c2) separable terms
        cm = min(c1, c2)
        v = torch.randn(cm, c1, k, generator=g)
        h = torch.randn(c2, cm, k, generator=g)
        w = torch.einsum("omx,miy->oiyx", h, v)
    m.conv.weight.data.copy_(w)


def _error(new, orig, xs):
    with torch.no_grad():
        sse = sum(float((_pre_act(new.eval(), x) - _pre_act(orig, x)).pow(2).sum()) for x in xs)
        return sse / sum(float(_pre_act(orig, x).pow(2).sum()) for x in xs)


@pytest.mark.parametrize("kind", KINDS[1:])
@pytest.mark.parametrize("stride", [1, 2])
def test_least_squares_init_beats_a_fresh_module_and_reproduces_a_representable_conv(kind, stride):
    g = torch.Generator().manual_seed(1)
    xs = [torch.randn(2, 16, 12, 12, generator=g) for _ in range(2)]
    orig = _conv(16, 24, stride, seed=2)
    new, rep = _fit_site(orig, kind, xs, ridge=1e-6, max_samples=4096, seed=0)
    assert new(xs[0]).shape == orig(xs[0]).shape
    measured = _error(new, orig, xs)
    assert math.isclose(measured, rep["rel_error"], rel_tol=0.05, abs_tol=1e-6)  # the samples stand for all positions
    assert rep["rel_error"] <= rep["init_error"] + 1e-9
    torch.manual_seed(3)
    fresh = _new_module(kind, 16, 24, 3, stride, orig.act)
    assert measured < 0.9 * _error(fresh, orig, xs)
    _structured(orig, kind, seed=4)
    exact, rep = _fit_site(orig, kind, xs, ridge=1e-6, max_samples=4096, seed=0)
    assert _error(exact, orig, xs) < 1e-6 and rep["rel_error"] < 1e-6 and rep["weight_error"] < 1e-6
    plain, rep = _fit_site(orig, kind, None, ridge=1e-6, max_samples=4096, seed=0)  # weights only: exact as well
    assert _error(plain, orig, xs) < 1e-6 and rep["rel_error"] is None


def test_space_predicts_the_gflops_of_widths_depth_and_swaps_exactly(v8):
    model, graph = v8
    space = load_space("yolov8-ops", graph, model)
    assert {g.kind for g in space.genes} == {"width", "depth", "swap"}
    assert space.uniform(0.5)["ops.down.1"] == len(space._by_name["ops.down.1"].choices) - 1  # keep
    ranking = rank(model, graph, "l1")
    rng = np.random.default_rng(0)
    genomes = [space.random(rng) for _ in range(3)]
    genomes.append({**space.uniform(0.6), "ops.bottlenecks": 0.0, "ops.down.3": 1.0, "ops.down.19": 4.0,
                    "depth.4.m": 1.0})
    for imgsz in (IMGSZ, 2 * IMGSZ):
        base = count_gflops(model, imgsz)
        for genome in genomes[:2] if imgsz != IMGSZ else genomes:
            counts = space.counts(genome)
            assert any(v for k, v in counts.items() if k.startswith("swap:"))
            built = build(model, counts, graph=graph, ranking=ranking).model
            got = count_gflops(built, imgsz)
            assert math.isclose(space.gflops(genome, imgsz, base_gflops=base), got, rel_tol=1e-9)
    assert space.from_counts(space.counts(genomes[-1]))["ops.down.19"] == 4.0


def test_replay_rebuilds_the_same_model(v8):
    model, graph = v8
    space = load_space("yolov8-ops", graph, model)
    genome = {**space.uniform(0.7), "ops.down.3": 0.0, "ops.bottlenecks": 4.0, "depth.12.m": 0.0}
    counts = json.loads(json.dumps(space.counts(genome)))  # as a trial stores it
    assert counts[swap_key("3")] == KINDS.index("dws") and counts[swap_key("4.m.0.cv1")] == KINDS.index("factor")
    ranking = rank(model, graph, "l1")
    built = build(model, counts, graph=graph, ranking=ranking).model
    gflops = count_gflops(built, IMGSZ)
    again, _, g2 = replay(model, counts, criterion="l1", imgsz=IMGSZ, expected_gflops=gflops,
                          ranking=json.loads(json.dumps(ranking_as_lists(ranking))))
    assert g2 == gflops and isinstance(again.model[3], torch.nn.Sequential) and again.model[3].i == 3
    a, b = built.state_dict(), again.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    with pytest.raises(UserError, match="swaps conv '2.cv1', which is no k x k Conv"):
        replay(model, {**counts, swap_key("2.cv1"): 1}, criterion="l1", imgsz=IMGSZ, expected_gflops=gflops)


@pytest.mark.parametrize("swap, pattern", [
    ({"s": {"convs": "2.cv1"}}, "swap.s.convs: conv '2.cv1' is a 1x1 conv; swaps need a k x k Conv with k > 1"),
    ({"s": {"convs": "0", "kinds": "group8"}}, "conv '0' (layer 0) cannot take group8: its channels 3 -> 16 do not "
                                              "divide by 8"),
    ({"s": {"convs": "0", "kinds": "dws"}}, "conv '0' (layer 0) cannot take dws: it is the model's first conv"),
    ({"s": {"kind": "dws"}}, "unknown key swap.s.kind (did you mean 'kinds'?)"),
    ({"s": {"kinds": "dwss"}}, "swap.s.kinds: must be one of dws, group2, group4, group8, factor, got 'dwss' "
                               "(did you mean 'dws'?)"),
    ({"s": {"layers": 9}}, "swap.s: selects no k x k Conv (layers 9 (SPPF) has none)"),
    ({"a": {"convs": "1"}, "b": {"layers": 1}}, "conv '1' is selected by both swap gene 'a.1' and 'b.1'"),
])
def test_bad_swap_keys_are_one_error_line(swap, pattern, tmp_path, capsys):
    import yaml

    src = read_space_file(SPACES_DIR / "yolov8.yaml") | {"swap": swap}
    path = tmp_path / "space.yaml"
    path.write_text(yaml.safe_dump(src))
    code, _, err = run_cli(capsys, "groups", "--model", "yolov8n.yaml", "--imgsz", str(IMGSZ), "--space", str(path))
    assert_user_error(code, err, pattern)


def test_prune_swap_one_shot_groups_and_errors(tmp_path, capsys):
    out = tmp_path / "p.pt"
    code, stdout, _ = run_cli(capsys, "prune", "--model", "yolov8n.yaml", "--imgsz", str(IMGSZ), "--keep", "1",
                              "--swap", "dws:1,3", "--swap", "group4:L5", "--criterion", "l1", "--no-val",
                              "--out", str(out), "--json")
    assert code == 0
    r = json.loads(stdout)
    assert {k: v["kind"] for k, v in r["swaps"]["convs"].items()} == {"1": "dws", "3": "dws", "5": "group4"}
    assert r["swaps"]["fit"] == "weights" and all(v["weight_error"] > 0 for v in r["swaps"]["convs"].values())
    model = load_model("yolov8n.yaml").model
    expected = count_gflops(swap_convs(model, {"1": "dws", "3": "dws", "5": "group4"})[0], IMGSZ)
    assert r["after"]["gflops"] == round(expected, 4) < r["before"]["gflops"]
    saved = load_model(str(out)).model
    assert isinstance(saved.model[1], torch.nn.Sequential) and saved.model[5].conv.groups == 4
    code, stdout, _ = run_cli(capsys, "groups", "--model", "yolov8n.yaml", "--imgsz", str(IMGSZ), "--json")
    rows = {c["id"]: c for c in json.loads(stdout)["swap_convs"]}
    assert rows["0"]["kinds"] == ["factor"] and "2.cv1" not in rows and rows["1"]["saves_gflops"]["dws"] > 0
    for spec, pattern in [("dws:2.cv1", "--swap dws:2.cv1: conv '2.cv1' is a 1x1 conv"),
                          ("group8:0", "conv '0' cannot take group8: its channels 3 -> 16 do not divide by 8"),
                          ("dw", "--swap: unknown kind 'dw' (did you mean 'dws'?)"),
                          ("dws:9.m", "no conv '9.m'")]:
        code, _, err = run_cli(capsys, "prune", "--model", "yolov8n.yaml", "--imgsz", str(IMGSZ), "--keep", "1",
                               "--swap", spec, "--no-val", "--criterion", "l1", "--out", str(tmp_path / "q.pt"))
        assert_user_error(code, err, pattern)
        assert not (tmp_path / "q.pt").exists()


@pytest.mark.slow
def test_swapped_checkpoint_loads_fuses_predicts_and_exports_in_plain_ultralytics(v8, tmp_path):
    """Every kind (a top-level layer, a bottleneck conv, a Detect conv) after widths and depth, fitted on calibration
    images: the checkpoint loads (also with ULTRALYTICS_SAFE_LOAD=1) in a process that never imports autoprune,
    computes the in-memory outputs, fuses to the same outputs, predicts, exports to ONNX, and Ultralytics'
    get_flops says count_gflops."""
    model, graph = v8
    counts = {**{g.id: g.size for g in graph.groups}, "depth:4.m": 1, swap_key("1"): KINDS.index("dws"),
              swap_key("3"): KINDS.index("group4"), swap_key("2.m.0.cv1"): KINDS.index("factor"),
              swap_key("22.cv2.0.0"): KINDS.index("group2"), swap_key("7"): KINDS.index("factor")}
    pruned = build(model, counts, graph=graph, ranking=rank(model, graph, "l1"), batches=[X]).model.eval()
    save_checkpoint(pruned, tmp_path / "s.pt")
    expected = copy.deepcopy(pruned).half().float()(X)
    expected = expected[0] if isinstance(expected, (tuple, list)) else expected
    torch.save(X, tmp_path / "x.pt")
    script = textwrap.dedent(f"""
        import sys, json, os, numpy as np, torch
        from ultralytics import YOLO
        from ultralytics.utils.torch_utils import get_flops
        yolo = YOLO({str(tmp_path / "s.pt")!r})
        m = yolo.model.float().eval()
        x = torch.load({str(tmp_path / "x.pt")!r})
        y = m(x)
        y = y[0] if isinstance(y, (tuple, list)) else y
        torch.save(y, {str(tmp_path / "y.pt")!r})
        flops = get_flops(m, {IMGSZ})
        fused = m.fuse()(x)
        fused = fused[0] if isinstance(fused, (tuple, list)) else fused
        fuse_err = float((fused - y).abs().max() / y.abs().max())
        res = YOLO({str(tmp_path / "s.pt")!r}).predict(np.zeros(({IMGSZ}, {IMGSZ}, 3), np.uint8), imgsz={IMGSZ},
                                                       verbose=False)
        onnx = YOLO({str(tmp_path / "s.pt")!r}).export(format="onnx", imgsz={IMGSZ}, opset=17, simplify=False)
        print(json.dumps([flops, fuse_err, len(res), os.path.getsize(onnx) > 0,
                          sorted(k for k in sys.modules if k.startswith("autoprune"))]))
        """)
    env = {**os.environ, "YOLO_OFFLINE": "1"}
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=400,
                          cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    flops, fuse_err, n, exported, mods = json.loads(proc.stdout.strip().splitlines()[-1])
    assert mods == [] and n == 1 and exported and fuse_err < 1e-3
    assert math.isclose(flops, count_gflops(pruned, IMGSZ), rel_tol=1e-6)
    assert torch.allclose(torch.load(tmp_path / "y.pt"), expected, rtol=1e-4, atol=1e-3)
    safe = textwrap.dedent(f"""
        import sys, torch
        from ultralytics import YOLO
        m = YOLO({str(tmp_path / "s.pt")!r}).model.float().eval()
        m(torch.zeros(1, 3, {IMGSZ}, {IMGSZ}))
        print(sorted(k for k in sys.modules if k.startswith("autoprune")))
        """)
    proc = subprocess.run([sys.executable, "-c", safe], capture_output=True, text=True, timeout=300,
                          env={**env, "ULTRALYTICS_SAFE_LOAD": "1"})
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip().splitlines()[-1] == "[]"


@pytest.mark.slow
def test_a_search_fits_its_swaps_on_calibration_images_and_apply_rebuilds_them(tmp_path, monkeypatch, capsys):
    """Without --reconstruct a search fits each candidate's swaps on its proxy's calibration images (not on the
    weights alone), and `apply --trial N` fits them on the same images: the model it finetunes is the one scored."""
    from conftest import tiny_search

    import autoprune.candidate as candidate
    from autoprune.swap import split_counts

    env = tiny_search(tmp_path / "env")
    monkeypatch.chdir(tmp_path)
    built = []  # (kept counts, fitted on images, state dict) of every candidate with swaps
    real = candidate.build

    def spy(model, counts, **kw):
        out = real(model, counts, **kw)
        if split_counts(counts)[1]:
            fitted = kw.get("swap_batches") is not None or kw.get("batches") is not None
            built.append((json.dumps(counts, sort_keys=True), fitted, copy.deepcopy(out.model.state_dict())))
        return out

    monkeypatch.setattr(candidate, "build", spy)
    code, out, err = run_cli(capsys, "search", *env["flags"], "--space", "yolov8-ops", "--trials", "5",
                             "--no-auto-confirm", "--name", "ops", "--json")
    assert code == 0, err[-3000:]
    searched = list(built)
    assert searched and all(fitted for _, fitted, _ in searched), [f for _, f, _ in searched]
    counts, _, state = searched[0]
    import optuna

    from autoprune.search import records as R
    from autoprune.search.storage import make_storage

    study = optuna.load_study(study_name="ops", storage=make_storage("sqlite:///runs/search/ops/study.db",
                                                                      heartbeat=None, read_only=True))
    number = next(t.number for t in study.trials
                  if json.dumps(t.user_attrs.get(R.KEPT_CHANNELS), sort_keys=True) == counts)
    # the depth genes remove the elements that change their block least, measured on the proxy's calibration
    # images and stored with the channel ranking (apply replays them from there)
    from autoprune.apply import search_calibration_batches
    from autoprune.data import load_data_config
    from autoprune.depth import rank_elements
    from autoprune.models import load_model

    attrs = study.user_attrs
    batches = search_calibration_batches(load_data_config(attrs[R.STUDY_DATA]), attrs[R.STUDY_PROXY])
    measured = rank_elements(load_model(attrs[R.STUDY_MODEL]).model, batches)
    stored = {k: v for k, v in attrs[R.STUDY_RANKING].items() if k.startswith("depth:")}
    assert stored and stored == {k: measured[k] for k in stored}
    built.clear()
    code, out, err = run_cli(capsys, "apply", "--study", "ops", "--trial", str(number), "--epochs", "1", "--batch", "4",
                             "--device", "cpu", "--json")
    assert code == 0, err[-3000:]
    (again, fitted, state2), = built
    assert again == counts and fitted and state.keys() == state2.keys()
    assert all(torch.allclose(state[k].float(), state2[k].float(), atol=1e-6) for k in state)
    assert json.loads(out)["after"]["gflops"] == pytest.approx(study.trials[number].user_attrs[R.GFLOPS], abs=1e-6)
    assert_user_error(*run_cli(capsys, "apply", "--study", "ops", "--trial", str(number), "--epochs", "2", "--steps",
                               "2", "--device", "cpu")[::2], f"trial {number} also swaps convolutions (swap genes)")
