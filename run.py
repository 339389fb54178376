"""Train FixMatch (or its supervised baseline) as configured in conf/; see README.md.

    python run.py                                   # CIFAR-10, 4000 labels, the paper's protocol
    python run.py experiment=quickstart             # offline, a few minutes on a CPU
    python run.py -m ssl.num_labeled=40,250,4000 seed=1,2,3,4,5

Exit status: 0 done, 2 a mistake to fix (one line on stderr), 75 preempted by a signal
after saving a checkpoint (the message names the hydra.run.dir to resume with), 130
interrupted at once.
A sweep runs every job, then exits 2 if any stopped on a mistake (fixmatch/sweep.py).
"""

import os
import signal
import sys
import threading


INTERRUPTED_AT_START = "interrupted: stopped before the run started"

# A torchrun rank notes its launcher first thing (distributed.LAUNCHER_PID_VARIABLE), so
# that a launcher gone before the rank asks to die with it is noticed rather than waited for.
if "WORLD_SIZE" in os.environ:
    os.environ["FIXMATCH_LAUNCHER_PID"] = str(os.getppid())


def _interrupted_while_importing(signum, frame):
    # os._exit, not sys.exit: an import that catches BaseException (some libraries' do)
    # would swallow SystemExit, and the run would go on as if no Ctrl-C had come. Nothing
    # was written yet, so there is nothing to clean up.
    if os.environ.get("RANK", "0") == "0":  # one line for a torchrun job, not one per rank
        print(INTERRUPTED_AT_START, file=sys.stderr, flush=True)
    os._exit(130)


# Ctrl-C while torch and Hydra load takes seconds: one line instead of an import traceback.
# The imports follow it on purpose; after them the process's own handler is back (Python's
# KeyboardInterrupt, which main and the run turn into their own lines; or SIG_IGN, which a
# script's background job inherits and the run respects).
ORIGINAL_SIGINT_HANDLER = signal.getsignal(signal.SIGINT)
# Only Python's own handlers are swapped: a process started ignoring SIGINT, one whose
# handler is not Python's (None), or an import outside the main thread keep theirs.
SWAP_SIGINT = (ORIGINAL_SIGINT_HANDLER is signal.default_int_handler
               and threading.current_thread() is threading.main_thread())
if SWAP_SIGINT:
    signal.signal(signal.SIGINT, _interrupted_while_importing)

import tempfile
from pathlib import Path
from typing import Optional, Set, Union

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig

from fixmatch.app import run_experiment
from fixmatch.config import register_configs
from fixmatch.distributed import end_rank
from fixmatch.errors import UserError
from fixmatch.overrides import (MULTIRUN_FLAGS, existing_folders, override_error,
                                remove_if_made_empty)
from fixmatch.preemption import EXIT_CODE_PREEMPTED, STOP_SIGNALS
from fixmatch.sweep import JobFailure

register_configs()
# The imports are done: from here Ctrl-C raises KeyboardInterrupt again (or stays ignored),
# also where another program imports this module (a launcher plugin's job).
if SWAP_SIGINT:
    signal.signal(signal.SIGINT, ORIGINAL_SIGINT_HANDLER)


def _keep_other_ranks_out_of_the_output_folder() -> None:
    # Under torchrun every rank composes the config, and `${now:...}` could name a folder
    # per rank. Rank 0's folder is the run's (app.py broadcasts it); the others write no
    # file: their Hydra folder is the temp folder itself, which exists, so no folder is
    # made there that a killed rank would leave behind.
    if _rank() > 0:
        sys.argv += [f"hydra.run.dir={tempfile.gettempdir()}", "hydra.output_subdir=null",
                     "hydra/job_logging=stdout"]


def _exit_on_a_sweep_under_torchrun() -> None:
    # Hydra's sweep would run its jobs one after another in every rank, and the ranks'
    # process group does not survive from one job to the next: the second job hangs.
    if "WORLD_SIZE" in os.environ and any(arg in MULTIRUN_FLAGS for arg in sys.argv[1:]):
        _print_error("a sweep (-m) cannot run under torchrun: one torchrun runs one experiment; "
                     "start one torchrun per job (e.g. a shell loop over the values)")
        sys.exit(2)


