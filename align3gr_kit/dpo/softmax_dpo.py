"""Softmax-DPO (paper eq. 3): one chosen and N rejected responses per prompt, and the log-probabilities
it needs.

For a prompt ``x`` with chosen ``y_w`` and rejected ``y_1..y_N`` and the implicit reward
``r(y) = beta * (log pi(y|x) - log pi_ref(y|x))``::

    L = -log sigmoid( -log sum_j exp( r(y_j) - r(y_w) ) )

With N = 1 this is the standard DPO loss ``-log sigmoid(r(y_w) - r(y_1))``. ``logsumexp`` and
``logsigmoid`` keep it finite for any margin. Rejected slots may be masked (a prompt with fewer than N
negatives): a masked slot contributes ``exp(-inf) = 0`` to the sum, i.e. it is absent, which is
exactly Softmax-DPO over the smaller set.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from trl.trainer.utils import selective_log_softmax

from align3gr_kit.model.attention import forward_accepts

IGNORE_INDEX = -100


def softmax_dpo_loss(
    policy_chosen_logps: torch.Tensor,
    policy_rejected_logps: torch.Tensor,
    ref_chosen_logps: torch.Tensor,
    ref_rejected_logps: torch.Tensor,
    beta: float,
    rejected_mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """Per-example Softmax-DPO loss.

    Args:
        policy_chosen_logps: ``[B]`` summed response log-probs of the chosen response under the policy.
        policy_rejected_logps: ``[B, N]`` the same for the N rejected responses.
        ref_chosen_logps: ``[B]`` under the frozen reference.
        ref_rejected_logps: ``[B, N]`` under the frozen reference.
        beta: DPO temperature.
        rejected_mask: optional ``[B, N]`` bool, False for padded (absent) rejected slots; every row
            needs at least one True.
    Returns:
        ``[B]`` loss per example.
    """
    chosen_rewards, rejected_rewards = implicit_rewards(
        policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps, beta
    )
    diff = rejected_rewards - chosen_rewards.unsqueeze(-1)  # [B, N]
    if rejected_mask is not None:
        if not bool(rejected_mask.any(dim=-1).all()):
            raise ValueError("softmax_dpo_loss: every example needs at least one rejected response (rejected_mask row all False)")
        diff = diff.masked_fill(~rejected_mask.bool(), float("-inf"))
    return -F.logsigmoid(-torch.logsumexp(diff, dim=-1))


def implicit_rewards(
    policy_chosen_logps: torch.Tensor,
    policy_rejected_logps: torch.Tensor,
    ref_chosen_logps: torch.Tensor,
    ref_rejected_logps: torch.Tensor,
    beta: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """DPO's implicit rewards ``beta * (log pi - log pi_ref)``: ``([B], [B, N])``."""
    return beta * (policy_chosen_logps - ref_chosen_logps), beta * (policy_rejected_logps - ref_rejected_logps)


def preference_stats(
    chosen_rewards: torch.Tensor, rejected_rewards: torch.Tensor, rejected_mask: torch.Tensor | None = None
) -> dict[str, torch.Tensor]:
    """Batch means of the logged quantities (detached scalars).

    ``rewards/margins`` is the chosen reward minus the mean rejected reward; ``rewards/accuracies`` the
    share of prompts whose chosen reward beats *every* rejected reward (Softmax-DPO's goal).
    """
    chosen_rewards = chosen_rewards.detach().float()
    rejected_rewards = rejected_rewards.detach().float()
    mask = torch.ones_like(rejected_rewards, dtype=torch.bool) if rejected_mask is None else rejected_mask.bool()
    n = mask.sum(-1).clamp(min=1)
    rej_mean = (rejected_rewards * mask).sum(-1) / n
    rej_max = rejected_rewards.masked_fill(~mask, float("-inf")).max(-1).values
    return {
        "rewards/chosen": chosen_rewards.mean(),
        "rewards/rejected": (rej_mean).mean(),
        "rewards/margins": (chosen_rewards - rej_mean).mean(),
        "rewards/accuracies": (chosen_rewards > rej_max).float().mean(),
    }


def sequence_logps(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Sum of next-token log-probs over the labelled (response) tokens of each sequence.

    Args:
        logits: ``[S, T, V]`` causal-LM logits; position ``t`` predicts token ``t + 1``.
        labels: ``[S, T]`` token ids, ``-100`` where the token is not part of the response.
    Returns:
        ``[S]`` float32 summed log-probabilities.
    """
    shift_logits = logits[:, :-1, :]
    shift_labels = labels[:, 1:]
    mask = shift_labels != IGNORE_INDEX
    # trl's selective_log_softmax avoids materialising the full [S, T, V] log-softmax.
    token_logps = selective_log_softmax(shift_logits.float(), shift_labels.masked_fill(~mask, 0))
    return (token_logps * mask).sum(-1)


def batched_logps(
    model: torch.nn.Module,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    labels: torch.Tensor,
    position_ids: torch.Tensor | None = None,
) -> torch.Tensor:
    """Response log-probs of a left-padded batch in ONE forward pass.

    Args:
        model: a causal LM (plain or peft-wrapped).
        input_ids, attention_mask, labels: ``[S, T]``, left-padded (every response ends at ``T - 1``).
        position_ids: ``[S, T]``; defaults to ``cumsum(attention_mask) - 1`` so that padding does not
            shift positions (the result then equals scoring each sequence alone).
    Returns:
        ``[S]`` summed response log-probs.
    """
    if position_ids is None:
        position_ids = (attention_mask.long().cumsum(-1) - 1).clamp(min=0)
    # Responses sit at the end of a left-padded batch, so only the last positions need logits: asking
    # the model for those alone skips a [S, T, V] tensor (large for 150k-token vocabularies).
    labelled = (labels != IGNORE_INDEX).any(0).nonzero()
    keep = int(labels.shape[1] - labelled.min()) + 1 if len(labelled) else 1
    keep = min(keep, labels.shape[1])
    kwargs = {"logits_to_keep": keep} if forward_accepts(model, "logits_to_keep") else {}
    logits = model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids, use_cache=False, **kwargs).logits
    return sequence_logps(logits, labels[:, -logits.shape[1]:])


