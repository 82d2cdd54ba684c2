"""Where a generative recommender loses recall: SCID prefix hits of its top-K, level by level, beside
SASRec, Popularity and chance.

    python bench/where_recall.py --config configs/ml-100k.yaml                      (the SFT model)
    python bench/where_recall.py --config configs/ml-100k.yaml --stage 05_sp_dpo
    python bench/where_recall.py --config configs/smoke.yaml --no-sasrec            (a quick look)

The model of a finished stage of the config's run ranks the same test users its evaluation scores
(the first ``decode.max_eval_users``), with the evaluation's constrained beam search. For each SCID
level ``l``, "hit@K, level l" is the share of users for whom one of the top-K items shares the
target's first ``l`` codes (:func:`align3gr_kit.metrics.prefix_hits`); the last level is Recall@K.
"given l-1" is the same share among the users already hit at level ``l - 1``: a low value says that
level is where recall is lost. SASRec is retrained with the config's settings and seed (stage 01
keeps only its ranks; its Recall@K here is printed beside stage 01's, which it should match), so
that its top-K lists can be read the same way; chance is ``K`` distinct random items, exact
(:func:`align3gr_kit.metrics.chance_prefix_hits`).

Writes ``reports/where_recall/<dataset>-<run>-<stage>.json`` and ``.md`` (smoke: under the runs
folder) and prints the markdown.
"""

from __future__ import annotations

import argparse
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np


def rows_markdown(doc: dict) -> str:
    levels = doc["levels"]
    head = " | ".join(f"level {lv + 1}" for lv in range(levels))
    cond = " | ".join(f"level {lv + 1} given {lv}" for lv in range(1, levels))
    lines = [f"Where recall@{doc['k']} is lost: `{doc['run']}` / `{doc['stage']}` on {doc['users']} {doc['split']} users "
             f"of `{doc['dataset']}` ({doc['semantic_levels']} semantic levels + "
             f"{levels - doc['semantic_levels']} uniqueness level(s), codes used per level {doc['codebook_sizes']}); "
             f"commit `{doc['commit'][:7]}`, {doc['date']}; written by `{doc['command']}`.", "",
             f"| ranking | {head} | {cond} |", "|---|" + "---|" * (2 * levels - 1)]
    for r in doc["rows"]:
        hits, given = r["hits"], r["given_previous"]
        lines.append(f"| {r['name']} | " + " | ".join(f"{h:.4f}" for h in hits) + " | "
                     + " | ".join(f"{g:.4f}" for g in given) + " |")
    if doc.get("sasrec_stage01_recall") is not None:
        lines += ["", f"SASRec retrained here: Recall@{doc['k']} {doc['rows'][1]['hits'][-1]:.4f}; stage 01's SASRec on the "
                      f"same users: {doc['sasrec_stage01_recall']:.4f}."]
    return "\n".join(lines) + "\n"


def row(name: str, hits: np.ndarray) -> dict:
    hits = np.asarray(hits, dtype=np.float64)
    given = [float(hits[lv] / hits[lv - 1]) if hits[lv - 1] > 0 else float("nan") for lv in range(1, len(hits))]
    return {"name": name, "hits": [round(float(h), 4) for h in hits], "given_previous": [round(g, 4) for g in given]}


def main() -> None:
    from align3gr_kit.baselines.popularity import popularity_counts
    from align3gr_kit.config import RunConfig
    from align3gr_kit.encoders.sasrec import train_sasrec
    from align3gr_kit.evaluate import recommend
    from align3gr_kit.metrics import chance_prefix_hits, prefix_hits, topk_from_scores
    from align3gr_kit.model.backbone import load_model
    from align3gr_kit.report.tables import dataset_label
    from align3gr_kit.stages.contract import get_stage, stage_artifacts, stage_dir
    from align3gr_kit.utils import atomic_path, git_commit, project_root, seed_everything, write_json

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default="configs/default.yaml")
    p.add_argument("--stage", default="04_sft", choices=("04_sft", "05_sp_dpo", "06_rf_dpo"),
                   help="the finished stage whose final model ranks")
    p.add_argument("--split", default="test", choices=("valid", "test"))
    p.add_argument("--k", type=int, default=10)
    p.add_argument("--no-sasrec", action="store_true", help="skip retraining SASRec")
    args = p.parse_args()

    cfg = RunConfig.from_yaml(args.config)
    seed_everything(cfg.seed)
    t0 = time.time()
    data, tok = stage_artifacts(cfg, "00_data"), stage_artifacts(cfg, "01_tokenize")
    samples = data.split.samples(args.split)
    if cfg.decode.max_eval_users:
        samples = samples.iloc[: cfg.decode.max_eval_users]
    targets = samples.target.to_numpy()
    folder = get_stage(args.stage).load_artifacts(stage_dir(cfg, args.stage)).model_dir
    model, tokenizer, item_scids, user_scids = load_model(folder, cfg.model.dtype, cfg.model.trust_remote_code)
    codes = item_scids.codes
    ranked, _ = recommend(model, tokenizer, item_scids, user_scids, samples, cfg.decode,
                          cfg.prompts.user_scid_in_prompt, cfg.sft.max_length, k=args.k, precision=cfg.model.dtype)
    rows = [row(f"{cfg.model.base} ({args.stage})", prefix_hits(ranked, targets, codes, args.k))]
    stage01 = None
    if not args.no_sasrec:
        sasrec = train_sasrec(data.split, data.dataset.n_items, cfg.tokenizer.sasrec, cfg.seed, progress=False).model
        rows.append(row("SASRec", prefix_hits(sasrec.topk(samples.history.tolist(), k=args.k), targets, codes, args.k)))
        if tok.sasrec_ranks and args.split in tok.sasrec_ranks:
            r = np.asarray(tok.sasrec_ranks[args.split])[: len(samples)]
            stage01 = float(((r >= 0) & (r < args.k)).mean())
    counts = popularity_counts(data.split, data.dataset.n_items).astype(np.float64)
    popular = topk_from_scores(counts[None, :], args.k)
    rows.append(row("Popularity", prefix_hits(np.repeat(popular, len(samples), axis=0), targets, codes, args.k)))
    rows.append(row(f"chance ({args.k} random items)", chance_prefix_hits(targets, codes, args.k)))
    command = f"python bench/where_recall.py --config {args.config} --stage {args.stage}" + (
        f" --split {args.split}" if args.split != "test" else "") + (" --no-sasrec" if args.no_sasrec else "")
    doc = {"dataset": dataset_label(cfg), "run": cfg.run_name, "stage": args.stage, "split": args.split, "k": args.k,
           "users": int(len(samples)), "levels": int(codes.shape[1]), "semantic_levels": int(tok.item_raw.shape[1]),
           "codebook_sizes": [int(len(np.unique(codes[:, lv]))) for lv in range(codes.shape[1])],
           "sasrec_stage01_recall": stage01, "rows": rows, "commit": git_commit() or "unknown",
           "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
           "wall_seconds": round(time.time() - t0, 1), "command": command}
    out = (cfg.run_dir.parent / "where_recall") if cfg.smoke else project_root() / "reports" / "where_recall"
    out.mkdir(parents=True, exist_ok=True)
    name = f"{doc['dataset']}-{cfg.run_name}-{args.stage}"
    write_json(out / f"{name}.json", doc)
    text = rows_markdown(doc)
    with atomic_path(out / f"{name}.md") as tmp:
        Path(tmp).write_text(text)
    print(text)
    print(f"written: {out / name}.json, .md ({doc['wall_seconds']} s)")


if __name__ == "__main__":
    main()
