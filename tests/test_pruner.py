"""The structural pruner on real Ultralytics YAMLs and on the exactness properties it promises."""

from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
import textwrap

import pytest
import torch
from conftest import SYNTH_C2F, build_synthetic, make_removed_channels_constant, randomize_bn, replicate_padding

from autoprune.channels import analyze
from autoprune.errors import UserError
from autoprune.models import save_checkpoint
from autoprune.pruner import apply_indices, keep_counts, prune, rounded_count

# Fully supported families: every block on the main path is understood.
SUPPORTED = [
    "yolov3-tinyu.yaml",
    "yolov5nu.yaml",
    "yolov8n.yaml",
    "yolo11n.yaml",
    "yolov8n-p6.yaml",
    "yolov10n.yaml",
    "yolo12n.yaml",
    "yolo26n.yaml",
    "yolov8n-ghost.yaml",
    "yolov9t.yaml",
    "yolov6n.yaml",
]

X = torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(0))


def _out(model, x=X):
    y = model.eval()(x)
    return y[0] if isinstance(y, (tuple, list)) else y


@pytest.fixture(scope="module")
def built():
    """name -> (model, graph, pruned at 0.5), built once per module."""
    from ultralytics.nn.tasks import DetectionModel

    cache = {}

    def get(name):
        if name not in cache:
            torch.manual_seed(0)
            model = DetectionModel(name, verbose=False).eval()
            graph = analyze(model)
            cache[name] = (model, graph, prune(model, 0.5, graph=graph))
        return cache[name]

    return get


@pytest.mark.parametrize("name", SUPPORTED)
def test_keep_half_shrinks_flops_and_keeps_output_shapes(name, built):
    model, graph, pruned = built(name)
    assert _out(pruned).shape == _out(model).shape
    after = analyze(pruned).conv_gflops()
    assert after <= 0.6 * graph.conv_gflops(), f"GFLOPs fell only to {after / graph.conv_gflops():.0%}"
    assert sum(p.numel() for p in pruned.parameters()) < sum(p.numel() for p in model.parameters())


def test_yolov6_transposed_upsampling_prunes_both_ways(built):
    """YOLOv6's nn.ConvTranspose2d upsampling layers lose input and output channels (weight (in, out, kh, kw))."""
    model, graph, pruned = built("yolov6n.yaml")
    assert not graph.fixed_blocks
    ups = [i for i, m in enumerate(model.model) if isinstance(m, torch.nn.ConvTranspose2d)]
    assert len(ups) == 2
    for i in ups:
        a, b = model.model[i], pruned.model[i]
        assert b.in_channels < a.in_channels and b.out_channels < a.out_channels
        assert b.weight.shape == (b.in_channels, b.out_channels, *a.kernel_size) and b.bias.shape == (b.out_channels,)


def _detection_yamls() -> list[tuple[str, dict]]:
    """Every detection architecture the installed Ultralytics ships, as (name, config at its smallest size).

    All YAMLs under `ultralytics/cfg/models` whose head is `Detect` or `v10Detect` (segment, pose, OBB, classify,
    RT-DETR, World and YOLOE heads are other tasks). A scaled YAML is built at its first (smallest) scale. Of a
    ladder of one-size files (`yolov9t ... yolov9e`, `yolov10n ... yolov10x`) the smallest stands for the family;
    the unscaled YOLOv3 and YOLOv3-SPP are built at YOLOv5n's multiples (their blocks, a fraction of 100M params).
    """
    import re
    from pathlib import Path

    import ultralytics
    import yaml

    found = {}
    for path in sorted((Path(ultralytics.__file__).parent / "cfg" / "models").glob("*/*.yaml")):
        cfg = yaml.safe_load(path.read_text())
        if not cfg.get("head") or cfg["head"][-1][2] not in ("Detect", "v10Detect"):
            continue
        ladder = re.fullmatch(r"(yolov\d+)([ntsmcblxe])", path.stem)
        if ladder:
            key, rank = ladder[1], "ntsmcblxe".index(ladder[2])
        else:
            key, rank = path.stem, 0
        if key in found and found[key][0] <= rank:
            continue
        name = path.stem
        if cfg.get("scales"):
            cfg["scale"] = scale = next(iter(cfg["scales"]))
            version, rest = re.match(r"(yolo(?:v\d+|\d+))(.*)", path.stem).groups()
            name = path.stem if rest.startswith(scale) else f"{version}{scale}{rest}"
        elif cfg.get("width_multiple", 1.0) >= 1.0 and not ladder:
            cfg["depth_multiple"], cfg["width_multiple"] = 0.33, 0.25
        found[key] = (rank, name, cfg)
    return sorted((name, cfg) for _, name, cfg in found.values())


