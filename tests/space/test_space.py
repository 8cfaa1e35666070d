"""Search spaces: shipped defaults on real Ultralytics YAMLs, genome arithmetic, budgets, and one-line validation errors."""

from __future__ import annotations

import functools
import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
from conftest import SYNTH_C2F, SYNTH_C3K2, build_synthetic

from autoprune.channels import analyze
from autoprune.errors import UserError
from autoprune.pruner import keep_counts, prune_to_counts
from autoprune.space import (
    SPACES_DIR,
    Gene,
    SearchSpace,
    default_space_name,
    load_space,
    shipped_spaces,
    space_from_source,
)

REPO = Path(__file__).resolve().parents[2]

FAMILY = {
    "yolov8n.yaml": "yolov8",
    "yolov8s.yaml": "yolov8",
    "yolov8n-p2.yaml": "yolov8",
    "yolov8n-p6.yaml": "yolov8",
    "yolo11n.yaml": "yolo11",
    "yolo11s.yaml": "yolo11",
    "yolov5nu.yaml": "yolov5",
    "yolov5n-p6.yaml": "yolov5",
    "yolov3-tinyu.yaml": "yolov5",
    "yolov3u.yaml": "yolov5",
    "yolov10n.yaml": "generic",
    "yolo12n.yaml": "generic",
    "yolo26n.yaml": "generic",
    "yolov9t.yaml": "generic",
    "yolov8n-ghost.yaml": "generic",
}
SMALL = ["yolov8n.yaml", "yolo11n.yaml", "yolov5nu.yaml", "yolov3-tinyu.yaml", "yolov10n.yaml"]


@functools.lru_cache(maxsize=None)
def built(name: str):
    """(model, graph) for an Ultralytics model YAML name, built once per test session with fixed weights."""
    import torch
    from ultralytics.nn.tasks import DetectionModel

    torch.manual_seed(0)
    cfg = name
    if name == "yolov3u.yaml":  # 60M parameters take seconds to initialise; a quarter of the width has the same groups
        from ultralytics.nn.tasks import yaml_model_load

        cfg = {**yaml_model_load(name), "width_multiple": 0.25}
    model = DetectionModel(cfg, verbose=False).eval()
    return model, analyze(model)


@functools.lru_cache(maxsize=None)
def default_space(name: str) -> SearchSpace:
    model, graph = built(name)
    return load_space(None, graph, model)


def v8():
    return built("yolov8n.yaml")


def space_of(spec, name="yolov8n.yaml") -> SearchSpace:
    model, graph = built(name)
    return load_space(spec, graph, model)


def covered(space: SearchSpace) -> list[str]:
    return [gid for gene in space.genes for gid in gene.groups] + list(space.never)


# ---------------------------------------------------------------------------------------------------------------------
# Defaults per family


@pytest.mark.parametrize("name", list(FAMILY))
def test_default_space_is_the_family_and_covers_every_group_once(name):
    model, graph = built(name)
    assert default_space_name(model) == FAMILY[name]
    space = default_space(name)
    assert space.name == FAMILY[name]
    ids = covered(space)
    assert sorted(ids) == sorted(graph.ids)  # every group ...
    assert len(ids) == len(set(ids))  # ... exactly once
    assert all(gene.groups for gene in space.genes)
    assert space.min_gflops(640) < space.max_gflops(640)


@pytest.mark.parametrize("name", ["yolov8n.yaml", "yolov8s.yaml", "yolo11n.yaml", "yolo11s.yaml", "yolov5nu.yaml"])
def test_family_spaces_have_a_searchable_number_of_genes_with_sane_ranges(name):
    space = default_space(name)
    assert 8 <= len(space.genes) <= 16
    for gene in space.genes:
        assert 0.25 <= gene.low < gene.high == 1.0
        assert gene.step == pytest.approx(0.05)
    # the sensitive groups get the high floor: residual streams and the P3 output that feeds the head
    assert space.gene(space.gene_of(graph_id_of_p3(name))).low == 0.5


