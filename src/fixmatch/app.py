"""The composition root: typed config -> split, data, model, optimiser -> Trainer.fit.

With its data half (run_data.py, pipeline.py), the only code that reads more than one config
node. Objects are built in the order a reader would explain a run: config checks, split,
datasets, loaders, model, DDP, EMA, optimiser, schedule, checkpoint store, metric writer,
trainer.
"""

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import torch
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from fixmatch import pipeline, run_data
from fixmatch.algorithms import build_algorithm
from fixmatch.checkpoint import CHECKPOINT_DIR, CheckpointError, CheckpointStore
from fixmatch.config import Config, StrongAugment
from fixmatch.config_checks import check_config
from fixmatch.cta_probe import build_cta_probe
from fixmatch.data.datasets import DatasetArrays, load_dataset
from fixmatch.data.normalization import Normalization
from fixmatch.data.split import LabeledSplit
from fixmatch.distributed import (
    DistEnv,
    RankLostError,
    broadcast_object,
    destroy_process_group,
    environment,
    init_process_group,
    lost_rank_reason,
    stop_with_the_launcher,
)
from fixmatch.errors import UserError
from fixmatch.metrics import MEDIAN_WINDOW, MetricWriter
from fixmatch.models import ModelEMA, WideResNet
from fixmatch.models.ema import unwrap_model
from fixmatch.optim import build_optimizer, build_schedule
from fixmatch.overrides import typed_config
from fixmatch.preemption import StopRequest
from fixmatch.resume import StartPlan, finished_summary, holds_a_run, plan_on_rank_zero
from fixmatch.run_record import RunRecord
from fixmatch.runtime import (
    configure_threads,
    resolve_precision,
    reuse_freed_host_memory,
    seed_everything,
    select_device,
)
from fixmatch.trainer import Trainer, TrainingParts

log = logging.getLogger(__name__)


def run_experiment(cfg: DictConfig, run_dir: Optional[Path] = None,
                   exits_after: bool = False) -> dict:
    """Train as `cfg` says, writing everything into `run_dir` (Hydra's output dir by default).

    Under torchrun every rank calls this; rank 0's folder is the run's folder.

    Args:
        cfg: the composed Hydra config, converted here to the typed `Config`.
        run_dir: the run's folder; None takes Hydra's output dir.
        exits_after: the process ends after this run (run.py, not a sweep): the stop signals
            stay ignored from the run's end, so a late one cannot turn its exit status into a
            signal death.

    Returns:
        The final metrics.json summary (status `completed` or `preempted`) and `run_dir`, the
        folder the run used.

    Raises:
        UserError: for any input the user can fix (from `train`), after the process group
            is torn down.
    """
    config: Config = typed_config(cfg)
    env = environment()
    stop_with_the_launcher(env)
    if not env.is_main:
        # Rank 0 reports for all: the others' warnings (a signal received, a checkpoint
        # saved) would repeat its lines; errors still name their rank (run.py).
        logging.getLogger("fixmatch").setLevel(logging.ERROR)
    device = select_device(config.trainer.device, env.local_rank if env.is_distributed else None)
    init_process_group(env, device)
    record = RunRecord(cfg, keep_log=env.is_main and HydraConfig.initialized())
    # Listening from the training loop's start to the end of the teardown: a signal while
    # rank 0 writes the final checkpoint must not kill another rank at the final barrier.
    stop = StopRequest(launched=env.is_distributed)
    try:
        try:
            run_dir = broadcast_object(Path(run_dir or HydraConfig.get().runtime.output_dir), env)
            summary = train(config, run_dir, OmegaConf.to_yaml(cfg, resolve=True), env, device,
                            record, stop)
        except BaseException:
            destroy_process_group()  # no barrier: the other ranks may never get there
            raise
        finally:
            record.close()
        _leave_process_group(env)
    finally:
        stop.restore(ignore=exits_after)
    return summary


def _leave_process_group(env: DistEnv) -> None:
    """The final barrier of a finished run; a rank lost there loses nothing of the run."""
    try:
        destroy_process_group(finished=True)
    except RuntimeError as error:
        reason = lost_rank_reason(error, env)
        if reason is None:
            raise
        log.warning("another rank of this job stopped at the final barrier (%s); the run "
                    "itself is complete", reason)


