"""``run_dpo``: the SP-DPO (05_sp_dpo) and RF-DPO (06_rf_dpo) stages of a run, as one recipe.

::

    inputs  = DPOInputs.load(cfg, stage_run)                  dataset, split (00), SCID tables (01)
    method  = SelfPlay(cfg, inputs) | RealFeedback(...)       what differs between SP and RF (below)
    policy  = the starting model (method.upstream's final model)
    for stage in method.stages:                               (run_progressive): k rounds, k = len(dpo.sp_stages)
        reference = frozen copy of policy                     (len(dpo.rf_stages) for RF) with or without progression
        samples, prompts = method.prompts(stage)              dpo.max_prompts per round
        shown     = decoder.generate(reference, prompts, method.beam_width(stage))   regenerated every round
        pairs     = method.pairs(stage, samples, prompts, shown, score=reference's SCID log-probs)
        policy    = Softmax-DPO training of policy on pairs against reference (LoRA merged), the same
                    steps per round for every variant (counted over the prompts)
        metrics   = evaluate(policy)                          Recall/NDCG (+ liked share by the judge) on valid/test
        save        <stage>/model, preferences.jsonl, pair_margins.json, results.json; history.json

Progression changes only which difficulty each round uses: progressive SP rounds are
``easy``/``medium``/``hard``; without progression they are ``all-1``..``all-k`` (every difficulty each
round), and the Softmax-DPO baseline's are ``generated-1``..``generated-k``; RF's are ``easy``/``hard``
or ``all-1``..``all-k`` (disliked and neutral together).

Where SP and RF differ, and nowhere else:

============  =========================================  ==========================================
              :class:`SelfPlay` (05_sp_dpo)              :class:`RealFeedback` (06_rf_dpo)
============  =========================================  ==========================================
stages        easy/medium/hard (``dpo.sp_stages``),      easy/hard (``dpo.rf_stages``), or ``all``
              or ``all`` / ``random`` / ``generated``
prompts       any training sample                        any training sample
shown         beam of ``dpo.sp_beam_width`` (none for    beam of ``decode.beam_width``
              ``random``)
chosen        the next item                              a shown item the oracle grades liked
                                                         (``dpo.rf_chosen``; never a held-out item)
rejected      shown items of the difficulty by SCID      shown items the oracle (``dpo.rf_oracle``)
              prefix overlap, then the reference's       grades disliked (easy) / neutral (hard)
              best-scored items of it, then catalogue
              (never the user's training items)          (never the chosen or the user's training items)
starts from   04_sft                                     05_sp_dpo's last stage (04_sft without SP)
============  =========================================  ==========================================

What it writes is :class:`align3gr_kit.dpo.artifacts.DPOArtifacts` (see
:mod:`align3gr_kit.dpo.progressive`).

Under ``accelerate launch`` / ``torchrun`` every process builds the same preference data from work
done once: the beams are shared between the ranks by whole decoding batches and gathered
(:func:`align3gr_kit.distributed.sharded_map`), the reference's per-row log-probs that rank catalogue
items are computed by the main process and broadcast (:func:`align3gr_kit.distributed.from_main`), and
the catalogue fill is seeded; :func:`align3gr_kit.dpo.progressive.run_progressive` then checks that the
ranks' examples agree. The Trainer shards the training batches, the ranks share the evaluation, and
the main process alone writes files.

Imports of the kit: ``config``, ``distributed``, ``evaluate``, ``feedback``, ``model``, ``scid``,
``train.artifacts``, ``utils`` and ``dpo.negatives``/``preferences``/``progressive``; only
``dpo/__init__`` and the stages 05/06 import this module.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pandas as pd
import torch

from align3gr_kit.config import DPOConfig, RunConfig
from align3gr_kit.distributed import from_main, process_state, sharded_map
from align3gr_kit.dpo.negatives import DIFFICULTIES, NegativeSampler, beam_candidates, response_logps_batch
from align3gr_kit.dpo.preferences import (
    RF_REJECTED_LEVELS,
    build_rf_preferences,
    build_sp_preferences,
    held_out_items,
    sample_prompts,
    sequential_prompts,
    sp_preference_stats,
    training_items,
)
from align3gr_kit.dpo.progressive import StageSpec, run_progressive
from align3gr_kit.evaluate import evaluate, write_target_ranks
from align3gr_kit.feedback.evaluation import optional_judge
from align3gr_kit.model import apply_lora, load_model, prompt_encoder, save_model
from align3gr_kit.scid import ScidTable
from align3gr_kit.train.artifacts import MODEL
from align3gr_kit.utils import seed_everything

STAGE_FOLDERS = {"sp": "05_sp_dpo", "rf": "06_rf_dpo"}

#: ``[(sample row, item ids), ...] -> [[n] log-probabilities per query]`` of those items' SCIDs under
#: the stage's reference, after each row's prompt, in one call.
ScoreFn = Callable[[list[tuple[int, list[int]]]], list[np.ndarray]]


def _rounds(kind: str, k: int) -> list[str]:
    """``k`` rounds of one mixed ``kind``: ``[kind]`` for one, else ``kind-1`` .. ``kind-k``."""
    return [kind] if k == 1 else [f"{kind}-{r}" for r in range(1, k + 1)]


def stage_difficulty(name: str) -> str:
    """The difficulty (or mixed kind) a round trains on: ``all-2`` -> ``all``, ``easy`` -> ``easy``."""
    head, _, tail = name.rpartition("-")
    return head if head and tail.isdigit() else name


def sp_stage_names(dpo: DPOConfig) -> list[str]:
    """SP-DPO rounds: ``dpo.sp_stages`` (progressive); without progression as many rounds of ``all``
    (every difficulty each round, :func:`_rounds`), or of ``generated`` / ``random`` for the
    Softmax-DPO baselines (``dpo.sp_negatives``), so every variant regenerates and trains as often."""
    if not dpo.sp_stages:
        return []
    if dpo.sp_negatives not in ("selfplay", "generated", "random"):
        raise ValueError(f"dpo.sp_negatives must be 'selfplay', 'generated' or 'random', got {dpo.sp_negatives!r}")
    bad = [s for s in dpo.sp_stages if s not in DIFFICULTIES]
    if bad:
        raise ValueError(f"dpo.sp_stages: unknown stage(s) {bad}; valid: {list(DIFFICULTIES)}")
    if dpo.sp_negatives in ("generated", "random"):
        return _rounds(dpo.sp_negatives, len(dpo.sp_stages))
    if not dpo.sp_progressive:
        return _rounds("all", len(dpo.sp_stages))
    return list(dpo.sp_stages)


def rf_stage_names(dpo: DPOConfig) -> list[str]:
    """RF-DPO rounds: ``dpo.rf_stages`` (progressive) or as many rounds of ``all`` (``rf_progressive`` off)."""
    if not dpo.rf_stages:
        return []
    bad = [s for s in dpo.rf_stages if s not in ("easy", "hard")]
    if bad:
        raise ValueError(f"dpo.rf_stages: unknown stage(s) {bad}; valid: ['easy', 'hard']")
    if not dpo.rf_progressive:
        return _rounds("all", len(dpo.rf_stages))
    return list(dpo.rf_stages)


def _configured(names: list[str], kind: str) -> list[str]:
    if not names:
        raise ValueError(f"no {kind.upper()}-DPO stages configured (dpo.{kind}_stages is empty); skip this stage instead")
    return names


@dataclass
class DPOInputs:
    """What both DPO stages read upstream: ``dataset`` and ``split`` (00_data), ``tokenize`` (the
    :class:`~align3gr_kit.tokenizer.artifacts.TokenizeArtifacts` of 01_tokenize: ``items``, ``users``,
    SC embeddings), and ``prompt_users``: the user SCIDs when prompts carry them, else None."""

    dataset: Any
    split: Any
    tokenize: Any
    prompt_users: ScidTable | None

    @classmethod
    def load(cls, cfg: RunConfig, stage_run) -> "DPOInputs":
        """From the stage's :class:`~align3gr_kit.stages.contract.StageRun` (nobody pastes paths)."""
        data, tok = stage_run.input("00_data"), stage_run.input("01_tokenize")
        return cls(data.dataset, data.split, tok, tok.users if cfg.prompts.user_scid_in_prompt else None)

    @property
    def items(self) -> ScidTable:
        return self.tokenize.items

    def prompts(self, samples: pd.DataFrame) -> list[str]:
        """The task-A prompt of each sample (the same prompts SFT and evaluation use)."""
        return sequential_prompts(samples, self.items, self.prompt_users)