def graph_id_of_p3(name: str) -> str:
    return {"yolov8n.yaml": "15.cv2", "yolov8s.yaml": "15.cv2", "yolo11n.yaml": "16.cv2", "yolo11s.yaml": "16.cv2",
            "yolov5nu.yaml": "17.cv3"}[name]


def test_yolov8_default_ties_roles_and_stages():
    space = default_space("yolov8n.yaml")
    assert space.gene("stem").groups == ("0", "1")
    assert space.gene("backbone.residual").groups == ("2.cv1", "4.cv1", "6.cv1", "8.cv1")
    assert space.gene("neck.p3").groups == ("15.cv2",)
    assert "15.cv2" not in space.gene("neck.out").groups
    assert all(".cv2." in g for g in space.gene("head.box").groups)
    assert all(".cv3." in g for g in space.gene("head.cls").groups)
    assert space.gene("sppf").groups == ("9.cv1", "9.cv2")


def test_p6_variant_puts_its_extra_layers_in_the_same_genes():
    space = default_space("yolov8n-p6.yaml")
    assert "10.cv1" in space.gene("backbone.residual").groups  # the extra backbone C2f
    assert space.gene("sppf").groups == ("11.cv1", "11.cv2")
    assert space.gene("neck.p3").groups == ("20.cv2",)
    assert len(space.gene("head.cls").groups) == 8  # four levels


def test_yolov3_layouts_drop_the_genes_they_lack():
    darknet = default_space("yolov3u.yaml")
    assert darknet.gene("backbone.residual").groups == ("1", "3", "5", "7", "9")  # Darknet's summed convs
    assert darknet.gene("stem").groups == ("0",)
    assert "backbone.out" not in darknet.names and "sppf" not in darknet.names
    tiny = default_space("yolov3-tinyu.yaml")
    assert tiny.names == ["stem", "backbone.down", "neck.conv", "head.box", "head.cls"]


def test_generic_space_loads_on_every_model():
    for name in FAMILY:
        model, graph = built(name)
        space = load_space("generic", graph, model)
        assert space.name == "generic"
        ids = covered(space)
        assert sorted(ids) == sorted(graph.ids) and len(ids) == len(set(ids))
        assert len(space.genes) <= 10


def test_yolo11_space_also_fits_yolo26_by_modules():
    model, graph = built("yolo26n.yaml")
    space = load_space("yolo11", graph, model)
    assert any("one2one_cv2" in g for g in space.gene("head.box").groups)
    assert sorted(covered(space)) == sorted(graph.ids)


def test_family_by_modules_when_the_yaml_has_no_file_name():
    assert default_space_name(build_synthetic(SYNTH_C2F)) == "yolov8"
    assert default_space_name(build_synthetic(SYNTH_C3K2)) == "yolo11"
    for name, family in (("yolov5nu.yaml", "yolov5"), ("yolov8n-ghost.yaml", "generic"), ("yolo12n.yaml", "generic")):
        model, _ = built(name)
        file = model.yaml.pop("yaml_file")
        try:
            assert default_space_name(model) == family
        finally:
            model.yaml["yaml_file"] = file


def test_default_space_name_accepts_wrappers():
    model, _ = v8()

    class Loaded:  # like autoprune.models.LoadedModel
        pass

    w = Loaded()
    w.model = model
    assert default_space_name(w) == "yolov8"


# ---------------------------------------------------------------------------------------------------------------------
# Genome arithmetic


@pytest.mark.parametrize("name", SMALL)
def test_genome_keep_counts_round_trip(name):
    model, graph = built(name)
    space = default_space(name)
    rng = np.random.default_rng(1)
    for _ in range(50):
        genome = space.random(rng)
        keep = space.keep(genome)
        assert list(keep) == graph.ids
        for gid, r in keep.items():
            gene = space.gene_of(gid)
            assert r == (genome[gene] if gene else 1.0)
        counts = space.counts(genome)
        assert counts == keep_counts(graph, keep, round_to=space.round_to, min_channels=space.min_channels)
        assert space.gflops(genome, 640) == pytest.approx(graph.conv_gflops(counts, 640), rel=1e-12)


