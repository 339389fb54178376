"""What a run reports: metrics.jsonl (one line per evaluation), metrics.json (the summary)
and TensorBoard scalars, all under the same slash-namespaced names."""

import json
import os
import statistics
import time
from pathlib import Path
from typing import Dict, List, Optional

MEDIAN_WINDOW = 20  # the paper reports the median of the last 20 evaluations


def write_json_atomic(path: Path, payload: dict) -> None:
    """Write JSON so a reader never sees a half-written file (temp file + rename)."""
    temporary = path.with_name(f".{path.name}.tmp")
    with temporary.open("w") as file:
        json.dump(payload, file, indent=1)
        file.write("\n")
        file.flush()
        os.fsync(file.fileno())
    os.replace(temporary, path)


class MetricWriter:
    """Appends evaluations to metrics.jsonl and TensorBoard and keeps metrics.json current.

    Args:
        run_dir: the run's output directory.
        total_steps: the planned length of the run, recorded in metrics.json.
        tensorboard: write TensorBoard events under `run_dir/tensorboard`.
    """

    def __init__(self, run_dir: Path, total_steps: int, tensorboard: bool = True):
        self.run_dir = run_dir
        self.total_steps = total_steps
        self.history: List[Dict[str, float]] = []
        self.started = time.monotonic()
        self.tensorboard = None
        if tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            self.tensorboard = SummaryWriter(log_dir=str(run_dir / "tensorboard"))

    def scalars(self, step: int, values: Dict[str, float]) -> None:
        """Send scalars to TensorBoard only (the frequent train/* logs)."""
        if self.tensorboard is not None:
            for name, value in values.items():
                self.tensorboard.add_scalar(name, value, step)

    def evaluation(self, step: int, values: Dict[str, float]) -> None:
        """Record one evaluation everywhere and refresh the running summary."""
        record = {"step": step, **values}
        self.history.append(record)
        with (self.run_dir / "metrics.jsonl").open("a") as file:
            file.write(json.dumps(record) + "\n")
        self.scalars(step, values)
        self.summary("running", step)

    def summary(self, status: str, step: int, error: Optional[str] = None) -> dict:
        """Write metrics.json with `status` (running, completed or failed) and any error."""
        top1 = [record["eval/top1_ema"] for record in self.history if "eval/top1_ema" in record]
        payload = {
            "status": status,
            "step": step,
            "total_steps": self.total_steps,
            "num_evaluations": len(top1),
            "top1_ema_final": top1[-1] if top1 else None,
            "top1_ema_median_last20": statistics.median(top1[-MEDIAN_WINDOW:]) if top1 else None,
            # Selected on the test set: a diagnostic, never the figure to report.
            "top1_ema_best": max(top1) if top1 else None,
            "wall_time_s": round(time.monotonic() - self.started, 1),
        }
        if error is not None:
            payload["error"] = error
        write_json_atomic(self.run_dir / "metrics.json", payload)
        return payload

    def close(self) -> None:
        if self.tensorboard is not None:
            self.tensorboard.close()

