"""`SearchSpace`: a search space bound to one analysed model, which turns genomes into keep ratios, kept channel
counts and GFLOPs without building a model."""

from __future__ import annotations

import difflib
import math
from collections.abc import Mapping

import numpy as np

from autoprune import budget
from autoprune.cost.flops import norm_flops
from autoprune.errors import UserError
from autoprune.pruner import rounded_count
from autoprune.space.gene import Gene
from autoprune.space.schema import show

# What the full GFLOPs count charges per output element of a conv followed by a BatchNorm (Ultralytics' are affine).
NORM_FLOPS_PER_ELEMENT = norm_flops(1, affine=True)


class SearchSpace:
    """A search space bound to one analysed model: genes, their ranges, and what a genome costs.

    Attributes:
        name: the space's name (`yolov8`, or the file's `name:`).
        genes: the genes, in the order the space lists them (a `split` gene expands in model order).
        round_to, min_channels: how a keep ratio becomes a channel count (`autoprune.pruner.rounded_count`).
        never: ids of the groups that are never pruned (in model order).
        source: the space as loaded (plain YAML types); `space_from_source(source, graph, model)` rebuilds it.
        graph: the `ChannelGraph` the space is bound to.

    Depth genes (the space's `depth:` key) drive depth units (`autoprune.depth`): their value is a number of kept
    elements, and `counts` gives it as `{"depth:<unit id>": kept}` entries next to the channel groups' counts;
    `gflops` prices both exactly (`autoprune.depth.conv_channels`). Uniform genomes and one-shot plans
    (`uniform`, `from_counts`) keep every element.

    Swap genes (the space's `swap:` key) drive swap sites (`autoprune.swap`): their value indexes the gene's
    `choices` (cheapest kind first, `keep` last, so a gene's high is the unpruned model as for the other genes), and
    `counts` gives `{"swap:<site id>": kind code}` entries after the depth ones; `gflops` prices them exactly
    (`autoprune.swap.cost_delta`, on the channels the widths and depth leave). Uniform genomes keep every conv.

    Genomes are `{gene name: ratio}` dicts. Every method that takes one validates it (`check_genome`): unknown or
    missing genes and values outside a gene's range are `UserError`s; values between grid points are snapped to the
    nearest one.

    GFLOPs: every cost and budget method takes `base_gflops`. Without it they use the conv GFLOPs of the channel
    analysis (`graph.conv_gflops`), a lower bound of the full count. With `base_gflops` = the full fvcore count of the
    unpruned model at the same `imgsz` (`autoprune.cost.count_gflops(model, imgsz)`), they use the predicted full
    count of the pruned model (see the `autoprune.space` docstring), which is what a search should compare with its
    budget.
    """

    def __init__(self, *, name: str, genes: tuple[Gene, ...], round_to: int, min_channels: int,
                 never: tuple[str, ...], source: dict, graph, units: tuple = (), sites: tuple = ()):
        self.name = name
        self.genes = genes
        self.round_to = round_to
        self.min_channels = min_channels
        self.never = never
        self.source = source
        self.graph = graph
        self._by_name = {g.name: g for g in genes}
        self._gene_of = {gid: g.name for g in genes for gid in g.groups}
        self._norm_convs = tuple(sorted({p.conv for p in graph.producers if p.bn is not None}))
        # depth units (`autoprune.depth.find_units`) of the model, and those a depth gene drives
        self.units = units
        self._unit_n = {u.id: u.n for u in units}
        self.depth_genes = tuple(g for g in genes if g.kind == "depth")
        # {depth key: element order, most important first} of the units whose removal order is measured
        # (`depth.rank_elements`; a search sets it from its study's ranking); the last elements go otherwise
        self.element_orders: dict[str, list[int]] = {}
        # swap sites (`autoprune.swap.find_sites`) of the model, and the swap genes
        self.sites = sites
        self.swap_genes = tuple(g for g in genes if g.kind == "swap")

    def __repr__(self) -> str:
        return f"SearchSpace({self.name!r}, {len(self.genes)} genes, {len(self.never)} never pruned)"

    # -- genomes ----------------------------------------------------------------------------------------------------

    @property
    def names(self) -> list[str]:
        """Gene names in order."""
        return [g.name for g in self.genes]

    def gene(self, name: str) -> Gene:
        """The gene called `name` (KeyError if absent)."""
        return self._by_name[name]

    def gene_of(self, gid: str) -> str | None:
        """The name of the gene that drives group `gid`, or None for a never-pruned group."""
        return self._gene_of.get(gid)

    def check_genome(self, genome) -> dict[str, float]:
        """Validate `genome` against the space and return it snapped to the grid (in gene order).

        UserError when it is not a mapping, names an unknown gene (with a suggestion), misses a gene, or has a value
        that is not a number inside the gene's `[low, high]`.

        Example:
            >>> space.check_genome({**space.uniform(1.0), "stem": 0.98})["stem"]  # doctest: +SKIP
            1.0
        """
        if not isinstance(genome, Mapping):
            raise UserError(f"a genome must be a mapping of gene name to keep ratio, got {show(genome)}")
        unknown = [k for k in genome if k not in self._by_name]
        if unknown:
            hint = difflib.get_close_matches(str(unknown[0]), self.names, n=1)
            more = f" (did you mean {hint[0]!r}?)" if hint else ""
            raise UserError(
                f"genome has gene {unknown[0]!r} that search space {self.name!r} does not{more}; "
                f"its genes: {', '.join(self.names)}"
            )
        missing = [n for n in self.names if n not in genome]
        if missing:
            raise UserError(f"genome misses gene(s) {', '.join(missing)} of search space {self.name!r}")
        out = {}
        for g in self.genes:
            v = genome[g.name]
            if isinstance(v, (np.floating, np.integer)):
                v = float(v)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
                raise UserError(f"genome value of gene {g.name!r} must be a number, got {show(v)}")
            if v < g.low - 1e-6 or v > g.high + 1e-6:
                raise UserError(
                    f"genome value {v:g} of gene {g.name!r} is outside its range [{g.low:g}, {g.high:g}]"
                )
            out[g.name] = g.snap(float(v))
        return out

    def snap(self, genome) -> dict[str, float]:
        """Every value moved to the nearest grid point of its gene and clipped to its range (genes must match)."""
        if not isinstance(genome, Mapping):
            raise UserError(f"a genome must be a mapping of gene name to keep ratio, got {show(genome)}")
        clipped = {}
        for k, v in genome.items():
            g = self._by_name.get(k)
            if g is not None and isinstance(v, (int, float, np.floating, np.integer)) and not isinstance(v, bool):
                v = min(max(float(v), g.low), g.high) if math.isfinite(v) else v
            clipped[k] = v
        return self.check_genome(clipped)

    def from_counts(self, counts: Mapping[str, int]) -> dict[str, float]:
        """The genome closest to kept channel counts per group (a one-shot plan): each gene's ratio is the kept
        share of the channels of its groups, snapped to its grid and clipped to its range."""
        genome = {}
        for g in self.genes:
            if g.kind == "depth":
                genome[g.name] = max(int(counts.get(f"depth:{u}", self._unit_n[u])) for u in g.units)
                continue
            if g.kind == "swap":
                from autoprune.swap import KINDS, swap_key

                kind = KINDS[int(counts.get(swap_key(g.units[0]), 0))]
                genome[g.name] = float(g.choices.index(kind) if kind in g.choices else len(g.choices) - 1)
                continue
            sizes = [self.graph.group(gid).size for gid in g.groups]
            kept = [min(int(counts.get(gid, size)), size) for gid, size in zip(g.groups, sizes)]
            genome[g.name] = sum(kept) / sum(sizes) if sum(sizes) else 1.0
        return self.snap(genome)

    def keep(self, genome) -> dict[str, float]:
        """Keep ratio of every channel group of the graph: its gene's value, 1.0 for never-pruned groups."""
        genome = self.check_genome(genome)
        return {gid: genome[self._gene_of[gid]] if gid in self._gene_of else 1.0 for gid in self.graph.ids}

    def counts(self, genome) -> dict[str, int]:
        """Kept channels per part of every group (`rounded_count` with the space's `round_to`, `min_channels`), and
        with depth genes the kept elements of their units (`{"depth:<unit id>": kept}`, after the groups)."""
        genome = self.check_genome(genome)
        found = {}
        cache = self.__dict__.setdefault("_count_cache", {})  # (gene, grid index) -> {group id: count}
        for g in self.genes:
            if g.kind in ("depth", "swap"):
                continue
            key = (g.name, g.index(genome[g.name]))
            part = cache.get(key)
            if part is None:
                v = g.value(key[1])
                part = cache[key] = {
                    gid: rounded_count(self.graph.group(gid).size, v, self.round_to, self.min_channels)
                    for gid in g.groups
                }
            found.update(part)
        out = {g.id: found.get(g.id, g.size) for g in self.graph.groups}
        for g in self.depth_genes:
            k = int(round(genome[g.name]))
            out.update({f"depth:{u}": min(k, self._unit_n[u]) for u in g.units})
        if self.swap_genes:
            from autoprune.swap import KINDS, swap_key

            for g in self.swap_genes:
                code = KINDS.index(g.choices[int(round(genome[g.name]))])
                out.update({swap_key(u): code for u in g.units})
        return out

    # -- costs ------------------------------------------------------------------------------------------------------

    def _channels(self, counts: dict[str, int] | None) -> dict[str, tuple[int, int]]:
        """(in, out) channels of every conv left by `counts` (convs of removed depth elements absent)."""
        if counts and any(k.startswith(("depth:", "swap:")) for k in counts):
            from autoprune.depth import conv_channels
            from autoprune.swap import split_counts

            return conv_channels(self.graph, list(self.units), split_counts(counts)[0], self.element_orders)
        return self.graph.conv_channels(counts)

    def _norm_gflops(self, counts: dict[str, int] | None, imgsz: int, channels=None) -> float:
        channels = self._channels(counts) if channels is None else channels
        scale = (imgsz / self.graph.imgsz) ** 2
        elements = sum(channels[c][1] * self.graph.convs[c].out_pixels for c in self._norm_convs if c in channels)
        return NORM_FLOPS_PER_ELEMENT * elements * scale / 1e9

    def _cost_of_counts(self, counts: dict[str, int] | None, imgsz: int, base_gflops: float | None) -> float:
        from autoprune.depth import conv_gflops

        channels = self._channels(counts)
        conv = (conv_gflops(self.graph, channels, imgsz) if self.units or self.sites
                else self.graph.conv_gflops(counts, imgsz))
        norm = 0.0
        if self.sites and counts:
            from autoprune.swap import cost_delta, split_counts

            swaps = split_counts(counts)[1]
            if swaps:
                extra_conv, extra_norm = cost_delta(self.graph, self.sites, swaps, channels, imgsz)
                conv, norm = conv + extra_conv, NORM_FLOPS_PER_ELEMENT * extra_norm
        if base_gflops is None:
            return conv
        norm += self._norm_gflops(counts, imgsz, channels)
        attention = self.graph.attention_gflops(imgsz=imgsz, channels=channels)
        return conv + norm + attention + self._remainder(imgsz, base_gflops)

    def _remainder(self, imgsz: int, base_gflops: float) -> float:
        """Full GFLOPs of the unpruned model that neither convs, the norms after them nor the attention products
        that shrink with them (`ChannelGraph.attention_gflops`) account for."""
        if isinstance(base_gflops, bool) or not isinstance(base_gflops, (int, float)) or not base_gflops > 0:
            raise ValueError(f"base_gflops must be the unpruned model's GFLOPs (> 0), got {base_gflops!r}")
        key = (imgsz, float(base_gflops))
        cache = self.__dict__.setdefault("_remainders", {})
        if key not in cache:
            cache[key] = (base_gflops - self.graph.conv_gflops(None, imgsz) - self._norm_gflops(None, imgsz)
                          - self.graph.attention_gflops(None, imgsz))
        return cache[key]

    def gflops(self, genome, imgsz: int, *, base_gflops: float | None = None) -> float:
        """GFLOPs of the model pruned by `genome` at `imgsz`, in microseconds, without building it.

        Without `base_gflops`: the conv GFLOPs (`graph.conv_gflops`), exact for convs. With `base_gflops` (the full
        fvcore count of the unpruned model at `imgsz`): the predicted full count, what `count_gflops` would say.

        Example:
            >>> space.gflops(space.uniform(1.0), 640) == space.graph.conv_gflops(None, 640)  # doctest: +SKIP
            True
        """
        return self._cost_of_counts(self.counts(genome), imgsz, base_gflops)

    def lows(self) -> dict[str, float]:
        """The genome with every gene at its low."""
        return {g.name: g.low for g in self.genes}

    def highs(self) -> dict[str, float]:
        """The genome with every gene at its high."""
        return {g.name: g.high for g in self.genes}

    def min_gflops(self, imgsz: int, *, base_gflops: float | None = None) -> float:
        """The smallest GFLOPs any genome reaches (every gene at its low): budgets below it are infeasible."""
        return self.gflops(self.lows(), imgsz, base_gflops=base_gflops)

    def max_gflops(self, imgsz: int, *, base_gflops: float | None = None) -> float:
        """The largest GFLOPs any genome reaches (every gene at its high)."""
        return self.gflops(self.highs(), imgsz, base_gflops=base_gflops)

    # -- special genomes --------------------------------------------------------------------------------------------

    def uniform(self, ratio: float) -> dict[str, float]:
        """Every gene at `ratio`, snapped to its grid and clipped to its range; depth genes at their high."""
        return {g.name: g.high if g.kind in ("depth", "swap") else g.snap(min(max(float(ratio), g.low), g.high))
                for g in self.genes}

    def uniform_ratios(self) -> list[float]:
        """The ratios at which `uniform` is evaluated by `uniform_for_budget`: every grid value of every gene."""
        return sorted({v for g in self.genes if g.kind == "width" for v in g.grid()})

    def uniform_for_budget(self, budget_gflops: float, imgsz: int, *,
                           base_gflops: float | None = None) -> dict[str, float] | None:
        """The largest uniform genome (`uniform(r)`, `r` over `uniform_ratios()`) within `budget_gflops`, or None
        when even the smallest one is over it (`autoprune.budget.largest_uniform`).

        Example:
            >>> space.gflops(space.uniform_for_budget(5.0, 640), 640) <= 5.0  # doctest: +SKIP
            True
        """
        return budget.largest_uniform(self, budget.gflops_budget(self, budget_gflops, imgsz, base_gflops=base_gflops))

    def repair(self, genome, budget_gflops: float, imgsz: int, *, base_gflops: float | None = None) -> dict[str, float]:
        """A genome within `budget_gflops` close to `genome`: `genome` itself (snapped) when it is within budget,
        else every gene lowered by one common factor and the rest of the budget given back a grid step at a time
        (`autoprune.budget.repair`). UserError when the budget is below `min_gflops` (no genome of the space meets
        it)."""
        return budget.repair(self, genome, budget.gflops_budget(self, budget_gflops, imgsz, base_gflops=base_gflops))

    def to_indices(self, genome) -> list[int]:
        """The grid index of each gene's value, in gene order (an integer encoding for evolutionary engines)."""
        genome = self.check_genome(genome)
        return [g.index(genome[g.name]) for g in self.genes]

    def from_indices(self, indices) -> dict[str, float]:
        """The genome whose gene `i` is at grid index `indices[i]` (clipped to `0..n`)."""
        if len(indices) != len(self.genes):
            raise ValueError(f"expected {len(self.genes)} grid indices, got {len(indices)}")
        return {g.name: g.value(int(k)) for g, k in zip(self.genes, indices)}

    def random(self, rng: np.random.Generator) -> dict[str, float]:
        """A genome with each gene drawn uniformly from its grid."""
        return {g.name: g.value(int(rng.integers(0, g.n + 1))) for g in self.genes}

    def distributions(self) -> dict:
        """One `optuna.distributions.FloatDistribution(low, high, step=step)` per gene, for Optuna samplers."""
        from optuna.distributions import FloatDistribution

        # the same distribution `trial.suggest_float(g.name, g.low, g.high, step=g.step)` makes, fixed genes too
        return {g.name: FloatDistribution(g.low, g.high, step=g.step) for g in self.genes}

    # -- reporting --------------------------------------------------------------------------------------------------

    def describe(self, imgsz: int | None = None) -> list[dict]:
        """One row per gene: name, range, step, groups, and the conv GFLOPs its groups drive (its share when all
        of them go to its low with everything else whole), for tables and `--json`."""
        imgsz = imgsz or self.graph.imgsz
        full = self.max_gflops(imgsz)
        rows = []
        for g in self.genes:
            lowered = {**self.highs(), g.name: g.low}
            rows.append({
                "gene": g.name, "low": g.low, "high": g.high, "step": g.step, "groups": list(g.groups),
                **({"kind": "depth", "units": list(g.units)} if g.kind == "depth" else {}),
                **({"kind": "swap", "convs": list(g.units), "choices": list(g.choices)} if g.kind == "swap" else {}),
                "saves_at_low_gflops": round(full - self.gflops(lowered, imgsz), 6),
            })
        return rows