def test_counts_are_what_the_pruned_model_has():
    model, graph = v8()
    space = default_space("yolov8n.yaml")
    genome = space.random(np.random.default_rng(3))
    counts = space.counts(genome)
    pruned = prune_to_counts(model, counts, graph=graph)
    after = analyze(pruned)
    assert {g.id: g.size for g in after.groups} == counts
    assert after.conv_gflops(None, 640) == pytest.approx(space.gflops(genome, 640), rel=1e-9)


@pytest.mark.parametrize("name", SMALL)
def test_gflops_is_monotone_in_each_gene(name):
    space = default_space(name)
    rng = np.random.default_rng(2)
    lo, hi = space.min_gflops(640), space.max_gflops(640)
    for _ in range(30):
        genome = space.random(rng)
        base = space.gflops(genome, 640)
        assert lo - 1e-9 <= base <= hi + 1e-9
        for gene in space.genes:
            k = gene.index(genome[gene.name])
            if k < gene.n:
                up = space.gflops({**genome, gene.name: gene.value(k + 1)}, 640)
                assert up >= base - 1e-12, gene.name
            if k > 0:
                down = space.gflops({**genome, gene.name: gene.value(k - 1)}, 640)
                assert down <= base + 1e-12, gene.name
    # every gene moves the cost somewhere on its range
    for gene in space.genes:
        if all(graph_size(name, gid) <= space.min_channels for gid in gene.groups):
            continue
        assert space.gflops({**space.highs(), gene.name: gene.low}, 640) < hi, gene.name


def graph_size(name, gid):
    return built(name)[1].group(gid).size


@pytest.mark.parametrize("name", SMALL)
def test_uniform_for_budget_is_the_largest_uniform_within_budget(name):
    space = default_space(name)
    ratios = space.uniform_ratios()
    lo, hi = space.gflops(space.uniform(0.0), 640), space.max_gflops(640)
    for budget in np.linspace(lo, hi * 1.01, 17):
        g = space.uniform_for_budget(float(budget), 640)
        assert g is not None
        assert space.gflops(g, 640) <= budget
        # the next uniform genome up the grid is over budget
        i = max(i for i, r in enumerate(ratios) if space.uniform(r) == g)
        if i + 1 < len(ratios):
            assert space.gflops(space.uniform(ratios[i + 1]), 640) > budget
        else:
            assert g == space.highs()
    assert space.uniform_for_budget(lo * 0.99, 640) is None


def test_uniform_snaps_and_clips_per_gene():
    space = default_space("yolov8n.yaml")
    u = space.uniform(0.3)
    assert u["stem"] == 0.5 and u["backbone.down"] == 0.35 and u["head.cls"] == 0.3
    assert space.uniform(0.73)["head.cls"] == 0.75
    assert space.uniform(2.0) == space.highs()


@pytest.mark.parametrize("name", SMALL)
def test_repair_meets_every_feasible_budget_and_keeps_feasible_genomes(name):
    space = default_space(name)
    rng = np.random.default_rng(4)
    lo, hi = space.min_gflops(640), space.max_gflops(640)
    for _ in range(40):
        genome = space.random(rng)
        budget = float(rng.uniform(lo, hi))
        fixed = space.repair(genome, budget, 640)
        assert space.gflops(fixed, 640) <= budget
        assert space.check_genome(fixed) == fixed  # on the grid
        assert all(fixed[k] <= genome[k] for k in genome)  # only shrinks
        assert fixed == space.repair(genome, budget, 640)  # deterministic
        if space.gflops(genome, 640) <= budget:
            assert fixed == genome
    assert space.repair(space.highs(), lo, 640) is not None  # the exact floor is feasible
    with pytest.raises(UserError, match="below the smallest model"):
        space.repair(space.highs(), lo * 0.9, 640)


