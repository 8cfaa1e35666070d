"""Depth units and depth genes (autoprune/depth.py and the `depth:` key of search spaces): physical removal equals a
stock block with fewer elements, GFLOPs of widths + depth predicted exactly, replay exact, bad input one line."""

import copy
import dataclasses
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

from autoprune.candidate import build, rank, replay
from autoprune.channels import analyze
from autoprune.cost import count_gflops
from autoprune.depth import apply_depth, depth_key, find_units, rank_elements, remove_elements
from autoprune.errors import UserError
from autoprune.models import load_model, save_checkpoint
from autoprune.space import load_space, read_space_file
from autoprune.space.build import SPACES_DIR

IMGSZ = 64
X = torch.rand(2, 3, IMGSZ, IMGSZ, generator=torch.Generator().manual_seed(0))


@pytest.fixture(scope="module")
def v8():
    torch.manual_seed(0)
    m = load_model("yolov8n.yaml").model.eval()
    return m, analyze(m, imgsz=IMGSZ)


@pytest.fixture(scope="module")
def v11():
    torch.manual_seed(0)
    m = load_model("yolo11n.yaml").model.eval()
    return m, analyze(m, imgsz=IMGSZ)


def _depth_space(model, graph, family):
    src = read_space_file(SPACES_DIR / f"{family}.yaml")
    src["depth"] = True
    return load_space(src, graph, model)


def test_units_of_the_families():
    v5 = load_model("yolov5nu.yaml").model
    assert [(u.id, u.n, u.kind) for u in find_units(v5)] == [
        ("2.m", 1, "chain"), ("4.m", 2, "chain"), ("6.m", 3, "chain"), ("8.m", 1, "chain")]  # neck C3: no shortcut


def test_units_of_v8_and_v11(v8, v11):
    units = {u.id: u for u in find_units(v8[0])}
    assert list(units) == ["2.m", "4.m", "6.m", "8.m", "12.m", "15.m", "18.m", "21.m"]
    assert units["4.m"].n == 2 and units["4.m"].residual and not units["12.m"].residual
    u11 = {u.id: u for u in find_units(v11[0])}
    assert "6.m.0.m" in u11 and u11["6.m.0.m"].kind == "chain" and not u11["6.m"].residual  # C3k2 of C3k blocks


@torch.no_grad()
def test_removing_bottlenecks_equals_a_stock_c2f_with_fewer(v8):
    """A C2f of 2 residual bottlenecks keeping m[1] only computes what a stock C2f(n=1) does with m[1]'s weights and
    cv2's input slots 0, 1, 3; keeping none, a stock C2f(n=0)."""
    from ultralytics.nn.modules.block import C2f

    model, _ = v8
    block = model.model[4]
    x = torch.randn(1, block.cv1.conv.in_channels, 16, 16, generator=torch.Generator().manual_seed(1))
    c = block.c
    for keep, slots in (([1], [0, 1, 3]), ([0], [0, 1, 2]), ([], [0, 1])):
        cut = remove_elements(model, {"4.m": keep}).model[4]
        stock = C2f(block.cv1.conv.in_channels, block.cv2.conv.out_channels, n=len(keep), shortcut=True).eval()
        stock.cv1.load_state_dict(block.cv1.state_dict())
        stock.cv2.load_state_dict(block.cv2.state_dict() | {
            "conv.weight": torch.cat([block.cv2.conv.weight[:, s * c:(s + 1) * c] for s in slots], 1)})
        for j, i in enumerate(keep):
            stock.m[j].load_state_dict(block.m[i].state_dict())
        for bn in (m for m in stock.modules() if isinstance(m, torch.nn.BatchNorm2d)):
            bn.eps = 1e-3  # Ultralytics' models set it after building
        assert type(cut) is C2f and len(cut.m) == len(keep) and cut.cv2.conv.in_channels == (2 + len(keep)) * c
        assert torch.equal(cut(x), stock(x))
    assert len(model.model[4].m) == 2  # the input model is unchanged


