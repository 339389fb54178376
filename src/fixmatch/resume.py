"""How a run starts: fresh, continued from its newest valid checkpoint, or refused.

Rerunning a command with the same output folder continues the run there. A resumed run
must be the same experiment: a config that differs in anything but the keys below (run
length, cadence, hardware, where the data lives) is refused with the differing keys named.
"""

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Tuple

from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException
from yaml import YAMLError

from fixmatch.checkpoint import CHECKPOINT_DIR, CheckpointStore, load_checkpoint
from fixmatch.config import (RESUMABLE_KEYS, Config, DatasetConfig, ModelConfig, OptimConfig,
                             SSLConfig, TrainerConfig, flatten_config)
from fixmatch.distributed import DistEnv, broadcast_object
from fixmatch.errors import UserError
from fixmatch.folder_lock import FolderLock
from fixmatch.metrics import RESTARTABLE_STATUSES
from fixmatch.output_marks import cannot_write_in

log = logging.getLogger(__name__)

RANK_ZERO_FAILED = "rank 0 failed"  # broadcast in place of a plan


@dataclass
class StartPlan:
    """Where a run writes and what it continues from."""

    run_dir: Path
    checkpoint: Optional[dict] = None  # the state to continue from; None starts fresh
    checkpoint_path: Optional[Path] = None
    # metrics.json of a completed run whose checkpoints were deleted: nothing to do
    completed: Optional[dict] = None
    lock: Optional[FolderLock] = None  # rank 0 holds run_dir while the run uses it
    # The trainer.total_steps the run had before it was resumed with another (oldest first):
    # its schedule changed on the way, so it is no fresh run of its final length.
    earlier_total_steps: Tuple[int, ...] = ()

    def release_folder(self) -> None:
        """Let other processes use the folder (call when the run is over, however it ended)."""
        if self.lock is not None:
            self.lock.release()


def plan_start(run_dir: Path, resolved_yaml: str, resume: bool, keep_checkpoints: int) -> StartPlan:
    """Decide how a run in `run_dir` starts.

    Args:
        run_dir: the output folder the user asked for.
        resolved_yaml: the current config, resolved, as YAML.
        resume: continue an existing run in `run_dir` (True) or start fresh in a new
            sibling folder when `run_dir` already holds one (False).
        keep_checkpoints: passed to the checkpoint store.

    Returns:
        The plan: the folder to use and the checkpoint state to continue from, if any.

    Raises:
        UserError: when the folder's checkpoints are unreadable or belong to another
            experiment, or it holds a completed run (checkpoints deleted) of another
            experiment or of fewer steps, results without a checkpoint of another (or an
            unknown) experiment, a run's files but no metrics.json, or a run already past
            trainer.total_steps.
    """
    store = CheckpointStore(run_dir / CHECKPOINT_DIR, keep_checkpoints)
    if not store.step_files():
        completed = _completed_summary(run_dir)
        if completed is not None:  # its checkpoints were deleted, say to save space
            return _plan_after_completed(run_dir, completed, resolved_yaml, resume)
        kept = _results_without_checkpoint(run_dir)
        if kept is not None:
            if not resume:
                fresh = _free_sibling(run_dir)
                log.warning("trainer.resume=false: %s holds %s; starting fresh in %s", run_dir, kept, fresh)
                return StartPlan(fresh)
            differences = _folder_differences(run_dir, resolved_yaml)
            if not differences:
                # Runs are deterministic for a config: starting over recomputes these results.
                log.warning("%s holds %s but no checkpoint; starting the same run over", run_dir, kept)
                return StartPlan(run_dir)
            raise UserError(f"{run_dir} holds {kept} {_of_another_experiment(differences)} but "
                            "no checkpoint to continue from; "
                            "trainer.resume=false starts fresh in a new folder (its files are "
                            "left as they are), or use another hydra.run.dir")
        _refuse_files_of_no_run(run_dir)
        return StartPlan(run_dir)  # empty, or a start that failed before it trained
    if not resume:
        fresh = _free_sibling(run_dir)
        log.warning("trainer.resume=false: %s holds a run; starting fresh in %s", run_dir, fresh)
        return StartPlan(fresh)
    path, state = store.newest_valid()
    differences = experiment_differences(state["config_yaml"], resolved_yaml)
    if differences:
        raise UserError(
            f"cannot resume {run_dir}: the config differs from its checkpoint in "
            f"{', '.join(differences)}; these change the experiment. Use another "
            "hydra.run.dir, or trainer.resume=false to start fresh in a new folder"
        )
    _check_not_past_the_end(run_dir, state["step"], resolved_yaml)
    log.info("resuming from %s (step %d)", path, state["step"])
    return StartPlan(run_dir, state, path,
                     earlier_total_steps=_earlier_total_steps(run_dir, state, resolved_yaml))