def test_repair_stays_close():
    space = default_space("yolov8n.yaml")
    genome = space.highs()
    budget = space.gflops(space.uniform(0.7), 640)
    fixed = space.repair(genome, budget, 640)
    # shrinking all genes by one factor from 1.0 lands near the uniform genome with that budget
    assert space.gflops(fixed, 640) > 0.9 * budget


def test_full_gflops_prediction_matches_fvcore_on_pruned_models():
    from autoprune.cost import count_gflops

    for name in ("yolo11n.yaml",):  # yolo11 has the most besides convs: norms, and attention's matrix products
        model, graph = built(name)
        space = default_space(name)
        base = count_gflops(model, 320)
        assert space.gflops(space.highs(), 320, base_gflops=base) == pytest.approx(base, abs=1e-9)
        genome = space.random(np.random.default_rng(5))
        pruned = prune_to_counts(model, space.counts(genome), graph=graph)
        full = count_gflops(pruned, 320)
        predicted = space.gflops(genome, 320, base_gflops=base)
        assert predicted == pytest.approx(full, abs=1e-6)
        assert space.gflops(genome, 320) < full  # conv GFLOPs alone undercount the full count
        # a budget between the two counts: repair with base_gflops meets the full count, without it does not
        budget = (full + space.gflops(genome, 320)) / 2
        assert space.repair(genome, budget, 320) == genome
        safe = space.repair(genome, budget, 320, base_gflops=base)
        assert space.gflops(safe, 320, base_gflops=base) <= budget
        ufb = space.uniform_for_budget(budget, 320, base_gflops=base)
        assert space.gflops(ufb, 320, base_gflops=base) <= budget


def test_random_is_on_grid_reproducible_and_varied():
    space = default_space("yolov8n.yaml")
    a = [space.random(np.random.default_rng(7)) for _ in range(2)]
    assert a[0] == a[1]
    rng = np.random.default_rng(8)
    draws = [space.random(rng) for _ in range(200)]
    for d in draws:
        assert space.check_genome(d) == d
    for gene in space.genes:
        seen = {d[gene.name] for d in draws}
        assert len(seen) > gene.n // 2 and min(seen) >= gene.low and max(seen) <= gene.high


def test_distributions_match_the_genes():
    from optuna.distributions import FloatDistribution

    space = default_space("yolo11n.yaml")
    dists = space.distributions()
    assert list(dists) == space.names
    for gene in space.genes:
        d = dists[gene.name]
        assert isinstance(d, FloatDistribution)
        assert (d.low, d.high, d.step) == (gene.low, gene.high, gene.step)
        for v in gene.grid():  # every grid value is one the distribution can take
            k = (v - d.low) / d.step
            assert d.low <= v <= d.high and math.isclose(k, round(k), abs_tol=1e-9)


def test_check_genome_snaps_and_rejects_mismatches():
    space = default_space("yolov8n.yaml")
    g = space.uniform(0.75)
    assert space.check_genome({**g, "stem": 0.912})["stem"] == 0.9
    assert space.check_genome({**g, "stem": np.float64(0.5)})["stem"] == 0.5
    with pytest.raises(UserError, match=r"gene 'stme'.*did you mean 'stem'"):
        space.check_genome({**{k: v for k, v in g.items() if k != "stem"}, "stme": 0.5})
    with pytest.raises(UserError, match="misses gene.*head.cls"):
        space.check_genome({k: v for k, v in g.items() if k != "head.cls"})
    with pytest.raises(UserError, match=r"0.3 of gene 'stem' is outside its range \[0.5, 1\]"):
        space.check_genome({**g, "stem": 0.3})
    with pytest.raises(UserError, match="must be a number"):
        space.check_genome({**g, "stem": "big"})
    with pytest.raises(UserError, match="must be a mapping"):
        space.check_genome([0.5])
    assert space.snap({**g, "stem": 0.1})["stem"] == 0.5  # snap clips, check_genome refuses


