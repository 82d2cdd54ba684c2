"""Several processes on CPU (gloo, 2 processes through torch.distributed.run): the pipeline's training
stages under a launch, sharded work equal to one process, and the setups the kit refuses.

The launch runs a small driver (written below) that calls the command line's ``train sft``, ``train dpo
--stage sp`` and ``train dpo --stage rf`` in one 2-process launch, then reports from every rank what the
tests compare: the process group's timeout, the per-rank hashes of every DPO stage's examples, a
sharded evaluation, and the probes of the agreement check.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

from align3gr_kit.config import RunConfig
from test_sft_multiprocess import make_run

ENV = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}

DRIVER = '''
import json, sys
import torch
import torch.distributed as dist
import align3gr_kit.dpo.progressive as progressive
from align3gr_kit import cli
from align3gr_kit.distributed import check_ranks_agree, sharded_map

config = sys.argv[1]
hashes = []
real_check = progressive.check_ranks_agree

def spy(value, what):  # every value the ranks compared, as gathered on this rank
    values = real_check(value, what)
    hashes.append({"what": what, "values": values})
    return values

progressive.check_ranks_agree = spy
codes = [cli.main(["train", "sft", "--config", config]),
         cli.main(["train", "dpo", "--stage", "sp", "--config", config]),
         cli.main(["train", "dpo", "--stage", "rf", "--config", config])]
rank = dist.get_rank()
group = dist.distributed_c10d._get_default_group()
timeout = group._get_backend(torch.device("cpu")).options._timeout.total_seconds()

from align3gr_kit.evaluate import evaluate
from align3gr_kit.model import load_model
from align3gr_kit.stages.contract import get_stage, stage_dir
from align3gr_kit.config import RunConfig
cfg = RunConfig.from_yaml(config)
model, tokenizer, items, users = load_model(stage_dir(cfg, "04_sft") / "model", "float32")
split = get_stage("00_data").load_artifacts(stage_dir(cfg, "00_data")).split
sharded_eval = evaluate(model, tokenizer, items, users, split.samples("valid"), cfg.decode, True,
                        max_length=cfg.sft.max_length, progress=False, precision="float32", keep_ranks=True)
try:
    check_ranks_agree(f"value-of-rank-{rank}", "probe")
    disagreement = None
except RuntimeError as e:
    disagreement = str(e)
shards = sharded_map(list(range(7)), 2, lambda part: [[x, rank] for x in part])
with open(f"{sys.argv[2]}/result-{rank}.json", "w") as f:
    json.dump({"rank": rank, "codes": codes, "timeout_s": timeout, "hashes": hashes, "eval": sharded_eval,
               "disagreement": disagreement, "shards": shards}, f)
dist.barrier()  # no rank leaves while the other still talks to it
dist.destroy_process_group()
'''


def free_port() -> int:
    """A port no process listens on now (fixed ports collide when two test runs share the machine)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch(args: list[str], timeout: int = 240) -> tuple[subprocess.CompletedProcess, float]:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(free_port()),
           *args]
    t0 = time.time()
    proc = subprocess.run(cmd, capture_output=True, text=True, env=ENV, timeout=timeout,
                          cwd=Path(__file__).parent.parent)
    return proc, time.time() - t0


def small_pipeline_config(config: Path) -> Path:
    """The run of ``make_run`` with tiny DPO stages, 2-user decoding batches and a 7-minute group timeout
    (none of these settings is read by stages 00-03, which stay current)."""
    d = yaml.safe_load(config.read_text())
    d["decode"].update({"beam_width": 10, "batch_size": 2, "max_eval_users": 5, "topk": [5, 10]})
    d["dpo"].update({"sp_stages": ["easy"], "rf_stages": ["easy"], "rf_oracle": "ground_truth", "max_prompts": 6,
                     "max_steps": 1, "batch_size": 2, "n_rejected": 3, "sp_beam_width": 8, "sp_rank_pool": 4,
                     "logging_steps": 1})
    d["distributed"] = {"timeout_minutes": 7}
    config.write_text(yaml.safe_dump(d))
    return config


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory):
    """SFT -> SP-DPO -> RF-DPO in one 2-process launch; every rank's report."""
    root = tmp_path_factory.mktemp("dist")
    config = small_pipeline_config(make_run(root))
    driver = root / "driver.py"
    driver.write_text(DRIVER)
    proc, _ = launch([str(driver), str(config), str(root)], timeout=420)
    assert proc.returncode == 0, proc.stderr[-4000:]
    results = [json.loads((root / f"result-{rank}.json").read_text()) for rank in (0, 1)]
    assert [r["rank"] for r in results] == [0, 1]
    return {"root": root, "config": config, "results": results, "run": RunConfig.from_yaml(config).run_dir}