class Decoder:
    """How a stage asks a model for items, with the run's prompt encoding (the one SFT and evaluation
    use: BOS + text, room left for the SCID and EOS)."""

    def __init__(self, cfg: RunConfig, tokenizer, items: ScidTable):
        self.cfg, self.tokenizer, self.items = cfg, tokenizer, items
        self.encode = prompt_encoder(tokenizer, cfg.sft.max_length - items.levels - 1)

    def generate(self, model: torch.nn.Module, prompts: list[str], width: int) -> np.ndarray:
        """``[len(prompts), width]`` item ids of ``model``'s constrained beam per prompt (``-1`` pad):
        each rank decodes its share of the batches, every rank gets every row."""
        def beams(part: list[str]) -> np.ndarray:
            return beam_candidates(model, self.tokenizer, part, self.items, beam_width=width,
                                   batch_size=self.cfg.decode.batch_size, encode_prompt=self.encode,
                                   precision=self.cfg.model.dtype)

        rows = sharded_map(prompts, self.cfg.decode.batch_size, beams)
        return np.stack(rows) if rows else np.full((0, width), -1, dtype=np.int64)

    def score(self, model: torch.nn.Module, queries: list[tuple[str, list[int]]]) -> list[np.ndarray]:
        """``[len(items)]`` log-probabilities of the items' SCIDs after the prompt, per ``(prompt, items)``
        query, in shared forward passes (:func:`~align3gr_kit.dpo.negatives.response_logps_batch`). Called
        with the same queries on every rank: the main process scores and broadcasts once, so choices
        made from them cannot differ between the ranks."""
        cfg = self.cfg
        return from_main(lambda: response_logps_batch(model, self.tokenizer, queries, self.items, self.encode,
                                                      cfg.sft.max_length, cfg.decode.batch_size, cfg.model.dtype))