def _earlier_total_steps(run_dir: Path, state: dict, resolved_yaml: str) -> Tuple[int, ...]:
    """The lengths the run had before this start (metrics.json keeps them), with the
    checkpoint's when this start changes it. Another trainer.total_steps is allowed (to
    train longer, or stop sooner), but the cosine schedule is over the run's length, so the
    run is no longer a fresh one of either: a warning now, and metrics.json records it for
    the results command."""
    before = _flatten_yaml(state["config_yaml"]).get("trainer.total_steps")
    after = _flatten_yaml(resolved_yaml).get("trainer.total_steps")
    try:
        recorded = json.loads((run_dir / "metrics.json").read_text()).get("earlier_total_steps", [])
    except (OSError, ValueError, AttributeError):
        recorded = []
    earlier = tuple(recorded) if isinstance(recorded, list) and all(
        isinstance(steps, int) for steps in recorded) else ()
    if before == after or (isinstance(after, int) and after < state["step"]):
        return earlier  # the same length, or one the start refuses (finished_summary)
    log.warning("%s: trainer.total_steps %s -> %s: from step %d on, the learning rate follows "
                "the cosine over %s steps, so this run differs from a fresh %s-step run (for "
                "that, use another output folder)", run_dir, before, after, state["step"],
                after, after)
    return (*earlier, before)


def _check_not_past_the_end(run_dir: Path, step: int, resolved_yaml: str) -> None:
    """A shorter trainer.total_steps may end an unfinished run sooner, not before where it
    already is (it would be reported completed at a step past its own length)."""
    total_steps = _flatten_yaml(resolved_yaml).get("trainer.total_steps")
    if isinstance(total_steps, int) and step > total_steps and _completed_summary(run_dir) is None:
        raise UserError(f"cannot resume {run_dir}: it is at step {step}, past trainer.total_steps="
                        f"{total_steps}; set trainer.total_steps to at least {step}, or use another "
                        "hydra.run.dir for a new run")


def _results_without_checkpoint(run_dir: Path) -> Optional[str]:
    """What a folder without checkpoints holds that a new start would overwrite: a run's
    evaluations (its checkpoints deleted), or a metrics.json that is not a start that
    failed before training (another run's, another tool's); None when there is nothing."""
    try:
        evaluations = sum(1 for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line.strip())
    except (OSError, UnicodeDecodeError):
        evaluations = 0
    try:
        summary = json.loads((run_dir / "metrics.json").read_text())
    except FileNotFoundError:
        summary = None
    except (OSError, ValueError):
        return "a metrics.json it cannot read"
    if evaluations:
        return f"a run's results ({evaluations} evaluations in metrics.jsonl)"
    if summary is None:
        return None
    if _is_restartable_start(summary):
        return None
    status = summary.get("status") if isinstance(summary, dict) else None
    return f"a metrics.json (status {status!r})"


# What a run writes besides metrics and checkpoints (README "Outputs"): found in a folder
# without a run's metrics.json, they are someone else's, and a start would overwrite them.
RUN_OUTPUTS = ("config_resolved.yaml", "split.json", "normalization.json", "metrics.jsonl",
               "run.log", "tensorboard", ".hydra")


def _refuse_files_of_no_run(run_dir: Path) -> None:
    """A folder with a run's file names but no metrics.json of a run (a start of this
    toolkit writes one before anything else it could leave) holds files the user made or
    copied there; a start would overwrite them."""
    if (run_dir / "metrics.json").exists():
        return  # a start that failed or was interrupted before training: rewritten
    found = [name for name in RUN_OUTPUTS if (run_dir / name).exists()]
    if found:
        raise UserError(f"{run_dir} holds {', '.join(found)} but no run (no metrics.json); a new "
                        "run would overwrite them: move them away, or use another hydra.run.dir")


def _of_another_experiment(differences: List[str]) -> str:
    """How a refusal names the folder's experiment, from `_folder_differences`."""
    if differences == [UNKNOWN_CONFIG]:
        return "of an unknown experiment (its config_resolved.yaml is missing or unreadable)"
    return f"of another experiment (the config differs in {', '.join(differences)})"


UNKNOWN_CONFIG = "config_resolved.yaml (missing or unreadable)"