@hydra.main(version_base="1.3", config_path="conf", config_name="config")
def main(cfg: DictConfig) -> Union[Optional[float], JobFailure]:
    in_sweep = HydraConfig.get().mode is RunMode.MULTIRUN
    try:
        summary = run_experiment(cfg, exits_after=not in_sweep)
    except UserError as error:
        message = _in_sweep_terms(str(error)) if in_sweep else str(error)
        _print_error(message)  # a mistake the user can fix: one line, no traceback
        # Hydra made the run's folder before the run; a mistake found before the run wrote
        # anything (trainer.device=cuda without a GPU, say) would leave it empty.
        remove_if_made_empty(Path(HydraConfig.get().runtime.output_dir), EXISTING_RUN_DIRS)
        if in_sweep:
            # The sweep's other jobs still run; it exits 2 at the end (sweep.FailedJobsReport).
            return JobFailure(message)
        # A stop no mistake caused (another rank's death) resumes on a rerun, as a preemption.
        sys.exit(EXIT_CODE_PREEMPTED if getattr(error, "resumable", False) else 2)
    except KeyboardInterrupt:
        if _rank() == 0:  # one line for the job, not one per rank
            print("interrupted: stopped at once without a final checkpoint", file=sys.stderr)
        sys.exit(130)
    if summary["status"] == "preempted":
        # The checkpoint is saved: a further Ctrl-C (or the launcher's copy of a signal) in
        # the second the process takes to exit would only turn exit 75 into a signal death.
        # (Outside a sweep run_experiment left them ignored already.)
        for number in STOP_SIGNALS:
            signal.signal(number, signal.SIG_IGN)
        if _rank() == 0:
            print(f"preempted at step {summary['step']}: checkpoint saved in {summary['run_dir']}; "
                  f"{_how_to_resume(cfg, summary['run_dir'])}", file=sys.stderr)
        sys.exit(EXIT_CODE_PREEMPTED)
    return summary["top1_ema_median_last20"]


def _in_sweep_terms(message: str) -> str:
    # The run's messages name the settings of a single run. A sweep job's folder comes from
    # hydra.sweep.dir and hydra.sweep.subdir, and trainer.resume=false would retrain every
    # job of a rerun sweep (completed ones too) into new sibling folders.
    for single, sweep in SWEEP_TERMS:
        message = message.replace(single, sweep)
    return message


SWEEP_TERMS = [
    ("trainer.resume=false starts fresh in a new folder (its files are left as they are)",
     "name the key that changed in hydra.sweep.subdir (multirun/README.md)"),
    ("trainer.resume=false to start fresh in a new folder",
     "name the key that changed in hydra.sweep.subdir (multirun/README.md)"),
    ("hydra.run.dir", "hydra.sweep.dir"),
]


def _how_to_resume(cfg: DictConfig, run_dir: str) -> str:
    # The default folders are named by the time of the start, so "the same command" would
    # start a new run: the hint names the folder (or the sweep's).
    hydra_cfg = HydraConfig.get()
    if hydra_cfg.mode is RunMode.MULTIRUN:
        return f"to resume, rerun the sweep with hydra.sweep.dir={hydra_cfg.sweep.dir}"
    fresh = " (without trainer.resume=false)" if not cfg.trainer.resume else ""
    return f"to resume, rerun the command with hydra.run.dir={run_dir}{fresh}"


def _exit_on_a_bad_override() -> None:
    # Before Hydra, whose report of a misspelt key or a wrong type is several lines (exit 1).
    error = override_error(sys.argv[1:], Path(__file__).resolve().parent / "conf", run_checks=True)
    if error:
        _print_error(error)
        sys.exit(2)


def _rank() -> int:
    return int(os.environ.get("RANK", "0"))


def _print_error(message: str) -> None:
    rank = _rank()
    print(f"{f'[rank {rank}] ' if rank else ''}error: {message}", file=sys.stderr)


EXISTING_RUN_DIRS: Set[Path] = set()


def _run_command() -> None:
    try:
        _exit_on_a_sweep_under_torchrun()  # before the sweep's checks, which load its data
        _exit_on_a_bad_override()
        EXISTING_RUN_DIRS.update(existing_folders(sys.argv[1:], "hydra.run.dir"))
        _keep_other_ranks_out_of_the_output_folder()
        main()
    except KeyboardInterrupt:
        # Ctrl-C while the command line is checked (a sweep's data loads) or Hydra composes;
        # main's own handler covers the run. One line, not a traceback (rank 0's, under torchrun).
        if _rank() == 0:
            print(INTERRUPTED_AT_START, file=sys.stderr)
        sys.exit(130)


if __name__ == "__main__":
    if "WORLD_SIZE" in os.environ:
        end_rank(_run_command)  # a torchrun rank: see distributed.end_rank
    _run_command()
