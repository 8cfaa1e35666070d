"""autoprune.data: data YAMLs are read and checked offline, with one-line UserErrors for what a user can get wrong."""

from __future__ import annotations

from pathlib import Path

import pytest

from autoprune.data import DataConfig, load_data_config
from autoprune.errors import UserError


def test_loads_the_tiny_dataset(tiny_data):
    cfg = load_data_config(tiny_data)
    assert isinstance(cfg, DataConfig)
    assert cfg.yaml == Path(tiny_data).resolve()
    assert cfg.nc == 2 and cfg.names == {0: "box", 1: "disc"}
    assert cfg.train == (str((cfg.root / "images" / "train").resolve()),)
    assert cfg.val == (str((cfg.root / "images" / "val").resolve()),)
    d = cfg.ultralytics_dict()
    assert d["nc"] == 2 and d["channels"] == 3 and d["val"] == cfg.val[0]


def test_paths_resolve_beside_the_yaml_without_a_path_key(tiny_data, tmp_path):
    root = Path(tiny_data).parent
    y = tmp_path / "moved.yaml"  # no `path:`: splits resolve next to the YAML, names as a list
    y.write_text(f"train: {root}/images/train\nval: [{root}/images/val]\nnames: [a, b]\n")
    cfg = load_data_config(y)
    assert cfg.root == tmp_path.resolve() and cfg.names == {0: "a", 1: "b"} and len(cfg.val) == 1


def test_a_txt_image_list_is_accepted(tiny_data, tmp_path):
    root = Path(tiny_data).parent
    lst = tmp_path / "val.txt"
    lst.write_text("\n".join(str(p) for p in sorted((root / "images" / "val").glob("*.png"))) + "\n")
    y = tmp_path / "d.yaml"
    y.write_text(f"path: {root}\ntrain: images/train\nval: {lst}\nnames: {{0: box, 1: disc}}\n")
    assert load_data_config(y).val == (str(lst.resolve()),)


def _err(path) -> str:
    with pytest.raises(UserError) as e:
        load_data_config(path)
    msg = str(e.value)
    assert "\n" not in msg  # one line on the command line
    return msg


def test_missing_yaml(tmp_path):
    assert "not found" in _err(tmp_path / "nope.yaml")


def test_broken_yaml(tmp_path):
    y = tmp_path / "broken.yaml"
    y.write_text("train: images/train\nval: [images/val\nnames: {0: a}\n")
    msg = _err(y)
    assert "cannot parse" in msg and "line" in msg


@pytest.mark.parametrize("text, key", [
    ("val: images/val\nnames: [a]\n", "'train'"),
    ("train: images/train\nnames: [a]\n", "'val'"),
    ("train: images/train\nval: images/val\n", "'names'"),
])
def test_yaml_without_a_required_key(tmp_path, text, key):
    y = tmp_path / "d.yaml"
    y.write_text(text)
    assert key in _err(y)


def test_yaml_that_is_not_a_mapping(tmp_path):
    y = tmp_path / "d.yaml"
    y.write_text("- just\n- a list\n")
    assert "mapping" in _err(y)


def test_nc_must_match_names(tiny_data, tmp_path):
    root = Path(tiny_data).parent
    y = tmp_path / "d.yaml"
    y.write_text(f"path: {root}\ntrain: images/train\nval: images/val\nnc: 3\nnames: [a, b]\n")
    assert "nc: 3" in _err(y)


def test_missing_image_folder_is_reported_not_downloaded(tmp_path):
    y = tmp_path / "d.yaml"
    y.write_text("train: images/train\nval: images/val\nnames: [a]\n")  # neither folder exists
    msg = _err(y)
    assert "images not found" in msg and "images/train" in msg and "never downloads" in msg


def test_image_folder_without_images(tiny_data, tmp_path):
    root = Path(tiny_data).parent
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "notes.txt").write_text("no images here\n")
    y = tmp_path / "d.yaml"
    y.write_text(f"train: {root}/images/train\nval: {tmp_path}/empty\nnames: [a, b]\n")
    assert "no val images" in _err(y)


def test_none_means_the_demo_dataset_loaded_lazily(tiny_data, monkeypatch):
    import autoprune.demo as demo  # a broken demo module fails this test

    calls = []
    monkeypatch.setattr(demo, "ensure_demo_data", lambda: calls.append(1) or Path(tiny_data))
    assert load_data_config(None).yaml == Path(tiny_data).resolve()
    assert calls == [1]


def test_a_folder_is_one_error_line_that_says_what_it_is(tmp_path):
    """A classification dataset (train/ of class folders) is read as one, and named where it has no images; a
    detection folder is asked for its YAML."""
    (tmp_path / "cls" / "train" / "cat").mkdir(parents=True)
    (tmp_path / "cls" / "val" / "cat").mkdir(parents=True)
    with pytest.raises(UserError, match="classification dataset .* has no train images in"):
        load_data_config(tmp_path / "cls")
    (tmp_path / "det" / "train" / "images").mkdir(parents=True)  # Roboflow's layout: train/images, train/labels
    (tmp_path / "det" / "train" / "labels").mkdir(parents=True)
    with pytest.raises(UserError, match="data YAML is a folder, not a file"):
        load_data_config(tmp_path / "det")