def _folder_differences(run_dir: Path, resolved_yaml: str) -> List[str]:
    """`experiment_differences` between the folder's config_resolved.yaml and this config;
    a missing or unreadable file is itself a difference (the experiment is unknown)."""
    try:
        return experiment_differences((run_dir / "config_resolved.yaml").read_text(), resolved_yaml)
    except (OSError, ValueError, OmegaConfBaseException, YAMLError):
        return [UNKNOWN_CONFIG]


def _completed_summary(run_dir: Path) -> Optional[dict]:
    try:
        summary = json.loads((run_dir / "metrics.json").read_text())
    except (OSError, ValueError):
        return None
    return summary if isinstance(summary, dict) and summary.get("status") == "completed" else None


def _plan_after_completed(run_dir: Path, completed: dict, resolved_yaml: str,
                          resume: bool) -> StartPlan:
    """A completed run without checkpoints is never overwritten: the same experiment has
    nothing left to do, anything else goes elsewhere (or is refused)."""
    if not resume:
        fresh = _free_sibling(run_dir)
        log.warning("trainer.resume=false: %s holds a completed run; starting fresh in %s",
                    run_dir, fresh)
        return StartPlan(fresh)
    keep = ("use another hydra.run.dir, or trainer.resume=false to start fresh in a new "
            "folder; its results are left as they are")
    differences = _folder_differences(run_dir, resolved_yaml)
    if differences:
        raise UserError(f"{run_dir} holds a completed run {_of_another_experiment(differences)} "
                        f"and no checkpoint; {keep}")
    total_steps = _flatten_yaml(resolved_yaml).get("trainer.total_steps")
    if isinstance(total_steps, int) and completed.get("step", 0) < total_steps:
        raise UserError(f"{run_dir} holds a run completed at step {completed.get('step')} whose "
                        f"checkpoints are gone, so it cannot continue to trainer.total_steps="
                        f"{total_steps}; {keep}")
    return StartPlan(run_dir, completed=completed)


def experiment_differences(saved_yaml: str, current_yaml: str) -> List[str]:
    """Keys (with old -> new values) that differ and are not allowed to change on resume.

    A key the saved config lacks (added to the toolkit after that run started) counts as
    its schema default, so upgrading the toolkit does not strand a run.

    Args:
        saved_yaml: the run's resolved config as saved (checkpoint or config_resolved.yaml).
        current_yaml: the resolved config of this start.

    Returns:
        One `key (old -> new)` entry per differing key outside RESUMABLE_KEYS, sorted by
        key; empty when the two are the same experiment.
    """
    saved, current = _flatten_yaml(saved_yaml), _flatten_yaml(current_yaml)
    defaults = _schema_defaults()
    differing = []
    for key in sorted(set(saved) | set(current)):
        before = saved.get(key, defaults.get(key))
        if key not in RESUMABLE_KEYS and before != current.get(key):
            differing.append(f"{key} ({before!r} -> {current.get(key)!r})")
    return differing


def _schema_defaults() -> Dict[str, object]:
    schema = Config(dataset=DatasetConfig(), model=ModelConfig(), optim=OptimConfig(),
                    ssl=SSLConfig(), trainer=TrainerConfig())
    return _flatten_yaml(OmegaConf.to_yaml(OmegaConf.structured(schema)))


def _flatten_yaml(text: str) -> Dict[str, object]:
    return flatten_config(OmegaConf.to_container(OmegaConf.create(text)))


def _free_sibling(run_dir: Path) -> Path:
    number = 2
    while (candidate := run_dir.with_name(f"{run_dir.name}_{number}")).exists():
        number += 1
    return candidate


def plan_on_rank_zero(run_dir: Path, resolved_yaml: str, resume: bool, keep_checkpoints: int,
                      env: DistEnv) -> StartPlan:
    """Rank 0 decides fresh/resume/refuse (before anything is written, so a refused resume
    leaves the old run as it was); the other ranks follow and read the same checkpoint.

    Args:
        run_dir: the output folder the user asked for.
        resolved_yaml: the current config, resolved, as YAML.
        resume: trainer.resume (see `plan_start`).
        keep_checkpoints: passed to the checkpoint store.
        env: this process's rank; rank 0 decides and broadcasts.

    Returns:
        The plan; on rank 0 it holds the lock of its folder, on the other ranks no lock.

    Raises:
        UserError: on every rank, when rank 0's plan refuses the start (see `plan_start`),
            the folder cannot be written, or another process holds it.
        CheckpointError: on a rank other than 0, when it cannot read the chosen checkpoint.
        Exception: on rank 0, whatever else stopped it from planning; the other ranks then
            raise UserError.
    """
    decision = None
    if env.is_main:
        try:
            plan = _plan_holding_the_folder(run_dir, resolved_yaml, resume, keep_checkpoints)
            decision = (plan.run_dir, plan.checkpoint_path, plan.completed)
        except UserError as error:
            decision = error
        except Exception:
            # Anything else (an OSError of the folder lock, say) is rank 0's traceback; the
            # others must hear of it now, not at the process group's timeout half an hour on.
            broadcast_object(RANK_ZERO_FAILED, env)
            raise
    decision = broadcast_object(decision, env)
    if isinstance(decision, UserError):
        raise decision
    if decision == RANK_ZERO_FAILED:
        raise UserError("rank 0 failed while choosing where the run writes (its error is "
                        "above); this rank stops with it")
    if env.is_main:
        return plan
    folder, checkpoint_path, completed = decision
    return StartPlan(folder, load_checkpoint(checkpoint_path) if checkpoint_path else None,
                     checkpoint_path, completed)


