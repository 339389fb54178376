"""torchrun's environment, the process group and the few collectives the run needs.

One process is one rank. Without torchrun (no WORLD_SIZE) everything here degrades to a
single rank and every collective is the identity, so the rest of the code has one path.
"""

import atexit
import ctypes
import os
import signal
import sys
from dataclasses import dataclass
from typing import Any, Callable, List, NoReturn, Optional

import torch
import torch.distributed as dist

from fixmatch.errors import UserError

PR_SET_PDEATHSIG = 1  # linux/prctl.h
# What gloo (and a lost TCP peer under NCCL's store) says in a collective when another rank
# has gone: killed, out of memory, a lost node.
LOST_RANK_MESSAGES = ("Connection closed by peer", "Connection reset by peer", "Broken pipe")


class RankLostError(UserError):
    """Another rank of the job stopped while this one waited for it in a collective; the run
    resumes from its last checkpoint on a rerun (metrics.json says interrupted)."""

    resumable = True


def lost_rank_reason(error: BaseException, env: "DistEnv") -> Optional[str]:
    """Why a collective failed, when it failed because another rank of the job went away
    (gloo's words, e.g. "Connection reset by peer"); None for anything else, or one process.

    Args:
        error: what a collective (or DDP's backward) raised on this rank.
        env: this process's rank.

    Returns:
        The reason, short enough for a one-line message, or None.
    """
    network_error = getattr(dist, "DistNetworkError", ())
    if not env.is_distributed or not isinstance(error, RuntimeError):
        return None
    text = str(error)
    reason = next((words for words in LOST_RANK_MESSAGES if words in text), None)
    if reason is None and isinstance(error, network_error):
        reason = text.splitlines()[0][:120]
    return reason


@dataclass(frozen=True)
class DistEnv:
    """Where this process stands in the job."""

    rank: int = 0
    local_rank: int = 0
    world_size: int = 1

    @property
    def is_main(self) -> bool:
        """Rank 0 owns the output folder: logs, metrics, TensorBoard, checkpoints."""
        return self.rank == 0

    @property
    def is_distributed(self) -> bool:
        """Whether the job has more than one rank (launched by torchrun)."""
        return self.world_size > 1


def environment() -> DistEnv:
    """Read the ranks torchrun (or srun with the same variables) put in the environment.

    Returns:
        RANK, LOCAL_RANK and WORLD_SIZE; a single rank (0, 0, 1) for any that is unset.

    Raises:
        UserError: when one of them is not an integer.
    """
    try:
        return DistEnv(
            rank=int(os.environ.get("RANK", 0)),
            local_rank=int(os.environ.get("LOCAL_RANK", 0)),
            world_size=int(os.environ.get("WORLD_SIZE", 1)),
        )
    except ValueError as error:
        raise UserError(f"cannot read RANK/LOCAL_RANK/WORLD_SIZE from the environment ({error})") from None


LAUNCHER_PID_VARIABLE = "FIXMATCH_LAUNCHER_PID"  # the parent a torchrun rank started under


def stop_with_the_launcher(env: DistEnv) -> None:
    """Have the kernel send this rank SIGHUP when its launcher dies (Linux).

    torchrun starts each rank in a session of its own and forwards SIGTERM and SIGINT, but a
    signal it does not handle (SIGUSR1, which Slurm is often asked to send) or a SIGKILL
    ends torchrun alone, and the ranks trained on as orphans. With this they checkpoint
    and stop (preemption.py). SIGHUP, not SIGTERM: the kernel repeats the signal for each
    thread of the launcher, and a repeated SIGTERM means "stop at once".

    Args:
        env: this process's rank; nothing is done for a single rank or off Linux.

    Raises:
        UserError: when the launcher noted by run.py (FIXMATCH_LAUNCHER_PID) is no longer
            this process's parent: torchrun has already stopped.
    """
    if not env.is_distributed or not sys.platform.startswith("linux"):
        return
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGHUP, 0, 0, 0)
    except (OSError, AttributeError):
        return  # no prctl: as before
    # A launcher that died before the request (while this rank imported and composed) sends
    # nothing: the rank would wait for its rendezvous for half an hour. run.py noted the
    # parent as the rank started; another parent now means it is gone.
    started_under = os.environ.get(LAUNCHER_PID_VARIABLE)
    if started_under and os.getppid() != int(started_under):
        raise UserError(f"rank {env.rank}: torchrun, which started it, has stopped; rerun the "
                        "torchrun command (with the run's hydra.run.dir) to resume")