DETECTION_YAMLS = _detection_yamls()


def _scaled(path: str, width: float = 0.25, depth: float = 0.33) -> dict:
    """An installed YAML (`v9/yolov9c.yaml`) at a small width and depth."""
    from pathlib import Path

    import ultralytics
    import yaml

    cfg = yaml.safe_load((Path(ultralytics.__file__).parent / "cfg" / "models" / path).read_text())
    cfg["depth_multiple"], cfg["width_multiple"] = depth, width
    return cfg


def _small_yolov9e() -> dict:
    """yolov9e.yaml at a quarter of its widths: the width multiple scales what Ultralytics scales, and the channel
    arguments it takes as written (CBLinear's pieces, RepNCSPELAN4's and SPPELAN's hidden widths) are scaled here."""
    cfg = _scaled("v9/yolov9e.yaml")
    for _, _, module, args in cfg["backbone"] + cfg["head"]:
        if module == "CBLinear":
            args[0] = [c // 4 for c in args[0]]
        elif module == "RepNCSPELAN4":
            args[1:3] = [args[1] // 4, args[2] // 4]
        elif module == "SPPELAN":
            args[1] //= 4
    return cfg


def _small_yolo12l() -> dict:
    """yolo12.yaml at its l scale's form (A2C2f with a learned residual scale, gamma, and mlp ratio 1.2, which
    Ultralytics builds for scales l and x) and n's multiples."""
    cfg = _scaled("12/yolo12.yaml", width=0.25, depth=0.5)
    cfg["scale"], cfg["scales"] = "l", {"l": [0.5, 0.25, 1024]}
    return cfg


# Larger members of a ladder whose blocks the smallest lacks: yolov9c's ADown and RepCSP inside RepNCSPELAN4,
# yolov9e's auxiliary branch (CBLinear, CBFuse; and ADown), yolo12l's gamma-scaled A2C2f. The every-family test prunes
# and reloads yolov9e and yolo12l too.
SMALL_YOLOV9E = ("yolov9e", _small_yolov9e())
SMALL_YOLO12L = ("yolo12l", _small_yolo12l())
LADDER_EXTRAS = [("yolov9c", _scaled("v9/yolov9c.yaml")), SMALL_YOLOV9E, SMALL_YOLO12L]
FAMILIES = DETECTION_YAMLS + [SMALL_YOLOV9E, SMALL_YOLO12L]


def test_every_claimed_family_is_among_the_generated_yamls():
    names = {name for name, _ in DETECTION_YAMLS}
    claimed = {n.removesuffix(".yaml").replace("nu", "n").replace("-tinyu", "-tiny") for n in SUPPORTED}
    assert claimed <= names, claimed - names
    assert {"yolov8n-p2", "yolov8n-ghost-p6", "yolo26n-p6", "yolov3", "yolov6n"} <= names


# The conv GFLOPs a family keeps at keep 0.5 (uniform, l1): at most 35%, except as measured where a block is kept
# whole or channels hit the floor (docs/BENCHMARKS.md, "Every detection family at keep 0.5", says why).
FAMILY_CEILING = {
    "yolov3-tiny": 0.39,  # built at width 0.25 here: its 8- and 16-channel layers are at the 8-channel floor
}


@pytest.mark.slow
def test_every_family_keeps_at_most_a_third_of_its_flops_and_loads_without_autoprune(tmp_path):
    """Every detection YAML the installed Ultralytics ships (and yolov9e's auxiliary branch), pruned at keep 0.5: its
    conv GFLOPs fall to at most 35% (or its measured ceiling), and every checkpoint loads and runs in one fresh process
    that never imports autoprune, with the outputs of the in-memory pruned model (up to FP16 storage)."""
    from ultralytics.nn.tasks import DetectionModel

    expected, shares = {}, {}
    for i, (name, cfg) in enumerate(FAMILIES):
        torch.manual_seed(0)
        model = DetectionModel(copy.deepcopy(cfg), verbose=False).eval()
        graph = analyze(model, imgsz=64)
        pruned = prune(model, 0.5, graph=graph)
        shares[name] = analyze(pruned, imgsz=64).conv_gflops() / graph.conv_gflops()
        save_checkpoint(pruned, tmp_path / f"m{i}.pt")
        expected[i] = _out(copy.deepcopy(pruned).half().float())
    over = {n: round(v, 3) for n, v in shares.items() if v > FAMILY_CEILING.get(n, 0.35)}
    assert not over, f"families above their GFLOPs ceiling at keep 0.5: {over}"
    torch.save(X, tmp_path / "x.pt")
    script = textwrap.dedent(
        f"""
        import sys, json, torch
        from ultralytics import YOLO
        x = torch.load({str(tmp_path / "x.pt")!r})
        outs = {{}}
        for i in range({len(FAMILIES)}):
            y = YOLO({str(tmp_path)!r} + f"/m{{i}}.pt").model.float().eval()(x)
            outs[i] = y[0] if isinstance(y, (tuple, list)) else y
        torch.save(outs, {str(tmp_path / "outs.pt")!r})
        print(json.dumps(sorted(m for m in sys.modules if m.startswith("autoprune"))))
        """
    )
    env = {**os.environ, "YOLO_OFFLINE": "1"}
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert json.loads(proc.stdout.strip().splitlines()[-1]) == []
    outs = torch.load(tmp_path / "outs.pt")
    for i, (name, _) in enumerate(FAMILIES):
        assert outs[i].shape == expected[i].shape, name
        assert torch.allclose(outs[i], expected[i], rtol=1e-4, atol=1e-3), name  # the same FP16 weights


def _raw_head_outputs(model, x) -> torch.Tensor:
    """The head's undecoded box and class outputs (and the one-to-one head's, if any), flattened side by side.

    Raw outputs, not the decoded detections: an end-to-end head's top-k selection would turn a rounding difference
    into a different box order.
    """
    preds = model.eval()(x)[1]
    flat = []

    def walk(p):
        if isinstance(p, dict):
            for k in sorted(p):
                if k != "feats":  # the head's inputs, which pruning may narrow
                    walk(p[k])
        elif isinstance(p, (list, tuple)):
            for q in p:
                walk(q)
        else:
            flat.append(p.flatten(1))

    walk(preds)
    return torch.cat(flat, 1)


@pytest.mark.parametrize(
    "name,cfg", DETECTION_YAMLS + LADDER_EXTRAS, ids=[n for n, _ in DETECTION_YAMLS + LADDER_EXTRAS]
)
def test_removing_gamma_zero_channels_leaves_every_family_unchanged(name, cfg):
    """Half of every group's channels (random, per part), their BN gammas set to 0, are removed; the head's raw
    outputs stay the same.

    A removed channel emits the constant `act(beta)`, which the pruner folds into its consumers. Under zero padding
    that fold is exact only away from the border of every conv wider than 1x1, and at 64 px the border reaches
    everywhere after a few layers. With replicate padding (in both models) the constant channel is constant in the
    padding too, so the pruned model must match everywhere: any wrong index, offset, coupling or fold shows up.
    """
    from ultralytics.nn.tasks import DetectionModel

    torch.manual_seed(0)
    model = DetectionModel(copy.deepcopy(cfg), verbose=False).eval()
    randomize_bn(model)
    graph = analyze(model, imgsz=64)
    assert graph.groups, f"{name}: nothing to prune"
    indices = _random_half(graph, graph.groups)
    make_removed_channels_constant(model, graph, indices)
    pruned = apply_indices(model, graph, indices)
    assert analyze(pruned, imgsz=64).conv_gflops() < 0.95 * graph.conv_gflops()
    for m in (model, pruned):
        m.double()
        replicate_padding(m)
    x = torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    with torch.no_grad():
        ref, got = _raw_head_outputs(model, x), _raw_head_outputs(pruned, x)
    assert got.shape == ref.shape
    # folds are computed in float32: about 4e-8 of the largest output; a fold left out costs about 3e-2
    assert (got - ref).abs().max() <= 1e-6 * ref.abs().max(), name


def test_prune_never_modifies_its_input(built):
    model, graph, _ = built("yolo11n.yaml")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    prune(model, 0.3, graph=graph, criterion="bn_scale")
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_save_and_reload_without_autoprune_gives_the_same_outputs(built, tmp_path):
    """Each pruned checkpoint loads in a fresh process that never imports autoprune, and computes the same outputs
    as the in-memory pruned model within the precision the checkpoint is stored in (FP16)."""
    names = SUPPORTED
    expected = {}
    for i, name in enumerate(names):
        _, _, pruned = built(name)
        save_checkpoint(pruned, tmp_path / f"m{i}.pt")
        expected[i] = (_out(pruned), _out(copy.deepcopy(pruned).half().float()))
    torch.save(X, tmp_path / "x.pt")
    script = textwrap.dedent(
        f"""
        import sys, json, torch
        from ultralytics import YOLO
        x = torch.load({str(tmp_path / "x.pt")!r})
        outs = {{}}
        for i in range({len(names)}):
            y = YOLO({str(tmp_path)!r} + f"/m{{i}}.pt").model.float().eval()(x)
            outs[i] = y[0] if isinstance(y, (tuple, list)) else y
        torch.save(outs, {str(tmp_path / "outs.pt")!r})
        print(json.dumps(sorted(m for m in sys.modules if m.startswith("autoprune"))))
        """
    )
    env = {**os.environ, "YOLO_OFFLINE": "1"}
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert json.loads(proc.stdout.strip().splitlines()[-1]) == []
    outs = torch.load(tmp_path / "outs.pt")
    for i, name in enumerate(names):
        full, rounded = expected[i]
        assert torch.allclose(outs[i], rounded, rtol=1e-4, atol=1e-3), name  # same FP16 weights, same outputs
        scale = full.abs().max()
        assert (outs[i] - full).abs().max() <= 2e-2 * scale, name  # FP16 storage error only


def _random_half(graph, groups, seed=0):
    g = torch.Generator().manual_seed(seed)
    return {gr.id: [torch.randperm(gr.size, generator=g)[: gr.size // 2].sort().values for _ in gr.parts] for gr in groups}


@pytest.mark.parametrize("name", ["yolov8n.yaml", "yolo11n.yaml", "yolov5nu.yaml"])
def test_gamma_zero_channels_prune_exactly_when_consumers_are_1x1(name, built):
    model, graph, _ = built(name)
    model = copy.deepcopy(model)
    randomize_bn(model)
    one_by_one = [
        g for g in graph.groups if all(graph.convs[c.conv].kernel == 1 for pi in g.parts for c in graph.parts[pi].consumers)
    ]
    assert len(one_by_one) >= 10
    indices = _random_half(graph, one_by_one)
    make_removed_channels_constant(model, graph, indices)
    pruned = apply_indices(model, graph, indices)
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    ref, got = _out(model, x), _out(pruned, x)
    assert (got - ref).abs().max() <= 1e-5 * ref.abs().max()


def test_gamma_zero_channels_prune_exactly_up_to_the_border_for_3x3_consumers():
    model = build_synthetic(SYNTH_C2F)
    randomize_bn(model)
    graph = analyze(model)
    group = graph.group("1.m.0.cv1")  # consumed by the bottleneck's 3x3 cv2
    indices = _random_half(graph, [group])
    make_removed_channels_constant(model, graph, indices)
    pruned = apply_indices(model, graph, indices)

    def consumer_output(m):
        seen = {}
        h = m.model[1].m[0].cv2.register_forward_hook(lambda mod, i, o: seen.setdefault("y", o))
        m(torch.randn(1, 3, 64, 64, generator=torch.Generator().manual_seed(2)))
        h.remove()
        return seen["y"]

    ref, got = consumer_output(model), consumer_output(pruned)
    inner = (slice(None), slice(None), slice(1, -1), slice(1, -1))
    assert torch.allclose(got[inner], ref[inner], atol=1e-5, rtol=1e-5)
    assert not torch.allclose(got, ref, atol=1e-5, rtol=1e-5)  # the zero-padded border is where they differ


def test_folding_beats_plain_removal_on_a_whole_model(built):
    """With all groups halved and their removed gammas zeroed, folding leaves only border effects."""
    import autoprune.pruner as pruner

    model, graph, _ = built("yolov8n.yaml")
    model = copy.deepcopy(model)
    randomize_bn(model)
    indices = _random_half(graph, graph.groups)
    make_removed_channels_constant(model, graph, indices)
    x = torch.randn(1, 3, 64, 64, generator=torch.Generator().manual_seed(3))
    ref = _out(model, x)
    folded = (_out(apply_indices(model, graph, indices), x) - ref).abs().mean()
    original = pruner._constant
    try:
        pruner._constant = lambda graph, modules, cache, i: torch.zeros(4096)
        plain = (_out(apply_indices(model, graph, indices), x) - ref).abs().mean()
    finally:
        pruner._constant = original
    assert folded < 0.5 * plain


def test_counts_are_rounded_and_floored():
    assert rounded_count(64, 0.5) == 32
    assert rounded_count(64, 0.3) == 16  # 19.2 -> nearest multiple of 8
    assert rounded_count(64, 0.01) == 8  # never below min_channels
    assert rounded_count(16, 0.1, min_channels=4, round_to=4) == 4
    assert rounded_count(24, 1.0) == 24  # full keep is exact, multiple or not
    assert rounded_count(6, 0.5) == 6  # smaller than the floor: kept whole
    assert rounded_count(100, 0.5, round_to=16, min_channels=8) == 48


def test_keep_validation(built):
    model, graph, _ = built("yolov8n.yaml")
    for bad in (0.0, 1.5, -0.2, float("nan")):
        with pytest.raises(UserError, match="keep ratio"):
            keep_counts(graph, bad)
    with pytest.raises(UserError, match=r"unknown channel group '2.cvl' \(did you mean '2\.cv[12]'\?\)"):
        keep_counts(graph, {"2.cvl": 0.5})
    counts = keep_counts(graph, {"2.cv1": 0.5})
    assert counts["2.cv1"] == 8 and counts["0"] == 16  # unlisted groups stay whole


@pytest.mark.parametrize("criterion", ["l1", "l2", "bn_scale"])
def test_criteria_keep_the_most_important_channels(criterion):
    model = build_synthetic(SYNTH_C2F)
    randomize_bn(model)
    graph = analyze(model)
    conv, bn = model.model[0].conv, model.model[0].bn
    strong = torch.tensor([1, 4, 6, 9, 10, 12, 13, 15])
    with torch.no_grad():  # make 8 of the 16 channels of group "0" clearly the strongest by every criterion
        conv.weight.mul_(0.01)
        conv.weight[strong] *= 1000
        bn.weight.mul_(0.01)
        bn.weight[strong] *= 1000
        model.model[1].cv1.conv.weight[:, strong] *= 10
    pruned = prune(model, {"0": 0.5}, criterion=criterion, graph=graph)
    kept_rows = pruned.model[0].conv.weight
    assert torch.allclose(kept_rows, conv.weight[strong])


def test_unknown_criterion_is_a_user_error(built):
    model, graph, _ = built("yolov8n.yaml")
    with pytest.raises(UserError, match="unknown criterion 'l3'"):
        prune(model, 0.5, graph=graph, criterion="l3")
