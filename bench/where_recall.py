"""Where a generative recommender loses recall: SCID prefix hits of its top-K, level by level, beside
SASRec, Popularity and chance.

    python bench/where_recall.py --config configs/ml-100k.yaml                      (the SFT model)
    python bench/where_recall.py --config configs/ml-100k.yaml --stages 04_sft,05_sp_dpo,06_rf_dpo
    python bench/where_recall.py --config configs/smoke.yaml --no-sasrec            (a quick look)
    python bench/where_recall.py --config configs/default.yaml --run default-dpo-05-s0 --seed 0 \
        --stages 04_sft,05_sp_dpo,06_rf_dpo                   (a row of `ablate --table dpo`)

The model of each finished stage of the config's run ranks the same test users its evaluation scores
(the first ``decode.max_eval_users``), with the evaluation's constrained beam search. For each SCID
level ``l``, "hit@K, level l" is the share of users for whom one of the top-K items shares the
target's first ``l`` codes (:func:`align3gr_kit.metrics.prefix_hits`); the last level is Recall@K.
"given l-1" is the same share among the users already hit at level ``l - 1``: a low value says that
level is where recall is lost. SASRec is retrained with the config's settings and seed (stage 01
keeps only its ranks; its Recall@K here is printed beside stage 01's, which it should match), so
that its top-K lists can be read the same way; chance is ``K`` distinct random items, exact
(:func:`align3gr_kit.metrics.chance_prefix_hits`).

With logged ratings (ml-100k, the generated data), a second table splits Recall@K by the level of the
rating the user gave the target (``1 -> disliked``, ``2-3 -> neutral``, ``4-5 -> liked``,
:func:`align3gr_kit.feedback.oracle.rating_level`): preference training that moves the top-K toward
liked items can win recall on liked targets and lose it on the others.

With two or more stages, a third table compares each model with the one before it on the same users
(:func:`align3gr_kit.metrics.paired_hit_difference`): the Recall@K difference, the users each one
hits alone, McNemar's exact p and a paired-bootstrap 95% interval. One seed's difference between two
consecutive models is a gain or a loss only when it clears this user-sampling noise.

The models rank and SASRec retrains on ``--device`` (default: CUDA when present), autocast as the
config's ``model.dtype`` says there; the header line (stderr) names the device and compute dtype, the
last line the ranking time (between device syncs) and the peak memory (:mod:`align3gr_kit.bench_device`).

Writes ``reports/where_recall/<dataset>-<run>.json`` and ``.md`` (smoke: under the runs
folder) and prints the markdown.
"""

from __future__ import annotations

import argparse
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np


def rows_markdown(doc: dict) -> str:
    from align3gr_kit.report.stage_metrics import paired_markdown

    levels, k = doc["levels"], doc["k"]
    head = " | ".join(f"level {lv + 1}" for lv in range(levels))
    cond = " | ".join(f"level {lv + 1} given {lv}" for lv in range(1, levels))
    lines = [f"Where Recall@{k} is lost: run `{doc['run']}` on {doc['users']} {doc['split']} users of `{doc['dataset']}` "
             f"({doc['semantic_levels']} semantic SCID levels + {levels - doc['semantic_levels']} uniqueness level; "
             f"codes in use per level {doc['codes_per_level']}); commit `{doc['commit'][:7]}`, {doc['date']}; "
             f"written by `{doc['command']}`.", "",
             f"Share of users whose top {k} shares the target's first l SCID codes (the last level is Recall@{k}), "
             "and the same share among the users already hit one level up:", "",
             f"| ranking | {head} | {cond} |", "|---|" + "---|" * (2 * levels - 1)]
    for r in doc["rows"]:
        lines.append(f"| {r['name']} | " + " | ".join(f"{h:.4f}" for h in r["hits"]) + " | "
                     + " | ".join(f"{g:.4f}" for g in r["given_previous"]) + " |")
    if doc.get("sasrec_stage01_recall") is not None:
        lines += ["", f"SASRec retrained here reaches Recall@{k} {doc['sasrec_recall']:.4f}; stage 01's SASRec on the "
                      f"same users: {doc['sasrec_stage01_recall']:.4f}."]
    by = doc.get("by_target_rating")
    if by:
        cols = [lv for lv in by["levels"] if by["users"][lv]]
        lines += ["", f"Recall@{k} by the rating the user gave the target:", "",
                  "| ranking | " + " | ".join(f"{lv} targets ({by['users'][lv]} users)" for lv in cols) + " |",
                  "|---|" + "---|" * len(cols)]
        for name, rec in by["recall"].items():
            lines.append(f"| {name} | " + " | ".join(f"{rec[lv]:.4f}" for lv in cols) + " |")
    lines += paired_markdown(doc.get("paired") or [], "Each model against the one before it, on the same users")
    return "\n".join(lines) + "\n"


