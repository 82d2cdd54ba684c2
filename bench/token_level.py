"""Benchmark: wall time and peak memory of the whole token level (``run_tokenize``) on real data.

For each dataset, in a fresh child process (so that peak RSS is that dataset's alone): load the
data, split it, run ``run_tokenize`` (frozen encoders, SASRec on the training split, SC encoders,
RQ-VAEs, unique SCIDs) into a temporary folder, and print one JSON line::

    {"dataset": "ml-100k", "seconds": ..., "load_seconds": ..., "peak_rss_mb": ..., "device": ...,
     "peak_memory_mb": ..., "summary": {...}}

``peak_rss_mb`` is ``resource.getrusage(RUSAGE_SELF).ru_maxrss`` (the child's peak resident set,
torch and numpy buffers included, which tracemalloc would miss); ``peak_memory_mb`` is the peak of
the device (:mod:`align3gr_kit.bench_device`; on a GPU ``torch.cuda.max_memory_allocated`` over
``run_tokenize``, on the CPU the same peak RSS).

``--device`` (default: CUDA when present): the token level's encoders (MiniLM, SASRec, RQ-VAE) use
CUDA whenever torch sees it, so ``--device cpu`` hides the GPUs from the child
(``CUDA_VISIBLE_DEVICES=""``) and ``cuda:N`` makes GPU N the child's current device. The clock is
read between device syncs; the header line (stderr) names the device and compute dtype (fp32: the
token level does not autocast).

Datasets: ``ml-100k`` (text + CF: item titles/genres and user profiles through MiniLM) and
``instruments`` (the LC-Rec Instruments set: no text there, so CF-only: ``use_semantic: false``).
They are read from ``data/<name>/`` or ``../shared/data/<name>/``.

Run: ``OMP_WAIT_POLICY=PASSIVE .venv/bin/python bench/token_level.py [--datasets ml-100k,instruments]
[--set tokenizer.sasrec.epochs=10 ...]`` (a shared, busy CPU: the OpenMP setting stops idle torch
threads from spinning, see the README).
"""

from __future__ import annotations

import argparse
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

from align3gr_kit import bench_device

DATASETS = {
    "ml-100k": {"data.dataset": "ml-100k"},
    "instruments": {"data.dataset": "lcrec", "data.name": "Instruments", "data.data_path": "amazon-instruments",
                    "tokenizer.use_semantic": False},
}


def run_one(name: str, overrides: dict, device) -> dict:
    """Load, split and tokenize one dataset in this process on ``device``; return the measurements."""
    import torch

    from align3gr_kit import bench_device
    from align3gr_kit.config import RunConfig
    from align3gr_kit.data import find_data_path, leave_one_out, load_dataset
    from align3gr_kit.tokenizer.pipeline import run_tokenize
    from align3gr_kit.utils import project_root

    settings = {**DATASETS[name], **overrides}
    if settings.get("data.data_path") == "amazon-instruments":
        settings["data.data_path"] = str(project_root().parent / "shared" / "data" / "amazon-instruments")
    cfg = RunConfig(run_name=f"bench-{name}").override(settings)
    if device.type == "cuda" and device.index is not None:
        torch.cuda.set_device(device)  # the encoders ask for "cuda": the current device
    t0 = time.time()
    find_data_path(cfg.data)  # a clear error when the data are absent
    ds = load_dataset(cfg.data, seed=cfg.seed)
    split = leave_one_out(ds, cfg.data.max_history)
    load_s = time.time() - t0
    bench_device.reset_peak(device)
    with tempfile.TemporaryDirectory() as out:
        with bench_device.timed(device) as t:
            summary = run_tokenize(cfg, ds, split, Path(out), progress=False)
    return {"dataset": name, "users": ds.n_users, "items": ds.n_items, "interactions": len(ds.interactions),
            "seconds": round(t.seconds, 1), "load_seconds": round(load_s, 1),
            "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
            **bench_device.device_fields(device, "float32"), "summary": summary}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--datasets", default="ml-100k,instruments", help=f"comma-separated, from {sorted(DATASETS)}")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="dotted config override")
    p.add_argument("--child", default=None, help=argparse.SUPPRESS)
    bench_device.add_device_argument(p)
    args = p.parse_args()
    overrides = {k: yaml.safe_load(v) for k, v in (s.split("=", 1) for s in args.set)}
    if args.child:
        bench_device.emit(run_one(args.child, overrides, args.device))
        return
    bench_device.header(args.device, "float32")
    env = dict(os.environ)
    if args.device.type == "cpu":
        env["CUDA_VISIBLE_DEVICES"] = ""  # the encoders would otherwise take a visible GPU
    for name in args.datasets.split(","):
        if name not in DATASETS:
            raise SystemExit(f"--datasets: unknown {name!r}; choose from {sorted(DATASETS)}")
        cmd = [sys.executable, __file__, "--child", name, "--device", str(args.device)]
        cmd += [a for s in args.set for a in ("--set", s)]
        res = subprocess.run(cmd, capture_output=True, text=True, env=env)
        if res.returncode:
            sys.stderr.write(res.stderr[-3000:])
            raise SystemExit(f"{name}: the benchmark failed (exit {res.returncode})")
        print(res.stdout.strip().splitlines()[-1], flush=True)


if __name__ == "__main__":
    main()
