"""The FixMatch loss on hand-computed logits."""

import math

import torch

from fixmatch.losses import fixmatch_loss


def test_loss_matches_a_hand_computed_case():
    logits_x = torch.tensor([[2.0, 0.0], [0.0, 1.0]])
    targets_x = torch.tensor([0, 1])
    # Weak view: first image is confident (softmax of [10, 0] is 0.99995 ≥ 0.95) for class 0,
    # the second is not (softmax of [0.5, 0] is 0.62).
    logits_u_weak = torch.tensor([[10.0, 0.0], [0.5, 0.0]])
    logits_u_strong = torch.tensor([[1.0, 1.0], [3.0, 0.0]])
    out = fixmatch_loss(logits_x, targets_x, logits_u_weak, logits_u_strong, 0.95, 1.0)

    expected_x = (math.log(1 + math.exp(-2.0)) + math.log(1 + math.exp(-1.0))) / 2
    # Only the first strong view counts (CE of [1, 1] against class 0 = log 2), and it is
    # averaged over both unlabeled images, not over the one confident image.
    expected_u = math.log(2.0) / 2
    assert math.isclose(out.loss_x.item(), expected_x, rel_tol=1e-6)
    assert math.isclose(out.loss_u.item(), expected_u, rel_tol=1e-6)
    assert math.isclose(out.loss.item(), expected_x + expected_u, rel_tol=1e-6)
    assert out.mask.tolist() == [1.0, 0.0]
    assert out.pseudo_targets.tolist() == [0, 0]


def test_lambda_u_weights_the_unlabeled_term():
    args = (torch.zeros(1, 3), torch.tensor([0]), torch.tensor([[9.0, 0.0, 0.0]]), torch.zeros(1, 3))
    one = fixmatch_loss(*args, threshold=0.5, lambda_u=1.0)
    three = fixmatch_loss(*args, threshold=0.5, lambda_u=3.0)
    assert math.isclose(three.loss.item() - one.loss.item(), 2 * one.loss_u.item(), rel_tol=1e-6)


def test_nothing_confident_means_zero_unlabeled_loss():
    logits_u_weak = torch.zeros(4, 10)  # uniform: confidence 0.1 < 0.95
    logits_u_strong = torch.randn(4, 10, requires_grad=True)
    out = fixmatch_loss(torch.randn(2, 10), torch.tensor([1, 2]), logits_u_weak,
                        logits_u_strong, 0.95, 1.0)
    assert out.loss_u.item() == 0.0
    assert out.mask.sum().item() == 0.0
    out.loss_u.backward()
    assert torch.count_nonzero(logits_u_strong.grad) == 0


def test_no_gradient_flows_through_the_weak_view():
    logits_u_weak = torch.tensor([[8.0, 0.0], [0.0, 8.0]], requires_grad=True)
    logits_u_strong = torch.tensor([[0.0, 1.0], [1.0, 0.0]], requires_grad=True)
    out = fixmatch_loss(torch.zeros(1, 2), torch.tensor([0]), logits_u_weak, logits_u_strong,
                        0.95, 1.0)
    out.loss.backward()
    assert logits_u_weak.grad is None or torch.count_nonzero(logits_u_weak.grad) == 0
    assert torch.count_nonzero(logits_u_strong.grad) > 0


def test_threshold_is_inclusive():
    # softmax([log 19, 0]) = [0.95, 0.05] exactly: confidence equal to τ passes (max p ≥ τ).
    logits = torch.tensor([[math.log(19.0), 0.0]], dtype=torch.float64)
    out = fixmatch_loss(torch.zeros(1, 2, dtype=torch.float64), torch.tensor([0]), logits,
                        torch.zeros(1, 2, dtype=torch.float64), 0.95 - 1e-12, 1.0)
    assert out.mask.item() == 1.0
