"""The training loop: step, EMA, evaluation cadence, metrics and checkpoints.

It receives built objects and the small TrainerConfig; it builds nothing and never reads
the dataset, model or optimiser configuration.
"""

import logging
import sys
import time
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Callable, Dict, Iterator, Optional

import torch
from torch import nn
from torch.utils.data import DataLoader
from tqdm import tqdm

from fixmatch.checkpoint import CHECKPOINT_FORMAT, CheckpointError, CheckpointStore
from fixmatch.config import CompileMode, Precision, ProgressBar, TrainerConfig
from fixmatch.cta_probe import CTAProbe
from fixmatch.data.device_inputs import DeviceInputs
from fixmatch.distributed import DistEnv, any_rank
from fixmatch.evaluate import evaluate
from fixmatch.metrics import MetricWriter
from fixmatch.models.ema import ModelEMA, unwrap_model
from fixmatch.optim import load_optimizer_state
from fixmatch.preemption import StopRequest
from fixmatch.runtime import capture_rng_state, resolve_precision, restore_rng_state
from fixmatch.step_stats import NonFiniteGuard, NonFiniteLossError, RunningMeans

log = logging.getLogger(__name__)

STOP_CHECK_EVERY = 8  # steps between the ranks' agreement on a stop signal (torchrun)


@dataclass
class TrainingParts:
    """Everything the loop works on, built by the composition root."""

    model: nn.Module
    ema: Optional[ModelEMA]  # None when the EMA is switched off
    optimizer: torch.optim.Optimizer
    schedule: torch.optim.lr_scheduler.LRScheduler
    algorithm: Callable  # (model, labeled, unlabeled) -> (loss, stats)
    labeled_batches: Iterator
    unlabeled_batches: Optional[Iterator]  # None for algorithms without unlabeled data
    test_loader: DataLoader  # this rank's shard of the test set
    inputs: DeviceInputs  # uint8 loader batches -> normalised model input on the device
    env: DistEnv = DistEnv()  # the ranks of a torchrun job; one rank otherwise
    cta_probe: Optional[CTAProbe] = None  # CTAugment's rates and probes; None without CTAugment

    @property
    def device(self) -> torch.device:
        """The device the model trains on (that of the inputs)."""
        return self.inputs.device