@torch.no_grad()
def test_removing_from_a_residual_chain_leaves_the_identity():
    model = load_model("yolov5nu.yaml").model.eval()
    block = model.model[6]  # C3 with 3 residual bottlenecks
    x = torch.randn(1, block.cv1.conv.in_channels, 8, 8, generator=torch.Generator().manual_seed(2))
    cut = remove_elements(model, {"6.m": [0, 2]}).model[6]
    expected = block.cv3(torch.cat((block.m[2](block.m[0](block.cv1(x))), block.cv2(x)), 1))
    assert torch.allclose(cut(x), expected, atol=1e-6)
    empty = remove_elements(model, {"6.m": []}).model[6]
    assert torch.allclose(empty(x), block.cv3(torch.cat((block.cv1(x), block.cv2(x)), 1)), atol=1e-6)


def test_a_non_residual_unit_loses_its_last_elements_only(v8):
    from autoprune.depth import check_plan

    model, _ = v8
    units = find_units(model)
    plain = dataclasses.replace(units[1], residual=False)  # 4.m, 2 elements, as if without shortcut
    with pytest.raises(UserError, match="not residual; only its last"):
        check_plan([plain], {"4.m": 1}, {depth_key("4.m"): [1, 0]})
    assert check_plan([plain], {"4.m": 1}) == {"4.m": [0]}
    assert check_plan(units, {"4.m": 1}, {depth_key("4.m"): [1, 0]}) == {"4.m": [1]}
    assert len(apply_depth(model, {"4.m": 1}, {depth_key("4.m"): [1, 0]}).model[4].m) == 1
    with pytest.raises(UserError, match="keeps 3 elements of depth unit '4.m'; it has 2"):
        apply_depth(model, {"4.m": 3})


@torch.no_grad()
def test_ranking_measures_the_change_of_the_block_output():
    """The bottleneck whose removal changes the block's output more ranks first: with m[0]'s last BN zeroed (gamma 0,
    beta -20: its branch adds SiLU(-20) ~ 0) the residual m[0] is the identity, so it is the one to remove."""
    torch.manual_seed(0)
    model = load_model("yolov5nu.yaml").model.eval()
    assert rank_elements(model, [{"img": X}])[depth_key("4.m")] == [0, 1]
    bn = model.model[4].m[0].cv2.bn
    bn.weight.zero_()
    bn.bias.fill_(-20.0)
    orders = rank_elements(model, [{"img": X}])
    assert orders[depth_key("4.m")] == [1, 0]
    assert orders[depth_key("2.m")] == [0]  # one element: nothing to measure


@pytest.mark.parametrize("which", ["v8", "v11"])
def test_space_predicts_the_gflops_of_widths_and_depth_exactly(which, request):
    model, graph = request.getfixturevalue(which)
    space = _depth_space(model, graph, {"v8": "yolov8", "v11": "yolo11"}[which])
    assert len(space.depth_genes) == len(find_units(model))
    base = count_gflops(model, IMGSZ)
    ranking = rank(model, graph, "l1")
    rng = np.random.default_rng(3)
    seen = set()
    for _ in range(4):
        genome = space.random(rng)
        counts = space.counts(genome)
        seen |= {v for k, v in counts.items() if k.startswith("depth:")}
        pruned = build(model, counts, graph=graph, ranking=ranking).model
        assert math.isclose(space.gflops(genome, IMGSZ, base_gflops=base), count_gflops(pruned, IMGSZ),
                            rel_tol=1e-9, abs_tol=0)
        pruned(X)
    assert {0, 1} <= seen  # units lost elements
    # the budget tools work with depth genes: a repaired genome fits, a uniform one keeps every element
    budget = 0.5 * base
    repaired = space.repair(space.highs(), budget, IMGSZ, base_gflops=base)
    assert space.gflops(repaired, IMGSZ, base_gflops=base) <= budget
    assert all(space.uniform(0.5)[g.name] == g.high for g in space.depth_genes)