def test_gene_grid_is_free_of_float_noise():
    gene = Gene("x", ("a",), 0.35, 1.0, 0.05)
    assert gene.n == 13 and gene.grid()[7] == 0.7 and gene.grid()[-1] == 1.0
    assert gene.snap(0.724) == 0.7 and gene.snap(0.726) == 0.75 and gene.snap(-1) == 0.35
    assert gene.snap_down(0.749) == 0.7 and gene.snap_down(0.75) == 0.75 and gene.snap_down(0.1) == 0.35
    fixed = Gene("y", ("b",), 0.5, 0.5, 0.05)
    assert fixed.grid() == (0.5,) and fixed.snap(0.9) == 0.5


# ---------------------------------------------------------------------------------------------------------------------
# Loading and the format


def test_load_by_name_file_and_dict_and_rebuild_from_source(tmp_path):
    model, graph = v8()
    by_default = load_space(None, graph, model)
    assert load_space("family", graph, model).source == by_default.source  # the name `search --space` takes
    by_name = load_space("yolov8", graph, model)
    path = tmp_path / "mine.yaml"
    shutil.copy(SPACES_DIR / "yolov8.yaml", path)
    by_file = load_space(path, graph, model)
    by_str = load_space(str(path), graph, model)
    rebuilt = space_from_source(json.loads(json.dumps(by_default.source)), graph, model)  # as a study stores it
    for s in (by_name, by_file, by_str, rebuilt):
        assert s.genes == by_default.genes and s.never == by_default.never and s.name == "yolov8"
    assert (s.round_to, s.min_channels) == (8, 8)


def test_shipped_spaces_are_reachable_from_the_top_level_folder():
    assert shipped_spaces() == ["fine", "fine-depth", "fine-ops", "generic", "yolo11", "yolov5", "yolov8",
                                "yolov8-depth", "yolov8-ops"]
    top = REPO / "search_spaces"
    if top.exists():  # a source checkout: the top-level folder is a link to the packaged one
        assert top.is_symlink() and top.resolve() == SPACES_DIR.resolve()
    for name in shipped_spaces():
        text = (SPACES_DIR / f"{name}.yaml").read_text()
        assert text.startswith("# autoprune search space:")
        assert "# Format" in text and "Why these genes" in text


def test_selection_keys_combine():
    space = space_of({
        "name": "mine",
        "defaults": {"low": 0.5, "step": 0.1},
        "genes": {
            "first": {"layers": [0, "1"]},
            "last.layer": {"layers": -1},  # the Detect layer
            "c2f": {"modules": "C2f", "role": ["residual", "output"], "exclude": {"stage": "neck"}},
            "p": {"layers": ["P4", "P5"], "role": "output", "low": 0.3, "high": 0.9, "step": 0.2},
        },
        "never": ["9.*", {"stage": "neck", "modules": "Conv"}],
        "rest": "never",
    })
    assert space.name == "mine"
    assert space.gene("first").groups == ("0", "1")
    assert len(space.gene("last.layer").groups) == 12
    assert space.gene("c2f").groups == ("2.cv1", "2.cv2", "4.cv1", "4.cv2", "6.cv1", "6.cv2", "8.cv1", "8.cv2")
    assert space.gene("p").groups == ("18.cv2", "21.cv2") and space.gene("p").grid() == (0.3, 0.5, 0.7, 0.9)
    assert {"9.cv1", "9.cv2", "16", "19", "15.cv2"} <= set(space.never)
    assert space.keep(space.uniform(0.5))["15.cv2"] == 1.0
    assert sorted(covered(space)) == sorted(v8()[1].ids)


def test_split_makes_one_gene_per_layer_or_group():
    space = space_of({"genes": {"b": {"stage": "backbone", "split": "layer"}, "h": {"layers": -1, "split": "group"}},
                      "rest": {"name": "other", "low": 0.5}})
    assert [g.name for g in space.genes if g.name.startswith("b.")] == [f"b.{i}" for i in range(10)]
    assert space.gene("b.4").groups == ("4.cv1", "4.m.0.cv1", "4.m.1.cv1", "4.cv2")
    assert space.gene("h.22.cv3.0.1").groups == ("22.cv3.0.1",)
    assert space.gene("other").low == 0.5 and "15.cv2" in space.gene("other").groups


