"""The search space file format: its keys and defaults, reading a YAML file, and the checks whose errors name the
field and what is allowed (`Checker`)."""

from __future__ import annotations

import difflib
import math
import re
from collections.abc import Mapping
from pathlib import Path

from autoprune.errors import UserError
from autoprune.space.gene import GRID_TOL

FORMAT_VERSION = 1

STAGES = ("backbone", "neck", "head")
ROLES = ("residual", "output", "inner")
SPLITS = ("none", "layer", "group")
REST_MODES = ("error", "never")

TOP_KEYS = ("name", "description", "version", "round_to", "min_channels", "defaults", "genes", "never", "rest",
            "depth", "swap")
RANGE_KEYS = ("low", "high", "step")
SELECT_KEYS = ("groups", "exclude", "stage", "layers", "modules", "role")
GENE_KEYS = SELECT_KEYS + RANGE_KEYS + ("split", "optional")
NEVER_KEYS = SELECT_KEYS + ("optional",)
REST_KEYS = ("name",) + RANGE_KEYS + ("split",)
DEPTH_KEYS = ("units", "exclude", "stage", "layers", "modules", "low", "split", "optional")  # one depth gene
DEPTH_SPLITS = ("unit", "none")
SWAP_KEYS = ("convs", "exclude", "stage", "layers", "modules", "kinds", "split", "optional")  # one swap gene
SWAP_SPLITS = ("conv", "none")

DEFAULT_RANGE = {"low": 0.25, "high": 1.0, "step": 0.05}
DEFAULT_ROUND_TO = 8
DEFAULT_MIN_CHANNELS = 8

_NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_.\-]*$")

# ---------------------------------------------------------------------------------------------------------------------
# Reading YAML


def _yaml_loader():
    import yaml

    class Loader(yaml.SafeLoader):
        """SafeLoader that rejects duplicate keys (PyYAML would silently keep the last one)."""

    def construct_mapping(loader, node, deep=False):
        seen = {}
        for key_node, _ in node.value:
            key = loader.construct_object(key_node, deep=deep)
            if isinstance(key, (str, int, float, bool)) and key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"duplicate key {key!r}", key_node.start_mark
                )
            seen[key] = True
        return yaml.SafeLoader.construct_mapping(loader, node, deep=deep)

    Loader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, construct_mapping)
    return Loader


def read_space_file(path: str | Path) -> dict:
    """The YAML mapping in `path`; UserError for a missing file, a parse error (with its line) or a non-mapping."""
    import yaml

    path = Path(path).expanduser()
    if not path.is_file():
        raise UserError(f"search space file not found: {path}")
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise UserError(f"cannot read search space {path}: {e}") from e
    try:
        data = yaml.load(text, Loader=_yaml_loader())  # noqa: S506 - a SafeLoader subclass
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None) or getattr(e, "context_mark", None)
        where = f" line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise UserError(f"search space {path}:{where}: YAML error: {problem}") from e
    if not isinstance(data, dict):
        kind = "empty" if data is None else f"a {type(data).__name__}"
        raise UserError(f"search space {path}: expected a mapping of keys (name, genes, ...), the file is {kind}")
    return data


# ---------------------------------------------------------------------------------------------------------------------
# Validation helpers: every error names the field and what is allowed


class Checker:
    def __init__(self, label: str):
        self.label = label

    def fail(self, field: str, msg: str):
        raise UserError(f"search space {self.label}: {field}: {msg}")

    def keys(self, field: str, d: Mapping, allowed: tuple[str, ...]) -> None:
        for k in d:
            if not isinstance(k, str) or k not in allowed:
                hint = difflib.get_close_matches(str(k), allowed, n=1)
                more = f" (did you mean {hint[0]!r}?)" if hint else ""
                where = f"{field}." if field else ""
                raise UserError(
                    f"search space {self.label}: unknown key {where}{k}{more}; allowed: {', '.join(allowed)}"
                )

    def mapping(self, field: str, v) -> Mapping:
        if not isinstance(v, Mapping):
            self.fail(field, f"must be a mapping, got {show(v)}")
        return v

    def ratio(self, field: str, v) -> float:
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or not 0 < v <= 1:
            self.fail(field, f"must be a number in (0, 1], got {show(v)}")
        return float(v)

    def step(self, field: str, v) -> float:
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or not 0 < v <= 1:
            self.fail(field, f"must be a number in (0, 1] (e.g. 0.05), got {show(v)}")
        return float(v)

    def count(self, field: str, v) -> int:
        if isinstance(v, bool) or not isinstance(v, int) or not 1 <= v <= 4096:
            self.fail(field, f"must be an integer from 1 to 4096, got {show(v)}")
        return v

    def choice(self, field: str, v, allowed: tuple[str, ...]) -> str:
        if not isinstance(v, str) or v not in allowed:
            hint = difflib.get_close_matches(str(v), allowed, n=1) if isinstance(v, str) else []
            more = f" (did you mean {hint[0]!r}?)" if hint else ""
            self.fail(field, f"must be one of {', '.join(allowed)}, got {show(v)}{more}")
        return v

    def strings(self, field: str, v, what: str) -> list[str]:
        items = v if isinstance(v, list) else [v]
        if not items or not all(isinstance(s, str) and s for s in items):
            self.fail(field, f"must be {what} or a list of them, got {show(v)}")
        return items

    def name(self, field: str, v) -> str:
        if not isinstance(v, str) or not _NAME_RE.match(v):
            self.fail(field, f"must be a name of letters, digits, '_', '.', '-' starting with a letter, got {show(v)}")
        return v


def show(v) -> str:
    text = repr(v)
    return text if len(text) <= 60 else text[:57] + "..."


def parse_range(ctx: Checker, field: str, spec: Mapping, defaults: dict) -> tuple[float, float, float]:
    low = ctx.ratio(f"{field}.low", spec["low"]) if "low" in spec else defaults["low"]
    high = ctx.ratio(f"{field}.high", spec["high"]) if "high" in spec else defaults["high"]
    step = ctx.step(f"{field}.step", spec["step"]) if "step" in spec else defaults["step"]
    if low > high + GRID_TOL:
        ctx.fail(field, f"low {low:g} is above high {high:g}; need low <= high")
    if high - low > GRID_TOL:
        k = (high - low) / step
        if k < 1 - GRID_TOL or abs(k - round(k)) > 1e-6:
            ctx.fail(
                f"{field}.step",
                f"{step:g} does not divide high - low = {high - low:g} into whole steps; "
                f"choose a step such that (high - low) / step is a whole number (e.g. 0.05)",
            )
    return low, high, step



def parse_bool(ctx: Checker, field: str, v) -> bool:
    if not isinstance(v, bool):
        ctx.fail(field, f"must be true or false, got {show(v)}")
    return v
