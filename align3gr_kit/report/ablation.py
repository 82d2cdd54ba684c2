"""Running the rows of a table: each rung of the ladder, each generative baseline, each table row
as a papermill run of one pipeline with config overrides.

Every rung (:class:`align3gr_kit.report.specs.Rung`) is the same code with different config
overrides, run as a papermill run (``runner.run_pipeline``) into its own run directory. Runs use
``resume``, so a stage whose config sections and upstream stages equal another run's is reused rather
than recomputed (e.g. all rungs share ``00_data``; the DPO rungs share tokenization, prompts and SFT).

A row recorded in a table's ledger also keeps what its SFT stage trained on (:func:`stages_ran`:
steps, examples per step, and under ``sft.fixed_task_a`` the task-A and all-task examples).

Each model stage's manifest carries the valid/test metrics of the model it ends with (nested
``metrics["test"]["recall@10"]`` or flat ``metrics["test_recall@10"]``); a rung's result is the
last stage it runs (:func:`align3gr_kit.report.ledger.final_metrics`).

Layer: a command, at the top of :mod:`align3gr_kit.report`, with ``stages.runner``; imports
:mod:`~align3gr_kit.report.ledger`, :mod:`~align3gr_kit.report.specs` and
:mod:`~align3gr_kit.report.stage_metrics`.
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from align3gr_kit.config import RunConfig
from align3gr_kit.report.ledger import attach_ranks, final_metrics, find_row, record_row
from align3gr_kit.report.specs import Rung, config_diff
from align3gr_kit.report.stage_metrics import final_target_ranks
from align3gr_kit.stages.contract import RunInUse, get_stage, is_current, read_manifest
from align3gr_kit.utils import atomic_path


@dataclass
class RungResult:
    """One run of one rung: its label, seed, run name, ``{"valid": {...}, "test": {...}}`` metrics of
    its last stage, wall seconds, and the failing stage's error (empty when it finished)."""

    label: str
    seed: int
    run_name: str
    metrics: dict[str, dict[str, float]] = field(default_factory=dict)
    seconds: float = 0.0
    error: str = ""
    source: str = ""  # where a row measured before was read from (:mod:`align3gr_kit.report.ledger`)
    ranks: list[int] | None = None  # the final model's per-user test target ranks, when kept
    machine: str = ""  # where the last stage ran (:func:`align3gr_kit.utils.machine_info`), when known
    ran: dict[str, Any] = field(default_factory=dict)  # what its training stages did (:func:`stages_ran`)


def run_rungs(base: RunConfig, config_path: str, rungs: list[Rung], seeds: list[int], prefix: str,
              base_overrides: dict[str, Any] | None = None, kernel_name: str = "python3",
              ledger: Path | None = None, reuse: bool = True) -> list[RungResult]:
    """Run each rung for each seed as its own papermill run (``<base>-<prefix>-NN-sS``), resuming.

    With ``ledger`` (a table's folder), a rung whose result was committed there before
    (:func:`align3gr_kit.report.ledger.find_row`) is read, not run, and every rung that finishes is
    recorded there, so a table outlasting one machine continues on the next; ``reuse=False`` runs
    every rung (and records it).

    The notebooks of every run receive the YAML ``config_path`` plus dotted overrides: first whatever
    makes the YAML equal ``base`` (:func:`~align3gr_kit.report.specs.config_diff`: a notebook's
    ``dataset`` parameter, CLI ``--set``...), then ``base_overrides``, then the rung's own overrides.
    ``smoke`` and ``runs_dir`` come from ``base``, ``seed`` and ``run_name`` from the loop.

    Returns:
        One :class:`RungResult` per (seed, rung), seeds outermost; a failed run carries ``error``.
    """
    from align3gr_kit.stages.runner import run_pipeline  # at call time: tests stand a fake pipeline in

    inherited = {**config_diff(base, config_path), **(base_overrides or {})}
    results = []
    for seed in seeds:
        for i, rung in enumerate(rungs):
            run_name = f"{base.run_name}-{prefix}-{i:02d}-s{seed}"
            overrides = {**inherited, **rung.overrides}
            cfg = base.override({**overrides, "seed": seed, "run_name": run_name})
            if ledger is not None and reuse and (found := find_row(ledger, cfg, rung.last_stage)) is not None:
                print(f"[{run_name}] {rung.label}: measured before, read from {found['source']}", file=sys.stderr)
                ranks = found.get("ranks")
                if ranks is None:
                    # recorded before rows (and pipeline files) kept ranks, and the run that measured it is
                    # still on this machine: read them there, keep them now
                    ranks = local_ranks(cfg, rung.last_stage, found.get("run"))
                    if ranks is not None:
                        attach_ranks(ledger, cfg, rung.last_stage, ranks)
                ran = found.get("ran")
                if not ran and (run := local_run(cfg, rung.last_stage, found.get("run"))) is not None:
                    ran = stages_ran(run, rung.stages)  # read from a pipeline file: its run is still here
                results.append(RungResult(rung.label, seed, run_name, found["metrics"], found["seconds"],
                                          source=found["source"], ranks=ranks, machine=found.get("machine") or "",
                                          ran=ran or {}))
                continue
            t0 = time.time()
            try:  # each run's lock is held while it runs; a run another command holds fails its row alone
                res = run_pipeline(cfg, config_path, stages=list(rung.stages), resume=True,
                                   overrides=overrides, kernel_name=kernel_name, render=False)
            except RunInUse as e:
                results.append(RungResult(rung.label, seed, run_name, seconds=0.0, error=str(e)))
                continue
            out = RungResult(rung.label, seed, run_name, seconds=round(time.time() - t0, 1))
            if res["ok"]:
                out.metrics = final_metrics(cfg, rung.last_stage)
                out.ranks = final_target_ranks(cfg, rung.last_stage)
                last = read_manifest(cfg, rung.last_stage) or {}
                out.machine = last.get("machine") or ""
                out.ran = stages_ran(cfg, rung.stages)
                if ledger is not None:  # the stages' own times (a resumed or copied stage keeps its cost)
                    cost = sum((read_manifest(cfg, s) or {}).get("wall_seconds") or 0.0 for s in rung.stages)
                    record_row(ledger, cfg, rung.last_stage, out.metrics, round(cost, 1),
                               commit=last.get("git_commit"), date=last.get("finished_at"), machine=last.get("machine"),
                               ranks=out.ranks, ran=out.ran)
            else:
                failed = next(s for s in res["stages"] if s["status"] == "failed")
                out.error = f"{failed['stage']}: {failed['error']} (see {failed['notebook']})"
            results.append(out)
    return results


