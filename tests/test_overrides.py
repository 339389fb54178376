"""run.py's command line is checked before Hydra starts: one line per mistake, exit 2."""

import subprocess
import sys
from pathlib import Path

import pytest

import fixmatch.overrides as overrides
from conftest import CONF_DIR, write_cifar10
from fixmatch.config import register_configs
from fixmatch.overrides import override_error

register_configs()


def test_hydra_flags_that_exclude_each_other_and_a_file_as_run_dir_are_one_line(tmp_path):
    # Before: Hydra's traceback (ValueError: Only one of --run, --multirun, --cfg ...) and
    # FileExistsError for a run folder that is a file.
    error = override_error(["-m", "seed=1,2", "--cfg", "job"], CONF_DIR)
    assert error.startswith("-m and --cfg cannot be combined")
    (tmp_path / "mine.csv").write_text("a,b\n")
    error = override_error([f"hydra.run.dir={tmp_path}/mine.csv"], CONF_DIR)
    assert error == (f"hydra.run.dir={tmp_path}/mine.csv: {tmp_path}/mine.csv is a file; "
                     "hydra.run.dir must be a folder (new or existing)")
    error = override_error([f"hydra.sweep.dir={tmp_path}/mine.csv/sweep", "-m", "seed=1"], CONF_DIR)
    assert error == (f"hydra.sweep.dir={tmp_path}/mine.csv/sweep: {tmp_path}/mine.csv/sweep lies "
                     f"below the file {tmp_path}/mine.csv; hydra.sweep.dir must be a folder (new "
                     "or existing)")
    assert override_error(["--cfg", "job", "seed=2"], CONF_DIR) is None


def test_several_values_under_torchrun_advise_one_torchrun_per_value(monkeypatch):
    # Before: "add -m", which torchrun then refuses.
    monkeypatch.setenv("WORLD_SIZE", "2")
    message = override_error(["seed=1,2"], CONF_DIR)
    assert message.startswith("seed=1,2 gives several values, which is a sweep: start one "
                              "torchrun per value; if the commas belong"), message


@pytest.mark.parametrize("args,expected", [
    (["ssl.num_labled=40"], "ssl.num_labled is not a setting; did you mean ssl.num_labeled?"),
    (["trainer.num_thread=2"], "trainer.num_thread is not a setting; did you mean trainer.num_threads?"),
    (["ssl.num_labeled=abc"], "ssl.num_labeled=abc: Value 'abc' of type 'str' could not be converted"),
    (["trainer.device=gpu"], "trainer.device=gpu: Invalid value 'gpu', expected one of [auto, cpu, cuda]"),
    # torch's own spelling of the mode is named, with the ones that work
    (["trainer.compile_mode=reduce-overhead"], "Invalid value 'reduce-overhead', expected one of "
                                               "[default, reduce_overhead, max_autotune]"),
    (["dataset=cifar1000"], "dataset=cifar1000: dataset has no option 'cifar1000'; did you mean "
                            "dataset=cifar100? the options are cifar10, cifar100, digits, folder"),
    (["seed"], "'seed' is not an override: write key=value"),
    (["ssl.num_labeled=40,250"], "gives several values, which is a sweep: add -m"),
    # before: a hint to quote "seed='1',''", which keeps the empty value
    (["-m", "seed=1,"], "'seed=1,': a comma with no value beside it (a stray comma?); write seed=1"),
    # every value of a sweep is checked, not only the first
    (["-m", "ssl.num_labeled=40,250", "seed=1,x"], "seed=x: Value 'x' of type 'str' could not be"),
    # a key given twice: the value that applies (the last) is the one named
    (["ssl.threshold=0.9", "ssl.threshold=abc"], "ssl.threshold=abc: Value 'abc'"),
    # argparse stops at overrides on both sides of -m, with a usage dump
    (["trainer.total_steps=20", "-m", "seed=1,2"], "-m must come before the overrides: python "
                                                   "run.py -m trainer.total_steps=20 seed=1,2"),
    (["dataset=dataset_schema"], "dataset=dataset_schema: dataset_schema is the typed schema the "
                                 "dataset options extend, not an option"),
    (["--multirun", "ssl=fixmatch,supervisd"], "ssl=supervisd: ssl has no option 'supervisd'; did "
                                               "you mean ssl=supervised?"),
    # a path with Hydra's syntax characters: quoting is the fix, not key=value
    (["dataset.root=/data/photos (2024)"], "\"dataset.root='/data/photos (2024)'\""),
    (["dataset.root=~/data"], "has characters Hydra reads as syntax; quote it"),
    (["dataset.root=/data/a,b"], "if the commas belong to one value (a path), quote it: "
                                 "\"dataset.root='/data/a,b'\""),
    (["dataset.root=/data/it's"], "quote it inside the argument: \"dataset.root=\\\"/data/it's\\\"\""),
    (["-m", "dataset.root=/a(1),/b"], "quote each value inside the argument: "
                                       "\"dataset.root='/a(1)','/b'\""),
    # sweeps that would run no job, or not the jobs written
    (["-m", "seed=range(3,1)"], "seed=range(3,1) gives no value, so the sweep would run no job"),
    (["-m", "seed=1,2", "seed=3"], "seed=1,2 and seed=3 both set seed; Hydra would keep only seed=3"),
    (["-m", "seed=1,1"], "lists 1 twice"),
    # a value only the run's checks refuse: found before the first job trains
    (["-m", "ssl.threshold=0.9,1.5", "hydra.sweep.subdir=${ssl.threshold}"],
     "ssl.threshold=1.5 must lie in [0, 1]"),
    # two jobs in one folder: the second would continue (or skip) the first's run
    (["-m", "trainer.total_steps=20,40"],
     "the jobs of trainer.total_steps=20 and trainer.total_steps=40 would share the folder "
     "<sweep dir>/cifar10/4000/fixmatch/1 (hydra.sweep.subdir does not name trainer.total_steps)"
     ", so the second would continue or skip the first's run: name it there, e.g. "
     "'hydra.sweep.subdir=${dataset.name}/${ssl.num_labeled}/${hydra:runtime.choices.ssl}/"
     "total_steps${trainer.total_steps}/${seed}'"),
    (["-m", "seed=1,2", "hydra.sweep.subdir=${dataset.name}"], "the jobs of seed=1 and seed=2"),
    # a key of the config is named as itself, a group by its choice
    (["-m", "seed=1,2", "hydra.sweep.subdir=x"], "e.g. 'hydra.sweep.subdir=x/seed${seed}'"),
    (["-m", "ssl=fixmatch,supervised", "hydra.sweep.subdir=x"],
     "e.g. 'hydra.sweep.subdir=x/ssl${hydra:runtime.choices.ssl}'"),
    (["-m", "seed=1,2", "hydra.sweep.subdir=${dataset.name}/${oops}"],
     "hydra.sweep.subdir=${dataset.name}/${oops}: Interpolation key 'oops' not found"),
    # glob sweeps over a group's options are checked as the values they expand to
    (["-m", "ssl=glob(*)"], "ssl=glob(*) includes ssl_schema, the typed schema the ssl options "
                            "extend, not an option: exclude it"),
    (["-m", "ssl=glob(nothing*)"], "matches no option of ssl (fixmatch, fixmatch_cta, supervised)"),
    (["-m", "ssl=glob(*,exclude=*schema)", "trainer.total_steps=10,20"],
     "the jobs of trainer.total_steps=10 and trainer.total_steps=20 would share"),
])
def test_a_bad_override_is_one_line_naming_it(args, expected):
    error = override_error(args, CONF_DIR)
    assert error is not None and expected in error
    assert "\n" not in error


