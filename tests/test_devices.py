"""autoprune.devices: one set of device spellings (Ultralytics' plus cuda:N) for every command."""

from __future__ import annotations

import pytest
import torch

from autoprune.devices import resolve_device, resolve_devices, ultralytics_device
from autoprune.errors import UserError


@pytest.fixture
def two_gpus(monkeypatch):
    """A machine with two CUDA GPUs, as far as the device checks can tell."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)


@pytest.mark.parametrize("spec, devices, ultralytics", [
    ("auto", ["cuda:0"], "0"),
    ("", ["cuda:0"], "0"),
    ("cpu", ["cpu"], "cpu"),
    ("CPU", ["cpu"], "cpu"),
    ("0", ["cuda:0"], "0"),
    ("1", ["cuda:1"], "1"),
    ("0,1", ["cuda:0", "cuda:1"], "0,1"),
    ("0, 1", ["cuda:0", "cuda:1"], "0,1"),
    ("cuda", ["cuda:0"], "0"),
    ("cuda:1", ["cuda:1"], "1"),
])
def test_spellings_on_a_two_gpu_machine(two_gpus, spec, devices, ultralytics):
    assert resolve_devices(spec) == [torch.device(d) for d in devices]
    assert resolve_device(spec) == torch.device(devices[0])  # one-device work runs on the first
    assert ultralytics_device(spec) == ultralytics


@pytest.mark.parametrize("spec, message", [
    ("2", "device '2' does not exist: this machine has 2 CUDA device(s)"),
    ("0,2", "device '0,2' does not exist"),
    ("cuda:7", "device 'cuda:7' does not exist"),
    ("0,0", "device '0,0' names a GPU twice"),
    ("tpu", "device must be auto, cpu, cuda or cuda:N, mps, or a CUDA index (0) or list (0,1)"),
    ("-1", "device must be"),
    ("cuda:x", "device must be"),
])
def test_bad_or_missing_devices_are_one_line(two_gpus, spec, message):
    with pytest.raises(UserError, match="^" + message.replace("(", r"\(").replace(")", r"\)")) as e:
        resolve_device(spec)
    assert "\n" not in str(e.value)


def test_mps_is_accepted_where_it_exists(monkeypatch):
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    with pytest.raises(UserError, match="^device 'mps' does not exist: MPS"):
        resolve_device("mps")
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: True)
    assert resolve_device("mps") == torch.device("mps") and ultralytics_device("mps") == "mps"


def test_no_gpu_here_is_one_line(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_device("auto") == torch.device("cpu") and ultralytics_device("auto") == "cpu"
    for spec in ("0", "0,1", "cuda", "cuda:0"):
        with pytest.raises(UserError, match="does not exist: no CUDA GPU is available here"):
            resolve_device(spec)
