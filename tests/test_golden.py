"""Pinned losses of the first steps of a smoke run.

Any change to the training computation (data order, augmentation, model, loss, optimiser,
EMA) moves these numbers. If the change is intended, regenerate the file and say why in
the commit:

    FIXMATCH_REGENERATE_GOLDEN=1 python -m pytest tests/test_golden.py
"""

import json
import os
from pathlib import Path

import pytest

from conftest import compose_config, tiny_cifar_overrides
from fixmatch.app import run_experiment

GOLDEN = Path(__file__).parent / "golden" / "smoke_first_steps.json"
PINNED = ["train/loss", "train/loss_x", "train/loss_u", "train/mask_rate", "eval/top1_ema",
          "eval/loss_ema"]


def test_first_steps_match_the_pinned_values(tiny_cifar10, tmp_path):
    # τ = 0 makes every pseudo-label count, so the unlabeled loss is pinned too.
    cfg = compose_config(tiny_cifar_overrides(
        tiny_cifar10, "trainer.total_steps=4", "trainer.eval_every_steps=1",
        "trainer.log_every_steps=1", "ssl.threshold=0.0"))
    run_experiment(cfg, tmp_path / "run")
    lines = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    observed = {key: [line[key] for line in lines] for key in PINNED}
    if os.environ.get("FIXMATCH_REGENERATE_GOLDEN"):
        GOLDEN.write_text(json.dumps(observed, indent=1) + "\n")
        pytest.skip(f"regenerated {GOLDEN}")
    expected = json.loads(GOLDEN.read_text())
    for key in PINNED:
        assert observed[key] == pytest.approx(expected[key], rel=1e-4, abs=1e-5), key