def test_space_predicts_the_gflops_when_measured_orders_remove_other_elements(v8):
    """With an element order (what `rank_elements` measures) a depth gene removes other elements than the last; in
    the `fine` space each bottleneck's hidden width is its own gene, so which one goes changes the GFLOPs, and the
    space predicts the model `build` makes with that order."""
    model, graph = v8
    src = read_space_file(SPACES_DIR / "fine.yaml")
    src["depth"] = True
    space = load_space(src, graph, model)
    orders = {depth_key(u.id): list(range(u.n))[::-1] for u in find_units(model)}
    space.element_orders = orders
    ranking = {**rank(model, graph, "l1"), **orders}
    base = count_gflops(model, IMGSZ)
    genome = {**space.uniform(1.0), "g.4.m.1.cv1": 0.25, "depth.4.m": 1.0, "depth.6.m": 1.0}
    counts = space.counts(genome)
    first = build(model, counts, graph=graph, ranking=ranking).model
    assert math.isclose(space.gflops(genome, IMGSZ, base_gflops=base), count_gflops(first, IMGSZ), rel_tol=1e-9)
    assert first.model[4].m[0].cv1.conv.out_channels < model.model[4].m[1].cv1.conv.out_channels  # m[1] stayed
    space.element_orders = {}  # the last elements go: 4.m.1, the narrow one
    natural = build(model, counts, graph=graph, ranking=rank(model, graph, "l1")).model
    assert math.isclose(space.gflops(genome, IMGSZ, base_gflops=base), count_gflops(natural, IMGSZ), rel_tol=1e-9)
    assert count_gflops(natural, IMGSZ) > count_gflops(first, IMGSZ) + 1e-6


def test_replay_rebuilds_the_same_model(v8):
    model, graph = v8
    space = load_space("yolov8-depth", graph, model)
    genome = {**space.uniform(0.7), "depth.4.m": 1.0, "depth.12.m": 0.0}
    counts = json.loads(json.dumps(space.counts(genome)))  # as a trial stores it
    assert counts[depth_key("4.m")] == 1 and counts[depth_key("12.m")] == 0
    ranking = rank(model, graph, "l1")
    built = build(model, counts, graph=graph, ranking=ranking).model
    gflops = count_gflops(built, IMGSZ)
    from autoprune.candidate import ranking_as_lists

    again, _, g2 = replay(model, counts, criterion="l1", imgsz=IMGSZ, expected_gflops=gflops,
                          ranking=json.loads(json.dumps(ranking_as_lists(ranking))))
    assert g2 == gflops and len(again.model[4].m) == 1 and len(again.model[12].m) == 0
    a, b = built.state_dict(), again.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    with pytest.raises(UserError, match="depth unit '9.m', which this model does not have"):
        replay(model, {**counts, depth_key("9.m"): 0}, criterion="l1", imgsz=IMGSZ, expected_gflops=gflops)


@pytest.mark.parametrize("depth, pattern", [
    ({"d": {"layers": 9}}, "depth.d: selects no repeated block (layers 9 (SPPF) has no repeated elements)"),
    ({"d": {"modules": "Conv"}}, "depth units: 2.m (C2f, 1), 4.m (C2f, 2)"),
    ({"d": {"unitz": "4.m"}}, "unknown key depth.d.unitz (did you mean 'units'?)"),
    ({"d": {"units": "5.m"}}, "depth.d.units: pattern '5.m' matches no depth unit"),
    ({"d": {"low": -1}}, "depth.d.low: must be a whole number of elements kept, 0 or more, got -1"),
    ({"d": {"low": 3, "units": "4.m"}}, "depth.d.low: 3 is above the 2 element(s) of 4.m"),
    ({"d": {"split": "layer"}}, "depth.d.split: must be one of unit, none, got 'layer'"),
    ({"a": {"units": "4.m"}, "b": {"layers": "2-6"}}, "depth unit '4.m' is selected by both depth gene 'a.4.m' and 'b.4.m'"),
    (3, "depth: must be true, false or a mapping"),
])
def test_bad_depth_keys_are_one_error_line(depth, pattern, tmp_path, capsys):
    import yaml

    src = read_space_file(SPACES_DIR / "yolov8.yaml") | {"depth": depth}
    path = tmp_path / "space.yaml"
    path.write_text(yaml.safe_dump(src))
    code, _, err = run_cli(capsys, "groups", "--model", "yolov8n.yaml", "--imgsz", str(IMGSZ), "--space", str(path))
    assert_user_error(code, err, pattern)