def test_sft_then_sp_and_rf_dpo_under_two_processes_train_on_identical_examples(pipeline):
    r0, r1 = pipeline["results"]
    assert r0["codes"] == r1["codes"] == [0, 0, 0]
    # the config's timeout reached the process group (torch's gloo default is 30 minutes)
    assert r0["timeout_s"] == r1["timeout_s"] == 7 * 60
    run = pipeline["run"]
    sft = json.loads((run / "04_sft" / "manifest.json").read_text())["metrics"]
    assert sft["train_world_size"] == 2 and sft["train_global_batch"] == 4 * 1 * 2 and sft["train_steps"] == 4
    for folder, stage in (("05_sp_dpo", "easy"), ("06_rf_dpo", "easy")):
        entry = json.loads((run / folder / "history.json").read_text())["stages"][0]
        assert entry["world_size"] == 2 and entry["global_batch"] == 2 * 1 * 2 and entry["steps"] == 1
        manifest = json.loads((run / folder / "manifest.json").read_text())["metrics"]
        assert manifest[f"{stage}/run/world_size"] == 2 and manifest[f"{stage}/run/global_batch"] == 4
        examples = [h for h in r0["hashes"] if h["what"] == f"DPO stage {stage!r}: the training examples"]
        # each stage's hash as gathered from both ranks, equal, and the one the stage recorded
        mine = [h for h in examples if h["values"][0] == entry["examples_sha256"]]
        assert len(mine) == 1 and mine[0]["values"] == [entry["examples_sha256"]] * 2
    # both ranks saw the same gathered lists (the checks ran on both)
    assert r0["hashes"] == r1["hashes"] and len(r0["hashes"]) == 4  # examples and policy, per stage


def test_sharded_evaluation_equals_one_process(pipeline):
    from align3gr_kit.evaluate import evaluate
    from align3gr_kit.model import load_model
    from align3gr_kit.stages.contract import get_stage, stage_dir

    cfg = RunConfig.from_yaml(pipeline["config"])
    model, tokenizer, items, users = load_model(stage_dir(cfg, "04_sft") / "model", "float32")
    split = get_stage("00_data").load_artifacts(stage_dir(cfg, "00_data")).split
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the launch's OMP_NUM_THREADS: the same kernels, the same sums
    try:
        one = evaluate(model, tokenizer, items, users, split.samples("valid"), cfg.decode, True,
                       max_length=cfg.sft.max_length, progress=False, precision="float32", keep_ranks=True)
    finally:
        torch.set_num_threads(threads)
    for r in pipeline["results"]:
        got = dict(r["eval"])
        assert got.pop("seconds") >= 0
        assert got == {k: v for k, v in one.items() if k != "seconds"}
    assert one["users"] == 5 and len(one["target_ranks"]) == 5  # 3 decoding batches of 2: ranks took 0, 2 and 1


def test_sharded_map_order_and_the_agreement_check_under_two_processes(pipeline):
    for r in pipeline["results"]:
        # 7 items in batches of 2: rank 0 computed batches 0 and 2, rank 1 batches 1 and 3, back in order
        assert r["shards"] == [[0, 0], [1, 0], [2, 1], [3, 1], [4, 0], [5, 0], [6, 1]]
        assert "probe: the ranks disagree" in r["disagreement"]
        assert "rank 0: value-of-rank-0" in r["disagreement"] and "rank 1: value-of-rank-1" in r["disagreement"]


STOPWATCH = '''
import json, os, sys, time
t0 = time.time()  # before torch and the kit are imported: the rank's whole life
from align3gr_kit import cli
code = cli.main(sys.argv[2:])
with open(f"{sys.argv[1]}/stop-{os.environ['RANK']}.json", "w") as f:
    json.dump({"code": code, "seconds": time.time() - t0}, f)
sys.exit(code)
'''


