"""The fast step variants compute the same step: channels_last, bf16 autocast, torch.compile,
device-side augmentation; and the trainer's throughput logging."""

import json
import shutil

import pytest
import torch
from omegaconf import OmegaConf
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from conftest import compose_config, tiny_cifar_overrides
from fixmatch.app import build_training_parts, train
from fixmatch.checkpoint import CheckpointStore, load_checkpoint
from fixmatch.data.datasets import load_dataset
from fixmatch.data.normalization import resolve_normalization
from fixmatch.data.split import draw_split
from fixmatch.metrics import MetricWriter
from fixmatch.runtime import seed_everything
from fixmatch.config import CompileMode, TrainerConfig
from fixmatch.trainer import Trainer, _NoBar, uses_cuda_graphs


def _first_step(root, *overrides, autocast=None):
    """Loss and gradient norm of the first FixMatch step (no update), for `overrides`."""
    config = OmegaConf.to_object(compose_config(tiny_cifar_overrides(root, *overrides)))
    arrays = load_dataset(config.dataset)
    split = draw_split(arrays.train.targets, config.ssl.num_labeled, 10, config.ssl.split_seed)
    normalization = resolve_normalization(None, None, arrays.train.images)
    seed_everything(config.seed)
    parts = build_training_parts(config, arrays, split, normalization, torch.device("cpu"))
    if config.trainer.compile:
        parts.model.compile()
    labeled = parts.inputs.labeled(next(parts.labeled_batches))
    unlabeled = parts.inputs.unlabeled(next(parts.unlabeled_batches))
    with autocast or torch.autocast("cpu", enabled=False):
        loss, _ = parts.algorithm(parts.model, labeled, unlabeled)
    loss.backward()
    gradients = torch.cat([p.grad.flatten() for p in parts.model.parameters()])
    return loss.item(), gradients


@pytest.fixture(scope="module")
def plain_step(tiny_cifar10):
    return _first_step(tiny_cifar10, "trainer.channels_last=false")


def test_channels_last_step_equals_the_plain_step(tiny_cifar10, plain_step):
    loss, gradients = _first_step(tiny_cifar10, "trainer.channels_last=true")
    assert loss == pytest.approx(plain_step[0], rel=1e-5)
    assert torch.allclose(gradients, plain_step[1], rtol=1e-3, atol=1e-5)


def test_bf16_autocast_step_is_close_to_the_fp32_step(tiny_cifar10, plain_step):
    loss, gradients = _first_step(tiny_cifar10, autocast=torch.autocast("cpu", dtype=torch.bfloat16))
    assert loss == pytest.approx(plain_step[0], rel=3e-2)
    cosine = torch.nn.functional.cosine_similarity(gradients, plain_step[1], dim=0)
    assert cosine > 0.98


@pytest.mark.slow
def test_compiled_step_equals_the_plain_step(tiny_cifar10, plain_step):
    loss, gradients = _first_step(tiny_cifar10, "trainer.channels_last=false", "trainer.compile=true")
    assert loss == pytest.approx(plain_step[0], rel=1e-4)
    assert torch.allclose(gradients, plain_step[1], rtol=1e-3, atol=1e-5)


def _run(root, run_dir, *overrides):
    cfg = compose_config(tiny_cifar_overrides(root, *overrides))
    return train(OmegaConf.to_object(cfg), run_dir, OmegaConf.to_yaml(cfg, resolve=True))


def _graphs_compiled(root, run_dir, total_steps):
    torch._dynamo.reset()  # forget earlier tests' compiled models
    torch._dynamo.utils.counters.clear()
    summary = _run(root, run_dir, "trainer.compile=true", f"trainer.total_steps={total_steps}")
    assert summary["status"] == "completed"
    return torch._dynamo.utils.counters["stats"]["unique_graphs"]


@pytest.mark.slow
def test_a_compiled_run_does_not_recompile_as_it_goes_on(tiny_cifar10, tmp_path):
    # Training and evaluating (eval mode, no_grad, a smaller last batch) each compile once;
    # three times the steps and evaluations must not add a single graph.
    first_cycle = _graphs_compiled(tiny_cifar10, tmp_path / "short", total_steps=3)
    assert first_cycle >= 1
    assert _graphs_compiled(tiny_cifar10, tmp_path / "long", total_steps=9) == first_cycle


