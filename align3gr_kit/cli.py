"""Command line: ``python -m align3gr_kit <command>``. Every command prints one JSON object on stdout.

Commands:
    run       --config C [--stages 00,01] [--resume [--verify]]   the notebooks through papermill, then reports/
              --config C --mode view [--stages 04,05]  a finished run's notebooks in view mode (train nothing) -> reports/
    data      stats --dataset D [--data-path P] [--name N] [--min-interactions K] | download ml-100k [--dest data/ml-100k]
    tokenize  --config C                               dual SCID tokenization (stage 01)
    baseline  sasrec|popularity --config C             a baseline under the shared protocol
    train     sft|dpo --config C [--stage sp|rf]       SFT (stage 04) or DPO (05/06); accelerate-ready
    evaluate  --config C --split test                  Recall/NDCG of the run's model
    ablate    --config C [--ladder] [--baselines] [--seeds 3]   the ladder / all baselines in one table
              --config C --table token|sft|dpo|dpo-beta|tsrec|sa-depth|backbone|depth|ladder [--seeds 3] [--upto sft|sp|rf] [--out DIR] [--no-reuse]
                                                       a paper's table -> reports/tables/<dataset>/<table>.json|md|html
    report    benchmarks [--check]                     the tables inside reports/BENCHMARKS.md, from reports/tables/
              pipeline --config C                      a finished run's results -> reports/tables/<dataset>/pipeline-<run>.json|md
              full-test --config C [--users N]         its SFT and final models on every test user, beside SASRec
    notebooks refresh [--only 00,01]                   re-execute the committed notebooks (smoke config)
              tables                                   the smoke table notebook 07 reads (make test runs it before nbval)
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import time
from typing import Any

from align3gr_kit.config import CLI_FLAGS, RunConfig

#: ``ablate --table`` names (:data:`align3gr_kit.report.specs.TABLE_NAMES`, which a test holds them to;
#: spelled out so that ``--help`` does not import pandas and the table code).
TABLE_CHOICES = ("token", "sft", "dpo", "dpo-beta", "tsrec", "sa-depth", "backbone", "depth", "ladder")


# The one JSON object of a command goes to the real stdout; everything else a command prints
# (trainer logs, progress lines) is sent to stderr by ``main`` so that stdout parses as JSON.
_STDOUT = sys.stdout


def _print(obj: Any) -> None:
    print(json.dumps(obj, default=str), file=_STDOUT, flush=True)


def _load_config(args: argparse.Namespace) -> RunConfig:
    overrides = {}
    for item in getattr(args, "set", None) or []:
        if "=" not in item:
            raise SystemExit(f"--set expects key=value, got {item!r}")
        k, v = item.split("=", 1)
        import yaml

        overrides[k] = yaml.safe_load(v)
    return RunConfig.from_yaml(args.config, overrides=overrides, source="--set", flags=CLI_FLAGS,
                               run_name=getattr(args, "run_name", None), seed=getattr(args, "seed", None))


def cmd_data(args: argparse.Namespace) -> int:
    from align3gr_kit.config import DataConfig
    from align3gr_kit.data import leave_one_out, load_dataset

    if args.data_cmd == "download":
        if args.name != "ml-100k":
            raise SystemExit(f"only ml-100k can be downloaded automatically; got {args.name!r}")
        from align3gr_kit.data.movielens import download

        _print({"downloaded": str(download(args.dest or "data/ml-100k"))})
        return 0
    t0 = time.time()
    if args.min_interactions < 0:
        raise SystemExit(f"--min-interactions {args.min_interactions}: must be >= 0 (0 = the loader's default)")
    cfg = DataConfig(dataset=args.dataset, data_path=args.data_path or "", name=args.name or "",
                     max_history=args.max_history, min_interactions=args.min_interactions)
    ds = load_dataset(cfg, seed=args.seed)
    split = leave_one_out(ds, cfg.max_history)
    out = {"dataset": ds.name, "users": ds.n_users, "items": ds.n_items, "interactions": len(ds.interactions),
           **split.stats(), "has_ratings": ds.has_ratings, "seconds": round(time.time() - t0, 2)}
    _print(out)
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    from align3gr_kit.stages.runner import run_pipeline

    from align3gr_kit.stages.contract import Interrupted

    cfg = _load_config(args)
    stages = [s.strip() for s in args.stages.split(",")] if args.stages else None
    if args.verify and not args.resume:
        raise SystemExit("run: --verify checks finished stages before --resume skips them; add --resume")
    if args.mode == "view" and args.resume:
        raise SystemExit("run: --resume skips finished stages of --mode run; --mode view only reads finished stages")
    try:
        result = run_pipeline(cfg, config_path=args.config, stages=stages, resume=args.resume,
                              overrides=cfg_overrides(args), verify=args.verify, mode=args.mode)
    except Interrupted as e:
        if e.result is not None:  # the JSON says where it stopped too; main prints the one line
            _print(e.result)
        raise
    _print(result)
    return 0 if result["ok"] else 1


def cfg_overrides(args: argparse.Namespace) -> dict[str, Any]:
    import yaml

    out = {}
    for item in getattr(args, "set", None) or []:
        k, v = item.split("=", 1)
        out[k] = yaml.safe_load(v)
    if getattr(args, "run_name", None):
        out["run_name"] = args.run_name
    if getattr(args, "seed", None) is not None:
        out["seed"] = args.seed
    return out


def cmd_tokenize(args: argparse.Namespace) -> int:
    from align3gr_kit.stages.contract import ensure_upstream, run_lock, run_stage

    cfg = _load_config(args)
    with run_lock(cfg):  # one writer per run, for the whole command
        ensure_upstream(cfg, "01_tokenize")
        _print(run_stage(cfg, "01_tokenize"))
    return 0


def cmd_baseline(args: argparse.Namespace) -> int:
    from align3gr_kit.baselines import run_popularity_baseline, run_sasrec_baseline
    from align3gr_kit.stages.contract import stage_artifacts

    cfg = _load_config(args)
    data = stage_artifacts(cfg, "00_data")
    fn = {"sasrec": run_sasrec_baseline, "popularity": run_popularity_baseline}[args.name]
    _print(fn(cfg, data.dataset, data.split))
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    from align3gr_kit.stages.contract import ensure_upstream, run_lock, run_stage
    from align3gr_kit.distributed import process_state

    cfg = _load_config(args)
    # First: the process group gets the config's timeout only if the kit creates it (before any
    # TrainingArguments), and several GPUs without a launch are refused here, before any model.
    state = process_state(cfg)
    stage = "04_sft" if args.what == "sft" else {"sp": "05_sp_dpo", "rf": "06_rf_dpo"}[args.stage]
    # the main process alone holds the run's lock for the launch (the other ranks never take it, so rank
    # 0's lock cannot refuse them); when another command holds it, rank 0 stops and the launcher stops the rest
    with run_lock(cfg, take=state.is_main_process):
        ensure_upstream(cfg, stage, how=config_flags(args))
        out = run_stage(cfg, stage, all_processes=True)
    if state.is_main_process:
        _print({"stage": stage, "run_dir": str(cfg.run_dir), "metrics": out})
    return 0


def config_flags(args: argparse.Namespace) -> str:
    """``--config C`` and the overrides of this command line (``--set``, ``--run-name``, ``--seed``), quoted
    for a shell: what another command needs to address the same run with the same settings."""
    import shlex

    flags = ["--config", args.config]
    for item in getattr(args, "set", None) or []:
        flags += ["--set", item]
    if getattr(args, "run_name", None):
        flags += ["--run-name", args.run_name]
    if getattr(args, "seed", None) is not None:
        flags += ["--seed", str(args.seed)]
    return " ".join(shlex.quote(f) for f in flags)


def cmd_evaluate(args: argparse.Namespace) -> int:
    from align3gr_kit.evaluate import run_evaluate

    cfg = _load_config(args)
    _print(run_evaluate(cfg, args.split, args.model_stage))
    return 0


def cmd_ablate(args: argparse.Namespace) -> int:
    from pathlib import Path

    from align3gr_kit.report.benchmark import run_benchmark
    from align3gr_kit.report.tables import run_table

    cfg = _load_config(args)
    seeds = [cfg.seed + i for i in range(args.seeds)]
    if args.table and (args.ladder or args.baselines):
        raise SystemExit("ablate: --table runs one table alone; drop --ladder/--baselines (or use --table ladder)")
    if not (args.table or args.ladder or args.baselines):
        raise SystemExit("ablate: choose --table NAME, or --ladder and/or --baselines")
    if args.upto and not args.table:
        raise SystemExit("ablate: --upto goes with --table")
    base_overrides = {k: v for k, v in cfg_overrides(args).items() if k not in ("run_name", "seed")}
    if args.table:
        try:
            doc = run_table(cfg, args.config, args.table, seeds, upto=args.upto,
                            out_dir=Path(args.out) if args.out else None, base_overrides=base_overrides,
                            reuse=not args.no_reuse)
        except ValueError as e:
            raise SystemExit(f"ablate --table {args.table}: {e}") from e
        _print({k: doc[k] for k in ("table", "dataset", "seeds", "upto", "wall_seconds", "fingerprint", "commit")}
               | {"rows": [{k: r.get(k) for k in ("method", "seeds", "recall@10", "recall@10 sd", "ndcg@10",
                                                  "ndcg@10 sd", "recall@10 verdict", "ndcg@10 verdict")}
                           for r in doc["rows"]], "failed": doc["failed"], "files": doc["files"]})
        return 1 if doc["failed"] else 0
    _print(run_benchmark(cfg, args.config, seeds, ladder=args.ladder, baselines=args.baselines,
                         base_overrides=base_overrides))
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from align3gr_kit.report.benchmarks_md import update_benchmarks

    if args.report_cmd == "pipeline":
        from align3gr_kit.report.pipeline_file import write_pipeline_document

        cfg = _load_config(args)
        path = write_pipeline_document(cfg, args.config)
        if path is None:
            print(f"error: run {cfg.run_name!r} has no finished 04_sft stage in {cfg.run_dir}; run it first: "
                  f"python -m align3gr_kit run --config {args.config}", file=sys.stderr)
            return 1
        _print({"pipeline": str(path), "markdown": str(path.with_suffix(".md"))})
        return 0

    if args.report_cmd == "full-test":
        from align3gr_kit.report.full_test import run_full_test

        cfg = _load_config(args)
        try:
            doc = run_full_test(cfg, args.config, users=args.users)
        except FileNotFoundError as e:
            print(f"error: {e}", file=sys.stderr)
            return 1
        _print({"users": doc["users"], "rows": [{k: r.get(k) for k in ("method", "recall@10", "ndcg@10",
                                                                         "recall@10 / SASRec")} for r in doc["rows"]],
                "files": doc["files"]})
        return 0

    changed, blocks = update_benchmarks(check=args.check)
    _print({"benchmarks": str(changed["path"]), "tables": blocks, "changed": changed["changed"], "check": args.check})
    if args.check and changed["changed"]:
        print(f"error: {changed['path']} disagrees with reports/tables/ ({', '.join(changed['changed'])}); "
              "run: python -m align3gr_kit report benchmarks", file=sys.stderr)
        return 1
    return 0


def cmd_notebooks(args: argparse.Namespace) -> int:
    from align3gr_kit.stages.refresh import refresh, smoke_tables

    if args.nb_cmd == "tables":
        doc = smoke_tables()
        _print({k: doc[k] for k in ("table", "dataset", "seeds", "upto", "wall_seconds", "failed", "files")})
        return 1 if doc["failed"] else 0
    only = [s.strip() for s in args.only.split(",")] if args.only else None
    _print({"refreshed": [str(p) for p in refresh(only)]})
    return 0


def _add_config_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", required=True, help="YAML config (configs/smoke.yaml, configs/default.yaml, ...)")
    p.add_argument("--run-name", dest="run_name", default=None, help="override run_name")
    p.add_argument("--seed", type=int, default=None, help="override seed")
    p.add_argument("--set", action="append", metavar="KEY=VALUE", help="dotted override, e.g. tokenizer.levels=2")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m align3gr_kit", description="Align3GR research kit")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("run", help="run the notebooks of the pipeline through papermill, render reports/")
    _add_config_args(p)
    p.add_argument("--stages", default=None, help="comma-separated stages, e.g. 00,01 (default: all)")
    p.add_argument("--resume", action="store_true",
                   help="skip stages whose parameters, inputs and files are unchanged (sizes, and hashes of files "
                        "up to 16 MB, checked); a stage that fails the check is re-run")
    p.add_argument("--verify", action="store_true", help="with --resume: hash every file of a finished stage, "
                                                          "model weights too (seconds per GB)")
    p.add_argument("--mode", choices=["run", "view"], default="run",
                   help="run: (re)make the stages (default); view: execute the notebooks of a finished run in view "
                        "mode (nothing trained, nothing under runs/ written) and render reports/<run>/")
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("data", help="dataset statistics and downloads")
    dsub = p.add_subparsers(dest="data_cmd", required=True)
    s = dsub.add_parser("stats", help="print users/items/interactions/split statistics as JSON")
    s.add_argument("--dataset", required=True, help="synthetic, ml-100k, lcrec or amazon2018")
    s.add_argument("--data-path", default=None)
    s.add_argument("--name", default=None, help="file prefix (lcrec) or category (amazon2018)")
    s.add_argument("--max-history", type=int, default=20)
    s.add_argument("--min-interactions", type=int, default=0,
                   help="k-core filter on users and items, as data.min_interactions (0 = the loader's default)")
    s.add_argument("--seed", type=int, default=0)
    d = dsub.add_parser("download", help="fetch a dataset that may be downloaded (ml-100k)")
    d.add_argument("name")
    d.add_argument("--dest", default=None)
    p.set_defaults(func=cmd_data)

    p = sub.add_parser("tokenize", help="dual SCID tokenization of the run (stage 01 without figures)")
    _add_config_args(p)
    p.set_defaults(func=cmd_tokenize)

    p = sub.add_parser("baseline", help="a non-generative baseline under the shared protocol")
    p.add_argument("name", choices=["sasrec", "popularity"])
    _add_config_args(p)
    p.set_defaults(func=cmd_baseline)

    p = sub.add_parser("train", help="SFT or DPO training (also under accelerate launch / torchrun)")
    p.add_argument("what", choices=["sft", "dpo"])
    _add_config_args(p)
    p.add_argument("--stage", choices=["sp", "rf"], default="sp", help="dpo: self-play or real-feedback stages")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("evaluate", help="Recall/NDCG of a trained model of the run with constrained beam search")
    _add_config_args(p)
    p.add_argument("--split", choices=["valid", "test"], default="test")
    p.add_argument("--model-stage", default="04_sft", help="the stage whose model/ to evaluate")
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser("ablate", help="the ablation ladder and/or every baseline, as papermill runs, N seeds")
    _add_config_args(p)
    p.add_argument("--ladder", action="store_true", help="the ladder of the paper's Figure 4")
    p.add_argument("--baselines", action="store_true", help="popularity, SASRec, TIGER-/LC-Rec-style, full pipeline")
    p.add_argument("--seeds", type=int, default=1, help="repeat with seeds seed, seed+1, ...")
    p.add_argument("--table", choices=TABLE_CHOICES, default=None,
                   help="one of the papers' tables, written to reports/tables/<dataset>/ (smoke: <runs_dir>/tables/)")
    p.add_argument("--upto", choices=["sft", "sp", "rf"], default=None,
                   help="--table: stop the chain after SFT, SP-DPO or RF-DPO (default: the table's own)")
    p.add_argument("--out", default=None, help="--table: the folder for the table files instead of the default")
    p.add_argument("--no-reuse", action="store_true",
                   help="--table: run every row, even one whose result is committed under <table folder>/rows/")
    p.set_defaults(func=cmd_ablate)

    p = sub.add_parser("report", help="documents made from results files")
    rsub = p.add_subparsers(dest="report_cmd", required=True)
    r = rsub.add_parser("benchmarks", help="regenerate the tables inside reports/BENCHMARKS.md from reports/tables/")
    r.add_argument("--check", action="store_true", help="change nothing; exit 1 when the two disagree")
    r = rsub.add_parser("pipeline", help="a finished run's results -> reports/tables/<dataset>/pipeline-<run>.json|md "
                        "(run writes the same into reports/<run>/)")
    _add_config_args(r)
    r = rsub.add_parser("full-test", help="the run's SFT and final models on every test user, beside SASRec and "
                        "Popularity on the same users -> reports/tables/<dataset>/full-test-<run>.json|md")
    _add_config_args(r)
    r.add_argument("--users", type=int, default=0, help="the first N test users; 0 = all")
    p.set_defaults(func=cmd_report)

    p = sub.add_parser("notebooks", help="maintenance of the committed notebooks")
    nsub = p.add_subparsers(dest="nb_cmd", required=True)
    r = nsub.add_parser("refresh", help="re-execute notebooks/ on the smoke config in place and strip metadata")
    r.add_argument("--only", default=None, help="comma-separated stages, e.g. 00,01")
    nsub.add_parser("tables", help="make the smoke-config table notebook 07 reads (before nbval runs 07)")
    p.set_defaults(func=cmd_notebooks)
    return parser


def _quiet_after_interrupt() -> None:
    """Once a command is stopped, the notebook machinery's own reports of it are noise: papermill shuts
    the kernel down while nbclient still awaits the running cell, and nbclient ("Kernel died while
    waiting for execute reply") and asyncio ("Task exception was never retrieved", with a traceback)
    would log that on stderr around the command's one line."""
    import logging

    for name in ("asyncio", "nbclient", "papermill", "traitlets"):
        logging.getLogger(name).setLevel(logging.CRITICAL + 1)


def main(argv: list[str] | None = None) -> int:
    """Run one command. Bad input (:class:`~align3gr_kit.errors.InputError`, a missing file, a usage
    error a command raises, a run another command holds) prints one line ``error: <message>`` on stderr
    and returns 2, without a traceback; ``--debug`` anywhere on the line, or ``ALIGN3GR_DEBUG=1``,
    re-raises it to show one. Ctrl-C or SIGTERM prints one line (``interrupted in stage 04_sft after
    73 s; run again with --resume``) and returns 130. Anything else is a bug and keeps its traceback.
    """
    import os
    import signal
    import warnings

    from align3gr_kit.errors import DataWarning, InputError

    argv = list(sys.argv[1:] if argv is None else argv)
    # --debug is taken from anywhere on the line (users add it at the end of the failing command).
    debug = "--debug" in argv or os.environ.get("ALIGN3GR_DEBUG", "").strip() not in ("", "0")
    parser = build_parser()
    parser.add_argument("--debug", action="store_true",
                        help="on bad input, show the traceback instead of one line (also ALIGN3GR_DEBUG=1)")
    args = parser.parse_args([a for a in argv if a != "--debug"])
    default_show = warnings.showwarning

    def show(message, category, filename, lineno, file=None, line=None):
        if issubclass(category, DataWarning):  # a documented rule applied to the input: one plain line
            print(f"warning: {message}", file=sys.stderr)
        else:
            default_show(message, category, filename, lineno, file, line)

    global _STDOUT
    _STDOUT = sys.stdout
    t0 = time.time()
    from align3gr_kit.stages.contract import Interrupted

    def stop(signum, frame):  # Ctrl-C, and SIGTERM (a scheduler, kill) like it: partial folders removed
        _quiet_after_interrupt()
        raise KeyboardInterrupt

    old_term = signal.signal(signal.SIGTERM, stop) if _main_thread() else None
    old_int = signal.signal(signal.SIGINT, stop) if _main_thread() else None
    try:
        with contextlib.redirect_stdout(sys.stderr), warnings.catch_warnings():
            warnings.showwarning = show
            return args.func(args)
    except (Interrupted, KeyboardInterrupt) as e:
        if debug:
            raise
        where = str(e) if isinstance(e, Interrupted) else f"interrupted after {time.time() - t0:.0f} s"
        print(where, file=sys.stderr, flush=True)
        return 130
    except (InputError, FileNotFoundError) as e:
        if debug:
            raise
        message = str(e)
    except SystemExit as e:
        if debug or not isinstance(e.code, str):
            raise
        message = e.code
    finally:
        if old_term is not None:
            signal.signal(signal.SIGTERM, old_term)
        if old_int is not None:
            signal.signal(signal.SIGINT, old_int)
    print("error: " + " ".join(line.strip() for line in message.splitlines() if line.strip()), file=sys.stderr)
    return 2


def _main_thread() -> bool:
    import threading

    return threading.current_thread() is threading.main_thread()
