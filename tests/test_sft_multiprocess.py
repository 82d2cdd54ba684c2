"""SFT under several processes: torchrun and accelerate launch, 2 CPU processes (gloo), a few steps."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

from align3gr_kit.config import RunConfig
from align3gr_kit.scid import ScidTable


def make_run(root: Path, n_users: int = 40, n_items: int = 30, prompts: bool = True) -> Path:
    """A run folder with stages 00_data and 01_tokenize done (item SCIDs from the ground-truth category) and,
    with ``prompts``, 03_sft_prompts built in this process: a launch never builds upstream stages."""
    from align3gr_kit.data.split import leave_one_out
    from align3gr_kit.data.synthetic import generate_synthetic
    from align3gr_kit.data.artifacts import DataArtifacts
    from align3gr_kit.stages.contract import StageRun
    from align3gr_kit.tokenizer.artifacts import TokenizeArtifacts

    cfg = RunConfig.from_dict({
        "run_name": "mp", "runs_dir": str(root), "seed": 0,
        "data": {"synthetic_users": n_users, "synthetic_items": n_items},
        "model": {"hidden_size": 32, "num_layers": 1, "num_heads": 2, "bpe_vocab_size": 300, "sa_init": False},
        "prompts": {"max_per_task": 40}, "sft": {"max_steps": 4, "batch_size": 4, "logging_steps": 1},
        "decode": {"beam_width": 10, "max_eval_users": 5},
    })
    ds = generate_synthetic(n_users, n_items, seed=0)
    split = leave_one_out(ds, 20)
    st = StageRun(cfg, "00_data")
    DataArtifacts(ds, split).save(st.dir)
    st.finish({})
    st = StageRun(cfg, "01_tokenize")
    cat = ds.items.category.astype("category").cat.codes.to_numpy()
    within = ds.items.groupby("category").cumcount().to_numpy()
    items = ScidTable(np.stack([cat, within % 2, within // 2], 1), "item")  # 3 levels: SP-DPO's hard stage needs them
    users = ScidTable(np.stack([np.arange(ds.n_users) % 4, np.arange(ds.n_users)], 1), "user")
    TokenizeArtifacts(items, users, items.codes, users.codes, np.zeros((items.n, 4)), np.zeros((users.n, 4)), [],
                      {}).save(st.dir)
    st.finish({})
    if prompts:
        from align3gr_kit.stages.contract import run_stage

        run_stage(cfg, "03_sft_prompts")
    path = root / "cfg.yaml"
    path.write_text(yaml.safe_dump(cfg.to_dict()))
    return path


def test_torchrun_two_cpu_processes(tmp_path):
    config = make_run(tmp_path)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29561",
           "-m", "align3gr_kit.train.sft_main", "--config", str(config), "--no-eval"]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=180)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads([line for line in proc.stdout.splitlines() if line.startswith("{")][-1])
    assert out["train_world_size"] == 2 and out["train_steps"] == 4
    model_dir = tmp_path / "mp" / "04_sft" / "model"
    assert (model_dir / "config.json").exists() and (model_dir / "item_scids.json").exists()
    assert (tmp_path / "mp" / "03_sft_prompts" / "manifest.json").exists()
    assert (tmp_path / "mp" / "04_sft" / "manifest.json").exists()


@pytest.mark.slow
def test_accelerate_launch_two_cpu_processes(tmp_path):
    config = make_run(tmp_path)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    # accelerate's `--cpu` multi-process mode needs MPI; `--multi_gpu` is its torch.distributed launcher,
    # which falls back to gloo on a machine without GPUs.
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
           "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", "29562",
           "-m", "align3gr_kit.train.sft_main", "--config", str(config), "--no-eval"]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads([line for line in proc.stdout.splitlines() if line.startswith("{")][-1])
    assert out["train_world_size"] == 2