class SelfPlay:
    """SP-DPO (05_sp_dpo): chosen = the next item; rejected = the reference's own beam items of the
    stage's difficulty (shared SCID prefix, or SC similarity with ``dpo.sp_difficulty: similarity``),
    then the reference's best-scored items of that difficulty, then a uniform catalogue fill.

    ``stages``: :func:`sp_stage_names`; ``upstream``: the stage whose model it starts from (04_sft);
    ``stats``: per trained stage, where its negatives came from (:func:`sp_preference_stats`).
    """

    def __init__(self, cfg: RunConfig, inputs: DPOInputs):
        self.cfg, self.inputs = cfg, inputs
        self.stages = _configured(sp_stage_names(cfg.dpo), "sp")
        self.upstream = "04_sft"
        tok = inputs.tokenize
        embeddings = tok.item_sc if cfg.dpo.sp_difficulty == "similarity" else None
        # The last item level only resolves collisions (append_unique_level): the RQ-VAE's own levels
        # are the semantic ones, and only they may make a negative Medium or Hard.
        semantic = tok.item_raw.shape[1] if tok.item_raw is not None else cfg.tokenizer.levels
        self.sampler = NegativeSampler(inputs.items.codes, cfg.dpo.sp_difficulty, embeddings, semantic_levels=semantic)
        # wide enough for each difficulty to find its negatives, capped by the catalogue
        self.width = min(cfg.dpo.sp_beam_width, inputs.items.n)
        self.train_items = training_items(inputs.split)  # never a rejected response
        self.stats: dict[str, dict] = {}

    def samples(self, stage: str) -> pd.DataFrame:
        """``dpo.max_prompts`` training samples drawn for the round (seeded by its name)."""
        return sample_prompts(self.inputs.split.train, self.cfg.dpo.max_prompts, self.cfg.seed, "sp/" + stage)

    def prompts(self, stage: str) -> tuple[pd.DataFrame, list[str]]:
        """The round's samples and their prompts."""
        samples = self.samples(stage)
        return samples, self.inputs.prompts(samples)

    def beam_width(self, stage: str) -> int | None:
        """The self-play beam's width; None for ``random`` (its negatives are not the policy's)."""
        return None if stage_difficulty(stage) == "random" else self.width

    def pairs(self, stage: str, samples: pd.DataFrame, prompts: list[str], shown: np.ndarray | None,
              score: ScoreFn) -> list[dict]:
        """The stage's examples (:func:`~align3gr_kit.dpo.preferences.build_sp_preferences`, at the
        round's difficulty, never a training item of the user); records and prints where the negatives
        came from."""
        dpo = self.cfg.dpo
        examples = build_sp_preferences(samples, prompts, self.inputs.items, self.sampler, stage_difficulty(stage),
                                        dpo.n_rejected, self.cfg.seed, shown, score, dpo.sp_rank_pool,
                                        banned=self.train_items)
        self.stats[stage] = st = sp_preference_stats(examples, len(samples))
        print(f"SP-DPO {stage}: {st['rejected']} negatives for {st['examples']} prompts: "
              f"{st['from_beams']} from the policy's own beam (width {self.width}), {st['from_ranked']} "
              f"the policy's best-scored of the difficulty, {st['from_catalogue']} uniform catalogue fill; "
              f"from the policy {st['from_policy_share']:.1%}")
        return examples

    def metrics(self) -> dict[str, float]:
        """``<stage>/preferences/<statistic>`` for the manifest."""
        return preference_metrics(self.stats)

    def entry(self, stage: str) -> dict[str, Any]:
        """Nothing beyond the round's statistics (SP-DPO grades no shown item)."""
        return {}