def test_never_wins_over_genes_and_rest_never_keeps_the_remainder():
    space = space_of({"genes": {"all": {}}, "never": "2*"})
    assert not any(g.startswith("2") for g in space.gene("all").groups)
    assert space.keep(space.uniform(0.25))["22.cv3.0.0"] == 1.0
    only_head = space_of({"genes": {"cls": {"groups": "*.cv3.*"}}, "rest": "never"})
    assert only_head.names == ["cls"] and len(only_head.never) == 51 - 6


def test_optional_gene_that_selects_nothing_is_dropped():
    space = space_of({"genes": {"a": {"modules": "C3", "optional": True}, "b": {}}})
    assert space.names == ["b"]


def test_roles_come_from_the_graph():
    space = space_of({"genes": {"r": {"role": "residual"}, "o": {"role": "output"}, "i": {"role": "inner"}}})
    assert space.gene("r").groups == ("2.cv1", "4.cv1", "6.cv1", "8.cv1")  # only the backbone C2f have shortcuts
    assert "12.cv1" in space.gene("i").groups and "22.cv2.0.0" in space.gene("i").groups
    assert {"0", "4.cv2", "15.cv2", "9.cv2"} <= set(space.gene("o").groups)
    yolo11 = space_of({"genes": {"r": {"role": "residual"}}, "rest": "never"}, "yolo11n.yaml")
    assert "6.m.0.cv1" in yolo11.gene("r").groups and "16.cv2" not in yolo11.gene("r").groups  # DWConv is no add


BAD = [
    ({"genes": {}, "rset": "never"}, r"unknown key rset \(did you mean 'rest'\?\)"),
    ({"genes": {"a": {"stpe": 0.1}}}, r"unknown key genes.a.stpe \(did you mean 'step'\?\)"),
    ({"genes": {"a": {}}, "defaults": {"hihg": 1}}, r"unknown key defaults.hihg \(did you mean 'high'\?\)"),
    ({"genes": {"a": {"exclude": {"layer": 3}}}}, r"unknown key genes.a.exclude.layer \(did you mean 'layers'\?\)"),
    ({"genes": {"a": {"low": 1.5}}}, r"genes.a.low: must be a number in \(0, 1\], got 1.5"),
    ({"genes": {"a": {"low": "x"}}}, r"genes.a.low: must be a number in \(0, 1\], got 'x'"),
    ({"genes": {"a": {"low": True}}}, r"genes.a.low: must be a number"),
    ({"genes": {"a": {"low": 0.8, "high": 0.5}}}, r"genes.a: low 0.8 is above high 0.5"),
    ({"genes": {"a": {"step": 0.07}}}, r"genes.a.step: 0.07 does not divide high - low = 0.75"),
    ({"genes": {"a": {"low": 0.9, "step": 0.5}}}, r"genes.a.step: 0.5 does not divide"),
    ({"genes": {"a": {"step": 0}}}, r"genes.a.step: must be a number in \(0, 1\]"),
    ({"genes": {"a": {"groups": "*.cv9"}}, "rest": "never"}, r"genes.a.groups: pattern '\*.cv9' matches no channel"),
    ({"genes": {"a": {"stage": "head", "groups": "*.m.*"}}}, r"pattern '\*.m.\*' matches no channel group within stage"),
    ({"genes": {"a": {"groups": "*.cv1"}, "b": {"groups": "2.*"}}}, r"'2.cv1' is selected by both gene 'a' and gene 'b'"),
    ({"genes": {"a": {"groups": "*.cv1"}}}, r"groups not covered by any gene: 0, 1, 2.cv2"),
    ({"genes": {"a": {"stage": "neckk"}}}, r"genes.a.stage: must be one of backbone, neck, head, got 'neckk' \(did you"),
    ({"genes": {"a": {"role": "hidden"}}}, r"genes.a.role: must be one of residual, output, inner"),
    ({"genes": {"a": {"modules": "C2ff"}}}, r"genes.a.modules: unknown layer class 'C2ff' \(did you mean 'C2f'\?\)"),
    ({"genes": {"a": {"modules": "C3"}}}, r"genes.a: selects no channel group.*optional: true"),
    ({"genes": {"a": {"layers": "40-50"}}}, r"genes.a.layers: range '40-50' selects no layer; the model has layers 0-22"),
    ({"genes": {"a": {"layers": 30}}}, r"genes.a.layers: layer 30 does not exist"),
    ({"genes": {"a": {"layers": "P7"}}}, r"genes.a.layers: P7 is not a head input of this model; it has P3, P4, P5"),
    ({"genes": {"a": {"layers": "a-b"}}}, r"genes.a.layers: must be a layer index, a range"),
    ({"genes": {"a": {}}, "rest": "nevr"}, r"rest: must be error, never, or a gene mapping.*did you mean 'never'"),
    ({"genes": {"a": {}}, "round_to": 0}, r"round_to: must be an integer from 1 to 4096, got 0"),
    ({"genes": {"a": {}}, "min_channels": 2.5}, r"min_channels: must be an integer"),
    ({"genes": [{"name": "a"}]}, r"genes: must be a mapping"),
    ({"name": "x"}, r"genes: is required"),
    ({"name": "a b", "genes": {"a": {}}}, r"name: must be a name of letters"),
    ({"genes": {"a b": {}}}, r"genes.a b: must be a name of letters"),
    ({"genes": {"a": {"split": "layers"}}}, r"genes.a.split: must be one of none, layer, group.*did you mean 'layer'"),
    ({"genes": {"a": {"optional": "yes"}}}, r"genes.a.optional: must be true or false"),
    ({"version": 2, "genes": {"a": {}}}, r"version: must be 1, got 2"),
    ({"never": "*.zz", "genes": {"a": {}}}, r"never: pattern '\*.zz' matches no channel group"),
    ({"never": "*", "genes": {"a": {}}}, r"genes.a: selects no channel group of this model outside never:"),
    ({"genes": {"a": {"exclude": 3}}}, r"genes.a.exclude: must be a group id pattern"),
    ({"genes": {"a": {"groups": "2.*", "split": "group"}, "a.2.cv2": {"groups": "0"}}, "rest": "never"},
     r"gene name 'a.2.cv2' is used twice"),
]


