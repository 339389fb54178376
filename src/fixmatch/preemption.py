"""Preemption: SIGTERM, SIGINT, SIGUSR1 and SIGUSR2 ask the run to checkpoint and stop at the
next step boundary, so a cluster scheduler can requeue it; a second signal stops at once.

SIGHUP asks the same but never stops at once: it is also the signal a torchrun rank gets
when torchrun dies (distributed.stop_with_the_launcher), and the kernel sends that once
for every thread of the dying launcher its rank is handed to.
"""

import logging
import signal
import threading
import time
from types import FrameType
from typing import Optional

log = logging.getLogger(__name__)

# SIGUSR2: what submitit has Slurm send before a job's time limit (its default).
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGUSR1, signal.SIGUSR2, signal.SIGHUP)
REPEATABLE_SIGNALS = (signal.SIGHUP,)  # a repeat is not a second request
EXIT_CODE_PREEMPTED = 75  # EX_TEMPFAIL: "try again later", i.e. rerun to resume
LAUNCHER_COPY_WINDOW_S = 5.0  # a torchrun rank's repeat of the first signal within it is a copy


class StopRequest:
    """Turns the stop signals into a flag the trainer polls, from `listen()` (the training
    loop's start) to `restore()` (the end of the run's teardown); a context manager too.

    Once `finish()` says the run is over (completed, or its last checkpoint saved), a stop
    signal is let go: the process has only its files to close and, under torchrun, the final
    barrier to pass, and a rank killed there would turn a finished job into a failed one.

    Outside the main thread (where Python cannot install handlers) it does nothing. A signal
    the process was started to ignore stays ignored: `nohup python run.py ... &` must train on
    when the terminal closes (SIGHUP), a background job of a script ignores SIGINT. Only a
    torchrun rank (`launched=True`) takes SIGHUP in any case: it is the kernel's word that its
    launcher died (distributed.stop_with_the_launcher), and the rank has no terminal.

    Args:
        launched: this process is a rank of a torchrun job.
    """

    def __init__(self, launched: bool = False):
        self.launched = launched
        self.signal_name: Optional[str] = None
        self.saving = False  # set while the last checkpoint is written: no signal stops it
        self.finished = False
        self._previous = {}
        self._first_at = 0.0

    @property
    def requested(self) -> bool:
        """Whether a stop signal has arrived."""
        return self.signal_name is not None

    def listen(self) -> None:
        """Install the handlers (in the main thread; once)."""
        if threading.current_thread() is not threading.main_thread() or self._previous:
            return
        for number in STOP_SIGNALS:
            ignored = signal.getsignal(number) is signal.SIG_IGN
            if ignored and not (self.launched and number == signal.SIGHUP):
                continue
            self._previous[number] = signal.signal(number, self._handle)

    def finish(self) -> None:
        """The run is over: stop signals from now until `restore()` are let go."""
        self.finished = True

    def restore(self, ignore: bool = False) -> None:
        """Put back the handlers `listen()` replaced (a sweep's next job starts as the first).

        Args:
            ignore: ignore those signals instead (the process only exits from here): with
                the handlers back, one in between would end it by the signal.
        """
        for number, handler in self._previous.items():
            signal.signal(number, signal.SIG_IGN if ignore else handler)
        self._previous.clear()

    def __enter__(self) -> "StopRequest":
        self.listen()
        return self

    def __exit__(self, *exc_info) -> None:
        self.restore()

    def _handle(self, number: int, frame: Optional[FrameType]) -> None:
        name = signal.Signals(number).name
        if self.finished:
            log.info("%s received after the run ended: it ends as it was going to", name)
            return
        if self.requested and (number in REPEATABLE_SIGNALS or self.saving
                               or self._copy_of_the_first(name)):
            return
        if self.requested:
            # The second signal: the user (or scheduler) does not want to wait.
            raise KeyboardInterrupt(f"second stop signal ({name})")
        self.signal_name = name
        self._first_at = time.monotonic()
        again = ("another SIGTERM or SIGINT stops at once" if number in REPEATABLE_SIGNALS
                 else "send it again to stop at once")
        log.warning("%s received: saving a checkpoint at the end of this step, then stopping "
                    "(%s)", name, again)


    def _copy_of_the_first(self, name: str) -> bool:
        # Slurm and a terminal signal every process of a torchrun job, and torchrun forwards
        # its own copy to the ranks moments later: the same signal within this window is
        # that one request, not the user's second.
        return (self.launched and name == self.signal_name
                and time.monotonic() - self._first_at < LAUNCHER_COPY_WINDOW_S)


def ignore_stop_signals_in_worker(worker_id: int) -> None:
    """DataLoader worker_init_fn: leave the stop signals to the main process.

    A terminal's Ctrl-C and a scheduler's SIGTERM reach every process of the job; a worker
    that died of them would break the batch the main process still needs before it saves.

    Args:
        worker_id: the DataLoader's index of the worker (unused).
    """
    for number in STOP_SIGNALS:
        signal.signal(number, signal.SIG_IGN)
