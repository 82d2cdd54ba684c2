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
    keywords = scid_keywords(ds, items, users, cfg.model.sa_init_keywords)
    model, tok = build_backbone(cfg.model, [ds.item_text(i) for i in range(24)] + [r["prompt"] for r in rows],
                                tokens, cfg.seed, keywords=keywords)
    assert model.align3gr_init_stats["sa_init"] > 0, "SA-Init must set the SCID rows"
    assert model.dtype == (torch.bfloat16 if torch.cuda.is_available() and torch.cuda.is_bf16_supported() else torch.float32)
    res = train_sft(cfg, model, tok, Dataset.from_list(rows), tmp_path / "out")
    assert hasattr(res["model"], "peft_config"), "gpu-qwen trains LoRA adapters"
    assert res["steps"] == 3 and torch.isfinite(torch.tensor(res["last_loss"]))
    # The SCID rows (embedding and output matrices) are trainable next to the adapters.
    assert res["trainable"]["trainable"] > len(tokens) * cfg.model.hidden_size