def train(config: Config, run_dir: Path, resolved_yaml: str, env: DistEnv = DistEnv(),
          device: Optional[torch.device] = None, record: Optional[RunRecord] = None,
          stop: Optional[StopRequest] = None) -> dict:
    """Build every part of the run from the typed config and train it, or continue it.

    Args:
        config: the composed, validated configuration.
        run_dir: where the run writes its files; a run already there is continued.
        resolved_yaml: the config as YAML with interpolations resolved.
        env: this process's rank in a torchrun job (one rank by default).
        device: where to train (chosen from the config when None).
        record: writes the run's config, notes and log once it may (config only when None).
        stop: the stop request training listens to; its owner restores the handlers once the
            run is torn down (when None, one of this call's own, restored on return).

    Returns:
        The final metrics.json summary and `run_dir`, the folder the run used (a fresh
        sibling with trainer.resume=false).

    Raises:
        UserError: for any input the user can fix (reported as one line by run.py).
    """
    check_config(config, env)  # a value no run can use leaves no run folder behind
    device = device or select_device(config.trainer.device)
    plan = plan_on_rank_zero(run_dir, resolved_yaml, config.trainer.resume,
                             config.trainer.keep_checkpoints, env)
    own_stop = stop is None
    stop = stop or StopRequest(launched=env.is_distributed)
    try:
        return _train_as_planned(config, plan, resolved_yaml, env, device, record or RunRecord(),
                                 stop)
    finally:
        plan.release_folder()
        if own_stop:
            stop.restore()


def _train_as_planned(config: Config, plan: StartPlan, resolved_yaml: str, env: DistEnv,
                      device: torch.device, record: RunRecord, stop: StopRequest) -> dict:
    """`train` once the run's folder is decided (and held by this process)."""
    run_dir = plan.run_dir
    finished = finished_summary(plan, config.trainer.total_steps)
    if finished is not None:
        run_data.check_finished_run_data(config, run_dir, lambda: load_dataset(config.dataset))
        log.info("%s already completed %d steps; nothing to do", run_dir, finished["step"])
        return {**finished, "run_dir": str(run_dir)}
    state = plan.checkpoint or {}
    writer = MetricWriter(run_dir, config.trainer.total_steps, history=state.get("history"),
                          elapsed_s=state.get("elapsed_s", 0.0), resume_step=state.get("step"),
                          write=env.is_main, earlier_total_steps=plan.earlier_total_steps,
                          world_size=env.world_size)
    trainer = _build_or_record_failure(config, run_dir, resolved_yaml, writer, plan, env, device,
                                       record)
    writer.open()  # training starts: from here on the run's files are rewritten
    try:
        summary = trainer.fit(stop)
    except BaseException as error:
        reason = lost_rank_reason(error, env)  # one line, and a run a rerun resumes
        lost = None if reason is None else RankLostError(
            f"another rank of this job stopped ({reason}); rerun the command with "
            f"hydra.run.dir={run_dir} to resume from the last checkpoint")
        # metrics.json and run.log must say why the run stopped, whatever stopped it.
        stopped = writer.stopped(lost or error, trainer.step)
        record.note_stop(f"{stopped['status']} at step {trainer.step}: {stopped['error']}")
        if lost is not None:
            raise lost from None
        raise
    finally:
        writer.close()
    if summary["top1_ema_final"] is not None:
        log.info("%s at step %d: %s top-1 %.2f %% (%s), median of the last %d evaluations %.2f %%",
                 summary["status"], summary["step"],
                 "final" if summary["status"] == "completed" else "last evaluation's",
                 summary["top1_ema_final"],
                 "EMA" if config.optim.ema_enabled else "the live model; no EMA",
                 min(MEDIAN_WINDOW, summary["num_evaluations"]), summary["top1_ema_median_last20"])
    # Not in metrics.json (folders move): where the run is, for run.py's resume hint.
    return {**summary, "run_dir": str(run_dir)}