def test_groups_lists_depth_units_and_a_tied_gene(v8, tmp_path, capsys):
    import yaml

    src = read_space_file(SPACES_DIR / "yolov8.yaml") | {"depth": {"neck": {"stage": "neck", "split": "none"}}}
    path = tmp_path / "tied.yaml"
    path.write_text(yaml.safe_dump(src))
    code, out, _ = run_cli(capsys, "groups", "--model", "yolov8n.yaml", "--imgsz", str(IMGSZ), "--space", str(path),
                           "--json")
    assert code == 0
    r = json.loads(out)
    assert [u["id"] for u in r["depth_units"]][:2] == ["2.m", "4.m"]
    assert r["depth_units"][1]["elements"] == 2 and r["depth_units"][1]["saves_at_zero_gflops"] > 0
    genes = {g["gene"]: g for g in r["space"]["genes"]}
    assert genes["neck"]["units"] == ["12.m", "15.m", "18.m", "21.m"] and genes["neck"]["high"] == 1.0


def test_prune_depth_one_shot_and_its_errors(tmp_path, capsys):
    out = tmp_path / "p.pt"
    code, stdout, _ = run_cli(capsys, "prune", "--model", "yolov8n.yaml", "--imgsz", str(IMGSZ), "--keep", "1",
                              "--depth", "4.m=1,12.m=0", "--criterion", "l1", "--no-val", "--out", str(out), "--json")
    assert code == 0
    r = json.loads(stdout)
    assert r["depth"]["kept"] == {"4.m": 1, "12.m": 0}
    model = load_model("yolov8n.yaml").model
    expected = count_gflops(apply_depth(model, {"4.m": 1, "12.m": 0}), IMGSZ)
    assert r["after"]["gflops"] == round(expected, 4) < r["before"]["gflops"]
    saved = load_model(str(out)).model
    assert len(saved.model[4].m) == 1 and len(saved.model[12].m) == 0
    code, _, err = run_cli(capsys, "prune", "--model", "yolov8n.yaml", "--imgsz", str(IMGSZ), "--keep", "1",
                           "--depth", "9.m=1", "--no-val", "--criterion", "l1", "--out", str(tmp_path / "q.pt"))
    assert_user_error(code, err, "--depth: no depth unit '9.m' (did you mean '8.m'?)")
    assert not (tmp_path / "q.pt").exists()


@pytest.mark.slow
def test_depth_pruned_checkpoint_loads_in_plain_ultralytics_with_its_gflops(v11, tmp_path):
    """Widths + depth on yolo11n (C3k2 of C3k, nested chains): the checkpoint loads and runs in a process that never
    imports autoprune, with the in-memory model's outputs, and Ultralytics' own get_flops says count_gflops."""
    model, graph = v11
    space = _depth_space(model, graph, "yolo11")
    genome = {**space.uniform(0.6), "depth.6.m.0.m": 1.0, "depth.8.m": 0.0, "depth.2.m": 0.0, "depth.22.m.0.m": 0.0}
    pruned = build(model, space.counts(genome), graph=graph, ranking=rank(model, graph, "l1")).model.eval()
    save_checkpoint(pruned, tmp_path / "d.pt")
    expected = copy.deepcopy(pruned).half().float()(X)
    expected = expected[0] if isinstance(expected, (tuple, list)) else expected
    torch.save(X, tmp_path / "x.pt")
    script = textwrap.dedent(f"""
        import sys, json, torch
        from ultralytics import YOLO
        from ultralytics.utils.torch_utils import get_flops
        m = YOLO({str(tmp_path / "d.pt")!r}).model.float().eval()
        y = m(torch.load({str(tmp_path / "x.pt")!r}))
        torch.save(y[0] if isinstance(y, (tuple, list)) else y, {str(tmp_path / "y.pt")!r})
        print(json.dumps([get_flops(m, {IMGSZ}), sorted(k for k in sys.modules if k.startswith("autoprune"))]))
        """)
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          env={**os.environ, "YOLO_OFFLINE": "1"}, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    flops, mods = json.loads(proc.stdout.strip().splitlines()[-1])
    assert mods == []
    assert math.isclose(flops, count_gflops(pruned, IMGSZ), rel_tol=1e-6)
    assert math.isclose(flops, space.gflops(genome, IMGSZ, base_gflops=count_gflops(model, IMGSZ)), rel_tol=1e-6)
    assert torch.allclose(torch.load(tmp_path / "y.pt"), expected, rtol=1e-4, atol=1e-3)
