"""A sweep's (`run.py -m`) exit status: jobs that stopped on a mistake make it exit 2 at the end.

A job's mistake must not end the sweep (the other jobs still run), so run.py's task prints
the job's error line and returns a `JobFailure` instead of raising; this Hydra callback,
listed under `hydra.callbacks` in conf/config.yaml, counts those jobs and reports them once
every job has run.
"""

import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, List

from hydra.core.utils import JobReturn, JobStatus
from hydra.experimental.callback import Callback
from omegaconf import DictConfig

EXIT_CODE_JOBS_FAILED = 2  # the single-run status of a mistake to fix
MAX_FOLDERS_NAMED = 3


@dataclass(frozen=True)
class JobFailure:
    """What run.py's task returns for a sweep job stopped by a mistake; its one-line error
    is already on stderr."""

    error: str


class FailedJobsReport(Callback):
    """Counts the sweep's jobs and those that returned a `JobFailure`; at the end of a
    sweep with any, says how many and where in one line and exits with status 2.

    Jobs report here when they run in this process (Hydra's default basic launcher);
    launchers that run jobs elsewhere (submitit, joblib) keep Hydra's own exit status.
    """

    def __init__(self) -> None:
        self.jobs = 0
        self.failed_folders: List[str] = []

    def on_job_end(self, config: DictConfig, job_return: JobReturn, **kwargs: Any) -> None:
        """Count a job, and its folder when it returned a `JobFailure`.

        Args:
            config: the job's config (hydra.runtime.output_dir is its folder).
            job_return: what the job returned.
            **kwargs: Hydra's further arguments (unused).
        """
        self.jobs += 1
        if job_return.status is JobStatus.COMPLETED and isinstance(job_return.return_value, JobFailure):
            self.failed_folders.append(_shown(config.hydra.runtime.output_dir))

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        """Report the failed jobs, if any, in one line on stderr, naming at most
        MAX_FOLDERS_NAMED folders, and exit.

        Args:
            config: the sweep's config (hydra.sweep.dir is its folder).
            **kwargs: Hydra's further arguments (unused).

        Raises:
            SystemExit: with EXIT_CODE_JOBS_FAILED when any job failed.
        """
        if not self.failed_folders:
            return
        count = len(self.failed_folders)
        folders = ", ".join(self.failed_folders[:MAX_FOLDERS_NAMED])
        if count > MAX_FOLDERS_NAMED:
            folders += f" and {count - MAX_FOLDERS_NAMED} more"
        where = (f"its error line is above; folder {folders}" if count == 1 else
                 f"their error lines are above; folders {folders}")
        print(f"error: {count} of {self.jobs} sweep jobs stopped on a mistake ({where}); fix "
              f"{'it' if count == 1 else 'them'}, then rerun with hydra.sweep.dir="
              f"{_shown(config.hydra.sweep.dir)} to finish the sweep: completed jobs are not "
              "trained again", file=sys.stderr)
        sys.exit(EXIT_CODE_JOBS_FAILED)


def _shown(folder: str) -> str:
    """`folder` relative to the working directory when it lies below it."""
    path = Path(folder).absolute()
    try:
        return str(path.relative_to(Path(os.getcwd())))
    except ValueError:
        return str(path)
