"""Stage 04: the backbone with SCID tokens, multi-task SFT, then Recall/NDCG on valid and test.

Works in one process or under ``torchrun`` / ``accelerate launch``
(:mod:`align3gr_kit.train.sft_main`): every rank trains on its shard of the batches, then every rank
evaluates its share of the decoding batches (:func:`align3gr_kit.evaluate.recommend`, gathered: the
metrics of one process); rank 0 alone saves the model and writes the files.
"""

from __future__ import annotations

from typing import Any

from align3gr_kit.config import RunConfig
from align3gr_kit.evaluate import evaluate, write_recommendations, write_target_ranks
from align3gr_kit.feedback.evaluation import optional_judge
from align3gr_kit.model.backbone import save_model
from align3gr_kit.stages.contract import StageRun, stage_dir
from align3gr_kit.stages.s03_sft_prompts import KEYWORDS
from align3gr_kit.train.artifacts import MODEL, write_metrics
from align3gr_kit.train.sft import build_sft_model, train_sft
from align3gr_kit.distributed import process_state
from align3gr_kit.utils import seed_everything

SPLITS = ("valid", "test")


def run(cfg: RunConfig, stage: StageRun, progress: bool = True, evaluate_splits: tuple[str, ...] = SPLITS) -> dict[str, Any]:
    """Train the SFT model of the run and evaluate it.

    Returns the flat metrics (``train_*``, ``valid_recall@10``...); also writes them, with the
    nested results, into the stage's ``metrics.json`` (:class:`align3gr_kit.train.artifacts.SFTArtifacts`),
    and every evaluated user's target rank and top-K items under the label ``SFT``
    (``target_ranks.json``, ``recommendations.json``: :mod:`align3gr_kit.evaluate`).
    """
    state = process_state(cfg)
    seed_everything(cfg.seed)
    data, tok, prompts = stage.input("00_data"), stage.input("01_tokenize"), stage.input("03_sft_prompts")
    model, tokenizer = build_sft_model(cfg, data.dataset, tok.items, tok.users, prompts.tokenizer,
                                       keyword_cache=stage.dir / KEYWORDS, reuse_keywords=stage_dir(cfg, "03_sft_prompts") / KEYWORDS)
    # A killed SFT leaves checkpoints keyed by this stage's fingerprint; the re-run continues from them.
    res = train_sft(cfg, model, tokenizer, prompts.sft, stage.dir, checkpoint_dir=stage.checkpoint_dir)
    train = {k: res[k] for k in ("train_loss", "train_loss_steps", "first_loss", "last_loss", "steps", "world_size",
                                 "global_batch", "lr", "seconds", "resumed_from_step")}
    train["trainable"] = res["trainable"]["trainable"]
    # sft.fixed_task_a: the examples the one pass held (task A, all tasks), for the SFT table's row files
    train.update({k: res[k] for k in ("task_a_examples", "mix_examples") if res.get(k) is not None})
    # examples the optimiser saw, and whether sft.max_minutes ended it (the depth table's equal wall time)
    train.update({k: res[k] for k in ("examples_seen", "stopped_by_time") if res.get(k) is not None})
    flat = {f"train_{k}": v for k, v in train.items()}
    state.wait_for_everyone()
    model = res["model"]  # train_sft returns it without DDP/accelerate wrappers
    if state.is_main_process:
        save_model(model, tokenizer, stage.dir / MODEL, tok.items, tok.users)
    use_user = cfg.prompts.user_scid_in_prompt and tok.users is not None
    judge = optional_judge(data.dataset, cfg.seed) if evaluate_splits else None  # what users like
    out: dict[str, Any] = {"train": train}
    ranks: dict[str, list[int]] = {}
    recommendations: dict[str, dict] = {}
    for name in evaluate_splits:
        out[name] = evaluate(model, tokenizer, tok.items, tok.users, data.split.samples(name), cfg.decode, use_user,
                             max_length=cfg.sft.max_length, progress=progress and state.is_main_process, judge=judge,
                             precision=cfg.model.dtype, keep_ranks=True)
        ranks[name] = out[name].pop("target_ranks")
        recommendations[name] = out[name].pop("recommendations")
        flat.update({f"{name}_{k}": v for k, v in out[name].items()})
    out["metrics"] = flat
    if state.is_main_process:
        write_metrics(stage.dir, out)
        if ranks:
            write_target_ranks(stage.dir, {"SFT": ranks})
            write_recommendations(stage.dir, {"SFT": recommendations})
    return flat
