"""Softmax-DPO loss (paper eq. 3) against hand computations and the standard DPO loss."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from align3gr_kit.dpo import softmax_dpo_loss
from align3gr_kit.dpo.softmax_dpo import preference_stats, sequence_logps


def _hand_loss(pc, pr, rc, rr, beta):
    """-log sigmoid(-log sum_j exp(beta * ((pr_j - rr_j) - (pc - rc)))) with plain math."""
    s = sum(math.exp(beta * ((pj - rj) - (pc - rc))) for pj, rj in zip(pr, rr))
    x = -math.log(s)
    return -math.log(1.0 / (1.0 + math.exp(-x)))


def test_loss_matches_hand_computation_two_prompts_three_rejected():
    pc = [-3.0, -5.5]
    pr = [[-4.0, -2.5, -6.0], [-5.0, -7.25, -5.5]]
    rc = [-3.5, -5.0]
    rr = [[-3.0, -3.0, -6.5], [-6.0, -7.0, -4.0]]
    beta = 0.5
    got = softmax_dpo_loss(torch.tensor(pc), torch.tensor(pr), torch.tensor(rc), torch.tensor(rr), beta)
    want = [_hand_loss(pc[b], pr[b], rc[b], rr[b], beta) for b in range(2)]
    assert got.shape == (2,)
    np.testing.assert_allclose(got.numpy(), want, rtol=1e-6)
    # Prompt 0 by hand, term by term: rewards r = beta * (logpi - logref)
    # chosen 0.25; rejected -0.5, 0.25, 0.25 -> diffs -0.75, 0, 0 -> s = e^-0.75 + 2
    s0 = math.exp(-0.75) + 2.0
    assert got[0].item() == pytest.approx(math.log(1.0 + s0), rel=1e-6)  # -log sigmoid(-log s) = log(1 + s)


def test_one_rejected_equals_standard_dpo():
    # trl 1.16 exposes no public DPO loss function (DPOTrainer._compute_loss is private), so the
    # reference is the standard DPO formula -log sigmoid(beta * margin).
    g = torch.Generator().manual_seed(0)
    pc, rc = torch.randn(16, generator=g) * 5, torch.randn(16, generator=g) * 5
    pr, rr = torch.randn(16, 1, generator=g) * 5, torch.randn(16, 1, generator=g) * 5
    beta = 0.1
    margin = (pc - rc) - (pr[:, 0] - rr[:, 0])
    want = -torch.nn.functional.logsigmoid(beta * margin)
    got = softmax_dpo_loss(pc, pr, rc, rr, beta)
    torch.testing.assert_close(got, want, atol=1e-6, rtol=0)
    np.testing.assert_allclose(got.numpy(), np.log1p(np.exp(-beta * margin.numpy())), atol=1e-6)


@pytest.mark.parametrize("sign", [1.0, -1.0])
def test_finite_and_correct_for_huge_margins(sign):
    pc = torch.tensor([0.0], requires_grad=True)
    pr = torch.full((1, 3), -1e4 * sign)
    zero = torch.zeros(1)
    loss = softmax_dpo_loss(pc, pr, zero, torch.zeros(1, 3), beta=1.0)
    assert torch.isfinite(loss).all()
    loss.sum().backward()
    assert torch.isfinite(pc.grad).all()
    if sign > 0:  # chosen far ahead: loss ~ 3 e^-1e4 = 0
        assert loss.item() == pytest.approx(0.0, abs=1e-12)
    else:  # chosen far behind: loss ~ 1e4 + log 3
        assert loss.item() == pytest.approx(1e4 + math.log(3.0), rel=1e-6)


def test_masked_rejected_equals_smaller_set():
    pc, rc = torch.tensor([-1.0, -2.0]), torch.tensor([-1.5, -1.0])
    pr = torch.tensor([[-2.0, -3.0, 99.0], [-0.5, -4.0, -2.0]])
    rr = torch.tensor([[-1.0, -2.0, 0.0], [-1.0, -3.0, -2.5]])
    mask = torch.tensor([[True, True, False], [True, True, True]])
    got = softmax_dpo_loss(pc, pr, rc, rr, 0.3, rejected_mask=mask)
    first = softmax_dpo_loss(pc[:1], pr[:1, :2], rc[:1], rr[:1, :2], 0.3)
    second = softmax_dpo_loss(pc[1:], pr[1:], rc[1:], rr[1:], 0.3)
    torch.testing.assert_close(got, torch.cat([first, second]))
    with pytest.raises(ValueError, match="at least one rejected"):
        softmax_dpo_loss(pc, pr, rc, rr, 0.3, rejected_mask=torch.zeros(2, 3, dtype=torch.bool))


def test_loss_decreases_as_chosen_gains():
    base = dict(policy_rejected_logps=torch.tensor([[-2.0, -3.0]]), ref_chosen_logps=torch.tensor([-2.0]),
                ref_rejected_logps=torch.tensor([[-2.0, -3.0]]), beta=1.0)
    losses = [softmax_dpo_loss(torch.tensor([c]), **base).item() for c in (-3.0, -2.0, -1.0)]
    assert losses[0] > losses[1] > losses[2]
    assert losses[1] == pytest.approx(math.log(3.0))  # all rewards 0: -log sigmoid(-log 2) = log 3


def test_preference_stats_accuracy_needs_all_rejected_beaten():
    chosen = torch.tensor([1.0, 1.0, 1.0])
    rejected = torch.tensor([[0.0, 0.5], [0.0, 2.0], [0.0, 5.0]])
    mask = torch.tensor([[True, True], [True, True], [True, False]])
    s = preference_stats(chosen, rejected, mask)
    assert s["rewards/accuracies"].item() == pytest.approx(2 / 3)
    assert s["rewards/margins"].item() == pytest.approx(((1 - 0.25) + (1 - 1.0) + (1 - 0.0)) / 3)


def test_sequence_logps_sums_only_labelled_tokens():
    g = torch.Generator().manual_seed(1)
    logits = torch.randn(2, 5, 7, generator=g)
    labels = torch.tensor([[-100, -100, 3, 4, 1], [-100, -100, -100, 6, 2]])
    logp = torch.log_softmax(logits, -1)
    want0 = logp[0, 1, 3] + logp[0, 2, 4] + logp[0, 3, 1]
    want1 = logp[1, 2, 6] + logp[1, 3, 2]
    torch.testing.assert_close(sequence_logps(logits, labels), torch.stack([want0, want1]))