class RealFeedback:
    """RF-DPO (06_rf_dpo): the reference's beam items are shown to the user and graded by an oracle
    (``dpo.rf_oracle``); chosen = a shown item graded liked (``dpo.rf_chosen``: the logged next item
    when shown and liked, else the best-graded liked one); rejected = shown items graded at the round's
    level (easy: disliked, hard: neutral), never the chosen item or the user's training items.

    Built before the model is loaded, so that a dataset that cannot be graded fails first. With a
    simulator oracle, the main process writes its held-out report to ``<stage folder>/simulator``.
    ``judge``: the evaluation judge (:func:`~align3gr_kit.feedback.evaluation.optional_judge`), None
    where the data has none; each round records how the oracle and the judge agree on the items shown.

    ``stages``: :func:`rf_stage_names`; ``upstream``: the stage whose model it starts from (05_sp_dpo,
    or 04_sft when no SP-DPO stage is configured); ``stats``: per trained stage, the counts of
    :class:`~align3gr_kit.dpo.preferences.RFPreferences` and the oracle-judge agreement.
    """

    def __init__(self, cfg: RunConfig, inputs: DPOInputs, stage_run, judge=None):
        # looked up at call time, from the package: tests stand another oracle in for training_oracle
        from align3gr_kit.feedback import SimulatorOracle, save_simulator_report, training_oracle

        self.cfg, self.inputs, self.judge = cfg, inputs, judge
        self.stages = _configured(rf_stage_names(cfg.dpo), "rf")  # before the oracle: it may take minutes
        self.upstream = "05_sp_dpo" if sp_stage_names(cfg.dpo) else "04_sft"
        dataset = inputs.dataset
        self.oracle = training_oracle(cfg.dpo.rf_oracle, dataset, seed=cfg.seed)  # grades the shown items
        self.train_items = training_items(inputs.split)
        self.held_out = held_out_items(inputs.split)  # never chosen
        self.stats: dict[str, dict] = {}
        self.simulator_metrics: dict[str, float] = {}
        if isinstance(self.oracle, SimulatorOracle) and process_state().is_main_process:
            heldout = save_simulator_report(self.oracle, dataset, stage_run.path("simulator")).set_index("model")
            self.simulator_metrics = {f"simulator/heldout/{m}/{k}": float(heldout.loc[m, k]) for m in heldout.index
                                      for k in ("rmse", "level_accuracy", "level_macro_f1")}

    def samples(self, stage: str) -> pd.DataFrame:
        """``dpo.max_prompts`` training samples drawn for the round (seeded by its name)."""
        return sample_prompts(self.inputs.split.train, self.cfg.dpo.max_prompts, self.cfg.seed, "rf/" + stage)

    def prompts(self, stage: str) -> tuple[pd.DataFrame, list[str]]:
        """The round's samples and their prompts."""
        samples = self.samples(stage)
        return samples, self.inputs.prompts(samples)

    def beam_width(self, stage: str) -> int:
        """The items shown: as many as the evaluation recommends (``decode.beam_width``)."""
        return self.cfg.decode.beam_width

    def pairs(self, stage: str, samples: pd.DataFrame, prompts: list[str], shown: np.ndarray,
              score: ScoreFn) -> list[dict]:
        """The stage's examples (:func:`~align3gr_kit.dpo.preferences.build_rf_preferences`; ``score``
        is not used: the oracle grades, the policy does not rank); records and prints the counts and the
        oracle's agreement with the judge on the shown items."""
        from align3gr_kit.feedback import agreement

        level = stage_difficulty(stage)
        prefs = build_rf_preferences(samples, prompts, self.inputs.items, self.oracle, level, self.cfg.dpo.n_rejected,
                                     self.cfg.seed, shown, self.train_items, self.held_out, self.cfg.dpo.rf_chosen)
        st = dict(prefs.stats)
        if self.judge is not None and prefs.shown:
            users, items = zip(*prefs.shown)
            agree = agreement(self.oracle, self.judge, users, items)
            st.update({"judge_agreement": agree["accuracy"], "judge_kappa": agree["kappa"],
                       "judge_pairs": agree["pairs"]})
        print(f"RF-DPO {stage}: {len(samples)} prompts, {st['examples']} with a shown item graded liked "
              f"(the logged next item in {st['chosen_next']}) and one graded {'/'.join(RF_REJECTED_LEVELS[level])}"
              + (f"; oracle and judge agree on {st['judge_agreement']:.1%} of the {st['judge_pairs']} shown items "
                 f"(kappa {st['judge_kappa']:.3f})" if "judge_kappa" in st else ""))
        self.stats[stage] = st
        return prefs.examples

    def metrics(self) -> dict[str, float]:
        """``<stage>/preferences/<statistic>`` and the simulator's held-out scores, for the manifest."""
        return {**preference_metrics(self.stats), **self.simulator_metrics}

    def entry(self, stage: str) -> dict[str, Any]:
        """The round's oracle-judge agreement on the items it showed, for its history entry."""
        st = self.stats.get(stage, {})
        return {k: st[k] for k in ("judge_agreement", "judge_kappa", "judge_pairs") if k in st}