@pytest.mark.parametrize("spec,message", BAD, ids=[m[:40] for _, m in BAD])
def test_bad_space_is_one_clear_user_error(spec, message):
    with pytest.raises(UserError, match=message) as e:
        space_of(spec)
    assert "\n" not in str(e.value) and str(e.value).startswith("search space (dict): ")


@pytest.mark.parametrize(
    "text,message",
    [
        ("genes:\n  a: {low: 0.5\n", r"bad.yaml: line 3, column 1: YAML error: expected ',' or '}'"),
        ("genes:\n  a: {}\n  a: {}\n", r"bad.yaml: line 3, column 3: YAML error: duplicate key 'a'"),
        ("- a\n", r"expected a mapping of keys .* the file is a list"),
        ("", r"the file is empty"),
        ("genes:\n  a:\n    lwo: 0.5\n", r"bad.yaml: unknown key genes.a.lwo \(did you mean 'low'\?\)"),
    ],
)
def test_bad_space_file_is_one_clear_user_error(tmp_path, text, message):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(UserError, match=message) as e:
        space_of(path)
    assert "\n" not in str(e.value)


def test_missing_file_and_unknown_name():
    with pytest.raises(UserError, match="search space file not found: nope/space.yaml"):
        space_of("nope/space.yaml")
    with pytest.raises(UserError, match=r"unknown search space 'yolov8x' \(did you mean 'yolov8'\?\).*generic, yolo11"):
        space_of("yolov8x")


def test_a_shipped_family_space_on_the_wrong_model_fails_loudly():
    with pytest.raises(UserError, match=r"search space yolov8: genes.backbone.residual.*selects no channel group"):
        space_of("yolov8", "yolov3-tinyu.yaml")