def test_device_augmentation_trains_and_resumes_exactly(tiny_cifar10, tmp_path):
    whole = _run(tiny_cifar10, tmp_path / "whole", "trainer.augment_on=device")
    assert whole["status"] == "completed"
    # The same run, interrupted after step 3: its folder as it was then, continued.
    shutil.copytree(tmp_path / "whole", tmp_path / "resumed")
    checkpoints = tmp_path / "resumed" / "checkpoints"
    (checkpoints / "step_000000006.pt").unlink()
    (checkpoints / "last.pt").unlink()
    (checkpoints / "last.pt").symlink_to("step_000000003.pt")
    _run(tiny_cifar10, tmp_path / "resumed", "trainer.augment_on=device")
    first = load_checkpoint(tmp_path / "whole" / "checkpoints" / "step_000000006.pt")
    second = load_checkpoint(checkpoints / "step_000000006.pt")
    for name, value in first["model"].items():
        assert torch.equal(value, second["model"][name]), name
    assert json.dumps(first["history"]) == json.dumps(second["history"])  # NaN-aware


def test_trainer_logs_throughput_data_wait_and_eta_to_tensorboard(tiny_cifar10, tmp_path):
    _run(tiny_cifar10, tmp_path / "run", "trainer.eval_every_steps=6")
    events = EventAccumulator(str(tmp_path / "run" / "tensorboard"))
    events.Reload()
    series = {tag: [(event.step, event.value) for event in events.Scalars(tag)]
              for tag in ("train/steps_per_s", "train/data_wait_fraction", "train/eta_s", "train/lr")}
    assert {tag: sorted({step for step, _ in values}) for tag, values in series.items()} == {
        tag: [2, 4, 6] for tag in series}
    assert all(value > 0 for _, value in series["train/steps_per_s"])
    assert all(0 <= value <= 1 for _, value in series["train/data_wait_fraction"])
    assert series["train/eta_s"][-1][1] == 0 and series["train/eta_s"][0][1] > 0
    assert 0 < series["train/lr"][-1][1] < series["train/lr"][0][1] <= 0.03  # the cosine decay
    # One point per step: the evaluation at step 6 adds eval/*, not a second train/loss
    # (before: the means since the previous evaluation, so every curve jumped there).
    assert [event.step for event in events.Scalars("train/loss")] == [2, 4, 6]
    assert [event.step for event in events.Scalars("eval/top1_ema")] == [6]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("augment_on", ["cpu", "device"])
def test_a_cuda_training_step_never_waits_for_the_device(tiny_cifar10, tmp_path, augment_on):
    """No host-device synchronisation inside a step (statistics stay on the device until a
    log step): CUDA's sync debug mode turns any synchronising call into an error."""
    config = OmegaConf.to_object(compose_config(tiny_cifar_overrides(
        tiny_cifar10, "trainer.device=cuda", f"trainer.augment_on={augment_on}")))
    arrays = load_dataset(config.dataset)
    split = draw_split(arrays.train.targets, config.ssl.num_labeled, 10, config.ssl.split_seed)
    normalization = resolve_normalization(None, None, arrays.train.images)
    parts = build_training_parts(config, arrays, split, normalization, torch.device("cuda"))
    trainer = Trainer(parts, config.trainer, MetricWriter(tmp_path, config.trainer.total_steps, write=False),
                      CheckpointStore(tmp_path / "checkpoints", 1), {})
    trainer._advance(_NoBar())  # first step: allocations, cuDNN autotuning
    torch.cuda.set_sync_debug_mode("error")
    try:
        stats = trainer._train_step()
        trainer.guard.observe(2, stats)
        trainer.log_window.add(stats)
    finally:
        torch.cuda.set_sync_debug_mode("default")


@pytest.mark.parametrize(("compile_", "mode", "device", "expected"), [
    (True, "reduce_overhead", "cuda", True),
    (True, "max_autotune", "cuda", True),
    (True, "default", "cuda", False),  # inductor kernels, launched one by one
    (False, "reduce_overhead", "cuda", False),  # nothing is compiled
    (True, "reduce_overhead", "cpu", False),  # torch replays graphs on CUDA only
])
def test_cuda_graph_steps_are_marked_only_when_graphs_are_replayed(compile_, mode, device, expected):
    config = TrainerConfig(compile=compile_, compile_mode=CompileMode[mode])
    assert uses_cuda_graphs(config, torch.device(device)) is expected
