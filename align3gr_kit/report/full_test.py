"""A finished run's SFT model and final model on every test user, beside SASRec and Popularity on the
same users: ``python -m align3gr_kit report full-test --config C``.

The stages score their models on ``decode.max_eval_users`` test users (150 in the CPU demo, where one
user is 0.0067 of Recall@10 and no step of the chain is measurable); this command scores the two
models the demo is judged by on all of them (or ``--users N``), with no other change to the
evaluation (same prompts, constrained beam search, judge), and writes
``reports/tables/<dataset>/full-test-<run>.{json,md}``
(:func:`~align3gr_kit.report.pipeline_file.full_test_markdown`): one row per model (Recall/NDCG@5/10, the
independent judge's liked share, the ratio to SASRec) and the SFT -> final step paired over the same
users (McNemar's exact test, paired-bootstrap interval; :func:`~align3gr_kit.report.stage_metrics.paired_steps`).

Each model's scores are kept under ``runs/<run>/full_test/<stage>.json`` with its stage's fingerprint,
so a command stopped after one model continues with the next, and a retrained stage is scored again.

Layer: a command, at the top of :mod:`align3gr_kit.report`; imports ``evaluate``, ``feedback``,
``model``, ``stages.contract`` and the report writers below it.
"""

from __future__ import annotations

import dataclasses
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pandas as pd

from align3gr_kit.config import RunConfig
from align3gr_kit.report.ledger import METRIC_KEYS, config_fingerprint, dataset_label, json_record, project_relative, tables_dir
from align3gr_kit.report.pipeline_file import FULL_TEST, full_test_markdown
from align3gr_kit.report.pipeline_report import baseline_rows
from align3gr_kit.report.stage_metrics import paired_steps
from align3gr_kit.report.statistics import LIKED, with_ratios
from align3gr_kit.stages.contract import get_stage, read_manifest, stage_dir
from align3gr_kit.utils import atomic_path, git_commit, machine_info, read_json, write_json

#: The model stages, in training order; the last finished one is the run's final model.
MODEL_STAGES = (("04_sft", "SFT"), ("05_sp_dpo", "after SP-DPO"), ("06_rf_dpo", "after RF-DPO"))


def models_to_score(cfg: RunConfig) -> list[tuple[str, str]]:
    """``[(stage, label)]``: the SFT model and the last model stage the run finished (one entry when
    that is SFT); raises FileNotFoundError naming the command when stage 04 has not finished."""
    done = [(s, label) for s, label in MODEL_STAGES if read_manifest(cfg, s) is not None]
    if not done or done[0][0] != "04_sft":
        raise FileNotFoundError(f"{stage_dir(cfg, '04_sft')}: the run {cfg.run_name!r} has no finished SFT stage; "
                                f"run it first: python -m align3gr_kit run --config <config> --run-name {cfg.run_name}")
    return [done[0]] if len(done) == 1 else [done[0], done[-1]]


def score_model(cfg: RunConfig, stage: str, samples: pd.DataFrame, judge) -> dict[str, Any]:
    """Metrics (and per-user target ranks) of ``stage``'s final model on every row of ``samples``, read
    back from ``runs/<run>/full_test/<stage>.json`` when that file holds the same stage fingerprint
    and users, else computed and kept there."""
    import torch

    from align3gr_kit.evaluate import evaluate
    from align3gr_kit.model.backbone import load_model

    manifest = read_manifest(cfg, stage) or {}
    cache = cfg.run_dir / "full_test" / f"{stage}.json"
    users = [int(u) for u in samples["user_id"]]
    if cache.exists():
        kept = read_json(cache)
        if kept.get("fingerprint") == manifest.get("fingerprint") and kept.get("user_id") == users:
            return kept["metrics"]
    folder = get_stage(stage).load_artifacts(stage_dir(cfg, stage)).model_dir
    model, tokenizer, item_scids, user_scids = load_model(folder, cfg.model.dtype, cfg.model.trust_remote_code)
    if torch.cuda.is_available():
        model = model.to("cuda")
    decode = dataclasses.replace(cfg.decode, max_eval_users=0)  # the rows given, every one
    metrics = evaluate(model, tokenizer, item_scids, user_scids, samples, decode, cfg.prompts.user_scid_in_prompt,
                       max_length=cfg.sft.max_length, judge=judge, precision=cfg.model.dtype, keep_ranks=True)
    metrics.pop("recommendations", None)
    write_json(cache, {"stage": stage, "fingerprint": manifest.get("fingerprint"), "user_id": users, "metrics": metrics})
    return metrics


def run_full_test(cfg: RunConfig, config_path: str, users: int = 0, out_dir: Path | None = None) -> dict[str, Any]:
    """Score the run's SFT and final models on the first ``users`` test users (0 = all), beside
    Popularity and SASRec on the same users, and write ``full-test-<run>.{json,md}`` (module docstring).
    Returns the document plus ``files``."""
    from align3gr_kit.feedback.evaluation import optional_judge
    from align3gr_kit.report.specs import evaluation_split

    t0 = time.time()
    models = models_to_score(cfg)
    data = get_stage("00_data").load_artifacts(stage_dir(cfg, "00_data"))
    split = evaluation_split(data.split, users)
    samples = split.samples("test")
    judge = optional_judge(data.dataset, cfg.seed)
    scored = {stage: score_model(cfg, stage, samples, judge) for stage, _ in models}
    try:
        tok = get_stage("01_tokenize").load_artifacts(stage_dir(cfg, "01_tokenize"))
        summary, sasrec_ranks = tok.summary, tok.sasrec_ranks
    except FileNotFoundError:
        summary = sasrec_ranks = None
    same_users = cfg.override({"decode.max_eval_users": users})
    rows = baseline_rows(same_users, data, summary, sasrec_ranks).to_dict("records")
    for stage, label in models:
        m = scored[stage]
        rows.append({"method": label, "source": f"{stage}: its final model", "seconds": m.get("seconds"),
                     **{k: m[k] for k in METRIC_KEYS}, **({LIKED: m[LIKED]} if LIKED in m else {})})
    table = with_ratios(pd.DataFrame(rows))
    steps = paired_steps([(label, scored[stage]["target_ranks"]) for stage, label in models], k=10, seed=cfg.seed)
    doc = {"table": FULL_TEST, "run_name": cfg.run_name, "dataset": dataset_label(cfg),
           "config": project_relative(config_path), "fingerprint": config_fingerprint(cfg), "seed": cfg.seed,
           "users": int(len(samples)), "all_users": int(len(data.split.test)),
           "judge": type(judge).__name__ if judge is not None else None,
           "rows": [json_record(r) for r in table.to_dict("records")], "paired": steps,
           "commit": git_commit(), "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
           "wall_seconds": round(time.time() - t0, 1), "machine": machine_info(),
           "stage_commits": {stage: (read_manifest(cfg, stage) or {}).get("git_commit") for stage, _ in models}}
    folder = Path(out_dir or tables_dir(cfg))
    folder.mkdir(parents=True, exist_ok=True)
    paths = {ext: folder / f"{FULL_TEST}-{cfg.run_name}.{ext}" for ext in ("json", "md")}
    write_json(paths["json"], doc)
    with atomic_path(paths["md"]) as tmp:
        Path(tmp).write_text(full_test_markdown(doc))
    return {**doc, "files": {ext: str(p) for ext, p in paths.items()}}
