"""End to end with CTAugment: a tiny run trains and logs the op weights, resumes bitwise,
and refuses settings that would sample from rates that do not exist yet."""

import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import compose_config, tiny_cifar_overrides
from fixmatch.app import run_experiment
from fixmatch.checkpoint import load_checkpoint
from fixmatch.data.cta_ops import OP_NAMES
from fixmatch.data.ctaugment import CTAugment
from fixmatch.errors import UserError

TOTAL_STEPS = 12
LAG = 4  # short, so most batches of the run sample from probe-updated rates


def cta_overrides(root: Path, *extra: str) -> list:
    return tiny_cifar_overrides(
        root, "ssl=fixmatch_cta", f"ssl.cta_policy_lag={LAG}", f"trainer.total_steps={TOTAL_STEPS}",
        "trainer.eval_every_steps=6", "trainer.checkpoint_every_steps=2",
        "trainer.keep_checkpoints=10", *extra)


@pytest.fixture(scope="module")
def reference_run(tiny_cifar10, tmp_path_factory) -> Path:
    """An uninterrupted CTAugment run, loaded by 2 workers (the most the lag allows)."""
    run_dir = tmp_path_factory.mktemp("cta") / "run"
    run_experiment(compose_config(cta_overrides(tiny_cifar10, "trainer.num_workers=2")), run_dir)
    return run_dir


def test_tiny_cta_run_trains_and_logs_the_op_weights(reference_run):
    summary = json.loads((reference_run / "metrics.json").read_text())
    assert summary["status"] == "completed" and summary["step"] == TOTAL_STEPS
    lines = [json.loads(line) for line in (reference_run / "metrics.jsonl").read_text().splitlines()]
    assert [line["step"] for line in lines] == [6, 12]
    for line in lines:
        weights = {key: value for key, value in line.items() if key.startswith("ctaugment/")}
        assert set(weights) == {f"ctaugment/{name}" for name in OP_NAMES}
        assert all(0.0 < value <= 1.0 for value in weights.values())
        assert np.isfinite(line["train/loss_u"])
    events = b"".join(path.read_bytes() for path in (reference_run / "tensorboard").iterdir())
    assert b"ctaugment/rotate" in events

    state = load_checkpoint(reference_run / "checkpoints" / "last.pt")["ctaugment"]
    assert state["snapshots"]["steps"] == list(range(TOTAL_STEPS - LAG, TOTAL_STEPS + 1))
    rates = CTAugment()
    rates.load_state_dict(state["rates"])
    assert not np.array_equal(rates.flat_rates(), CTAugment().flat_rates())  # the probes moved them
    assert np.array_equal(state["snapshots"]["rates"][-1].numpy(), rates.flat_rates())


def test_cta_resume_is_bitwise_identical_to_the_uninterrupted_run(reference_run, tmp_path, tiny_cifar10):
    # A run killed after step 7 leaves the checkpoints up to step 6; resume it without workers.
    run_dir = tmp_path / "run"
    shutil.copytree(reference_run, run_dir, symlinks=True)
    for path in (run_dir / "checkpoints").glob("step_*.pt"):
        if int(path.stem.split("_")[1]) > 6:
            path.unlink()
    # ... and metrics files as a killed run leaves them: "running", evaluations up to step 7.
    summary = json.loads((run_dir / "metrics.json").read_text())
    (run_dir / "metrics.json").write_text(json.dumps({**summary, "status": "running", "step": 7}))
    kept = [line for line in (run_dir / "metrics.jsonl").read_text().splitlines()
            if json.loads(line)["step"] <= 7]
    (run_dir / "metrics.jsonl").write_text("".join(line + "\n" for line in kept))
    resumed = run_experiment(compose_config(cta_overrides(tiny_cifar10, "trainer.num_workers=0")), run_dir)
    assert resumed["status"] == "completed"

    after, before = (load_checkpoint(folder / "checkpoints" / "last.pt") for folder in (run_dir, reference_run))
    assert after["step"] == before["step"] == TOTAL_STEPS
    for part in ["model", "ema"]:
        for key, tensor in before[part].items():
            assert torch.equal(after[part][key], tensor), f"{part}.{key} differs"
    for index, buffers in before["optimizer"]["state"].items():
        assert torch.equal(after["optimizer"]["state"][index]["momentum_buffer"], buffers["momentum_buffer"])
    assert after["ctaugment"]["rates"] == before["ctaugment"]["rates"]
    assert torch.equal(after["ctaugment"]["snapshots"]["rates"], before["ctaugment"]["snapshots"]["rates"])
    lines = [(folder / "metrics.jsonl").read_text().splitlines() for folder in (run_dir, reference_run)]
    assert lines[0] == lines[1]


@pytest.mark.parametrize("extra,message", [
    (["trainer.num_workers=3"], "ssl.cta_policy_lag=4 must be at least 2 x trainer.num_workers=3"),
    (["ssl.cta_policy_lag=-1", "trainer.num_workers=0"], "ssl.cta_policy_lag=-1"),
    (["trainer.augment_on=device"], "trainer.augment_on=device has no CTAugment"),
])
def test_settings_that_break_ctaugment_are_one_line(tiny_cifar10, tmp_path, extra, message):
    with pytest.raises(UserError, match=re.escape(message)):
        run_experiment(compose_config(cta_overrides(tiny_cifar10, *extra)), tmp_path / "run")
