"""Two runs' models on the same test users: the paired comparison that one seed allows.

    python bench/paired_runs.py --a runs/ml-100k-backbone-01-s0:04_sft --b runs/ml-100k-bf16:04_sft
    python bench/paired_runs.py --a runs/default-dpo-03-s0:05_sp_dpo --b runs/default:05_sp_dpo --k 5

Each side is ``<run folder>:<stage>``: the model that stage ends with (04: the SFT model; 05/06: the
last DPO sub-stage's policy), read from the per-user target ranks its evaluation kept
(``target_ranks.json``); or a committed result, whose run folder may be gone: a table's row file
(``reports/tables/<dataset>/rows/<key>.json``) or ``<pipeline file>.json:<model>`` (a model of a
``report pipeline`` file, e.g. ``reports/tables/ml-100k/pipeline-ml-100k-bf16.json:SFT``); those keep
the test users' ranks only.

    python bench/paired_runs.py --a reports/tables/ml-100k/rows/8c931bf9ab3c-s0-04_sft.json \
        --b reports/tables/ml-100k/pipeline-ml-100k-bf16.json:SFT

Two runs of the same config on different machines (bf16 against fp32), or two rows of a table, differ
by one seed's draw of users' hits; this prints the Recall@K difference, the users each model hits
alone, McNemar's exact p and a paired-bootstrap 95% interval
(:func:`align3gr_kit.report.stage_metrics.paired_steps`), and the training loss of each SFT stage
(``--loss-after N``: the mean of its logged losses after step N; run folders only). The two runs must
have scored the same users (same data, split and ``decode.max_eval_users``); the script refuses
otherwise. Prints markdown; writes nothing. It reads saved ranks and logs only (no model), so it runs
on the CPU whatever ``--device`` says (the flag is accepted like every bench's).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from align3gr_kit import bench_device
from align3gr_kit.report.ledger import kept_ranks
from align3gr_kit.report.stage_metrics import folder_target_ranks, paired_markdown, paired_steps
from align3gr_kit.stages.contract import MANIFEST
from align3gr_kit.train.artifacts import LOG_HISTORY
from align3gr_kit.train.figures import loss_curve
from align3gr_kit.utils import read_json

CPU_REASON = "reads saved ranks and logs, no model"


def result_ranks(spec: str, split: str) -> tuple[str, list[int]] | None:
    """``(label, ranks)`` of a committed result file (a row file, or ``<pipeline file>.json:<model>``);
    None when ``spec`` names no ``.json`` file; a clear error when the file lacks the ranks asked for."""
    path, _, model = spec.partition(".json")
    if not model and not spec.endswith(".json"):
        return None
    path, model = Path(path + ".json"), model.removeprefix(":")
    if not path.is_file():
        raise SystemExit(f"{path}: no such result file")
    doc = read_json(path)
    if split != "test" or doc.get("test_target_ranks") is None:
        raise SystemExit(f"{path}: no {split} target ranks (committed results keep the test users' ranks only)")
    models = doc["test_target_ranks"]
    if isinstance(models, dict) and model not in models:
        raise SystemExit(f"{path}: name one of its models as {path}:<model>, one of {sorted(models)}")
    if not isinstance(models, dict) and model:
        raise SystemExit(f"{path}: a row file holds one model; drop ':{model}'")
    return (f"{path.stem}:{model}" if model else path.stem), kept_ranks(doc, model)


def stage_ranks(spec: str, split: str) -> tuple[str, list[int]]:
    """``(label, ranks)`` of ``<run folder>:<stage>`` or of a committed result file
    (:func:`result_ranks`); a clear error when the stage kept none."""
    if (committed := result_ranks(spec, split)) is not None:
        return committed
    run, _, stage = spec.rpartition(":")
    folder = Path(run) / stage
    if not run or not (folder / MANIFEST).is_file():
        raise SystemExit(f"{spec}: expected <run folder>:<stage> with a finished stage (no {folder / MANIFEST})")
    ranks = folder_target_ranks(folder, split)
    if ranks is None:
        raise SystemExit(f"{folder}: no {split} ranks in target_ranks.json (the stage ran before evaluations "
                         "kept per-user ranks); re-run it")
    return f"{Path(run).name}:{stage}", ranks


def loss_summary(spec: str, after: int | None = None) -> str | None:
    """An SFT stage's training loss: the trainer's ``train_loss`` (its manifest), the first and last
    logged loss, and the mean of the logged losses after step ``after`` (default: half the steps)."""
    run, _, stage = spec.rpartition(":")
    folder = Path(run) / stage
    if ".json" in spec or not (folder / LOG_HISTORY).is_file():
        return None
    curve = loss_curve(read_json(folder / LOG_HISTORY))
    if curve.empty:
        return None
    after = int(curve["step"].iloc[-1]) // 2 if after is None else after
    late = curve.loc[curve["step"] > after, "loss"]
    train_loss = read_json(folder / MANIFEST).get("metrics", {}).get("train_train_loss")
    return (f"`{spec}`: trainer train_loss {train_loss if train_loss is None else f'{train_loss:.3f}'}; "
            f"logged loss {curve['loss'].iloc[0]:.2f} at step {curve['step'].iloc[0]}, {curve['loss'].iloc[-1]:.2f} "
            f"at step {curve['step'].iloc[-1]}; mean of the {len(late)} logged values after step {after}: "
            f"{late.mean():.3f}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--a", required=True,
                    help="<run folder>:<stage> or a committed result file, the reference model")
    ap.add_argument("--b", required=True,
                    help="<run folder>:<stage> or a committed result file, the model compared with it")
    ap.add_argument("--k", type=int, default=10)
    ap.add_argument("--split", default="test", choices=("valid", "test"))
    ap.add_argument("--seed", type=int, default=0, help="the bootstrap's seed")
    ap.add_argument("--loss-after", type=int, default=None,
                    help="mean the logged SFT losses after this step (default: half the steps), e.g. 350 to "
                         "match a run resumed at step 350, whose train_loss covers only the steps after it")
    bench_device.add_device_argument(ap, cpu_by_nature=CPU_REASON)
    args = ap.parse_args(argv)
    bench_device.cpu_by_nature_note(args.device, CPU_REASON)
    a, b = stage_ranks(args.a, args.split), stage_ranks(args.b, args.split)
    if len(a[1]) != len(b[1]):
        raise SystemExit(f"the two models scored different users ({len(a[1])} vs {len(b[1])}); "
                         "compare runs of the same data, split and decode.max_eval_users")
    lines = paired_markdown(paired_steps([a, b], k=args.k, seed=args.seed),
                            f"{len(a[1])} {args.split} users, the same in both")
    print("\n".join(lines).strip())
    for spec in (args.a, args.b):
        if (summary := loss_summary(spec, args.loss_after)) is not None:
            print(f"- {summary}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