def _plan_holding_the_folder(run_dir: Path, resolved_yaml: str, resume: bool,
                             keep_checkpoints: int) -> StartPlan:
    """`plan_start` with the folder locked first (its checkpoints are read while no other
    process can write them); a fresh sibling folder is locked in its place."""
    make_writable(run_dir)
    lock = FolderLock(run_dir).acquire()
    try:
        plan = plan_start(run_dir, resolved_yaml, resume, keep_checkpoints)
        if plan.run_dir != run_dir:
            make_writable(plan.run_dir)
            sibling = FolderLock(plan.run_dir).acquire()
            lock.release()
            lock = sibling
    except BaseException:
        lock.release()
        raise
    plan.lock = lock
    return plan


def finished_summary(plan: StartPlan, total_steps: int) -> Optional[dict]:
    """The summary of a run that already reached `total_steps`, so a rerun (of a sweep,
    say) leaves it exactly as it is; None when there is training left to do.

    Args:
        plan: the start's plan (`plan_on_rank_zero`).
        total_steps: trainer.total_steps of this start.

    Returns:
        The run's metrics.json summary (status `completed`), or None when there is training
        left, or when a checkpoint at the end has no readable completed metrics.json (the
        trainer, resumed there, then rewrites it).

    Raises:
        UserError: the run completed more steps than `total_steps`: its results are not
            those of the shorter run asked for.
    """
    if plan.completed is not None:
        summary = plan.completed  # plan_start checked its experiment and that it is not shorter
    elif not plan.checkpoint or plan.checkpoint["step"] < total_steps:
        return None
    else:
        try:
            summary = json.loads((plan.run_dir / "metrics.json").read_text())
        except (OSError, ValueError):
            return None  # recomputed (and rewritten) by resuming at the last step
        if not isinstance(summary, dict) or summary.get("status") != "completed":
            return None  # e.g. a metrics.json holding a list: not a summary
    if summary.get("step", total_steps) > total_steps:
        raise UserError(f"{plan.run_dir} holds a run completed at step {summary['step']}, past "
                        f"trainer.total_steps={total_steps}; its results are not those of a "
                        f"{total_steps}-step run: use another hydra.run.dir for a new run (the "
                        "completed run is left as it is)")
    return summary


def holds_a_run(plan: StartPlan) -> bool:
    """Whether the plan's folder holds a run that a start refused before training must
    leave as it is: one with a checkpoint, or with any metrics.json but that of a start
    that failed before its first step (a new run's folder, or such a start, is rewritten).

    Args:
        plan: the start's plan.

    Returns:
        True when the folder's run must be kept byte for byte (also for an unreadable
        metrics.json); False when the folder may be rewritten.
    """
    if plan.checkpoint is not None:
        return True
    path = plan.run_dir / "metrics.json"
    try:
        summary = json.loads(path.read_text())
    except FileNotFoundError:
        return False
    except (OSError, ValueError):
        return True  # unreadable: not ours to replace
    return not _is_restartable_start(summary)


def _is_restartable_start(summary) -> bool:
    """metrics.json of a start that failed or was interrupted before its first step."""
    return isinstance(summary, dict) and summary.get("status") in RESTARTABLE_STATUSES \
        and not summary.get("step")


def make_writable(run_dir: Path) -> None:
    """Create `run_dir` and check a file can be written there.

    Args:
        run_dir: the output folder, created with its parents when missing.

    Raises:
        UserError: when the folder cannot be created or written to.
    """
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        reason = error.strerror or str(error)
    else:
        reason = cannot_write_in(run_dir)
    if reason:
        raise UserError(f"cannot write to the output folder {run_dir} ({reason}); "
                        "set hydra.run.dir to a writable folder")