def _build_or_record_failure(config: Config, run_dir: Path, resolved_yaml: str,
                             writer: MetricWriter, plan: StartPlan, env: DistEnv,
                             device: torch.device, record: RunRecord) -> Trainer:
    """Build the trainer, then write the run's config, split and normalisation. When that fails, a run already in `run_dir` keeps its files byte for
    byte; a new run records its config and a "failed" metrics.json (results count it)."""
    try:
        data = _load_data(config, plan, env, device)
        trainer = _build_trainer(config, run_dir, resolved_yaml, writer, plan, data, env, device)
    except BaseException as error:
        if env.is_main and not holds_a_run(plan):
            why = writer.stopped(error, 0)["error"]
            record.write_failure(run_dir, resolved_yaml, why)
        raise
    # metrics.json first: the folder then holds a run before any other file of it
    # (resume._refuse_files_of_no_run), and results see it running from its first step.
    writer.summary("running", (plan.checkpoint or {}).get("step", 0))
    if env.is_main:
        record.write(run_dir, resolved_yaml)
        data.split.save(run_dir / "split.json", data.arrays.class_names,
                        data.arrays.training_set)
        data.normalization.save(run_dir / "normalization.json")
    return trainer


@dataclass(frozen=True)
class _RunData:
    arrays: DatasetArrays
    split: LabeledSplit
    normalization: Normalization


def _load_data(config: Config, plan: StartPlan, env: DistEnv, device: torch.device) -> _RunData:
    """Set up the process (precision check, threads, memory reuse, seeds), then load the
    dataset, its labeled split and normalisation (from the checkpoint when resuming)."""
    resolve_precision(config.trainer.precision, device)  # refuses fp16 off CUDA before any loading
    configure_threads(config.trainer.num_threads)
    if device.type == "cpu":
        reuse_freed_host_memory()  # activations live in host memory: no page faults every step
    seed_everything(config.seed)
    arrays = load_dataset(config.dataset)
    split = run_data.labeled_split(config, arrays, plan)
    run_data.check_same_split_on_all_ranks(split, env)
    normalization = run_data.input_normalization(config, arrays, plan)
    run_data.warn_if_other_test_images(config, arrays, plan)
    return _RunData(arrays, split, normalization)


def _build_trainer(config: Config, run_dir: Path, resolved_yaml: str, writer: MetricWriter,
                   plan: StartPlan, data: _RunData, env: DistEnv, device: torch.device) -> Trainer:
    arrays, split, normalization = data.arrays, data.split, data.normalization
    extra = len(arrays.unlabeled) if arrays.unlabeled is not None else 0
    stream = len(arrays.train.targets) + extra
    if not config.ssl.include_labeled_in_unlabeled:
        stream -= len(split.indices)
    uses_unlabeled = build_algorithm(config.ssl).uses_unlabeled
    log.info("%s: %d training images, %d labeled (per class %s), %s%d test images%s; device %s%s",
             config.dataset.name, len(arrays.train.targets), len(split.indices),
             split.num_per_class, f"{extra} extra unlabeled images, " if extra else "",
             len(arrays.test.targets), f"; unlabeled stream {stream} images" if uses_unlabeled else "",
             device, f", {env.world_size} ranks" if env.is_distributed else "")
    start_batch = plan.checkpoint["loader_position"]["labeled_batches"] if plan.checkpoint else 0
    cta_state = plan.checkpoint.get("ctaugment") if plan.checkpoint else None
    parts = build_training_parts(config, arrays, split, normalization, device, start_batch, env,
                                 cta_state)
    parts.model = _distribute(parts.model, config.trainer.sync_bn, device, env)
    if config.trainer.compile:
        # In place, so state dicts keep their keys; DDP's hooks stay on the parameters.
        unwrap_model(parts.model).compile(mode=config.trainer.compile_mode.value)
    trainer = Trainer(
        parts,
        config.trainer,
        writer,
        CheckpointStore(run_dir / CHECKPOINT_DIR, config.trainer.keep_checkpoints),
        checkpoint_extras={"config_yaml": resolved_yaml, "labeled_indices": split.indices,
                           "split_sha256": split.sha256, "class_names": arrays.class_names,
                           "training_set": arrays.training_set,
                           "unlabeled_set": arrays.unlabeled_set,
                           "test_set": arrays.test_set,
                           "normalization": normalization.as_record()},
    )
    if plan.checkpoint:
        try:
            trainer.load_state_dict(plan.checkpoint)
        except CheckpointError as error:
            raise CheckpointError(f"cannot resume from {plan.checkpoint_path}: {error}") from None
    return trainer


