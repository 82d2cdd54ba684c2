"""Every shipped config loads; the GPU config's code path (LoRA, SA-Init, dtype auto, its SFT
settings) runs end to end with its backbone swapped for a tiny model."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from datasets import Dataset

from align3gr_kit.config import RunConfig
from align3gr_kit.data.synthetic import generate_synthetic
from align3gr_kit.model import build_backbone
from align3gr_kit.model.sa_init import scid_keywords
from align3gr_kit.scid import ScidTable
from align3gr_kit.tokenizer import append_unique_level
from align3gr_kit.train.sft import train_sft

CONFIGS = sorted((Path(__file__).parents[1] / "configs").glob("*.yaml"))
TINY = {"model.base": "tiny-llama", "model.hidden_size": 32, "model.num_layers": 1, "model.num_heads": 2,
        "model.bpe_vocab_size": 300}


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_config_loads_and_names_its_run(path):
    cfg = RunConfig.from_yaml(path)
    assert cfg.run_name and cfg.run_dir.name == cfg.run_name
    assert cfg.model.max_positions >= cfg.sft.max_length or cfg.model.base != "tiny-llama"


def test_gpu_qwen_path_with_tiny_backbone(tmp_path):
    base = RunConfig.from_yaml(CONFIGS[[p.name for p in CONFIGS].index("gpu-qwen.yaml")])
    assert base.model.base.startswith("Qwen/") and base.model.lora and base.model.sa_init and base.model.dtype == "auto"
    cfg = base.override({**TINY, "runs_dir": str(tmp_path), "sft.max_steps": 3, "sft.batch_size": 4,
                         "sft.grad_accum": 1, "sft.logging_steps": 1})
    ds = generate_synthetic(30, 24, seed=0)
    items = ScidTable(append_unique_level(np.arange(24)[:, None] % np.array([4, 3, 2])), "item")
    users = ScidTable(append_unique_level(np.arange(30)[:, None] % 5), "user")
    tokens = items.vocabulary() + users.vocabulary()
    rows = [{"prompt": f"User {users.string(u)} bought {items.string(u % 24)}. Next:\n",
             "completion": items.string((u + 1) % 24), "task": "A"} for u in range(30)]
    keywords = scid_keywords(ds, items, cfg.model.sa_init_keywords)
    model, tok = build_backbone(cfg.model, [ds.item_text(i) for i in range(24)] + [r["prompt"] for r in rows],
                                tokens, cfg.seed, keywords=keywords)
    assert model.align3gr_init_stats["sa_init"] > 0, "SA-Init must set the SCID rows"
    assert model.dtype == torch.float32  # weights fp32 on every device; bf16/fp16 only in autocast
    res = train_sft(cfg, model, tok, Dataset.from_list(rows), tmp_path / "out")
    assert hasattr(res["model"], "peft_config"), "gpu-qwen trains LoRA adapters"
    assert res["steps"] == 3 and torch.isfinite(torch.tensor(res["last_loss"]))
    # The SCID rows (embedding and output matrices) are trainable next to the adapters.
    assert res["trainable"]["trainable"] > len(tokens) * cfg.model.hidden_size


ACCELERATE = sorted((Path(__file__).parents[1] / "configs" / "accelerate").glob("*.yaml"))


def _launch_env(path: Path, monkeypatch) -> dict[str, str]:
    """The ACCELERATE_* environment `accelerate launch --config_file path --num_processes 4 -m align3gr_kit
    train sft ...` gives its processes, computed by accelerate's own launch code without starting them."""
    from accelerate.commands.launch import _validate_launch_command, launch_command_parser
    from accelerate.utils.launch import prepare_deepspeed_cmd_env, prepare_multi_gpu_env

    monkeypatch.delenv("ACCELERATE_MIXED_PRECISION", raising=False)
    args = launch_command_parser().parse_args(["--config_file", str(path), "--num_processes", "4", "-m",
                                               "align3gr_kit", "train", "sft", "--config", "c.yaml"])
    args, defaults, _ = _validate_launch_command(args)
    assert args.num_processes == 4
    if args.use_deepspeed:  # as accelerate's launch_command does before deepspeed_launcher
        args.deepspeed_fields_from_accelerate_config = ",".join(defaults.deepspeed_config)
        env = prepare_deepspeed_cmd_env(args)[1]
    else:
        assert args.multi_gpu
        env = prepare_multi_gpu_env(args)
    return {k: v for k, v in env.items() if k.startswith("ACCELERATE_")}


def test_accelerate_configs_load_and_launch_as_documented(tmp_path, monkeypatch):
    from accelerate.commands.config.config_args import ClusterConfig, load_config_from_file
    from accelerate.utils import DeepSpeedPlugin, DistributedType

    from align3gr_kit.distributed import sharded_engine

    assert [p.name for p in ACCELERATE] == ["ddp.yaml", "deepspeed-zero2.yaml"]
    for path in ACCELERATE:
        cfg = load_config_from_file(str(path))  # unknown top-level keys raise here
        assert isinstance(cfg, ClusterConfig) and cfg.num_machines == 1
        # model.dtype decides the precision; a launcher value would overrule model.dtype: fp32.
        assert cfg.mixed_precision == "no"
        assert "accelerate launch --config_file configs/accelerate/" + path.name in path.read_text()
    ddp, zero2 = ACCELERATE
    assert load_config_from_file(str(ddp)).distributed_type == DistributedType.MULTI_GPU
    assert _launch_env(ddp, monkeypatch)["ACCELERATE_MIXED_PRECISION"] == "no"
    assert "ACCELERATE_USE_DEEPSPEED" not in _launch_env(ddp, monkeypatch)

    assert load_config_from_file(str(zero2)).distributed_type == DistributedType.DEEPSPEED
    env = _launch_env(zero2, monkeypatch)
    assert env["ACCELERATE_USE_DEEPSPEED"] == "true" and env["ACCELERATE_DEEPSPEED_ZERO_STAGE"] == "2"
    assert "ACCELERATE_GRADIENT_ACCUMULATION_STEPS" not in env  # left to the Trainer ("auto")
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    ds = DeepSpeedPlugin().deepspeed_config  # the DeepSpeed config a rank builds from that environment
    assert ds["zero_optimization"]["stage"] == 2 and ds["gradient_accumulation_steps"] == "auto"
    assert ds["train_micro_batch_size_per_gpu"] == "auto"
    assert sharded_engine() is None, "ZeRO-2 keeps whole parameters: the kit accepts it"
    # The same file at stage 3 is what the kit refuses.
    zero3 = tmp_path / "zero3.yaml"
    zero3.write_text(zero2.read_text().replace("zero_stage: 2", "zero_stage: 3"))
    for key, value in _launch_env(zero3, monkeypatch).items():
        monkeypatch.setenv(key, value)
    assert sharded_engine() == "DeepSpeed ZeRO-3"
    # A misspelt key fails in accelerate's own loader.
    typo = tmp_path / "typo.yaml"
    typo.write_text(ddp.read_text().replace("num_machines:", "num_machine:"))
    with pytest.raises(ValueError, match="unknown keys"):
        load_config_from_file(str(typo))
