"""Learning curves of a sweep: test accuracy over steps per cell, mean ± std over its runs.

Reads each run's metrics.jsonl; matplotlib is an optional extra (`pip install 'fixmatch[plot]'`),
imported by the caller.
"""

import json
import statistics
from pathlib import Path
from typing import Dict, List, Sequence, Tuple

from fixmatch.output_marks import matplotlib_save_kwargs

CURVE_KEY = "eval/top1_ema"
PLOT_COMMAND = "results --plot"  # the mark in the images it draws (output_marks)


def read_curve(run_dir: Path) -> Dict[int, float]:
    """step -> EMA test top-1 (%) from a run's metrics.jsonl; empty when it has none.

    A line cut short by a run that is writing it is skipped; when a step appears twice
    (a resumed run re-evaluating), the later line wins.

    Args:
        run_dir: the run's folder.

    Returns:
        Each evaluated step's eval/top1_ema (%), by step; empty without a metrics.jsonl.
    """
    path = run_dir / "metrics.jsonl"
    curve: Dict[int, float] = {}
    if not path.exists():
        return curve
    for line in path.read_text().splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        if CURVE_KEY in record:
            curve[int(record["step"])] = float(record[CURVE_KEY])
    return curve


def mean_band(curves: Sequence[Dict[int, float]]) -> Tuple[List[int], List[float], List[float]]:
    """Steps, mean and sample std (0 where only one run reached the step) over the runs.

    Args:
        curves: one step -> accuracy mapping per run; runs may stop at different steps.

    Returns:
        The sorted union of steps, the mean over the runs that reached each step, and
        the standard deviation (ddof=1) over them.
    """
    steps = sorted({step for curve in curves for step in curve})
    means, stds = [], []
    for step in steps:
        values = [curve[step] for curve in curves if step in curve]
        means.append(statistics.fmean(values))
        stds.append(statistics.stdev(values) if len(values) > 1 else 0.0)
    return steps, means, stds


def plot_curves(pyplot, cells: Sequence[Tuple[str, Sequence]], path: Path) -> None:
    """One line per cell (mean over its runs) with a ± std band, saved as an image.

    Args:
        pyplot: matplotlib.pyplot, imported by the caller (an optional dependency).
        cells: (label, runs) pairs; each run has a `path` to its folder.
        path: the image to write (format from its suffix, e.g. .png or .pdf).

    Raises:
        ValueError: no run of any cell has an evaluation.
        OSError: the image cannot be written.
    """
    drawn = [(label, curves) for label, curves in
             ((label, [curve for curve in map(read_curve, (run.path for run in runs)) if curve])
              for label, runs in cells) if curves]
    if not drawn:
        raise ValueError("no run has an evaluation yet (metrics.jsonl), so there is no curve "
                         "to draw")
    figure, axes = pyplot.subplots(figsize=(8, 5))
    for label, curves in drawn:
        steps, means, stds = mean_band(curves)
        line, = axes.plot(steps, means, label=f"{label} ({runs_per_step(curves, steps)})")
        axes.fill_between(steps, [m - s for m, s in zip(means, stds)],
                          [m + s for m, s in zip(means, stds)], color=line.get_color(), alpha=0.2)
    axes.set_xlabel("step")
    axes.set_ylabel("test top-1 of the EMA model (%)")
    axes.set_title("mean ± std over runs")
    axes.grid(alpha=0.3)
    axes.legend(fontsize="small")
    figure.tight_layout()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        figure.savefig(path, dpi=120, **matplotlib_save_kwargs(path, PLOT_COMMAND))
    except OSError as error:
        raise OSError(f"cannot write {path} ({error.strerror or error})") from None
    finally:
        pyplot.close(figure)


def runs_per_step(curves: Sequence[Dict[int, float]], steps: Sequence[int]) -> str:
    """The legend's run count: `n=3`, or `n=1-3 by step` when runs reached other steps (a
    run still training, runs of other lengths), so a reader knows the mean changes runs.

    Args:
        curves: one cell's curves, one per run (`read_curve`).
        steps: the steps drawn (`mean_band`); must not be empty.

    Returns:
        The count of runs per step, as `n=<count>` or `n=<fewest>-<most> by step`.
    """
    counts = [sum(step in curve for curve in curves) for step in steps]
    if min(counts) == max(counts):
        return f"n={counts[0]}"
    return f"n={min(counts)}-{max(counts)} by step"

