"""Multi-GPU finetuning (Ultralytics' DDP): what a worker process rebuilds, and the one-line refusals.

No GPU and no torch.distributed here: the parent side runs on a machine faked to have two GPUs, up to Ultralytics'
launch of `torch.distributed.run` (its state file and worker script written); in that launch's place, a fresh
interpreter runs the worker script on the CPU, with a look at what the rebuilt trainer holds before its
`trainer.train()`, and that training itself (one process, no process group: what a worker runs around DDP's own
parts).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from autoprune.data import load_data_config
from autoprune.finetune import DistillSettings, FeatureMatch, finetune_trainer, short_schedule
from conftest import randomize_bn

IMGSZ = 64

# Runs in a new interpreter: the worker script Ultralytics generated, on the CPU (no GPUs here, so no RANK either:
# a rank's data loader would need a process group), with `inspect(trainer)` before its `trainer.train()`.
WORKER = textwrap.dedent('''
    import json, sys
    from pathlib import Path

    import torch
    import ultralytics.engine.trainer as engine

    engine.select_device = lambda *a, **k: torch.device("cpu")  # the worker's GPU; none here
    script, out = Path(sys.argv[1]), Path(sys.argv[2])
    source = script.read_text()
    assert "trainer.train()" in source and 'state["trainer"](cfg=cfg, overrides=state["args"]' in source, source


    def inspect(trainer):
        assert "autoprune.finetune" in sys.modules  # loaded by the unpickling, not by this script
        trainer.setup_model()
        model = trainer.model
        torch.save(model, out.with_suffix(".pt"))
        teacher = trainer._teacher
        out.write_text(json.dumps({
            "class": type(trainer).__qualname__,
            "shapes": {k: list(v.shape) for k, v in model.state_dict().items()},
            "params": sum(p.numel() for p in model.parameters()),
            "teacher_params": sum(p.numel() for p in teacher.parameters()) if teacher is not None else None,
            "distill": repr(trainer._distill),
            "schedule": repr(trainer._schedule),
            "features": trainer._features.as_dict() if trainer._features is not None else None,
            "data": str(trainer._data_config.yaml),
            "device": trainer.args.device, "batch": trainer.args.batch, "save_dir": str(trainer.save_dir),
        }))


    exec(compile(source.replace("trainer.train()", "inspect(trainer); trainer.train()"), str(script), "exec"),
         {"__name__": "__main__", "inspect": inspect})
''')


@pytest.fixture
def two_gpus(monkeypatch):
    """A machine with two CUDA GPUs, as far as autoprune's device checks and Ultralytics' trainer can tell."""
    import ultralytics.engine.trainer as engine

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(engine, "select_device", lambda *a, **k: torch.device("cuda", 0))


def _models():
    from autoprune.candidate import rank
    from autoprune.channels import analyze
    from autoprune.pruner import apply_indices, keep_counts, select_indices
    from ultralytics.nn.tasks import DetectionModel

    torch.manual_seed(0)
    teacher = DetectionModel("yolov8n.yaml", nc=2, verbose=False).eval()
    randomize_bn(teacher)
    graph = analyze(teacher, imgsz=IMGSZ)
    counts = keep_counts(graph, 0.5)
    counts[next(iter(counts))] -= 3  # not a uniform ratio: per-group widths must come back exactly
    indices = select_indices(graph, counts, rank(teacher, graph, "l1"))
    return teacher, apply_indices(teacher, graph, indices), graph, indices


def _run_worker(script: str, out: Path) -> dict:
    """Run the DDP worker `script` in a fresh interpreter (see WORKER); what it saw of the rebuilt trainer."""
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "LOCAL_RANK", "WORLD_SIZE")}
    done = subprocess.run([sys.executable, "-c", WORKER, script, str(out)], env=env, capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(out.read_text())


def test_a_ddp_finetune_trains_the_pruned_student_in_its_worker(two_gpus, monkeypatch, tmp_path, tiny_data):
    """`finetune(device="0,1")` as apply calls it, up to Ultralytics' launch of `torch.distributed.run`, whose place
    takes one worker process on the CPU: it rebuilds the pruned student and the teacher from files, trains them
    offline, and `finetune` reads back what it wrote."""
    from autoprune.cost import count_gflops
    from autoprune.finetune import finetune

    teacher, student, graph, indices = _models()
    before = {k: v.clone() for k, v in student.state_dict().items()}
    settings = DistillSettings(weight=1.0, feature_weight=1.0)
    match = FeatureMatch.build(teacher, graph, indices, settings.feature_levels)
    schedule = short_schedule(1, nc=2)
    real_run, seen, scripts = subprocess.run, {}, []

    def launch(cmd, *args, **kwargs):
        if "torch.distributed.run" not in cmd:
            return real_run(cmd, *args, **kwargs)
        assert cmd[cmd.index("--nproc_per_node") + 1] == "2" and not seen
        scripts.append(cmd[-1])
        seen.update(_run_worker(cmd[-1], tmp_path / "worker.json"))
        return subprocess.CompletedProcess(cmd, 0)

    monkeypatch.setattr(subprocess, "run", launch)  # what Ultralytics' trainer launches the workers with
    r = finetune(student, load_data_config(tiny_data), save_dir=tmp_path / "train", teacher=teacher, distill=settings,
                 features=match, schedule=schedule, epochs=1, imgsz=IMGSZ, batch=4, device="0,1", verbose=False,
                 lr_scale=2.0, warmup_bias_lr=0.05)

    # What the worker rebuilt from Ultralytics' state file and the class's worker_state: the pruned student.
    assert seen["class"].endswith("PrunedModelTrainer")
    assert seen["shapes"] == {k: list(v.shape) for k, v in student.state_dict().items()}
    assert seen["params"] == sum(p.numel() for p in student.parameters())
    assert seen["params"] < seen["teacher_params"] == sum(p.numel() for p in teacher.parameters())
    rebuilt = torch.load((tmp_path / "worker.json").with_suffix(".pt"), weights_only=False)
    assert count_gflops(rebuilt, IMGSZ) == count_gflops(student, IMGSZ) < count_gflops(teacher, IMGSZ)
    assert all(torch.equal(v, before[k]) for k, v in rebuilt.state_dict().items())  # its weights too
    assert seen["distill"] == repr(settings) and seen["schedule"] == repr(schedule)
    assert seen["features"] == match.as_dict()
    assert seen["data"] == str(load_data_config(tiny_data).yaml)
    assert (seen["device"], seen["batch"], seen["save_dir"]) == ("0,1", 4, str((tmp_path / "train").resolve()))
    assert not Path(scripts[0]).exists() and not Path(scripts[0]).with_suffix(".pt").exists()  # cleaned up

    # What finetune read back from the worker: its summary, and the checkpoints of the pruned model, trained.
    assert r.loss_names[-2:] == ("kd_loss", "kd_feat") and r.amp is False  # the CPU worker's AMP check said no
    assert r.device == "cuda:0,cuda:1" and r.schedule["optimizer"] == "AdamW"
    assert r.schedule["lr0"] == pytest.approx(2 * schedule.lr0)  # the worker scaled the rate (WorkerState.lr_scale)
    assert r.schedule["warmup_bias_lr"] == 0.05  # and warmed the biases up from WorkerState.warmup_bias_lr
    assert "metrics/mAP50-95(B)" in r.metrics and (r.save_dir / "results.csv").exists()
    best = torch.load(r.best, weights_only=False)["model"].float()
    assert r.best == (tmp_path / "train" / "weights" / "best.pt").resolve()
    assert count_gflops(best, IMGSZ) == count_gflops(student, IMGSZ)
    assert not any(torch.equal(v, before[k]) for k, v in best.state_dict().items()
                   if v.is_floating_point() and v.numel() > 1 and "dfl" not in k)
    assert all(torch.equal(v, before[k]) for k, v in student.state_dict().items())  # the workers trained copies


def test_without_distillation_the_worker_gets_no_teacher(two_gpus, tmp_path, tiny_data):
    """Rebuilt in this process as the worker script does it, from the cloudpickled class and the arguments alone."""
    import cloudpickle
    from ultralytics.utils import DEFAULT_CFG_DICT

    teacher, student, _, _ = _models()
    trainer = finetune_trainer(student, load_data_config(tiny_data), save_dir=tmp_path / "train", teacher=teacher,
                               distill=None, epochs=1, imgsz=IMGSZ, batch=2, device="cuda:0,1", verbose=False,
                               workdir=tmp_path / "ddp")
    assert trainer.worker_state.teacher is None and not (tmp_path / "ddp" / "teacher.pt").exists()
    Worker = cloudpickle.loads(cloudpickle.dumps(type(trainer)))  # by value (in this process: the same class back)
    rebuilt = Worker(cfg={**DEFAULT_CFG_DICT, "save_dir": ""}, overrides=vars(trainer.args),
                     _callbacks=trainer.callbacks)
    rebuilt.model = trainer.model
    rebuilt.setup_model()
    assert rebuilt._teacher is None and rebuilt._distill is None and rebuilt._features is None
    assert rebuilt.model is not student
    assert {k: v.shape for k, v in rebuilt.model.state_dict().items()} == {
        k: v.shape for k, v in student.state_dict().items()}


def test_one_device_needs_no_worker_state(tmp_path, tiny_data):
    _, student, _, _ = _models()
    trainer = finetune_trainer(student, load_data_config(tiny_data), save_dir=tmp_path / "train", epochs=1,
                               imgsz=IMGSZ, batch=2, device="cpu", verbose=False)
    assert trainer.worker_state is None and not trainer.ddp
    with pytest.raises(TypeError, match="trains the model it is handed"):
        type(trainer)(overrides={"data": str(tiny_data)})  # Ultralytics' signature alone: nothing to train


# ------------------------------------------------------------------------------------------------- the CLI's errors
def _apply(tmp_path: Path, capsys, *argv):
    from conftest import run_cli

    cwd = os.getcwd()
    os.chdir(tmp_path)
    try:
        return run_cli(capsys, "apply", "--trial", "0", "--epochs", "1", *argv)
    finally:
        os.chdir(cwd)


@pytest.mark.parametrize("argv, pattern", [
    (["--device", "0,2"], "device '0,2' does not exist: this machine has 2 CUDA device(s)"),
    (["--device", "0,0"], "names a GPU twice"),
    (["--device", "0,1", "--batch", "3"], "--batch 3 must be a multiple of the 2 GPUs of --device"),
    (["--device", "cuda:0,1", "--batch", "5"], "e.g. --batch 4"),
])
def test_impossible_gpu_lists_are_one_line_and_write_nothing(two_gpus, tmp_path, capsys, argv, pattern):
    from conftest import assert_user_error

    code, out, err = _apply(tmp_path, capsys, *argv)
    assert_user_error(code, err, pattern)
    assert list(tmp_path.iterdir()) == []


def test_a_gpu_list_without_cuda_is_one_line(monkeypatch, tmp_path, capsys):
    from conftest import assert_user_error

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    code, _, err = _apply(tmp_path, capsys, "--device", "0,1")
    assert_user_error(code, err, "device '0,1' does not exist: no CUDA GPU is available here")
    assert list(tmp_path.iterdir()) == []


def test_a_gpu_list_without_cloudpickle_is_one_line(two_gpus, monkeypatch, tmp_path, capsys):
    import importlib.metadata

    from conftest import assert_user_error

    real = importlib.metadata.version

    def version(name):
        if name == "cloudpickle":
            raise importlib.metadata.PackageNotFoundError(name)
        return real(name)

    monkeypatch.setattr(importlib.metadata, "version", version)
    code, _, err = _apply(tmp_path, capsys, "--device", "0,1")
    assert_user_error(code, err, "pip install 'autoprune[ddp]'")
    assert list(tmp_path.iterdir()) == []
