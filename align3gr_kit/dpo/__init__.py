"""Preference level: progressive Softmax-DPO with self-play (SP-DPO) and real feedback (RF-DPO).

Public API::

    softmax_dpo_loss(policy_chosen_logps [B], policy_rejected_logps [B, N], ref_chosen_logps [B],
                     ref_rejected_logps [B, N], beta, rejected_mask=None) -> loss [B]
    SoftmaxDPOCollator(tokenizer, max_length, share_prompt=True)   prompt + chosen + N rejected -> one batch
                                                  (one packed row per prompt, or 1 + N full sequences)
    SoftmaxDPOTrainer(model, args, beta, ref_model=None, **trainer_kwargs)   a transformers.Trainer
    NegativeSampler(item_codes, mode, item_embeddings)   Easy/Medium/Hard negatives
    build_sp_preferences(...) -> list[dict], build_rf_preferences(...) -> RFPreferences   preference data per stage
    run_progressive(policy, tokenizer, stages, cfg, out_dir, evaluate_fn) -> history
                                                  per round: freeze, regenerate beams, build pairs, train
                                                  (a fixed step budget), score pair margins, evaluate, save
    SelfPlay(cfg, inputs), RealFeedback(cfg, inputs, stage_run)   what SP-DPO and RF-DPO do differently
    run_dpo(cfg, stage="sp"|"rf", stage_run) -> dict          the CLI-level entry point (the recipe)
"""

from align3gr_kit.dpo.negatives import DIFFICULTIES, NegativeSampler, beam_candidates, prefix_grades, shared_prefix
from align3gr_kit.dpo.pipeline import RealFeedback, SelfPlay, rf_stage_names, run_dpo, sp_stage_names
from align3gr_kit.dpo.preferences import (
    RFPreferences,
    TooFewPreferences,
    build_rf_preferences,
    build_sp_preferences,
    sp_preference_stats,
    held_out_items,
    sample_prompts,
    sequential_prompts,
    training_items,
)
from align3gr_kit.dpo.progressive import StageSpec, run_progressive
from align3gr_kit.dpo.softmax_dpo import batched_logps, implicit_rewards, sequence_logps, softmax_dpo_loss
from align3gr_kit.dpo.trainer import (
    SoftmaxDPOCollator,
    SoftmaxDPOTrainer,
    make_reference,
    parameter_fingerprint,
    precompute_reference_logps,
)

__all__ = [
    "DIFFICULTIES",
    "NegativeSampler",
    "RFPreferences",
    "RealFeedback",
    "SelfPlay",
    "SoftmaxDPOCollator",
    "SoftmaxDPOTrainer",
    "StageSpec",
    "TooFewPreferences",
    "batched_logps",
    "beam_candidates",
    "build_rf_preferences",
    "build_sp_preferences",
    "sp_preference_stats",
    "held_out_items",
    "implicit_rewards",
    "make_reference",
    "parameter_fingerprint",
    "precompute_reference_logps",
    "prefix_grades",
    "rf_stage_names",
    "run_dpo",
    "run_progressive",
    "sample_prompts",
    "sequence_logps",
    "sequential_prompts",
    "shared_prefix",
    "softmax_dpo_loss",
    "sp_stage_names",
    "training_items",
]