def test_a_launch_with_a_missing_upstream_stage_stops_every_rank_with_the_command(tmp_path):
    config = make_run(tmp_path)  # 00, 01, 03 built; 04 missing: `train dpo` must not start an SFT
    (tmp_path / "stopwatch.py").write_text(STOPWATCH)
    proc, _ = launch([str(tmp_path / "stopwatch.py"), str(tmp_path), "train", "dpo", "--stage", "sp",
                      "--config", str(config)])
    assert proc.returncode != 0
    # one line from each rank (the two ranks write to one pipe at once: split on the prefix, not on lines)
    errors = proc.stderr.split("error: ")[1:]
    assert len(errors) == 2, proc.stderr[-3000:]
    for message in errors:
        assert "04_sft" in message and f"python -m align3gr_kit train sft --config {config}" in message
    for rank in (0, 1):  # every rank stopped by itself, from its start (imports included), in seconds
        stop = json.loads((tmp_path / f"stop-{rank}.json").read_text())
        assert stop["code"] == 2 and stop["seconds"] < 10, stop
    assert not (tmp_path / "mp" / "04_sft").exists() and not (tmp_path / "mp" / ".04_sft.partial").exists()


def test_two_visible_gpus_without_a_launch_are_refused(tmp_path, monkeypatch, capsys):
    from align3gr_kit import cli
    from align3gr_kit.train.sft import training_args

    config = make_run(tmp_path, prompts=False)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.delenv("LOCAL_RANK", raising=False)
    assert cli.main(["train", "sft", "--config", str(config)]) == 2
    err = capsys.readouterr().err
    assert "2 GPUs are visible" in err and "accelerate launch --multi_gpu --num_processes 2" in err
    assert "CUDA_VISIBLE_DEVICES=0 python" in err
    assert not (tmp_path / "mp" / "03_sft_prompts").exists()  # refused before anything was built
    # the Trainer-level guard too: no TrainingArguments (whose n_gpu would be 2) is made
    with pytest.raises(Exception, match="nn.DataParallel"):
        training_args(RunConfig.from_yaml(config), tmp_path)
    monkeypatch.setenv("LOCAL_RANK", "0")  # inside a launch (even of one process), one process per GPU: accepted
    from align3gr_kit.distributed import refuse_data_parallel

    refuse_data_parallel()


def test_training_arguments_carry_the_timeout_unused_parameters_and_checkpointing(tmp_path):
    from align3gr_kit.dpo.progressive import _training_args
    from align3gr_kit.train.sft import training_args

    base = RunConfig.from_dict({"runs_dir": str(tmp_path)})
    cfg = base.override({"distributed.timeout_minutes": 7, "distributed.find_unused_parameters": True,
                         "sft.gradient_checkpointing": True, "dpo.gradient_checkpointing": True,
                         "sft.save_minutes": 15})
    for args in (training_args(cfg, tmp_path), _training_args(cfg.dpo, tmp_path, 0, "float32", cfg.distributed)):
        assert args.ddp_timeout == 7 * 60 and args.ddp_find_unused_parameters is True
        assert args.activation_checkpointing is True
        assert args.activation_checkpointing_kwargs == {"use_reentrant": False}
    args = _training_args(base.dpo, tmp_path, 0, "float32", base.distributed)
    assert args.ddp_timeout == 120 * 60 and args.ddp_find_unused_parameters is False
    assert args.activation_checkpointing is False
    # none of them can change a result: the stages' fingerprints stay those of the defaults
    assert cfg.section_hash("model", "sft", "decode") == base.section_hash("model", "sft", "decode")
    assert cfg.section_hash("decode", "dpo") == base.section_hash("decode", "dpo")