def build_training_parts(
    config: Config, arrays: DatasetArrays, split: LabeledSplit, normalization: Normalization,
    device: torch.device, start_batch: int = 0, env: DistEnv = DistEnv(),
    cta_state: Optional[dict] = None,
) -> TrainingParts:
    """Datasets, loaders (this rank's share, from batch `start_batch` on), model, EMA,
    optimiser and schedule; with CTAugment its probes.

    Args:
        config: the typed configuration.
        arrays: the loaded dataset.
        split: the labeled split (`run_data.labeled_split`).
        normalization: the input statistics (`run_data.input_normalization`).
        device: where the model trains.
        start_batch: the step the loaders start at (the checkpoint's when resuming).
        env: this process's rank; the loaders take its share of each batch.
        cta_state: the checkpoint's "ctaugment" record, to resume the probes' rates.

    Returns:
        The parts the Trainer steps (model not yet wrapped for DDP or compiled).

    Raises:
        UserError: a data-pipeline or CTAugment setting these parts cannot use.
        CheckpointError: `cta_state` is missing or does not fit when resuming with CTAugment.
    """
    algorithm = build_algorithm(config.ssl)
    inputs = pipeline.device_inputs(config, normalization, device, start_batch, env)
    cta_probe = None
    if algorithm.uses_unlabeled and config.ssl.strong_augment is StrongAugment.ctaugment:
        cta_probe = build_cta_probe(config.ssl, inputs, start_batch, cta_state, env)
    resident = pipeline.resident_images(config, arrays, device)
    labeled_batches = pipeline.labeled_batches(config, arrays, split, device, start_batch, env,
                                               cta_probe, resident)
    unlabeled_batches = (
        pipeline.unlabeled_batches(config, arrays, split, device, start_batch, env, cta_probe, resident)
        if algorithm.uses_unlabeled else None
    )
    test_loader = pipeline.eval_batches(config, arrays, device, env)
    model = build_model(config, len(arrays.class_names)).to(device)
    if inputs.channels_last:  # the model takes its inputs' memory format
        model = model.to(memory_format=torch.channels_last)
    ema = None
    if config.optim.ema_enabled:
        ema = ModelEMA(model, config.optim.ema_decay, warmup=config.optim.ema_warmup)
    optimizer = build_optimizer(model, config.optim)
    schedule = build_schedule(optimizer, config.trainer.total_steps, config.optim.cosine_fraction)
    return TrainingParts(model, ema, optimizer, schedule, algorithm, labeled_batches,
                         unlabeled_batches, test_loader, inputs, env, cta_probe)


def _distribute(model: nn.Module, sync_bn: bool, device: torch.device, env: DistEnv) -> nn.Module:
    if not env.is_distributed:
        return model
    if sync_bn:  # on CUDA (config_checks); off by default: the paper's towers each
        # normalise their own share of the batch
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    # Every parameter takes part in every step, so find_unused_parameters stays off.
    return DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)


def build_model(config: Config, num_classes: int) -> WideResNet:
    """The WideResNet the config describes, for the dataset's channels and `num_classes`.

    Args:
        config: the typed configuration; its model node and dataset.channels are read.
        num_classes: the classifier's outputs.

    Returns:
        The model, freshly initialised on the default device (the caller moves it).

    Raises:
        UserError: when WideResNet refuses the model node (a depth it cannot build, ...).
    """
    try:
        return WideResNet(
            num_classes=num_classes,
            depth=config.model.depth,
            widen_factor=config.model.widen_factor,
            in_channels=config.dataset.channels,
            num_stages=config.model.num_stages,
            bn_momentum=config.model.bn_momentum,
            leaky_slope=config.model.leaky_slope,
        )
    except ValueError as error:
        raise UserError(f"model: {error}") from None
