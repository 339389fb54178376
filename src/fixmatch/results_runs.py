"""The runs below sweep folders as the results command reads them: each run's own
`config_resolved.yaml` (flattened to dotted keys), `metrics.json` and the training-set
fingerprint of its `split.json`, never folder names or logs."""

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException
from yaml import YAMLError

from fixmatch.config import MACHINE_KEYS, SEED_KEYS, flatten_config
from fixmatch.folder_lock import is_held

COMPLETED = "completed"
RUNNING = "running"
STARTING = "starting"  # config written, no metrics.json yet: before the first evaluation
UNREADABLE = "unreadable"  # its config_resolved.yaml or metrics.json cannot be parsed
# metrics.json says running, yet no process holds the folder (folder_lock): the run was
# killed (SIGKILL, out of memory, a lost node) before it could say so; a rerun resumes it.
KILLED = "killed"
# Keys that may differ between the runs of one cell without making them different experiments
# (unlike resume, a table minds the schedule's length and how the step was executed).
PER_RUN_KEYS = MACHINE_KEYS | SEED_KEYS
WORLD_SIZE_KEY = "world_size"  # from metrics.json: the torchrun ranks of the run's last start


class ResultsError(Exception):
    """A mistake on the command line: a missing folder, a folder without runs, an unknown key."""


@dataclass(frozen=True)
class Run:
    """One run folder: its resolved config (flattened to dotted keys) and its metrics.json."""

    path: Path
    config: Dict[str, object]
    metrics: Optional[dict]  # None while the run has written no metrics.json
    problem: Optional[str] = None  # why a file of the run could not be read (status "unreadable")
    # The images it trained on, from split.json's training_set (count and sha256 of the labels
    # and, for image folders, the relative paths); None before the data was read, or in old runs.
    training_set: Optional[str] = None
    held: Optional[bool] = None  # whether a process trains in it now (None: cannot be told)

    @property
    def status(self) -> str:
        """metrics.json's status; `starting` without one, `killed` when running but unheld."""
        if self.metrics is None:
            return STARTING
        status = str(self.metrics.get("status", "unknown"))
        return KILLED if status == RUNNING and self.held is False else status

    @property
    def experiment(self) -> Tuple:
        """What two runs share when one repeats the other: the config but for the keys that
        only say where and how it ran (the seeds kept), and the images it trained on."""
        kept = (key for key in sorted(self.config) if key not in MACHINE_KEYS)
        return (*((key, repr(self.config[key])) for key in kept), self.training_set)

    def finished_at(self) -> float:
        """When its metrics.json was last written (0 when it cannot be told).

        Returns:
            The file's modification time in seconds since the epoch, or 0.0.
        """
        try:
            return (self.path / "metrics.json").stat().st_mtime
        except OSError:
            return 0.0

    def value(self, name: str) -> Optional[float]:
        """A number from metrics.json (None when absent).

        Args:
            name: a key of metrics.json's summary, such as `top1_ema_final`.

        Returns:
            The value as metrics.json holds it; None when the key or the file is missing.
        """
        return None if self.metrics is None else self.metrics.get(name)


def find_runs(folders: Sequence[str]) -> List[Run]:
    """Every run below the given folders: each folder holding a config_resolved.yaml.

    Args:
        folders: sweep folders (or single run folders); each run is read once.

    Returns:
        The runs, whatever their status.

    Raises:
        ResultsError: a folder does not exist or holds no run.
    """
    found: Dict[Path, Run] = {}
    for folder in map(Path, folders):
        if not folder.is_dir():
            what = "a file, not a folder" if folder.exists() else "no such folder"
            raise ResultsError(f"{folder}: {what}; pass a sweep folder such as "
                               "multirun/<timestamp> (or a run folder)")
        configs = _run_configs(folder)
        if not configs:
            raise ResultsError(f"{folder}: no runs in it (no config_resolved.yaml below it)")
        for config in configs:
            if config.parent.resolve() not in found:  # a folder given twice, or nested
                found[config.parent.resolve()] = load_run(config.parent)
    return list(found.values())


def _run_configs(folder: Path) -> List[Path]:
    """Every config_resolved.yaml below `folder`, through symlinked folders too (a sweep
    linked into a folder of sweeps), each real folder once."""
    found, seen = [], set()
    for parent, children, files in os.walk(folder, followlinks=True):
        real = os.path.realpath(parent)
        if real in seen:  # a link back up the tree, or two links to one folder
            children.clear()
            continue
        seen.add(real)
        children.sort()
        if "config_resolved.yaml" in files:
            found.append(Path(parent) / "config_resolved.yaml")
    return found


def load_run(run_dir: Path) -> Run:
    """Read one run folder; a config_resolved.yaml or metrics.json that cannot be parsed (a
    run killed while writing it, a file edited by hand) shows as status 'unreadable'.

    Args:
        run_dir: the folder holding the run's config_resolved.yaml.

    Returns:
        The run, with `problem` saying what could not be read; `held` is looked up only
        for a run whose metrics.json says it is running.
    """
    try:
        config = OmegaConf.to_container(OmegaConf.load(run_dir / "config_resolved.yaml"))
    except (OSError, YAMLError, OmegaConfBaseException) as error:
        config = f"{type(error).__name__}: {str(error).strip().splitlines()[0] if str(error).strip() else ''}"
    if not isinstance(config, dict) or not config:
        reason = config if isinstance(config, str) else "empty or not a mapping"
        return Run(run_dir, {}, {"status": UNREADABLE}, f"config_resolved.yaml: {reason}")
    metrics, problem = None, None
    if (run_dir / "metrics.json").exists():
        try:
            metrics = json.loads((run_dir / "metrics.json").read_text())
        except (OSError, ValueError) as error:
            problem = f"metrics.json: {error}"
        else:
            if not isinstance(metrics, dict):
                problem = "metrics.json: not a JSON object"
        if problem:
            metrics = {"status": UNREADABLE}
    held = is_held(run_dir) if metrics is not None and metrics.get("status") == RUNNING else None
    flat = flatten_config(config)
    if metrics is not None and metrics.get("status") != UNREADABLE:
        # Not a setting, but part of what the run computed (BatchNorm per rank): as a key, a
        # table keeps 1-rank and 2-rank runs apart and `--by world_size` splits them. Runs
        # from before it was recorded ran as one process, as nearly all runs do.
        flat[WORLD_SIZE_KEY] = metrics.get("world_size", 1)
    return Run(run_dir, flat, metrics, problem, _training_set(run_dir), held)


def _training_set(run_dir: Path) -> Optional[str]:
    """`<num_images>:<sha256>` of split.json's training_set; None when it has none. Only a
    check (`cell_warnings`), so a split.json that cannot be read is no error."""
    try:
        record = json.loads((run_dir / "split.json").read_text()).get("training_set")
        return f"{record['num_images']}:{record['sha256']}"
    except (OSError, ValueError, AttributeError, KeyError, TypeError):
        return None