#: What a row file records of its SFT stage (the manifest's ``train_<key>``): optimiser steps, examples per
#: step, and with ``sft.fixed_task_a`` the task-A and all-task examples of its one pass.
SFT_RAN_KEYS = ("steps", "global_batch", "task_a_examples", "mix_examples")

#: What a row file records of each round of a DPO stage (the manifest's ``<round>/<key>``): prompts and
#: optimiser steps, training examples and rejected items per example (the effective N of Softmax-DPO),
#: the mean chosen-minus-rejected margin under the reference before and under the policy after, the
#: share of pairs whose margin rose, and for RF-DPO the training oracle's agreement with the judge.
DPO_RAN_KEYS = ("run/prompts", "run/steps", "pairs/n_examples", "pairs/mean_rejected", "pairs/margin_before",
                "pairs/margin_after", "pairs/margin_up_share", "pairs/judge_agreement", "pairs/judge_kappa")
DPO_STAGES = ("05_sp_dpo", "06_rf_dpo")


def dpo_rounds(metrics: dict[str, Any]) -> dict[str, dict[str, float]]:
    """``{round name: {key: value}}`` of a DPO stage's manifest metrics, in training order: the keys of
    :data:`DPO_RAN_KEYS` (without their ``run/``/``pairs/`` group) that the round recorded."""
    names = sorted((k.split("/")[0] for k in metrics if k.endswith("/run/round")),
                   key=lambda n: metrics[f"{n}/run/round"])
    return {n: {k.split("/")[1]: metrics[f"{n}/{k}"] for k in DPO_RAN_KEYS if metrics.get(f"{n}/{k}") is not None}
            for n in names}


def stages_ran(cfg: RunConfig, stages: tuple[str, ...]) -> dict[str, dict[str, Any]]:
    """What the training stages among ``stages`` of ``cfg``'s run did, read from their manifests:
    ``{"04_sft": {"steps", "global_batch", "task_a_examples", "mix_examples"}}`` (the keys the stage
    recorded of :data:`SFT_RAN_KEYS`; the last two only with ``sft.fixed_task_a``) and for each DPO
    stage ``{"rounds": {name: {...}}}`` (:func:`dpo_rounds`); a stage that left no manifest is left out."""
    out: dict[str, dict[str, Any]] = {}
    if "04_sft" in stages:
        metrics = (read_manifest(cfg, "04_sft") or {}).get("metrics") or {}
        sft = {k: metrics[f"train_{k}"] for k in SFT_RAN_KEYS if metrics.get(f"train_{k}") is not None}
        if sft:
            out["04_sft"] = sft
    for stage in DPO_STAGES:
        if stage in stages and (rounds := dpo_rounds((read_manifest(cfg, stage) or {}).get("metrics") or {})):
            out[stage] = {"rounds": rounds}
    return out


def local_run(cfg: RunConfig, last_stage: str, measured_by: str | None = None) -> RunConfig | None:
    """The run on this machine that holds the row ``(cfg, last_stage)``: the row's own run, or
    ``measured_by`` (the run a committed result names, e.g. the full pipeline run whose file the row
    was read from), each only while that run's stage is current for ``cfg``'s config and seed
    (:func:`~align3gr_kit.stages.contract.is_current`); None otherwise."""
    stage = get_stage(last_stage)
    names = [cfg.run_name] + ([measured_by] if measured_by and measured_by != cfg.run_name else [])
    for name in names:
        run = cfg.override({"run_name": name})
        if is_current(run, stage):
            return run
    return None


def local_ranks(cfg: RunConfig, last_stage: str, measured_by: str | None = None) -> list[int] | None:
    """The per-user test target ranks of the row ``(cfg, last_stage)`` from the run on this machine
    that holds it (:func:`local_run`); None when there is none."""
    run = local_run(cfg, last_stage, measured_by)
    return None if run is None else final_target_ranks(run, last_stage)


def results_table(results: list[RungResult], split: str = "test") -> pd.DataFrame:
    """One row per (label, seed) with the split's metrics; failed runs keep their error."""
    rows = []
    for r in results:
        row = {"method": r.label, "seed": r.seed, "run": r.run_name, "seconds": r.seconds}
        if r.source:
            row["source"] = r.source
        row.update(r.metrics.get(split, {}))
        if r.error:
            row["error"] = r.error
        rows.append(row)
    return pd.DataFrame(rows)


def save_results(table: pd.DataFrame, path: Path) -> Path:
    """Write ``table`` as CSV at ``path`` (atomically) and return the path."""
    with atomic_path(path) as tmp:
        table.to_csv(tmp, index=False)
    return path