class Trainer:
    """Runs `config.total_steps` optimiser steps and reports as it goes.

    Args:
        parts: the built model, optimiser, data streams and algorithm.
        config: cadence, length and precision of the run.
        writer: where evaluations and scalars go.
        checkpoints: where checkpoints are saved.
        checkpoint_extras: plain data saved in every checkpoint (config text, split, ...).
    """

    def __init__(
        self,
        parts: TrainingParts,
        config: TrainerConfig,
        writer: MetricWriter,
        checkpoints: CheckpointStore,
        checkpoint_extras: dict,
    ):
        self.parts = parts
        self.config = config
        self.writer = writer
        self.checkpoints = checkpoints
        self.checkpoint_extras = checkpoint_extras
        self.step = 0
        self._last_lr = 0.0
        device_type = parts.device.type
        self.precision = resolve_precision(config.precision, parts.device)
        self.autocast = _autocast(self.precision, device_type)
        self.scaler = torch.amp.GradScaler(device_type, enabled=self.precision is Precision.fp16)
        self.log_window = RunningMeans()
        self.eval_window = RunningMeans()
        self.guard = NonFiniteGuard(parts.device)
        self.cuda_graphs = uses_cuda_graphs(config, parts.device)
        self._restart_log_clock()

    def _restart_log_clock(self) -> None:
        # steps/s and the data-wait fraction are measured from here to the next log step.
        self._last_log, self._data_wait_s = (time.monotonic(), self.step), 0.0

    def fit(self, stop: StopRequest) -> dict:
        """Train to the end, or until a stop signal; returns the metrics.json summary.

        The summary's status is `completed`, or `preempted` when a signal stopped the run
        (after a checkpoint of the last finished step).

        Args:
            stop: the run's stop request: it listens from here, and is finished when this
                returns or raises (its owner restores the handlers after the teardown).

        Returns:
            The metrics.json summary written at the end (`MetricWriter.summary`).

        Raises:
            NonFiniteLossError: when the loss or the weights stop being finite (checked at
                each log step, evaluation and checkpoint); the last good checkpoint is kept.
        """
        progress = self._progress_bar()
        self._restart_log_clock()
        stop.listen()
        try:
            stopped = self._train_until_done_or_stopped(progress, stop)
            # Only saving is left: a late copy of the signal, or one more, must not kill the
            # process halfway through the checkpoint that makes the run resumable (or done).
            stop.saving = True
            if not (stopped or self._evaluated_at(self.step)):
                # Resumed at its last step without an evaluation there (a run preempted at
                # step 23, rerun with trainer.total_steps=23): its final weights are scored too.
                self._evaluate(progress)
                self._save_checkpoint()
            progress.close()
            if not stopped:
                return self.writer.summary("completed", self.step)
            self._save_checkpoint()
            log.warning("stopped by %s at step %d; checkpoint saved",
                        stop.signal_name or "a signal to another rank", self.step)
            return self.writer.summary("preempted", self.step)
        finally:
            stop.finish()

    def _train_until_done_or_stopped(self, progress, stop: StopRequest) -> bool:
        # True only when the ranks agreed to stop before the last step. A signal that reaches
        # one rank during the last steps changes nothing: every rank has finished the run (the
        # final step's checkpoint is written), and a rank that saved again alone would wait
        # in collectives the others never join.
        while self.step < self.config.total_steps:
            if self._stop_agreed(stop):
                return True
            # The last step ends in the final evaluation and checkpoint: a second signal
            # there would throw away a finished run's last step.
            stop.saving = self.step + 1 == self.config.total_steps
            self._advance(progress)
        return False

    def _evaluated_at(self, step: int) -> bool:
        return bool(self.writer.history) and self.writer.history[-1]["step"] == step

    def _stop_agreed(self, stop: StopRequest) -> bool:
        # Every rank must stop after the same step, or the others would wait forever in
        # the next all-reduce. Under torchrun the ranks agree every STOP_CHECK_EVERY steps
        # (a collective read on the host is a device sync); alone, at every step for free.
        if self.parts.env.is_distributed and self.step % STOP_CHECK_EVERY:
            return False
        return any_rank(stop.requested, self.parts.device, self.parts.env)

    def _advance(self, progress) -> None:
        """One optimiser step, then whatever logging, evaluation and saving falls due."""
        stats = self._train_step()
        self.step += 1
        self.guard.observe(self.step, stats)
        self.log_window.add(stats)
        self.eval_window.add(stats)
        progress.update(1)
        if self.step % self.config.log_every_steps == 0:
            self._log(progress)
        if self.step % self.config.eval_every_steps == 0 or self.step == self.config.total_steps:
            self._evaluate(progress)
        if self._checkpoint_due():
            self._save_checkpoint()

    def _next_batches(self):
        """The step's loader batches; the time spent waiting for them is the data wait."""
        started = time.perf_counter()
        labeled = next(self.parts.labeled_batches)
        unlabeled = next(self.parts.unlabeled_batches) if self.parts.unlabeled_batches is not None else None
        self._data_wait_s += time.perf_counter() - started
        return labeled, unlabeled

    def _train_step(self) -> Dict[str, torch.Tensor]:
        parts = self.parts
        if self.cuda_graphs:
            # A new step: the graphs may now overwrite their last outputs (all consumed).
            torch.compiler.cudagraph_mark_step_begin()
        labeled_batch, unlabeled_batch = self._next_batches()
        if parts.cta_probe is not None:
            labeled_batch, probe_batch = parts.cta_probe.split(labeled_batch)
        labeled = parts.inputs.labeled(labeled_batch)
        unlabeled = parts.inputs.unlabeled(unlabeled_batch) if unlabeled_batch is not None else None
        with self.autocast:
            loss, stats = parts.algorithm(parts.model, labeled, unlabeled)
        parts.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        self.scaler.step(parts.optimizer)
        self.scaler.update()
        self._last_lr = parts.schedule.get_last_lr()[0]  # a host float: logging it costs no sync
        parts.schedule.step()
        if parts.ema is not None:
            parts.ema.update(parts.model, self.step)
        if parts.cta_probe is not None:
            with self.autocast:  # the probe forward never touches BN statistics or gradients
                parts.cta_probe.update(parts.model, parts.ema, probe_batch, self.step + 1)
        return stats

    def _log(self, progress) -> None:
        self._check_finite()
        means = self.log_window.means(self.parts.env)
        now, last_time, last_step = time.monotonic(), *self._last_log
        elapsed = max(now - last_time, 1e-9)
        means["train/lr"] = self._last_lr
        means["train/steps_per_s"] = (self.step - last_step) / elapsed
        # Share of the wall time the loop sat in next(loader): > 0 means the data starves it.
        means["train/data_wait_fraction"] = min(self._data_wait_s / elapsed, 1.0)
        means["train/eta_s"] = (self.config.total_steps - self.step) / max(means["train/steps_per_s"], 1e-9)
        self._restart_log_clock()
        self.writer.scalars(self.step, means)
        summary = (
            f"loss {means['train/loss']:.4f} "
            + (f"mask {means['train/mask_rate']:.2f} " if "train/mask_rate" in means else "")
            + f"lr {means['train/lr']:.4g} data wait {100 * means['train/data_wait_fraction']:.0f}%"
        )
        if isinstance(progress, tqdm):
            progress.set_postfix_str(summary)
        else:
            log.info("step %d/%d  %s  %.2f steps/s  ETA %s", self.step, self.config.total_steps,
                     summary, means["train/steps_per_s"], _duration(means["train/eta_s"]))

    def _evaluate(self, progress) -> None:
        self._check_finite()
        parts = self.parts
        values = self.eval_window.means(parts.env)
        values["train/lr"] = self._last_lr
        raw = evaluate(unwrap_model(parts.model), parts.test_loader, parts.inputs, parts.env)
        if parts.ema is not None:
            ema = evaluate(parts.ema.module, parts.test_loader, parts.inputs, parts.env)
        else:
            ema = raw  # without an EMA the reported model is the live one
        values.update({
            "eval/top1_ema": ema.top1,
            "eval/top5_ema": ema.top5,
            "eval/loss_ema": ema.loss,
            "eval/top1_raw": raw.top1,
        })
        if parts.cta_probe is not None:
            values.update(parts.cta_probe.op_weights())
        self.writer.evaluation(self.step, values)
        message = (f"step {self.step}: top-1 {ema.top1:.2f} % (EMA), {raw.top1:.2f} % (raw)"
                   if parts.ema is not None else
                   f"step {self.step}: top-1 {raw.top1:.2f} % (the live model; no EMA)")
        progress.write(message) if isinstance(progress, tqdm) else log.info(message)

    def _checkpoint_due(self) -> bool:
        every = self.config.checkpoint_every_steps or self.config.eval_every_steps
        return self.step % every == 0 or self.step == self.config.total_steps

    def _check_finite(self) -> None:
        self.guard.check(self.step, self._divergence_advice())

    def _divergence_advice(self) -> str:
        newest = self.checkpoints.step_files()
        kept = (f"the last good checkpoint {newest[0][1]} is kept" if newest
                else "no checkpoint had been written yet")
        fp32 = "" if self.precision is Precision.fp32 else " or train in trainer.precision=fp32"
        return f"{kept}; lower optim.lr{fp32}"

    def _save_checkpoint(self) -> None:
        # Never let a diverged model push a good checkpoint out of the kept ones.
        self._check_finite()
        parameters = list(unwrap_model(self.parts.model).parameters())
        if not torch.stack([p.detach().isfinite().all() for p in parameters]).all():
            raise NonFiniteLossError(f"training diverged: the weights are not finite at step "
                                     f"{self.step}; {self._divergence_advice()}")
        # Collectives, so on every rank; the log window too, or the first train/* point after
        # a resume between two log steps would average only the steps since the resume.
        windows = {"eval_window": self.eval_window.state_dict(self.parts.env),
                   "log_window": self.log_window.state_dict(self.parts.env)}
        if self.parts.env.is_main:
            self.checkpoints.save(self.state_dict(windows), self.step)

    def state_dict(self, windows: dict) -> dict:
        """Everything needed to continue this run exactly, as tensors and plain types.

        Args:
            windows: "eval_window" and "log_window", the `RunningMeans.state_dict` of the
                training means since the last evaluation and since the last log step, summed
                over ranks (collectives, so every rank computes them).

        Returns:
            The checkpoint: step, model, EMA, optimiser, schedule, scaler, metric history,
            elapsed time, RNG states, loader position and CTAugment rates, plus the
            `checkpoint_extras`.
        """
        parts = self.parts
        return {
            "format": CHECKPOINT_FORMAT,
            "step": self.step,
            "model": unwrap_model(parts.model).state_dict(),
            "ema": parts.ema.state_dict() if parts.ema is not None else None,
            "optimizer": parts.optimizer.state_dict(),
            "schedule": parts.schedule.state_dict(),
            "scaler": self.scaler.state_dict(),
            "history": list(self.writer.history),
            "elapsed_s": self.writer.elapsed_s(),
            "last_lr": self._last_lr,  # the lr of the step just taken, logged with an evaluation
            **windows,
            "rng": capture_rng_state(),
            # The samplers are pure functions of the batch number: continuing a stream
            # needs only how many batches each loader has handed out.
            "loader_position": {"labeled_batches": self.step,
                                "unlabeled_batches": self.step if parts.unlabeled_batches is not None else 0},
            # Read back by the composition root, before the loaders start: their samplers
            # draw CTAugment policies from these snapshots at once.
            "ctaugment": parts.cta_probe.state_dict() if parts.cta_probe is not None else None,
            **self.checkpoint_extras,
        }

    def load_state_dict(self, state: dict) -> None:
        """Continue from `state_dict()` output (the loaders must already start at its step).

        Args:
            state: a loaded checkpoint, as `state_dict` wrote it.

        Raises:
            CheckpointError: when the checkpoint does not fit this model or optimiser.
        """
        parts = self.parts
        try:
            unwrap_model(parts.model).load_state_dict(state["model"])
            if parts.ema is not None:
                parts.ema.load_state_dict(state["ema"])
            load_optimizer_state(parts.optimizer, state["optimizer"])
        except (RuntimeError, KeyError, ValueError) as error:
            reason = str(error).strip().splitlines()[0]
            raise CheckpointError(f"the checkpoint does not fit this model/optimiser ({reason[:200]})") from None
        parts.schedule.load_state_dict(state["schedule"])
        self.scaler.load_state_dict(state["scaler"])
        self.eval_window.load_state_dict(state["eval_window"], parts.device, parts.env)
        if "log_window" in state:  # checkpoints from before 2026-12-01 lack it (and last_lr)
            self.log_window.load_state_dict(state["log_window"], parts.device, parts.env)
        self._last_lr = state.get("last_lr", parts.schedule.get_last_lr()[0])
        restore_rng_state(state["rng"])
        self.step = state["step"]

    def _progress_bar(self):
        show_bar = self.parts.env.is_main and (self.config.progress_bar is ProgressBar.bar or (
            self.config.progress_bar is ProgressBar.auto and sys.stderr.isatty()
        ))
        if show_bar:
            return tqdm(total=self.config.total_steps, initial=self.step, dynamic_ncols=True)
        return _NoBar()


class _NoBar:
    """Stands in for tqdm when progress goes to log lines."""

    def update(self, count: int) -> None:
        pass

    def close(self) -> None:
        pass


def _duration(seconds: float) -> str:
    minutes, seconds = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m" if hours else f"{minutes}m{seconds:02d}s"


def uses_cuda_graphs(config: TrainerConfig, device: torch.device) -> bool:
    """Whether the compiled model replays CUDA graphs (torch skips them off CUDA).

    Args:
        config: the trainer config; compile and compile_mode are read.
        device: the device the run trains on.

    Returns:
        True when trainer.compile is on with a CUDA-graph mode and the device is CUDA.
    """
    return config.compile and config.compile_mode is not CompileMode.default and device.type == "cuda"


def _autocast(precision: Precision, device_type: str):
    if precision is Precision.fp32:
        return nullcontext()
    dtype = torch.bfloat16 if precision is Precision.bf16 else torch.float16
    return torch.autocast(device_type=device_type, dtype=dtype)

