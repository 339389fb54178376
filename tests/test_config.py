"""Composition of conf/: every option composes, typos and bad types fail, presets hold."""

import shutil
import subprocess
import sys

import pytest
from hydra import compose, initialize_config_dir
from hydra.errors import ConfigCompositionException
from omegaconf import OmegaConf
from omegaconf.errors import ConfigKeyError, ValidationError

from conftest import CONF_DIR, compose_config
from fixmatch.config import (EXECUTION_KEYS, LENGTH_KEYS, MACHINE_KEYS, SEED_KEYS, Algorithm,
                             CompileMode, Config, Device, Precision, flatten_config,
                             register_configs)

REPO = CONF_DIR.parent
GROUPS = ["dataset", "model", "optim", "ssl", "trainer", "experiment"]


def options(group: str):
    return sorted(path.stem for path in (CONF_DIR / group).glob("*.yaml"))


# Options that leave a key to the user (??? in their YAML), with a value for it.
REQUIRED_KEYS = {"folder": ["dataset.root=/data/images"], "mstar": ["dataset.root=/data/mstar"]}


@pytest.mark.parametrize(
    "group,option", [(group, option) for group in GROUPS for option in options(group)]
)
def test_every_option_composes_to_typed_config(group, option):
    required = REQUIRED_KEYS.get(option, []) if group == "dataset" else []
    config = OmegaConf.to_object(compose_config([f"{group}={option}", *required]))
    assert isinstance(config, Config)


def test_default_is_the_paper_cifar10_run():
    config = OmegaConf.to_object(compose_config())
    assert config.dataset.name == "cifar10"
    assert (config.model.depth, config.model.widen_factor) == (28, 2)
    assert config.ssl.num_labeled == 4000 and config.ssl.algorithm is Algorithm.fixmatch
    assert config.ssl.split_seed == config.seed == 1
    assert (config.ssl.batch_size, config.ssl.unlabeled_ratio) == (64, 7)
    assert (config.ssl.threshold, config.ssl.lambda_u) == (0.95, 1.0)
    assert (config.optim.lr, config.optim.momentum, config.optim.nesterov) == (0.03, 0.9, True)
    assert config.optim.weight_decay == 5e-4
    assert (config.optim.ema_decay, config.optim.ema_warmup) == (0.999, False)
    assert config.optim.cosine_fraction == 7 / 16
    assert config.trainer.total_steps == 2**20 and config.trainer.eval_every_steps == 1024
    assert config.model.bn_momentum == 0.001
    assert config.trainer.device is Device.auto
    # bf16 autocast on CUDA (fp32 on CPUs); a compiled model replays CUDA graphs there
    assert config.trainer.precision is Precision.auto and not config.trainer.compile
    assert config.trainer.compile_mode is CompileMode.reduce_overhead


def test_cifar100_selects_wrn28_8_and_weight_decay_1e3():
    config = compose_config(["dataset=cifar100", "ssl.num_labeled=10000"])
    assert config.model.widen_factor == 8 and config.model.depth == 28
    assert config.optim.weight_decay == 1e-3
    assert config.ssl.num_labeled == 10000


def test_command_line_wins_over_dataset_specialisation():
    config = compose_config(["dataset=cifar100", "model.widen_factor=4", "optim.weight_decay=0.01"])
    assert config.model.widen_factor == 4
    assert config.optim.weight_decay == 0.01


def test_a_choice_reads_as_written_inside_other_values():
    # Before: a sweep's hydra.sweep.subdir=${trainer.device} made the folder "Device.cuda".
    cfg = compose_config(["trainer.device=cuda", "trainer.compile_mode=reduce_overhead"])
    OmegaConf.set_struct(cfg, False)
    cfg.tag = "${trainer.device}-${trainer.compile_mode}"
    assert cfg.tag == "cuda-reduce_overhead"


def test_seed_drives_the_split_seed_unless_overridden():
    assert compose_config(["seed=3"]).ssl.split_seed == 3
    assert compose_config(["seed=3", "ssl.split_seed=5"]).ssl.split_seed == 5


def test_quickstart_preset_and_its_supervised_twin_share_split_and_budget():
    fixmatch = compose_config(["experiment=quickstart"])
    supervised = compose_config(["experiment=quickstart", "ssl=supervised"])
    assert fixmatch.dataset.name == supervised.dataset.name == "digits"
    assert fixmatch.ssl.algorithm is Algorithm.fixmatch
    assert supervised.ssl.algorithm is Algorithm.supervised
    for key in ["ssl.num_labeled", "ssl.split_seed", "ssl.batch_size", "trainer.total_steps",
                "model.depth", "model.widen_factor", "optim.lr"]:
        assert OmegaConf.select(fixmatch, key) == OmegaConf.select(supervised, key), key


def test_the_key_roles_resume_and_results_share_name_keys_of_the_config_once():
    # A key renamed in the schema but not here would silently become part of what a run is.
    keys = set(flatten_config(OmegaConf.to_container(compose_config())))
    roles = [MACHINE_KEYS, EXECUTION_KEYS, LENGTH_KEYS, SEED_KEYS]
    named = [key for role in roles for key in role]
    assert set(named) <= keys, set(named) - keys
    assert len(named) == len(set(named))


@pytest.mark.parametrize("override", ["ssl.num_labelled=4", "trainer.total_step=10", "modle.depth=10"])
def test_unknown_key_fails_at_compose_time(override):
    with pytest.raises((ConfigCompositionException, ConfigKeyError)):
        compose_config([override])


@pytest.mark.parametrize(
    "override", ["ssl.num_labeled=abc", "trainer.device=gpu", "optim.nesterov=maybe", "seed=1.5"]
)
def test_wrong_type_fails_at_compose_time(override):
    with pytest.raises((ConfigCompositionException, ValidationError)):
        compose_config([override])


def test_typo_inside_an_option_file_fails(tmp_path):
    broken = tmp_path / "conf"
    shutil.copytree(CONF_DIR, broken)
    path = broken / "ssl" / "fixmatch.yaml"
    path.write_text(path.read_text() + "treshold: 0.9\n")
    register_configs()
    with initialize_config_dir(config_dir=str(broken), version_base="1.3"):
        with pytest.raises(ConfigCompositionException, match="treshold"):
            compose(config_name="config")


def _run(arguments, cwd=REPO):
    return subprocess.run([sys.executable, str(REPO / "run.py"), *arguments], cwd=cwd,
                          capture_output=True, text=True, timeout=120)


def test_cli_prints_config_and_help_and_rejects_typos(tmp_path):
    printed = _run(["--cfg", "job", "dataset=cifar100"], cwd=tmp_path)
    assert printed.returncode == 0, printed.stderr
    assert "widen_factor: 8" in printed.stdout
    helped = _run(["--help"], cwd=tmp_path)
    assert helped.returncode == 0
    for group in ["dataset", "model", "optim", "ssl", "trainer", "experiment"]:
        assert f"{group}:" in helped.stdout
    typo = _run(["ssl.num_labelled=4"], cwd=tmp_path)
    assert typo.returncode != 0 and "num_labelled" in typo.stderr