def row(name: str, hits: np.ndarray) -> dict:
    hits = np.asarray(hits, dtype=np.float64)
    given = [float(hits[lv] / hits[lv - 1]) if hits[lv - 1] > 0 else float("nan") for lv in range(1, len(hits))]
    return {"name": name, "hits": [round(float(h), 4) for h in hits], "given_previous": [round(g, 4) for g in given]}


def target_levels(dataset, samples) -> np.ndarray | None:
    """The level (disliked / neutral / liked) of the rating each sample's user gave its target; None
    without ratings."""
    from align3gr_kit.feedback.oracle import rating_level

    if not dataset.has_ratings:
        return None
    inter = dataset.interactions
    rating = dict(zip(zip(inter.user_id.to_numpy(), inter.item_id.to_numpy()), inter.rating.to_numpy()))
    return np.array([rating_level(float(rating.get((u, t), np.nan)))
                     for u, t in zip(samples.user_id.to_numpy(), samples.target.to_numpy())], dtype=object)


def main() -> None:
    from align3gr_kit import bench_device
    from align3gr_kit.baselines.popularity import popularity_counts
    from align3gr_kit.config import RunConfig
    from align3gr_kit.encoders.sasrec import train_sasrec
    from align3gr_kit.evaluate import recommend
    from align3gr_kit.feedback.oracle import LEVELS
    from align3gr_kit.metrics import chance_prefix_hits, prefix_hits, target_ranks, topk_from_scores
    from align3gr_kit.report.stage_metrics import paired_steps
    from align3gr_kit.model.backbone import load_model
    from align3gr_kit.report.ledger import dataset_label
    from align3gr_kit.stages.contract import get_stage, read_manifest, stage_artifacts, stage_dir
    from align3gr_kit.utils import atomic_path, git_commit, project_root, seed_everything, write_json

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default="configs/default.yaml")
    p.add_argument("--stages", default="04_sft",
                   help="comma-separated finished stages whose final models rank (04_sft, 05_sp_dpo, 06_rf_dpo)")
    p.add_argument("--split", default="test", choices=("valid", "test"))
    p.add_argument("--k", type=int, default=10)
    p.add_argument("--no-sasrec", action="store_true", help="skip retraining SASRec")
    p.add_argument("--run", default=None, help="another run of the config (an ablate row: <run>-<table>-NN-sS)")
    p.add_argument("--seed", type=int, default=None, help="the run's seed, when not the config's")
    bench_device.add_device_argument(p)
    args = p.parse_args()
    device = args.device
    stages = [s.strip() for s in args.stages.split(",") if s.strip()]
    for s in stages:
        if s not in ("04_sft", "05_sp_dpo", "06_rf_dpo"):
            raise SystemExit(f"--stages: {s!r} is not a stage that ends with a model (04_sft, 05_sp_dpo, 06_rf_dpo)")

    cfg = RunConfig.from_yaml(args.config)
    cfg = cfg.override({k: v for k, v in (("run_name", args.run), ("seed", args.seed)) if v is not None})
    missing = [s for s in stages if read_manifest(cfg, s) is None]
    if missing:
        raise SystemExit(f"run {cfg.run_name!r} ({cfg.run_dir}) has no finished {', '.join(missing)}: make it first with "
                         f"`python -m align3gr_kit run --config {args.config} --resume` (or name an ablate row's run "
                         "with --run and its --seed)")
    seed_everything(cfg.seed)
    bench_device.header(device, cfg.model.dtype)
    bench_device.reset_peak(device)
    t0 = time.time()
    data, tok = stage_artifacts(cfg, "00_data"), stage_artifacts(cfg, "01_tokenize")
    samples = data.split.samples(args.split)
    if cfg.decode.max_eval_users:
        samples = samples.iloc[: cfg.decode.max_eval_users]
    targets = samples.target.to_numpy()
    rankings: dict[str, np.ndarray] = {}
    codes = None
    rank_seconds = 0.0
    for stage in stages:
        folder = get_stage(stage).load_artifacts(stage_dir(cfg, stage)).model_dir
        model, tokenizer, item_scids, user_scids = load_model(folder, cfg.model.dtype, cfg.model.trust_remote_code)
        model.to(device)
        codes = item_scids.codes
        with bench_device.timed(device) as ranking:
            rankings[f"{cfg.model.base} after {stage}"], _ = recommend(
                model, tokenizer, item_scids, user_scids, samples, cfg.decode, cfg.prompts.user_scid_in_prompt,
                cfg.sft.max_length, k=args.k, precision=cfg.model.dtype)
        rank_seconds += ranking.seconds
        del model
    stage01 = sasrec_recall = None
    if not args.no_sasrec:
        sasrec = train_sasrec(data.split, data.dataset.n_items, cfg.tokenizer.sasrec, cfg.seed, device=device,
                              progress=False).model
        rankings["SASRec"] = sasrec.topk(samples.history.tolist(), k=args.k)
        sasrec_recall = float((rankings["SASRec"] == targets[:, None]).any(axis=1).mean())
        if tok.sasrec_ranks and args.split in tok.sasrec_ranks:
            r = np.asarray(tok.sasrec_ranks[args.split])[: len(samples)]
            stage01 = float(((r >= 0) & (r < args.k)).mean())
    counts = popularity_counts(data.split, data.dataset.n_items).astype(np.float64)
    rankings["Popularity"] = np.repeat(topk_from_scores(counts[None, :], args.k), len(samples), axis=0)
    rows = [row(name, prefix_hits(ranked, targets, codes, args.k)) for name, ranked in rankings.items()]
    rows.append(row(f"chance ({args.k} random items)", chance_prefix_hits(targets, codes, args.k)))
    model_names = [f"{cfg.model.base} after {stage}" for stage in stages]
    paired = paired_steps([(name, target_ranks(rankings[name], targets).tolist()) for name in model_names],
                          k=args.k, seed=cfg.seed)
    by_rating = None
    levels = target_levels(data.dataset, samples)
    if levels is not None:
        by_rating = {"levels": list(LEVELS), "users": {lv: int((levels == lv).sum()) for lv in LEVELS},
                     "recall": {name: {lv: (round(float((ranked[levels == lv] == targets[levels == lv, None]).any(axis=1)
                                                         .mean()), 4) if (levels == lv).any() else None)
                                       for lv in LEVELS} for name, ranked in rankings.items()}}
    command = f"python bench/where_recall.py --config {args.config} --stages {','.join(stages)}" + (
        f" --run {args.run}" if args.run else "") + (f" --seed {args.seed}" if args.seed is not None else "") + (
        f" --split {args.split}" if args.split != "test" else "") + (" --no-sasrec" if args.no_sasrec else "")
    doc = {"dataset": dataset_label(cfg), "run": cfg.run_name, "stages": stages, "split": args.split, "k": args.k,
           "users": int(len(samples)), "levels": int(codes.shape[1]), "semantic_levels": int(tok.item_raw.shape[1]),
           "codes_per_level": [int(len(np.unique(codes[:, lv]))) for lv in range(codes.shape[1])],
           "sasrec_recall": sasrec_recall, "sasrec_stage01_recall": stage01, "rows": rows,
           "by_target_rating": by_rating, "paired": paired, "commit": git_commit() or "unknown",
           "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
           "wall_seconds": round(time.time() - t0, 1), "ranking_seconds": round(rank_seconds, 1),
           **bench_device.device_fields(device, cfg.model.dtype), "command": command}
    out = (cfg.run_dir.parent / "where_recall") if cfg.smoke else project_root() / "reports" / "where_recall"
    out.mkdir(parents=True, exist_ok=True)
    name = f"{doc['dataset']}-{cfg.run_name}"
    write_json(out / f"{name}.json", doc)
    text = rows_markdown(doc)
    with atomic_path(out / f"{name}.md") as tmp:
        Path(tmp).write_text(text)
    print(text)
    print(f"written: {out / name}.json and .md ({doc['wall_seconds']} s, of which {doc['ranking_seconds']} s "
          f"ranking; {bench_device.describe(device, cfg.model.dtype)})")


if __name__ == "__main__":
    main()