def end_rank(command: Callable[[], Any]) -> NoReturn:
    """Run a torchrun rank's `command`, then end the process without the interpreter's teardown.

    Every file is written and the process group is left when a run returns, yet about one
    two-rank CPU run in 200 (this 2-core machine, 2026-11-30) aborted as Python shut down,
    and torchrun reported the finished job as failed. A core dump showed why: gloo's worker
    thread was still freeing the final barrier's work, whose tensors need the GIL to release
    their Python objects; a thread that asks for the GIL while the interpreter finalizes is
    ended by pthread_exit, and that unwinding through C++ calls std::terminate ("terminate
    called without an active exception"). Python's own exit work still runs here (atexit:
    log handlers, child processes); only the finalization that races the thread is skipped.

    Args:
        command: the rank's work; its SystemExit code becomes the exit status, any other
            exception is printed with its traceback and exits with status 1.
    """
    try:
        command()
        code = 0
    except SystemExit as stop:
        code = _exit_status(stop.code)
    except BaseException:
        sys.excepthook(*sys.exc_info())  # the traceback Python would print
        code = 1
    atexit._run_exitfuncs()  # CPython's own exit work, run before os._exit skips it
    for stream in (sys.stdout, sys.stderr):
        stream.flush()
    os._exit(code)


def _exit_status(code: Any) -> int:
    # As sys.exit reads its argument: None is success, a message is printed and means 1.
    if code is None:
        return 0
    if isinstance(code, int):
        return code
    print(code, file=sys.stderr)
    return 1


def init_process_group(env: DistEnv, device: torch.device) -> None:
    """Join the job's process group: NCCL on CUDA, gloo on the CPU.

    Args:
        env: this process's rank; a single rank, or a group already joined, does nothing.
        device: the training device, which picks the backend.
    """
    if env.is_distributed and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")


def destroy_process_group(finished: bool = False) -> None:
    """Leave the process group; after a finished run, only once every rank has finished.

    A rank that tears its connections down while a peer still completes the last collective
    makes gloo abort that peer ("terminate called without an active exception").

    Args:
        finished: wait at a barrier for every rank first; False when the run failed, as
            the other ranks may never reach it.
    """
    if dist.is_initialized():
        if finished:
            dist.barrier()
        dist.destroy_process_group()


def broadcast_object(value: Any, env: DistEnv) -> Any:
    """Rank 0's `value` on every rank.

    Args:
        value: a picklable object; only rank 0's is used. Every rank must call this.
        env: this process's rank.

    Returns:
        Rank 0's `value` (this rank's own when the job has one rank).
    """
    if not env.is_distributed:
        return value
    holder = [value]
    dist.broadcast_object_list(holder, src=0)
    return holder[0]


def all_gather_objects(value: Any, env: DistEnv) -> List[Any]:
    """Every rank's `value`, in rank order.

    Args:
        value: this rank's picklable object. Every rank must call this.
        env: this process's rank.

    Returns:
        One value per rank, indexed by rank.
    """
    if not env.is_distributed:
        return [value]
    gathered = [None] * env.world_size
    dist.all_gather_object(gathered, value)
    return gathered


def all_reduce_sum(tensor: torch.Tensor, env: DistEnv) -> torch.Tensor:
    """The sum of `tensor` over ranks (in place, also returned).

    Args:
        tensor: this rank's values, on the device of the process group's backend.
        env: this process's rank.

    Returns:
        `tensor` itself, now holding the sum over all ranks.
    """
    if env.is_distributed:
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def any_rank(flag: bool, device: torch.device, env: DistEnv) -> bool:
    """True on every rank when `flag` is true on at least one.

    Args:
        flag: this rank's answer.
        device: where the reduced tensor lives (the backend's device).
        env: this process's rank.

    Returns:
        The OR of `flag` over all ranks.
    """
    if not env.is_distributed:
        return flag
    value = torch.tensor([1.0 if flag else 0.0], device=device)
    dist.all_reduce(value, op=dist.ReduceOp.MAX)
    return bool(value.item())
