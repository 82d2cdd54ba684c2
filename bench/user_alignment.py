"""User alignment (B2) on held-out users: the config's pretrained backbone beside tiny-llama.

    python bench/user_alignment.py --config configs/default.yaml --holdout 0.1
    python bench/user_alignment.py --config configs/ml-100k.yaml --holdout 0.1
    python bench/user_alignment.py --config configs/smoke.yaml            (a quick look, not committed)

For each backbone, runs stages 00-04 of ``<run_name>-b2-<backbone>`` with ``prompts.b2_holdout``
(the held-out users' B2 rows are left out of SFT; stages identical to an earlier run's are reused;
the config's own run when the config already holds out that share, as default.yaml and ml-100k.yaml do),
then measures both B2 directions on those users with
:func:`align3gr_kit.user_alignment.evaluate_user_alignment`: profile -> user SCID (exact@1, hit@10,
beside chance) and user SCID -> profile (the share of stated attributes the generated text says,
beside the same texts scored against another user's attributes). tiny-llama runs with its own
from-scratch budget (:data:`align3gr_kit.report.specs.TINY_LLAMA`).

The measurement runs on ``--device`` (default: CUDA when present), autocast as the config's
``model.dtype`` says there; stages 00-04, when they must be built first, train as the pipeline does
(on the GPU the Trainer finds). The header line (stderr) names the device and compute dtype; each
backbone's line adds its measuring time (between device syncs) and peak memory
(:mod:`align3gr_kit.bench_device`; on a GPU reset before each backbone).

Writes ``reports/user_alignment/<dataset>.json`` and ``.md`` (smoke: under the runs folder) and
prints the JSON.
"""

from __future__ import annotations

import argparse
import time
from datetime import datetime, timezone
from pathlib import Path

COLUMNS = ("exact@1", "chance_exact@1", "hit@10", "chance_hit@10", "attribute_match", "attribute_match_other")


def markdown(doc: dict) -> str:
    lines = [f"User alignment (B2) on {doc['users']} held-out users of `{doc['dataset']}` (`prompts.b2_holdout` "
             f"{doc['holdout']}, seed {doc['seed']}), config `{doc['config']}`, commit `{doc['commit'][:7]}`, "
             f"{doc['date']}; written by `{doc['command']}`.", "",
             "| backbone | SFT steps | profile -> SCID exact@1 | chance | hit@10 | chance | SCID -> profile attributes "
             "| same texts vs another user's | stated attributes per user |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in doc["rows"]:
        m = r["metrics"]
        lines.append(f"| {r['backbone']} | {r['sft_steps']} | " + " | ".join(f"{m[k]:.3f}" for k in COLUMNS)
                     + f" | {m['attributes_per_user']:.1f} |")
    for r in doc["rows"]:
        e = r["metrics"]["examples"][0]
        lines += ["", f"{r['backbone']}, user {e['user']}: profile \"{e['profile']}\" -> top SCID {e['top_scid']} "
                      f"(own {e['own_scid']}); SCID -> \"{e['generated']}\""]
    return "\n".join(lines) + "\n"


def main() -> None:
    from align3gr_kit import bench_device
    from align3gr_kit.config import RunConfig
    from align3gr_kit.report.ledger import dataset_label
    from align3gr_kit.report.specs import TINY_LLAMA
    from align3gr_kit.stages.contract import stage_artifacts
    from align3gr_kit.user_alignment import b2_heldout_users, evaluate_user_alignment
    from align3gr_kit.utils import atomic_path, git_commit, project_root, write_json

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default="configs/default.yaml")
    p.add_argument("--holdout", type=float, default=0.1, help="share of users whose B2 rows SFT leaves out")
    p.add_argument("--backbones", default="config,tiny-llama",
                   help="comma-separated: 'config' (the config's model) and/or 'tiny-llama'")
    bench_device.add_device_argument(p)
    args = p.parse_args()
    device = args.device

    own = RunConfig.from_yaml(args.config)
    base = own.override({"prompts.b2_holdout": args.holdout})
    bench_device.header(device, base.model.dtype)
    rows = []
    t0 = time.time()
    for name in args.backbones.split(","):
        overrides = dict(TINY_LLAMA) if name == "tiny-llama" else {}
        label = "tiny-llama" if name == "tiny-llama" else base.model.base
        # the config's own run when it already holds out this share (its SFT model is the measured one)
        mine = name != "tiny-llama" and own.prompts.b2_holdout == args.holdout
        cfg = base if mine else base.override({**overrides, "run_name": f"{base.run_name}-b2-{label}"})
        data, tok = stage_artifacts(cfg, "00_data"), stage_artifacts(cfg, "01_tokenize")
        if tok.users is None:
            raise SystemExit(f"{args.config}: no user SCIDs (tokenizer.dual is off); B2 needs them")
        model, tokenizer, _, users = stage_artifacts(cfg, "04_sft").load_model(cfg.model.dtype)
        model.to(device)
        held = b2_heldout_users(data.dataset.n_users, args.holdout, cfg.seed)
        bench_device.reset_peak(device)
        with bench_device.timed(device) as measured:
            metrics = evaluate_user_alignment(model, tokenizer, data.dataset, users, held,
                                              max_length=cfg.sft.max_length, max_text_words=cfg.prompts.max_text_words,
                                              batch_size=cfg.decode.batch_size, precision=cfg.model.dtype)
        measure = {"measure_seconds": round(measured.seconds, 1), **bench_device.device_fields(device, cfg.model.dtype)}
        rows.append({"backbone": label, "run": cfg.run_name, "sft_steps": cfg.sft.max_steps, "metrics": metrics,
                     **measure})
        bench_device.emit({"backbone": label, **{k: metrics[k] for k in COLUMNS}, **measure})
        del model
    doc = {"dataset": dataset_label(base), "config": args.config, "holdout": args.holdout, "seed": base.seed,
           "users": rows[0]["metrics"]["users"],
           "commit": git_commit() or "unknown", "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
           "wall_seconds": round(time.time() - t0, 1),
           "command": f"python bench/user_alignment.py --config {args.config} --holdout {args.holdout}",
           "rows": rows}
    out = (base.run_dir.parent / "user_alignment") if base.smoke else project_root() / "reports" / "user_alignment"
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / f"{doc['dataset']}.json", doc)
    with atomic_path(out / f"{doc['dataset']}.md") as tmp:
        Path(tmp).write_text(markdown(doc))
    bench_device.emit({k: v for k, v in doc.items() if k != "rows"})


if __name__ == "__main__":
    main()
