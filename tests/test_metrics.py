"""metrics.json's figures from hand-made evaluations: the paper's median of the last 20."""

import json
import math

from fixmatch.metrics import MetricWriter, json_line


def write_evaluations(run_dir, accuracies, **writer_args) -> dict:
    writer = MetricWriter(run_dir, total_steps=100, **writer_args)
    for step, top1 in enumerate(accuracies, start=1):
        writer.history.append({"step": step, "eval/top1_ema": top1})
    return writer.summary("completed", len(accuracies))


def test_the_reported_figure_is_the_median_of_the_last_20_evaluations(tmp_path):
    # 25 evaluations: the first five (0..4) are outside the window; the last 20 are
    # 10, 11, ..., 29, whose median (an even count) is the mean of 19 and 20.
    summary = write_evaluations(tmp_path, [float(v) for v in range(5)] + [float(v) for v in range(10, 30)])
    assert summary["top1_ema_median_last20"] == 19.5
    assert summary["top1_ema_final"] == 29.0 and summary["top1_ema_best"] == 29.0
    assert summary["num_evaluations"] == 25
    assert json.loads((tmp_path / "metrics.json").read_text()) == summary


def test_fewer_than_20_evaluations_take_the_median_of_all(tmp_path):
    summary = write_evaluations(tmp_path, [50.0, 10.0, 30.0])  # odd count: the middle value
    assert summary["top1_ema_median_last20"] == 30.0 and summary["top1_ema_final"] == 30.0
    assert summary["top1_ema_best"] == 50.0


def test_a_run_without_evaluations_has_null_figures(tmp_path):
    summary = write_evaluations(tmp_path, [])
    assert summary["top1_ema_final"] is None and summary["top1_ema_median_last20"] is None
    assert summary["top1_ema_best"] is None and summary["num_evaluations"] == 0


def test_earlier_lengths_are_recorded_only_when_there_are_some(tmp_path):
    assert "earlier_total_steps" not in write_evaluations(tmp_path, [1.0])
    assert write_evaluations(tmp_path, [1.0], earlier_total_steps=[40])["earlier_total_steps"] == [40]


def test_a_value_that_is_not_finite_is_written_as_json_null():
    line = json_line({"step": 3, "train/pseudo_label_acc": math.nan, "eval/top1_ema": 12.5})
    assert json.loads(line) == {"step": 3, "train/pseudo_label_acc": None, "eval/top1_ema": 12.5}
