"""config_checks.check_config: values the schema's types let through, and keys added with '+'."""

import re
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from conftest import compose_config
from fixmatch.config_checks import check_config
from fixmatch.distributed import DistEnv
from fixmatch.errors import UserError

EXPERIMENTS = sorted(path.stem for path in (Path(__file__).resolve().parents[1] / "conf" /
                                            "experiment").glob("*.yaml"))


def typed(*overrides: str):
    return OmegaConf.to_object(compose_config(["dataset.root=/data", *overrides]))


@pytest.mark.parametrize("preset", [None, *EXPERIMENTS])
def test_every_preset_passes(preset):
    check_config(typed(*([f"experiment={preset}"] if preset else [])), DistEnv())


@pytest.mark.parametrize("override,message", [
    ("ssl.threshold=1.5", "ssl.threshold=1.5 must lie in [0, 1]"),
    ("ssl.cutout_fraction=2", "ssl.cutout_fraction=2.0 must lie in [0, 1]"),
    ("optim.ema_decay=1.5", "optim.ema_decay=1.5 must lie in [0, 1]"),
    ("ssl.lambda_u=-1", "ssl.lambda_u=-1.0 must not be negative"),
    # before: "ssl.randaugment_variant: RandAugment num_ops must be >= 0", naming another key
    ("ssl.randaugment_num_ops=-1", "ssl.randaugment_num_ops=-1 must not be negative"),
    ("optim.lr=-0.1", "optim.lr=-0.1 must not be negative"),
    ("optim.weight_decay=-1", "optim.weight_decay=-1.0 must not be negative"),
    ("optim.momentum=1.5", "optim.momentum=1.5 must lie in [0, 1)"),
    ("optim.momentum=0", "optim.nesterov=true needs optim.momentum > 0"),
])
def test_out_of_range_values_are_one_line(override, message):
    # Before: a traceback from torch or ModelEMA (lr, momentum, ema_decay), or a run that
    # silently never used its unlabeled images (threshold above 1, negative lambda_u).
    with pytest.raises(UserError, match=re.escape(message)):
        check_config(typed(override), DistEnv())


@pytest.mark.parametrize("override,message", [
    # Hydra answers `ssl.num_labelled=4` with "To append to your config use +ssl.num_labelled=4";
    # followed, the typo was ignored and the run trained with the default label count.
    ("+ssl.num_labelled=4", "ssl.num_labelled is not a setting .*did you mean ssl.num_labeled"),
    ("+trainer.total_step=10", "trainer.total_step is not a setting .*trainer.total_steps"),
    ("+learning_rate=1", "learning_rate is not a setting"),
])
def test_keys_added_with_plus_are_refused(override, message):
    with pytest.raises(UserError, match=message):
        check_config(typed(override), DistEnv())


def test_sync_bn_under_torchrun_on_the_cpu_is_refused_before_anything_loads(tmp_path):
    # Before: found after the data had loaded, leaving a failed run folder the results counted.
    config = typed("trainer.sync_bn=true", "trainer.device=cpu")
    with pytest.raises(UserError, match=r"^trainer.sync_bn=true needs CUDA \(PyTorch's "
                                        r"SyncBatchNorm\); on the CPU each rank normalises"):
        check_config(config, DistEnv(rank=0, world_size=2))
    check_config(config, DistEnv())  # one process: nothing to synchronise, nothing refused
