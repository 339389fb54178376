"""Per-step statistics: the guard that notices a non-finite loss between checks."""

import pytest
import torch

from fixmatch.step_stats import NonFiniteGuard, NonFiniteLossError


def test_the_guard_names_the_first_bad_step_and_the_step_that_saw_it():
    # Before: the message named step 2 while metrics.json said the run failed at step 4.
    guard = NonFiniteGuard(torch.device("cpu"))
    for step, loss in [(1, 2.3), (2, float("nan")), (3, float("inf")), (4, 1.0)]:
        guard.observe(step, {"train/loss": torch.tensor(loss), "train/loss_x": torch.tensor(1.0)})
    with pytest.raises(NonFiniteLossError, match=r"^training diverged: non-finite loss at step 2 "
                                                 r"\(train/loss=nan, train/loss_x=1, "
                                                 r"train/loss_u=0; seen at the check of step 4\); "
                                                 r"what was kept; what to change$"):
        guard.check(4, "what was kept; what to change")


def test_a_finite_run_passes_the_check():
    guard = NonFiniteGuard(torch.device("cpu"))
    guard.observe(1, {"train/loss": torch.tensor(0.5)})
    guard.check(1, "unused")
