"""Search spaces: which genes a genome has, and how each gene's keep ratio maps to the model's channel groups.

A **genome** is `{gene name: keep ratio}`. A **search space** (a YAML file, see `docs/SEARCH_SPACES.md`) says which
genes exist and which channel groups (`autoprune groups` lists them) each one drives: one gene can tie many groups
together by id pattern (`fnmatch`), by stage (`backbone`, `neck`, `head`), by layer range, by the class of the layer
(`C2f`, `SPPF`, ...) and by the role of the channels (`residual`, `output`, `inner`). Every prunable group ends up in
exactly one gene or in the never-pruned set. Each gene has a range and a step: a genome's values lie on that grid.

`load_space(spec, graph, model)` binds a space to one analysed model and returns a `SearchSpace`, which turns genomes
into keep ratios, kept channel counts and GFLOPs in microseconds, so a search can price a candidate before it builds
it. Each model family has a shipped default space (`autoprune/search_spaces/*.yaml`); `default_space_name(model)`
picks it, and `generic` serves any other detector.

GFLOPs: `SearchSpace.gflops(genome, imgsz)` is the conv count of the channel analysis (2 x multiply-adds of every
conv, exact). The budget a search enforces is the full fvcore count (`autoprune.cost.count_gflops`), which adds
batch norms, attention's matrix products and a few fixed layers. Pass
`base_gflops=count_gflops(unpruned_model, imgsz)` to any cost or budget method and the space predicts that full count
instead: conv GFLOPs + norm GFLOPs (linear in the kept channels, computed from the graph) + attention GFLOPs (linear
in the kept head dims, `ChannelGraph.attention_gflops`) + a constant remainder (what pruning cannot touch). The
prediction matches fvcore to rounding error on pruned yolov8n/yolo11n/yolo12n; a scale factor full/conv would not
be safe, because pruning shrinks convs (channels squared) faster than norms (channels), so the full/conv ratio grows
as a model is pruned.

Example:
    >>> from autoprune.models import load_model
    >>> from autoprune.channels import analyze
    >>> m = load_model("yolov8n.yaml").model
    >>> space = load_space(None, analyze(m), m)
    >>> space.name, len(space.genes)
    ('yolov8', 12)
    >>> g = space.uniform(0.75)
    >>> space.gflops(g, 640) < space.max_gflops(640)
    True
"""

from autoprune.space.build import SPACES_DIR, load_space, shipped_spaces, space_from_source
from autoprune.space.gene import Gene
from autoprune.space.schema import (
    DEFAULT_MIN_CHANNELS,
    DEFAULT_RANGE,
    DEFAULT_ROUND_TO,
    FORMAT_VERSION,
    ROLES,
    STAGES,
    read_space_file,
)
from autoprune.space.search_space import NORM_FLOPS_PER_ELEMENT, SearchSpace
from autoprune.space.view import default_space_name

__all__ = [
    "DEFAULT_MIN_CHANNELS",
    "DEFAULT_RANGE",
    "DEFAULT_ROUND_TO",
    "FORMAT_VERSION",
    "NORM_FLOPS_PER_ELEMENT",
    "ROLES",
    "SPACES_DIR",
    "STAGES",
    "Gene",
    "SearchSpace",
    "default_space_name",
    "load_space",
    "read_space_file",
    "shipped_spaces",
    "space_from_source",
]