@pytest.mark.parametrize("args", [
    [],
    ["experiment=quickstart", "trainer.total_steps=10", "hydra.run.dir=/tmp/x"],
    ["-m", "ssl.num_labeled=40,250,4000", "seed=1,2,3,4,5", "ssl=fixmatch,supervised"],
    ["dataset=cifar100", "ssl.num_labeled=10000", "dataset.mean=[0.5,0.5,0.5]"],
    ["seed=1,2", "-m"],  # the flag last: Hydra takes it
    # a swept key the folder names: each job has its own folder
    ["-m", "ssl.threshold=0.8,0.9", "seed=1,2",
     "hydra.sweep.subdir=${dataset.name}/tau${ssl.threshold}/${seed}"],
    ["-m", "experiment=cifar10_40,cifar10_250", "seed=1,2"],
    ["-m", "ssl=glob(*,exclude=*_schema)", "seed=1,2"],
    ["dataset=folder", "dataset.root=\"/data/it's\""],  # the quoting the hint gives
    ["-m", "seed=1,2", "hydra.sweep.subdir=${hydra.job.num}"],  # known only as the job runs
    ["--cfg", "job", "ssl.nope=1"],  # other Hydra flags: left to Hydra
    ["hydra/launcher=nothing_like_this", "seed=3"],  # Hydra's own groups: left to Hydra
])
def test_overrides_that_compose_pass(args):
    assert override_error(args, CONF_DIR) is None


def test_run_py_stops_on_a_misspelt_key_with_one_line_and_status_2(tmp_path):
    run_py = Path(__file__).resolve().parents[1] / "run.py"
    result = subprocess.run([sys.executable, str(run_py), "experiment=quickstart", "ssl.treshold=0.9",
                             f"hydra.run.dir={tmp_path / 'run'}"],
                            capture_output=True, text=True, cwd=tmp_path)
    assert result.returncode == 2
    assert result.stderr.splitlines() == ["error: ssl.treshold is not a setting; did you mean ssl.threshold? "
                     "(`python run.py --cfg job` prints every key)"]
    assert not (tmp_path / "run").exists()  # stopped before Hydra made the run's folder


