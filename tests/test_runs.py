"""autoprune.runs: the one place that names a run folder."""

from autoprune.runs import new_run_dir, next_run_name, trial_run_name


def test_run_folders_are_numbered_from_exp1_per_command(tmp_path):
    assert next_run_name("search", root=tmp_path) == "exp1"
    (tmp_path / "search" / "exp1").mkdir(parents=True)
    (tmp_path / "search" / "exp3").mkdir()
    assert next_run_name("search", root=tmp_path) == "exp2"
    assert next_run_name("prune", root=tmp_path) == "exp1"
    assert new_run_dir("search", root=tmp_path) == tmp_path / "search" / "exp2"
    assert new_run_dir("search", root=tmp_path).name == "exp4"


def test_apply_names_its_folder_after_the_study_and_trial():
    assert trial_run_name("exp1", 7) == "exp1-trial7"
