"""autoprune.imgsz: the one image-size rule, worded with each caller's flag."""

import numpy as np
import pytest

from autoprune.errors import UserError
from autoprune.imgsz import check_imgsz


@pytest.mark.parametrize("good", [32, 320, 640, np.int64(256)])
def test_multiples_of_32_pass_as_ints(good):
    out = check_imgsz(good)
    assert out == good and type(out) is int


@pytest.mark.parametrize(
    ("value", "kwargs", "line"),
    [
        (100, {}, "--imgsz must be a positive multiple of 32, got 100"),
        (0, {"flag": "--calib-imgsz"}, "--calib-imgsz must be a positive multiple of 32, got 0"),
        (-32, {"flag": "--proxy-imgsz"}, "--proxy-imgsz must be a positive multiple of 32, got -32"),
        (320.0, {}, "--imgsz must be a positive multiple of 32, got 320.0"),
        (48, {}, "--imgsz must be a positive multiple of 32, got 48"),
        (33, {"flag": "imgsz", "why": " (the largest model stride)"},
         "imgsz must be a positive multiple of 32 (the largest model stride), got 33"),
        (32, {"minimum": 64}, "--imgsz must be a multiple of 32 and >= 64, got 32"),
    ],
)
def test_a_bad_size_is_one_line_naming_the_callers_flag(value, kwargs, line):
    with pytest.raises(UserError) as err:
        check_imgsz(value, **kwargs)
    assert str(err.value) == line
