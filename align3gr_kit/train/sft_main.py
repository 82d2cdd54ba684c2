"""Script entry of stage 04 for one or several processes.

    python -m align3gr_kit.train.sft_main --config configs/smoke.yaml [--set sft.max_steps=50]
    torchrun --nproc_per_node 2 -m align3gr_kit.train.sft_main --config configs/smoke.yaml
    accelerate launch --multi_gpu --num_processes 2 -m align3gr_kit.train.sft_main --config configs/smoke.yaml

(``--multi_gpu`` is accelerate's torch.distributed launcher; without GPUs it runs gloo on CPU, while
accelerate's ``--cpu`` multi-process mode needs MPI. DeepSpeed/FSDP: pass an accelerate config.)

In one process, stages 00, 01 and 03 are built first when they are not current; under a launch they
must be current already (every rank stops at once with the command that builds them). Rank 0 prints
one JSON object (the stage's metrics) on stdout; a refused setup prints one line ``error: ...`` and
exits with status 2.
"""

from __future__ import annotations

import argparse
import json
import sys

import yaml

from align3gr_kit.config import CLI_FLAGS, RunConfig


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m align3gr_kit.train.sft_main", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", required=True, help="YAML run config")
    p.add_argument("--run-name", dest="run_name", default=None)
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="dotted override, e.g. sft.max_steps=50")
    p.add_argument("--no-eval", action="store_true", help="train and save only (no beam-search evaluation)")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    from align3gr_kit.cli import config_flags
    from align3gr_kit.errors import InputError
    from align3gr_kit.stages.contract import ensure_upstream, run_stage
    from align3gr_kit.distributed import process_state

    args = parse_args(argv)
    overrides = {}
    for item in args.set:
        if "=" not in item:
            raise SystemExit(f"--set expects KEY=VALUE, got {item!r}")
        k, v = item.split("=", 1)
        overrides[k] = yaml.safe_load(v)
    try:
        cfg = RunConfig.from_yaml(args.config, overrides=overrides, source="--set", flags=CLI_FLAGS,
                                  run_name=args.run_name, seed=args.seed)
        state = process_state(cfg)  # first: the process group's timeout is the config's (see process_state)
        ensure_upstream(cfg, "04_sft", how=config_flags(args))
    except InputError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    out = run_stage(cfg, "04_sft", all_processes=True, evaluate_splits=() if args.no_eval else ("valid", "test"))
    if state.is_main_process:
        print(json.dumps(out, default=str))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
