"""``run_dpo``: the SP-DPO (05_sp_dpo) and RF-DPO (06_rf_dpo) stages of a run, end to end.

Inputs come from the stage's :class:`align3gr_kit.stages.contract.StageRun` (nobody pastes paths):
the dataset and split (00), the SCID tables and, for ``dpo.sp_difficulty: similarity``, the SC item
embeddings (01), and the starting model: SP from the SFT model (04); RF from the last SP stage's
model (05), or from the SFT model when ``dpo.sp_stages`` is empty. What it writes is
:class:`align3gr_kit.dpo.artifacts.DPOArtifacts` (see :mod:`align3gr_kit.dpo.progressive`).

Under ``accelerate launch`` / ``torchrun`` every process builds the same preference data from work
done once: the self-play beams are shared between the ranks by whole decoding batches and gathered
(:func:`align3gr_kit.distributed.sharded_map`), the policy's per-row log-probs that rank catalogue
items are computed by the main process and broadcast (:func:`align3gr_kit.distributed.from_main`), and
the catalogue fill is seeded; :func:`align3gr_kit.dpo.progressive.run_progressive` then checks that the
ranks' examples agree. The Trainer shards the training batches, the ranks share the evaluation, and
the main process alone writes files.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from align3gr_kit.config import DPOConfig, RunConfig
from align3gr_kit.dpo.negatives import DIFFICULTIES, NegativeSampler, beam_candidates, response_logps
from align3gr_kit.dpo.preferences import (
    RF_REJECTED_LEVELS,
    TooFewPreferences,
    build_rf_preferences,
    build_sp_preferences,
    liked_next_item,
    sample_prompts,
    sequential_prompts,
    sp_preference_stats,
)
from align3gr_kit.distributed import from_main, sharded_map
from align3gr_kit.dpo.progressive import StageSpec, run_progressive
from align3gr_kit.feedback.evaluation import optional_judge
from align3gr_kit.scid import ScidTable
from align3gr_kit.train.artifacts import MODEL
from align3gr_kit.utils import process_state, seed_everything

STAGE_FOLDERS = {"sp": "05_sp_dpo", "rf": "06_rf_dpo"}


def sp_stage_names(dpo: DPOConfig) -> list[str]:
    """SP-DPO stages: ``dpo.sp_stages`` (progressive), ``["all"]`` (progressive off), or one stage
    ``["generated"]`` / ``["random"]`` for the Softmax-DPO baselines (``dpo.sp_negatives``)."""
    if not dpo.sp_stages:
        return []
    if dpo.sp_negatives not in ("selfplay", "generated", "random"):
        raise ValueError(f"dpo.sp_negatives must be 'selfplay', 'generated' or 'random', got {dpo.sp_negatives!r}")
    if dpo.sp_negatives in ("generated", "random"):
        return [dpo.sp_negatives]
    if not dpo.sp_progressive:
        return ["all"]
    bad = [s for s in dpo.sp_stages if s not in DIFFICULTIES]
    if bad:
        raise ValueError(f"dpo.sp_stages: unknown stage(s) {bad}; valid: {list(DIFFICULTIES)}")
    return list(dpo.sp_stages)


def rf_stage_names(dpo: DPOConfig) -> list[str]:
    """RF-DPO stages: ``dpo.rf_stages`` (progressive) or ``["all"]`` (``rf_progressive`` off)."""
    if not dpo.rf_stages:
        return []
    if not dpo.rf_progressive:
        return ["all"]
    bad = [s for s in dpo.rf_stages if s not in ("easy", "hard")]
    if bad:
        raise ValueError(f"dpo.rf_stages: unknown stage(s) {bad}; valid: ['easy', 'hard']")
    return list(dpo.rf_stages)


def make_evaluator(cfg: RunConfig, tokenizer, item_scids: ScidTable, user_scids: ScidTable | None, split,
                   splits: tuple[str, ...] = ("valid", "test"), judge=None,
                   ranks_log: list | None = None) -> Callable[[torch.nn.Module], dict]:
    """``model -> {split: {recall@5, ..., liked_share@10 with a judge}}`` through
    :func:`align3gr_kit.evaluate.evaluate`; with ``ranks_log``, each call also appends
    ``{split: per-user target ranks}`` to it (in call order)."""
    from align3gr_kit.evaluate import evaluate

    use_user = cfg.prompts.user_scid_in_prompt and user_scids is not None

    def evaluate_fn(model: torch.nn.Module) -> dict:
        out = {s: evaluate(model, tokenizer, item_scids, user_scids, split.samples(s), cfg.decode, use_user,
                           max_length=cfg.sft.max_length, judge=judge, precision=cfg.model.dtype,
                           keep_ranks=ranks_log is not None) for s in splits}
        if ranks_log is not None:
            ranks_log.append({s: out[s].pop("target_ranks") for s in splits})
        return out

    return evaluate_fn


def run_dpo(
    cfg: RunConfig,
    stage: str,
    stage_run,
    evaluate_fn: Callable[[torch.nn.Module], dict] | None | str = "default",
) -> dict[str, Any]:
    """Run the SP-DPO (``stage="sp"``) or RF-DPO (``"rf"``) stages of ``cfg``'s run into ``stage_run.dir``.

    Args:
        cfg: the run config (``dpo``, ``decode``, ``prompts``, ``model`` sections are used).
        stage: ``sp`` (05_sp_dpo) or ``rf`` (06_rf_dpo).
        stage_run: the stage's :class:`~align3gr_kit.stages.contract.StageRun` (inputs, folder).
        evaluate_fn: ``model -> metrics``; ``"default"`` = Recall/NDCG on valid and test through
            :mod:`align3gr_kit.evaluate`; None = no evaluation.
    Returns:
        ``{"stage", "stages", "start_model", "start", "history" (per-stage entries), "metrics" (flat, for
        the manifest), "final_model"}``.
    """
    if stage not in STAGE_FOLDERS:
        raise ValueError(f"stage must be 'sp' or 'rf', got {stage!r}")
    process_state(cfg)  # first, so that the process group (when this is a launch) has the config's timeout
    seed_everything(cfg.seed)
    data, tok = stage_run.input("00_data"), stage_run.input("01_tokenize")
    dataset, split, item_scids, user_scids = data.dataset, data.split, tok.items, tok.users
    prompt_users = user_scids if cfg.prompts.user_scid_in_prompt else None

    names = sp_stage_names(cfg.dpo) if stage == "sp" else rf_stage_names(cfg.dpo)
    if not names:
        raise ValueError(f"no {stage.upper()}-DPO stages configured (dpo.{stage}_stages is empty); skip this stage instead")
    if stage == "rf":  # fail early, before loading a model, when the dataset cannot be graded
        from align3gr_kit.dpo.preferences import held_out_items
        from align3gr_kit.feedback import RatingsOracle, SimulatorOracle, save_simulator_report, training_oracle

        observed = RatingsOracle(dataset)  # logged training ratings: was the next item liked?
        oracle = training_oracle(cfg.dpo.rf_oracle, dataset, seed=cfg.seed)  # grades the shown items
        held_out = held_out_items(split)
        rf_stats: dict[str, dict] = {}
        simulator_metrics: dict[str, float] = {}
        if isinstance(oracle, SimulatorOracle) and process_state().is_main_process:
            heldout = save_simulator_report(oracle, dataset, stage_run.path("simulator")).set_index("model")
            simulator_metrics = {f"simulator/heldout/{m}/{k}": float(heldout.loc[m, k]) for m in heldout.index
                                 for k in ("rmse", "level_accuracy", "level_macro_f1")}
    start_dir = _start_model_dir(cfg, stage_run, stage)
    from align3gr_kit.model import apply_lora, load_model, prompt_encoder, save_model

    policy, tokenizer, model_items, _ = load_model(start_dir, cfg.model.dtype, cfg.model.trust_remote_code)
    if not np.array_equal(model_items.codes, item_scids.codes):
        raise ValueError(f"{start_dir}: the model was trained with other item SCIDs than stage 01_tokenize's; "
                         "re-run the stages after 01_tokenize")
    # One prompt encoding for SFT, evaluation and DPO: BOS + text, room left for the SCID and EOS.
    encode = prompt_encoder(tokenizer, cfg.sft.max_length - item_scids.levels - 1)
    n_prompts = cfg.dpo.max_prompts

    def proposals(model: torch.nn.Module, prompts: list[str], width: int) -> np.ndarray:
        def beams(part: list[str]) -> np.ndarray:
            return beam_candidates(model, tokenizer, part, item_scids, beam_width=width,
                                   batch_size=cfg.decode.batch_size, encode_prompt=encode, precision=cfg.model.dtype)

        rows = sharded_map(prompts, cfg.decode.batch_size, beams)  # each rank its batches; all get every row
        return np.stack(rows) if rows else np.full((0, width), -1, dtype=np.int64)

    if stage == "sp":
        embeddings = tok.item_sc if cfg.dpo.sp_difficulty == "similarity" else None
        # The last item level only resolves collisions (append_unique_level): the RQ-VAE's own levels
        # are the semantic ones, and only they may make a negative Medium or Hard.
        semantic = tok.item_raw.shape[1] if tok.item_raw is not None else cfg.tokenizer.levels
        sampler = NegativeSampler(item_scids.codes, cfg.dpo.sp_difficulty, embeddings, semantic_levels=semantic)
        sp_stats: dict[str, dict] = {}
        # the self-play beam: wide enough for each difficulty to find its negatives, capped by the catalogue
        sp_width = min(cfg.dpo.sp_beam_width, item_scids.n)

        def sp_spec(name: str) -> StageSpec:
            def build(ref: torch.nn.Module) -> list[dict]:
                samples = sample_prompts(split.train, n_prompts, cfg.seed, "sp/" + name)
                prompts = sequential_prompts(samples, item_scids, prompt_users)
                cands = None if name == "random" else proposals(ref, prompts, sp_width)

                def rank(row: int, items: list[int]) -> np.ndarray:
                    # called at the same rows on every rank (the beams are the same): the main process
                    # scores, every rank gets its numbers, so the negatives picked cannot differ
                    return from_main(lambda: response_logps(ref, tokenizer, prompts[row], items, item_scids, encode,
                                                            cfg.sft.max_length, cfg.decode.batch_size,
                                                            cfg.model.dtype))

                examples = build_sp_preferences(samples, prompts, item_scids, sampler, name, cfg.dpo.n_rejected,
                                                cfg.seed, cands, rank, cfg.dpo.sp_rank_pool)
                sp_stats[name] = st = sp_preference_stats(examples, len(samples))
                print(f"SP-DPO {name}: {st['rejected']} negatives for {st['examples']} prompts: "
                      f"{st['from_beams']} from the policy's own beam (width {sp_width}), {st['from_ranked']} "
                      f"the policy's best-scored of the difficulty, {st['from_catalogue']} uniform catalogue fill; "
                      f"from the policy {st['from_policy_share']:.1%}")
                return examples
            return StageSpec(name, build)

        specs = [sp_spec(n) for n in names]
    else:
        # Only samples whose next item is liked can give an RF example (the chosen response): the
        # stage's prompts are drawn among them, so no beam search is spent on prompts that are skipped.
        liked = liked_next_item(split.train, observed)
        if not liked.any():
            raise TooFewPreferences(f"RF-DPO: none of the {len(liked)} training samples has a next item whose "
                                    "logged rating is liked; RF-DPO needs liked next items (chosen responses)")

        def rf_spec(name: str) -> StageSpec:
            def build(ref: torch.nn.Module) -> list[dict]:
                samples = sample_prompts(split.train, n_prompts, cfg.seed, "rf/" + name, eligible=liked)
                prompts = sequential_prompts(samples, item_scids, prompt_users)
                prefs = build_rf_preferences(samples, prompts, item_scids, oracle, name, cfg.dpo.n_rejected, cfg.seed,
                                             proposals(ref, prompts, cfg.decode.beam_width), observed, held_out)
                prefs.stats.update({"pool": int(liked.sum()), "pool_share": round(float(liked.mean()), 4)})
                print(f"RF-DPO {name}: {len(samples)} prompts drawn among the {int(liked.sum())} training samples "
                      f"whose next item is liked ({liked.mean():.1%} of {len(liked)}); {prefs.stats['examples']} "
                      f"with a shown item graded {'/'.join(RF_REJECTED_LEVELS[name])}")
                rf_stats[name] = prefs.stats
                return prefs.examples
            return StageSpec(name, build)

        specs = [rf_spec(n) for n in names]

    start_metrics, ranks_log = None, None
    if evaluate_fn == "default":
        ranks_log = []
        evaluate_fn = make_evaluator(cfg, tokenizer, item_scids, prompt_users, split, judge=optional_judge(dataset, cfg.seed),
                                     ranks_log=ranks_log)
        start_metrics = upstream_metrics(stage_run, stage, cfg)
    out_dir = stage_run.dir
    history = run_progressive(
        policy, tokenizer, specs, cfg.dpo, out_dir, evaluate_fn=evaluate_fn, seed=cfg.seed,
        encode_prompt=encode, max_length=cfg.sft.max_length,
        wrap_fn=(lambda m: apply_lora(m, cfg.model, dropout=0.0)) if cfg.model.lora else None,
        save_fn=lambda m, tok_, folder: save_model(m, tok_, folder, item_scids, user_scids),
        precision=cfg.model.dtype,
        start_metrics=start_metrics,
        distributed=cfg.distributed,
    )
    history.pop("policy")
    _link_final_model(out_dir, names[-1])
    if ranks_log and len(ranks_log) >= len(names) and process_state().is_main_process:
        # run_progressive evaluates the start model first when it has no upstream metrics, then every
        # stage's policy in order: the last len(names) entries are the stages'
        from align3gr_kit.evaluate import write_target_ranks

        write_target_ranks(out_dir, dict(zip(names, ranks_log[-len(names):])))
    result = {
        "stage": stage,
        "stages": names,
        "start_model": str(start_dir),
        "start": history["start"],
        "history": history["stages"],
        "final_model": history["final_model"],
        "metrics": summary_metrics(history),
    }
    if stage == "sp":
        result["preference_stats"] = sp_stats
        result["metrics"].update({f"{n}/preferences/{k}": float(v) for n, st in sp_stats.items() for k, v in st.items()})
    if stage == "rf":
        result["preference_stats"] = rf_stats
        result["metrics"].update({f"{n}/preferences/{k}": float(v) for n, st in rf_stats.items() for k, v in st.items()})
        result["metrics"].update(simulator_metrics)
    return result


def summary_metrics(history: dict[str, Any]) -> dict[str, float]:
    """Flat ``<label>/<split>/<metric>`` numbers (label: ``start``, each stage, ``final``) plus
    ``<stage>/train/<statistic>`` and ``<stage>/run/<world_size|global_batch|lr|steps>`` (how it trained:
    the global batch is per-device batch x grad_accum x world size), for the manifest."""
    out: dict[str, float] = {}
    rows = [("start", history.get("start"))] + [(e["stage"], e.get("metrics")) for e in history["stages"]]
    if history["stages"]:
        rows.append(("final", history["stages"][-1].get("metrics")))
    for label, metrics in rows:
        for split_name, values in (metrics or {}).items():
            for k, v in values.items():
                out[f"{label}/{split_name}/{k}"] = round(float(v), 6)
    for e in history["stages"]:
        for k, v in e.get("train", {}).items():
            out[f"{e['stage']}/train/{k}"] = round(float(v), 6)
        for k in ("world_size", "global_batch", "lr", "steps"):
            if k in e:
                out[f"{e['stage']}/run/{k}"] = float(e[k])
    return out


def upstream_metrics(stage_run, stage: str, cfg: RunConfig, splits: tuple[str, ...] = ("valid", "test")) -> dict | None:
    """The starting model's metrics as the upstream stage measured them, or None to measure again.

    The starting model is the upstream stage's final model, and the upstream stage evaluated it with
    the same evaluator (its fingerprint covers ``decode``; the judge and the splits are the run's), so
    evaluating it again here would repeat minutes of beam search for the same numbers.
    """
    if stage == "sp" or not sp_stage_names(cfg.dpo):
        measured = stage_run.input("04_sft").metrics
    else:
        stages = stage_run.input("05_sp_dpo").history.get("stages") or [{}]
        measured = stages[-1].get("metrics") or {}
    if not all(isinstance(measured.get(s), dict) for s in splits):
        return None
    return {s: measured[s] for s in splits}


def _start_model_dir(cfg: RunConfig, stage_run, stage: str) -> Path:
    if stage == "sp" or not sp_stage_names(cfg.dpo):
        return stage_run.input("04_sft").model_dir
    return stage_run.input("05_sp_dpo").final_model_dir


def _link_final_model(stage_dir: Path, last: str) -> None:
    """``<stage folder>/model`` -> ``<last stage>/model``, so tools that read ``<stage>/model``
    (``evaluate --model-stage``) find the stage's final policy without a second copy."""

    if not process_state().is_main_process:
        return
    link = stage_dir / MODEL
    if link.is_symlink():
        link.unlink()
    if not link.exists():
        link.symlink_to(Path(last) / MODEL, target_is_directory=True)