Method = SelfPlay | RealFeedback


def stage_pairs(method: Method, stage: str, decoder: Decoder, reference: torch.nn.Module) -> list[dict]:
    """One round's preference pairs from its frozen reference (the current policy): prompts -> shown
    items regenerated by it -> pairs."""
    samples, prompts = method.prompts(stage)
    width = method.beam_width(stage)
    shown = decoder.generate(reference, prompts, width) if width is not None else None
    return method.pairs(stage, samples, prompts, shown,
                        lambda queries: decoder.score(reference, [(prompts[row], items) for row, items in queries]))


def stage_specs(method: Method, decoder: Decoder) -> list[StageSpec]:
    """One :class:`~align3gr_kit.dpo.progressive.StageSpec` per round of ``method``: its pairs, its
    prompt budget (the prompts drawn, whatever number of examples they give), the round's place and
    difficulty, and the method's entry statistics (RF: the oracle-judge agreement)."""
    return [StageSpec(name, partial(stage_pairs, method, name, decoder), prompts=len(method.samples(name)),
                      info={"round": k + 1, "rounds": len(method.stages), "difficulty": stage_difficulty(name)},
                      extra=partial(method.entry, name))
            for k, name in enumerate(method.stages)]


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
        ``{"stage", "stages", "start_model", "start", "history" (per-stage entries), "final_model",
        "metrics" (flat, for the manifest), "preference_stats" (per stage)}``.
    """
    if stage not in STAGE_FOLDERS:
        raise ValueError(f"stage must be 'sp' or 'rf', got {stage!r}")
    process_state(cfg)  # first, so that the process group (when this is a launch) has the config's timeout
    seed_everything(cfg.seed)
    inputs = DPOInputs.load(cfg, stage_run)
    # the judge of the liked share; RF-DPO also compares its training oracle with it on the shown items
    judge = optional_judge(inputs.dataset, cfg.seed) if stage == "rf" or evaluate_fn == "default" else None
    method = SelfPlay(cfg, inputs) if stage == "sp" else RealFeedback(cfg, inputs, stage_run, judge)
    start_dir = stage_run.input(method.upstream).model_dir
    policy, tokenizer = load_policy(cfg, start_dir, inputs.items)
    decoder = Decoder(cfg, tokenizer, inputs.items)

    start_metrics, ranks_log = None, None
    if evaluate_fn == "default":
        ranks_log = []
        evaluate_fn = make_evaluator(cfg, tokenizer, inputs.items, inputs.prompt_users, inputs.split,
                                     judge=judge, ranks_log=ranks_log)
        start_metrics = upstream_metrics(stage_run, method.upstream)
    history = run_progressive(
        policy, tokenizer, stage_specs(method, decoder), cfg.dpo,
        stage_run.dir, evaluate_fn=evaluate_fn, seed=cfg.seed, encode_prompt=decoder.encode,
        max_length=cfg.sft.max_length, wrap_fn=_lora_wrapper(cfg), precision=cfg.model.dtype,
        save_fn=lambda m, tok_, folder: save_model(m, tok_, folder, inputs.items, inputs.tokenize.users),
        start_metrics=start_metrics, distributed=cfg.distributed,
    )
    history.pop("policy")
    save_stage_outputs(stage_run.dir, method.stages, ranks_log)
    return {
        "stage": stage,
        "stages": method.stages,
        "start_model": str(start_dir),
        "start": history["start"],
        "history": history["stages"],
        "final_model": history["final_model"],
        "metrics": {**summary_metrics(history), **method.metrics()},
        "preference_stats": method.stats,
    }


def load_policy(cfg: RunConfig, model_dir: Path, items: ScidTable) -> tuple[torch.nn.Module, Any]:
    """``(model, tokenizer)`` from ``model_dir``, refused when it was trained on other item SCIDs than ``items``."""
    policy, tokenizer, model_items, _ = load_model(model_dir, cfg.model.dtype, cfg.model.trust_remote_code)
    if not np.array_equal(model_items.codes, items.codes):
        raise ValueError(f"{model_dir}: the model was trained with other item SCIDs than stage 01_tokenize's; "
                         "re-run the stages after 01_tokenize")
    return policy, tokenizer


def save_stage_outputs(stage_dir: Path, names: list[str], ranks_log: list | None) -> None:
    """On the main process: the link ``<stage folder>/model`` to the last stage's model, and when the
    evaluator kept them (:func:`make_evaluator`'s ``ranks_log``), every stage's per-user target ranks
    (``target_ranks.json``) and top-K items (``recommendations.json``), keyed by stage name."""
    from align3gr_kit.evaluate import write_recommendations

    if not process_state().is_main_process:
        return
    _link_final_model(stage_dir, names[-1])
    if ranks_log and len(ranks_log) >= len(names):
        # run_progressive evaluates the start model first when it has no upstream metrics, then every
        # stage's policy in order: the last len(names) entries are the stages'
        kept = dict(zip(names, ranks_log[-len(names):]))
        write_target_ranks(stage_dir, {n: e["target_ranks"] for n, e in kept.items()})
        write_recommendations(stage_dir, {n: e["recommendations"] for n, e in kept.items()})


def make_evaluator(cfg: RunConfig, tokenizer, item_scids: ScidTable, user_scids: ScidTable | None, split,
                   splits: tuple[str, ...] = ("valid", "test"), judge=None,
                   ranks_log: list | None = None) -> Callable[[torch.nn.Module], dict]:
    """``model -> {split: {recall@5, ..., liked_share@10 with a judge}}`` through
    :func:`align3gr_kit.evaluate.evaluate`; with ``ranks_log``, each call also appends
    ``{"target_ranks": {split: per-user target ranks}, "recommendations": {split: {"user_id", "items"}}}``
    to it (in call order; :func:`save_stage_outputs` writes them)."""
    use_user = cfg.prompts.user_scid_in_prompt and user_scids is not None

    def evaluate_fn(model: torch.nn.Module) -> dict:
        out = {s: evaluate(model, tokenizer, item_scids, user_scids, split.samples(s), cfg.decode, use_user,
                           max_length=cfg.sft.max_length, judge=judge, precision=cfg.model.dtype,
                           keep_ranks=ranks_log is not None) for s in splits}
        if ranks_log is not None:
            ranks_log.append({"target_ranks": {s: out[s].pop("target_ranks") for s in splits},
                              "recommendations": {s: out[s].pop("recommendations") for s in splits}})
        return out

    return evaluate_fn


def summary_metrics(history: dict[str, Any]) -> dict[str, float]:
    """Flat ``<label>/<split>/<metric>`` numbers (label: ``start``, each stage, ``final``) plus
    ``<stage>/train/<statistic>``, ``<stage>/run/<world_size|global_batch|lr|steps|prompts|round|rounds>``
    (how it trained: the global batch is per-device batch x grad_accum x world size) and
    ``<stage>/pairs/<key>`` (:data:`PAIR_KEYS`), for the manifest."""
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
        for k in ("world_size", "global_batch", "lr", "steps", "prompts", "round", "rounds"):
            if k in e:
                out[f"{e['stage']}/run/{k}"] = float(e[k])
        for k in PAIR_KEYS:
            if k in e:
                out[f"{e['stage']}/pairs/{k}"] = float(e[k])
    return out


#: What a round's pairs were and what training did to them (its history entry, ``<stage>/pairs/<key>``
#: in the manifest): examples, mean rejected per example (effective N), the mean chosen-minus-rejected
#: margin before (reference) and after (policy), the share of pairs whose margin rose, and RF-DPO's
#: oracle-judge agreement on the shown items.
PAIR_KEYS = ("n_examples", "mean_rejected", "pairs", "margin_before", "margin_after", "margin_up_share",
             "judge_agreement", "judge_kappa", "judge_pairs")


def preference_metrics(stats: dict[str, dict]) -> dict[str, float]:
    """``{stage: {statistic: value}}`` -> flat ``<stage>/preferences/<statistic>`` for the manifest."""
    return {f"{n}/preferences/{k}": float(v) for n, st in stats.items() for k, v in st.items()}


def upstream_metrics(stage_run, upstream: str, splits: tuple[str, ...] = ("valid", "test")) -> dict | None:
    """The starting model's metrics as the ``upstream`` stage (``04_sft`` or ``05_sp_dpo``) measured
    them, or None to measure again.

    The starting model is the upstream stage's final model, and the upstream stage evaluated it with
    the same evaluator (its fingerprint covers ``decode``; the judge and the splits are the run's), so
    evaluating it again here would repeat minutes of beam search for the same numbers.
    """
    if upstream == "04_sft":
        measured = stage_run.input(upstream).metrics
    else:  # a DPO stage: its last sub-stage's evaluation
        stages = stage_run.input(upstream).history.get("stages") or [{}]
        measured = stages[-1].get("metrics") or {}
    if not all(isinstance(measured.get(s), dict) for s in splits):
        return None
    return {s: measured[s] for s in splits}


def _lora_wrapper(cfg: RunConfig) -> Callable[[torch.nn.Module], torch.nn.Module] | None:
    """A fresh LoRA adapter per stage when ``model.lora``, without dropout (DPO compares log-probs of
    the same sequences under the policy and its reference); None = full fine-tuning."""
    if not cfg.model.lora:
        return None
    return lambda m: apply_lora(m, cfg.model, dropout=0.0)


def _link_final_model(stage_dir: Path, last: str) -> None:
    """``<stage folder>/model`` -> ``<last stage>/model``, so tools that read ``<stage>/model``
    (``evaluate --model-stage``) find the stage's final policy without a second copy."""
    link = stage_dir / MODEL
    if link.is_symlink():
        link.unlink()
    if not link.exists():
        link.symlink_to(Path(last) / MODEL, target_is_directory=True)