def test_checkpoints_by_wall_time_only(tmp_path, monkeypatch):
    from transformers import TrainerControl, TrainerState

    import align3gr_kit.train.sft as sft

    cfg = RunConfig.from_dict({"runs_dir": str(tmp_path), "sft": {"save_steps": 0, "save_minutes": 2}})
    args = sft.training_args(cfg, tmp_path, checkpoint_dir=tmp_path / "ckpt")
    assert args.save_strategy == "steps" and args.save_steps == 10**9  # no step-based save would ever come
    assert sft.training_args(cfg.override({"sft.save_minutes": 0}), tmp_path, tmp_path / "c").save_strategy == "no"
    clock = [1000.0]
    monkeypatch.setattr(sft.time, "monotonic", lambda: clock[0])
    cb, state = sft.WallClockCheckpoints(2), TrainerState()
    control = cb.on_step_end(args, state, TrainerControl())
    assert not control.should_save
    clock[0] += 119.0
    assert not cb.on_step_end(args, state, TrainerControl()).should_save
    clock[0] += 1.0  # two minutes since the start
    assert cb.on_step_end(args, state, TrainerControl()).should_save
    cb.on_save(args, state, TrainerControl())
    clock[0] += 60.0
    assert not cb.on_step_end(args, state, TrainerControl()).should_save  # the clock restarted at the save


@pytest.mark.parametrize("env, refused", [
    ({"ACCELERATE_USE_DEEPSPEED": "true", "ACCELERATE_DEEPSPEED_ZERO_STAGE": "3"}, "DeepSpeed ZeRO-3"),
    ({"ACCELERATE_USE_DEEPSPEED": "true", "ACCELERATE_DEEPSPEED_ZERO_STAGE": "2"}, None),
    ({"ACCELERATE_USE_FSDP": "true", "FSDP_SHARDING_STRATEGY": "FULL_SHARD"}, "FSDP (FULL_SHARD)"),
    ({"ACCELERATE_USE_FSDP": "true", "FSDP_SHARDING_STRATEGY": "1"}, "FSDP (1)"),
    ({"ACCELERATE_USE_FSDP": "true", "FSDP_SHARDING_STRATEGY": "NO_SHARD"}, None),
    ({}, None),
])
def test_engines_that_shard_parameters_are_refused(monkeypatch, env, refused):
    from align3gr_kit.distributed import LaunchError, refuse_sharded_engine, sharded_engine

    for k in ("ACCELERATE_USE_DEEPSPEED", "ACCELERATE_DEEPSPEED_ZERO_STAGE", "ACCELERATE_DEEPSPEED_CONFIG_FILE",
              "ACCELERATE_USE_FSDP", "FSDP_SHARDING_STRATEGY"):
        monkeypatch.delenv(k, raising=False)
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    assert sharded_engine() == refused
    if refused:
        with pytest.raises(LaunchError, match="use DeepSpeed ZeRO-2"):
            refuse_sharded_engine()
    else:
        refuse_sharded_engine()


def test_zero_stage_read_from_a_deepspeed_config_file(tmp_path, monkeypatch):
    from align3gr_kit.distributed import sharded_engine

    path = tmp_path / "ds.json"
    path.write_text(json.dumps({"zero_optimization": {"stage": 3}}))
    monkeypatch.delenv("ACCELERATE_DEEPSPEED_ZERO_STAGE", raising=False)
    monkeypatch.setenv("ACCELERATE_USE_DEEPSPEED", "true")
    monkeypatch.setenv("ACCELERATE_DEEPSPEED_CONFIG_FILE", str(path))
    assert sharded_engine() == "DeepSpeed ZeRO-3"
    path.write_text(json.dumps({"zero_optimization": {"stage": 2}}))
    assert sharded_engine() is None


@pytest.mark.parametrize("dtype, refused", [("bf16", True), ("float32", False)])
def test_dpo_under_deepspeed_in_low_precision_is_refused(monkeypatch, dtype, refused):
    """DeepSpeed's bf16 mode casts the module to bf16: a DPO stage's merged delta would round away."""
    from align3gr_kit.distributed import LaunchError, refuse_deepspeed_low_precision_merge

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setenv("ACCELERATE_USE_DEEPSPEED", "true")
    if refused:
        with pytest.raises(LaunchError, match="configs/accelerate/ddp.yaml"):
            refuse_deepspeed_low_precision_merge(dtype)
    else:
        refuse_deepspeed_low_precision_merge(dtype)
    monkeypatch.setenv("ACCELERATE_USE_DEEPSPEED", "false")  # plain DDP: fp32 weights, bf16 autocast
    refuse_deepspeed_low_precision_merge(dtype)
