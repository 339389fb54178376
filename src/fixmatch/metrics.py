"""What a run reports: metrics.jsonl (one line per evaluation), metrics.json (the summary)
and TensorBoard scalars, all under the same slash-namespaced names."""

import json
import math
import statistics
import time
from pathlib import Path
from typing import Dict, List, Optional, Sequence

from fixmatch.atomic_files import write_json_atomic, write_lines_atomic

MEDIAN_WINDOW = 20  # the paper reports the median of the last 20 evaluations
STATUS_FAILED = "failed"  # a mistake (or a crash) ended the run
STATUS_INTERRUPTED = "interrupted"  # an interrupt ended it (resumes on a rerun, like preempted)
# metrics.json of a start that ended before its first step: its folder is rewritten by the
# next start (resume.holds_a_run); any other status is a run's result, never overwritten.
RESTARTABLE_STATUSES = (STATUS_FAILED, STATUS_INTERRUPTED)


def json_line(record: Dict[str, float]) -> str:
    """One evaluation as strict JSON: a value that is not finite (the pseudo-label accuracy
    of a window without a confident pseudo-label is NaN) is null, which every parser reads;
    json.dumps would write NaN, which is not JSON.

    Args:
        record: metric names (and "step") to their values.

    Returns:
        One line of JSON, without the newline.
    """
    return json.dumps({name: value if not isinstance(value, float) or math.isfinite(value) else None
                       for name, value in record.items()}, allow_nan=False)


class MetricWriter:
    """Appends evaluations to metrics.jsonl and TensorBoard and keeps metrics.json current.

    Args:
        run_dir: the run's output directory.
        total_steps: the planned length of the run, recorded in metrics.json.
        history: evaluations of the run so far (when resuming from a checkpoint);
            metrics.jsonl is rewritten to hold exactly these, dropping any evaluation
            made after the checkpoint by the interrupted process.
        elapsed_s: wall time the run already spent before this process.
        resume_step: the checkpoint's step when resuming, else None.
        write: False on every rank but 0 of a torchrun job: keep the history, write nothing.
        earlier_total_steps: the lengths the run had before it was resumed with another
            (`StartPlan.earlier_total_steps`), recorded in metrics.json when there are any.
        world_size: the ranks this start trains on (torchrun), recorded in metrics.json:
            BatchNorm normalises each rank's share, so it is part of what a run computed.

    Nothing is written before `open()` but a `summary()` asked for, so a run refused
    before training leaves metrics.jsonl and TensorBoard as they were.
    """

    def __init__(self, run_dir: Path, total_steps: int, history: Optional[List[dict]] = None,
                 elapsed_s: float = 0.0, resume_step: Optional[int] = None, write: bool = True,
                 earlier_total_steps: Sequence[int] = (), world_size: int = 1):
        self.run_dir = run_dir
        self.world_size = world_size
        self.total_steps = total_steps
        self.earlier_total_steps = list(earlier_total_steps)
        self.history: List[Dict[str, float]] = list(history or [])
        self.started = time.monotonic() - elapsed_s
        self.resume_step = resume_step
        self.write = write
        self.tensorboard = None

    def open(self) -> None:
        """Start writing: metrics.jsonl is rewritten to the history, TensorBoard opened."""
        if not self.write:
            return
        write_lines_atomic(self.run_dir / "metrics.jsonl", [json_line(record) for record in self.history])
        from torch.utils.tensorboard import SummaryWriter

        # purge_step hides events an interrupted process logged after its checkpoint (all of
        # them when the run starts over: one killed before its first checkpoint).
        purge_step = self.resume_step + 1 if self.resume_step is not None else 0
        self.tensorboard = SummaryWriter(log_dir=str(self.run_dir / "tensorboard"),
                                         purge_step=purge_step)

    def elapsed_s(self) -> float:
        """Wall time of the run so far in seconds, across resumed processes."""
        return time.monotonic() - self.started

    def scalars(self, step: int, values: Dict[str, float]) -> None:
        """Send scalars to TensorBoard only (the frequent train/* logs).

        Args:
            step: the training step they belong to.
            values: metric names to values; nothing is sent before `open()` or off rank 0.
        """
        if self.tensorboard is not None:
            for name, value in values.items():
                self.tensorboard.add_scalar(name, value, step)

    def evaluation(self, step: int, values: Dict[str, float]) -> None:
        """Record one evaluation everywhere and refresh the running summary.

        Args:
            step: the training step of the evaluation.
            values: metric names (eval/*, the train/* means since the last evaluation) to
                values; the train/* ones go to metrics.jsonl but not to TensorBoard.
        """
        record = {"step": step, **values}
        self.history.append(record)
        if self.write:
            with (self.run_dir / "metrics.jsonl").open("a") as file:
                file.write(json_line(record) + "\n")
        # TensorBoard has the train/* means (and lr) from every log step (Trainer._log); these
        # means since the previous evaluation, at the same step, would make each curve jump.
        self.scalars(step, {name: value for name, value in values.items()
                            if not name.startswith("train/")})
        self.summary("running", step)

    def stopped(self, error: BaseException, step: int) -> dict:
        """metrics.json for a run that `error` ended: `interrupted` for an interrupt (a second
        stop signal, Ctrl-C before training began) or another rank's loss, which are no
        mistakes and resume on a rerun; `failed`, with why, for anything else.

        Args:
            error: the exception that ended the run.
            step: the step the run had reached.

        Returns:
            The summary (see `summary`).
        """
        resumable = isinstance(error, KeyboardInterrupt) or getattr(error, "resumable", False)
        status = STATUS_INTERRUPTED if resumable else STATUS_FAILED
        why = f"{type(error).__name__}: {error}" if str(error) else type(error).__name__
        return self.summary(status, step, error=why)

    def summary(self, status: str, step: int, error: Optional[str] = None) -> dict:
        """Write metrics.json with `status` (running, completed, preempted, interrupted or
        failed) and any error.

        Args:
            status: the run's state.
            step: the step the run has reached.
            error: why the run ended, for a failed or interrupted one; None otherwise.

        Returns:
            The summary: status, step, total_steps, the number of evaluations, the final,
            median-of-the-last-20 and best EMA top-1 (None before the first evaluation),
            the wall time in seconds, the world size, and earlier_total_steps and error when
            there are any.
            Returned even on ranks that write nothing.
        """
        top1 = [record["eval/top1_ema"] for record in self.history if "eval/top1_ema" in record]
        payload = {
            "status": status,
            "step": step,
            "total_steps": self.total_steps,
            "num_evaluations": len(top1),
            "top1_ema_final": top1[-1] if top1 else None,
            # Rounded: the median of an even count is a mean (92.4 and 91.0 give 91.69999...).
            "top1_ema_median_last20": round(statistics.median(top1[-MEDIAN_WINDOW:]), 6) if top1 else None,
            # Selected on the test set: a diagnostic, never the figure to report.
            "top1_ema_best": max(top1) if top1 else None,
            "wall_time_s": round(self.elapsed_s(), 1),
            "world_size": self.world_size,
        }
        if self.earlier_total_steps:
            payload["earlier_total_steps"] = self.earlier_total_steps
        if error is not None:
            payload["error"] = error
        if self.write:
            write_json_atomic(self.run_dir / "metrics.json", payload)
        return payload

    def close(self) -> None:
        """Close TensorBoard, if it was opened."""
        if self.tensorboard is not None:
            self.tensorboard.close()

