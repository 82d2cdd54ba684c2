"""Two runs' models on the same test users: the paired comparison that one seed allows.

    python bench/paired_runs.py --a runs/ml-100k-backbone-01-s0:04_sft --b runs/ml-100k-bf16:04_sft
    python bench/paired_runs.py --a runs/default-dpo-03-s0:05_sp_dpo --b runs/default:05_sp_dpo --k 5

Each side is ``<run folder>:<stage>``: the model that stage ends with (04: the SFT model; 05/06: the
last DPO sub-stage's policy), read from the per-user target ranks its evaluation kept
(``target_ranks.json``). Two runs of the same config on different machines (bf16 against fp32), or two
rows of a table, differ by one seed's draw of users' hits; this prints the Recall@K difference, the
users each model hits alone, McNemar's exact p and a paired-bootstrap 95% interval
(:func:`align3gr_kit.report.stage_metrics.paired_steps`), and the training loss of each SFT stage. The
two runs must have scored the same users (same data, split and ``decode.max_eval_users``); the
script refuses otherwise. Prints markdown; writes nothing.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

from align3gr_kit.report.stage_metrics import folder_target_ranks, paired_markdown, paired_steps


def stage_ranks(spec: str, split: str) -> tuple[str, list[int]]:
    """``(label, ranks)`` of ``<run folder>:<stage>``; a clear error when the stage kept none."""
    run, _, stage = spec.rpartition(":")
    folder = Path(run) / stage
    if not run or not (folder / "manifest.json").is_file():
        raise SystemExit(f"{spec}: expected <run folder>:<stage> with a finished stage (no {folder}/manifest.json)")
    ranks = folder_target_ranks(folder, split)
    if ranks is None:
        raise SystemExit(f"{folder}: no {split} ranks in target_ranks.json (the stage ran before evaluations "
                         "kept per-user ranks); re-run it")
    return f"{Path(run).name}:{stage}", ranks


def loss_summary(spec: str) -> str | None:
    """First, mean and last logged training loss of an SFT stage, with the mean over its second half."""
    run, _, stage = spec.rpartition(":")
    path = Path(run) / stage / "log_history.json"
    if not path.is_file():
        return None
    losses = [(e["step"], e["loss"]) for e in json.loads(path.read_text()) if "loss" in e]
    if not losses:
        return None
    half = losses[-1][0] / 2
    second = [v for s, v in losses if s > half] or [losses[-1][1]]
    return (f"`{spec}`: logged loss {losses[0][1]:.2f} at step {losses[0][0]}, {losses[-1][1]:.2f} at step "
            f"{losses[-1][0]}, mean of the {len(losses)} logged values {statistics.mean(v for _, v in losses):.3f}, "
            f"over steps after {half:g} {statistics.mean(second):.3f}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--a", required=True, help="<run folder>:<stage>, the reference model")
    ap.add_argument("--b", required=True, help="<run folder>:<stage>, the model compared with it")
    ap.add_argument("--k", type=int, default=10)
    ap.add_argument("--split", default="test", choices=("valid", "test"))
    ap.add_argument("--seed", type=int, default=0, help="the bootstrap's seed")
    args = ap.parse_args(argv)
    a, b = stage_ranks(args.a, args.split), stage_ranks(args.b, args.split)
    if len(a[1]) != len(b[1]):
        raise SystemExit(f"the two models scored different users ({len(a[1])} vs {len(b[1])}); "
                         "compare runs of the same data, split and decode.max_eval_users")
    lines = paired_markdown(paired_steps([a, b], k=args.k, seed=args.seed),
                            f"{len(a[1])} {args.split} users, the same in both")
    print("\n".join(lines).strip())
    for spec in (args.a, args.b):
        if (summary := loss_summary(spec)) is not None:
            print(f"- {summary}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