def test_describe_reports_what_each_gene_saves():
    space = default_space("yolov8n.yaml")
    rows = space.describe(640)
    assert [r["gene"] for r in rows] == space.names
    assert all(r["saves_at_low_gflops"] > 0 for r in rows)
    assert math.isclose(sum(len(r["groups"]) for r in rows), len(v8()[1].ids))


def test_repair_gives_back_the_budget_snapping_left():
    space = default_space("yolov8n.yaml")
    rng = np.random.default_rng(9)
    for _ in range(10):
        genome = space.highs()
        budget = float(rng.uniform(space.min_gflops(640), space.max_gflops(640) * 0.9))
        fixed = space.repair(genome, budget, 640)
        # no single gene can go one step further up without breaking the budget
        for gene in space.genes:
            k = gene.index(fixed[gene.name])
            if k < gene.n:
                assert space.gflops({**fixed, gene.name: gene.value(k + 1)}, 640) > budget, gene.name


def test_grid_indices_round_trip():
    space = default_space("yolo11n.yaml")
    genome = space.random(np.random.default_rng(10))
    idx = space.to_indices(genome)
    assert all(isinstance(k, int) and 0 <= k <= g.n for k, g in zip(idx, space.genes))
    assert space.from_indices(idx) == genome
    assert space.from_indices([0] * len(space.genes)) == space.lows()
    with pytest.raises(ValueError, match="grid indices"):
        space.from_indices([0])


def test_the_examples_in_the_docs_load():
    import re

    import yaml

    text = (REPO / "docs" / "SEARCH_SPACES.md").read_text()
    blocks = [b for b in re.findall(r"```yaml\n(.*?)```", text, re.S) if "genes:" in b]
    assert len(blocks) >= 3
    model, graph = v8()
    for block in blocks:
        space = load_space(yaml.safe_load(block), graph, model)
        assert sorted(covered(space)) == sorted(graph.ids)


def test_gene_validates_itself():
    with pytest.raises(ValueError, match="low <= high"):
        Gene("x", ("a",), 0.8, 0.5, 0.05)
    with pytest.raises(ValueError, match="does not divide"):
        Gene("x", ("a",), 0.25, 1.0, 0.1)
    with pytest.raises(ValueError, match="step > 0"):
        Gene("x", ("a",), 0.25, 1.0, 0.0)


def test_distributions_equal_what_suggest_float_makes_even_for_fixed_genes():
    import optuna

    space = space_of({"genes": {"fixed": {"groups": "0", "low": 0.5, "high": 0.5}}, "rest": {"name": "other"}})
    study = optuna.create_study()
    trial = study.ask()
    for g in space.genes:
        trial.suggest_float(g.name, g.low, g.high, step=g.step)
    assert study.trials[0].distributions == space.distributions()
    assert space.gene("fixed").grid() == (0.5,)


def test_from_counts_projects_a_plan_onto_the_genes():
    fine = space_of("fine")
    model, graph = built("yolov8n.yaml")
    counts = {gid: max(8, graph.group(gid).size // 2 // 8 * 8) if i % 2 else graph.group(gid).size
              for i, gid in enumerate(graph.ids)}
    genome = fine.from_counts(counts)
    assert len(fine.genes) == len(graph.ids)  # one gene per group: the plan comes back channel for channel
    assert fine.counts(genome) == counts
    floors = {gid: 8 for gid in graph.ids}  # global pruning floors whole groups: the widest (256) too
    assert fine.counts(fine.from_counts(floors)) == floors
    family = space_of(None)  # tied genes: each gene takes its groups' kept share of channels
    tied = family.from_counts(counts)
    for g in family.genes:
        share = sum(counts[gid] for gid in g.groups) / sum(graph.group(gid).size for gid in g.groups)
        assert abs(tied[g.name] - min(max(share, g.low), g.high)) <= g.step / 2 + 1e-9
    assert set(family.from_counts({}).values()) == {1.0}  # groups missing from the plan are kept whole