@pytest.mark.parametrize("args,extra", [
    (["-m", "hydra/launcher=joblib", "seed=1,2"], "joblib"),
    (["-m", "hydra/launcher=submitit_local", "seed=1,2"], "slurm"),
    (["hydra/launcher=submitit_slurm"], "slurm"),
    (["-m", "hydra/launcher=basic,joblib", "seed=1,2"], "joblib"),
])
def test_a_launcher_whose_plugin_is_missing_names_the_extra(monkeypatch, args, extra):
    monkeypatch.setattr(overrides, "_importable", lambda module: False)
    error = override_error(args, CONF_DIR)
    option = next(arg for arg in args if arg.startswith("hydra/launcher=")).split("=")[1]
    option = option.split(",")[-1]
    assert error == (f"hydra/launcher={option} needs the launcher plugin "
                     f"{overrides.LAUNCHER_PLUGINS[option][1]}, which is not installed: "
                     f'pip install -e ".[{extra}]" in the checkout')


def test_a_launcher_whose_plugin_is_installed_is_left_to_hydra(monkeypatch):
    monkeypatch.setattr(overrides, "_importable", lambda module: True)
    assert override_error(["-m", "hydra/launcher=joblib", "seed=1,2"], CONF_DIR) is None


def test_the_plugin_check_imports_nothing_and_tolerates_a_missing_namespace():
    assert overrides._importable("hydra_plugins.no_such_launcher_plugin") is False
    assert overrides._importable("no_such_namespace_package.child") is False
    assert overrides._importable("hydra") is True


@pytest.mark.skipif(overrides._importable("hydra_plugins.hydra_joblib_launcher"),
                    reason="the joblib launcher plugin is installed here")
def test_run_py_without_the_joblib_plugin_is_one_line_and_status_2(tmp_path):
    # Before: Hydra's several-line "Could not find 'hydra/launcher/joblib'", exit 1.
    run_py = Path(__file__).resolve().parents[1] / "run.py"
    result = subprocess.run([sys.executable, str(run_py), "-m", "hydra/launcher=joblib", "seed=1,2",
                             f"hydra.sweep.dir={tmp_path / 'sweep'}"],
                            capture_output=True, text=True, cwd=tmp_path)
    assert result.returncode == 2
    assert result.stderr.splitlines() == [
        "error: hydra/launcher=joblib needs the launcher plugin hydra-joblib-launcher, which is not "
        'installed: pip install -e ".[joblib]" in the checkout']


def test_label_counts_are_checked_against_every_combination_of_data_and_count(tmp_path):
    # Each value on its own composes and draws (40 or 400 labels from 50 a class, 40 from
    # 20 a class); only the product's fourth job (400 labels from 20 a class) cannot.
    many = write_cifar10(tmp_path / "many", train_per_class=50, test_per_class=1)
    few = write_cifar10(tmp_path / "few", train_per_class=20, test_per_class=1)
    sweep = ["-m", f"dataset.root={many},{few}", "dataset.download=false",
             "ssl.num_labeled=40,400", "seed=1,2", "hydra.sweep.subdir=${hydra.job.num}"]
    error = override_error(sweep, CONF_DIR, run_checks=True)
    assert error is not None and "ssl.num_labeled=400" in error and "40 labeled images" in error, error
    assert error.startswith(f"the sweep's job with dataset.root={few}: ")
    assert override_error(["-m", f"dataset.root={many}", "dataset.download=false",
                           "ssl.num_labeled=40,400", "seed=1,2"], CONF_DIR, run_checks=True) is None
    # A label count no job can draw, though not swept, and data that cannot be loaded: one
    # line before any job (before: every job failed the same way, leaving a failed folder).
    error = override_error(["-m", f"dataset.root={few}", "dataset.download=false",
                            "ssl.num_labeled=400", "seed=1,2"], CONF_DIR, run_checks=True)
    assert error.startswith("ssl.num_labeled=400 needs 40 labeled images"), error
    error = override_error(["-m", f"dataset.root={tmp_path}/nowhere", "dataset.download=false",
                            "seed=1,2"], CONF_DIR, run_checks=True)
    assert error.startswith("cifar10: no dataset files in"), error
    # Hydra's default launcher named on the command line runs its jobs here, too.
    assert override_error(["-m", f"dataset.root={tmp_path}/nowhere", "dataset.download=false",
                           "seed=1,2", "hydra/launcher=basic"], CONF_DIR,
                          run_checks=True).startswith("cifar10: no dataset files in")
    # Jobs a plugin launcher runs elsewhere (a cluster's nodes) may see other data.
    assert override_error(["-m", f"dataset.root={tmp_path}/nowhere", "dataset.download=false",
                           "seed=1,2", "hydra/launcher=submitit_local"], CONF_DIR,
                          run_checks=True) is None


def test_an_interpolation_to_nothing_is_one_line_before_the_run(tmp_path):
    # Before: a traceback (InterpolationKeyError) and, from Hydra's job, an empty run folder.
    error = override_error(["ssl.split_seed=${sed}"], CONF_DIR, run_checks=True)
    assert error.startswith("ssl.split_seed: Interpolation key 'sed' not found"), error
    assert error.endswith("`python run.py --cfg job` prints every key")
