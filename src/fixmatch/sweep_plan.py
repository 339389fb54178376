"""What a sweep folder's last sweep command planned (Hydra's multirun.yaml), against the runs
found below it: the jobs that never started have no folder, so no table row can count them.
"""

import itertools
import math
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import List, Optional, Sequence, Tuple

from hydra.core.override_parser.overrides_parser import OverridesParser
from omegaconf import OmegaConf

from fixmatch.config import RESUMABLE_KEYS

# A run below the folder in one of these may still be the sweep's (the sweep still runs).
ACTIVE_STATUSES = ("running", "starting")


@dataclass(frozen=True)
class PlannedSweep:
    """The swept keys of a sweep command and its jobs' values (the basic sweeper's product),
    and the values it gave every job (`ssl.num_labeled=20` beside `seed=1,2`)."""

    keys: Tuple[str, ...]
    jobs: Tuple[Tuple[object, ...], ...]
    fixed: Tuple[Tuple[str, object], ...] = ()

    def could_have_run(self, run) -> bool:
        """Whether `run`'s config holds the command's fixed values (keys it lacks, such as a
        config group's name, are not compared): a run of an earlier sweep into the folder
        with other values is not one of this command's jobs.

        Args:
            run: a run found below the sweep folder (`results_runs.Run`).

        Returns:
            False when a fixed value differs from the run's (keys that only say where and
            how a run ran are not compared); True otherwise.
        """
        return all(_canonical(run.config[key]) == _canonical(value)
                   for key, value in self.fixed
                   if key in run.config and key not in RESUMABLE_KEYS)


def unstarted_jobs(folders: Sequence[str], runs: Sequence) -> List[str]:
    """One warning per sweep folder whose sweep command has jobs without a run below it.

    A job is matched to a run by the swept values its config holds (a swept config group,
    `ssl=supervised`, is not in the config, so it is not compared); when no swept key is
    in the runs' configs, by the number of runs.

    Args:
        folders: the folders the results command was given.
        runs: the runs found (`results_runs.Run`: path, config, status).

    Returns:
        The warnings, without the `warning:` prefix: how many jobs never started (or have not
        yet, while runs below the folder are running), an example's swept values, and the
        rerun that runs them. Empty when every job has a run or no folder has a
        multirun.yaml of the basic sweeper.
    """
    warnings = []
    for folder in map(Path, folders):
        plan = planned_sweep(folder / "multirun.yaml")
        if plan is None:
            continue
        below = [run for run in runs if folder.resolve() in run.path.resolve().parents]
        missing = _jobs_without_a_run(plan, [run for run in below if plan.could_have_run(run)])
        if not missing:
            continue
        active = sum(1 for run in below if run.status in ACTIVE_STATUSES)
        named = [f"{key}={value}" for key, value in zip(plan.keys, missing[0]) if value is not None]
        example = f" (e.g. {' '.join(named)})" if named else ""
        jobs = f"{len(missing)} of the {len(plan.jobs)} jobs of its sweep command (multirun.yaml)"
        if active:
            warnings.append(f"{folder}: {jobs} have no run folder yet{example} and {active} of its "
                            "runs are running, so the sweep may still be running; once it has "
                            f"stopped, rerun it with hydra.sweep.dir={folder} to run the rest")
        else:
            warnings.append(f"{folder}: {jobs} never started{example}: rerun the sweep with "
                            f"hydra.sweep.dir={folder} to run them")
    return warnings


def planned_sweep(path: Path) -> Optional[PlannedSweep]:
    """The swept keys and job values of the sweep command in a multirun.yaml.

    Args:
        path: a sweep folder's multirun.yaml.

    Returns:
        The plan; None when it cannot be told (no file, another sweeper, a form the basic
        sweeper expands itself).
    """
    try:
        config = OmegaConf.load(path)
        if not str(OmegaConf.select(config, "hydra.sweeper._target_")).endswith("BasicSweeper"):
            return None
        task = list(OmegaConf.select(config, "hydra.overrides.task") or [])
        parsed = OverridesParser.create().parse_overrides(task)
        swept = [override for override in parsed if override.is_sweep_override()]
        keys = tuple(override.key_or_group.lstrip("+~") for override in swept)
        values = [list(override.sweep_iterator()) for override in swept]
        # A key given twice: Hydra keeps the last value, and so does this (a dict keeps it).
        fixed = {override.key_or_group.lstrip("+~"): override.value() for override in parsed
                 if not override.is_sweep_override()}
        return PlannedSweep(keys, tuple(itertools.product(*values)), tuple(fixed.items()))
    except Exception:  # noqa: BLE001 - a missing or foreign file, a glob: only a hint is lost
        return None


def _jobs_without_a_run(plan: PlannedSweep, runs: Sequence) -> List[Tuple[object, ...]]:
    """The planned jobs no run matches, with None for the values that are not compared."""
    compared = [i for i, key in enumerate(plan.keys) if any(key in run.config for run in runs)]
    if not compared:
        return [(None,) * len(plan.keys)] * max(0, len(plan.jobs) - len(runs))
    # Counted: jobs that differ only in a key not compared (ssl=fixmatch,supervised) need a
    # run each.
    found = Counter(tuple(_canonical(run.config.get(plan.keys[i])) for i in compared)
                    for run in runs)
    missing = []
    for job in plan.jobs:
        values = tuple(_canonical(job[i]) for i in compared)
        if found[values] > 0:
            found[values] -= 1
        else:
            missing.append(tuple(job[i] if i in compared else None for i in range(len(job))))
    return missing


def _canonical(value: object) -> object:
    """A value as both a run's config and a parsed override hold it: 0.95 == 9.5e-1, a
    list as a tuple, a path written as a number (dataset.root=2024) as that number."""
    if isinstance(value, bool) or value is None:
        return value
    if isinstance(value, (list, tuple)):
        return tuple(_canonical(item) for item in value)
    if isinstance(value, str):
        try:
            value = float(value)
        except ValueError:
            return value
    if isinstance(value, (int, float)) and math.isfinite(value):
        return round(float(value), 12)
    return str(value)
