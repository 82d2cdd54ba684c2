"""The roofline bench's FLOP count (align3gr_kit.flops) on a tiny Llama, by hand and against torch's own
FLOP counter, and the script's command line."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from align3gr_kit.config import ModelConfig
from align3gr_kit.flops import decoder_linears, lora_step_flops
from align3gr_kit.model import apply_lora
from align3gr_kit.utils import project_root

HIDDEN, LAYERS, HEADS, KV_HEADS, INTER, VOCAB, RANK = 32, 2, 4, 2, 64, 100, 4
SCID_IDS = [98, 99]


@pytest.fixture(scope="module")
def tiny_lora():
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(vocab_size=VOCAB, hidden_size=HIDDEN, intermediate_size=INTER, num_hidden_layers=LAYERS,
                      num_attention_heads=HEADS, num_key_value_heads=KV_HEADS, max_position_embeddings=64,
                      tie_word_embeddings=False, attn_implementation="eager")
    torch.manual_seed(0)
    model = LlamaForCausalLM(cfg)
    return apply_lora(model, ModelConfig(lora=True, lora_r=RANK, lora_alpha=2 * RANK, lora_dropout=0.0), SCID_IDS)


def count(model, lengths, head_positions):
    return lora_step_flops(decoder_linears(model), HIDDEN, VOCAB, len(SCID_IDS), LAYERS, HIDDEN, lengths,
                           head_positions)


def test_linear_layers_are_read_from_the_modules(tiny_lora):
    specs = decoder_linears(tiny_lora)
    shapes = sorted((s.name.rsplit(".", 1)[-1], s.in_features, s.out_features) for s in specs if ".layers.0." in s.name)
    # q, o: 32x32; k, v: 32 -> 2 KV heads x 8 = 16; MLP 32 -> 64 -> 32
    assert shapes == [("down_proj", 64, 32), ("gate_proj", 32, 64), ("k_proj", 32, 16), ("o_proj", 32, 32),
                      ("q_proj", 32, 32), ("up_proj", 32, 64), ("v_proj", 32, 16)]
    assert len(specs) == 7 * LAYERS  # the head is not a body layer
    assert all(s.lora_rank == RANK and not s.weight_trains for s in specs)


def test_step_flops_match_a_hand_count(tiny_lora):
    flops = count(tiny_lora, [5, 3], head_positions=4)
    # Per layer: base in*out = 1024 + 512 + 512 + 1024 + 2048 + 2048 + 2048 = 9216 (x2 layers = 18432);
    # LoRA r*(in+out) = 4*(64 + 48 + 48 + 64 + 96 + 96 + 96) = 2048 (x2 = 4096). 8 real tokens.
    assert flops.linear_forward == 2 * 18432 * 8 == 294912
    assert flops.linear_backward == 294912  # frozen weights: the input's gradient only
    assert flops.lora_forward == 2 * 4096 * 8 == 65536
    assert flops.lora_backward == 131072
    # Head 32 x 100 on 4 positions; 2 SCID rows get a weight gradient.
    assert flops.head_forward == 2 * 32 * 100 * 4 == 25600
    assert flops.head_backward == 25600 + 2 * 32 * 2 * 4 == 26112
    # Causal pairs: 5*6/2 + 3*4/2 = 21; QK^T and AV, 2 layers, d_attn 32.
    assert flops.attention_forward == 2 * 2 * 2 * 32 * 21 == 5376
    assert flops.attention_backward == 10752
    assert flops.total == 854272


def test_forward_flops_match_torch_flop_counter(tiny_lora):
    """One unpadded row, logits everywhere: torch's counter sees every matmul of the forward pass (eager
    attention: two batched matmuls over the full t x t window, which the causal count halves, so that term
    is swapped before comparing)."""
    t = 6
    ids = torch.randint(0, 90, (1, t), generator=torch.Generator().manual_seed(1))
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        tiny_lora(input_ids=ids)
    ours = count(tiny_lora, [t], head_positions=t)
    full_attention = 2 * 2 * LAYERS * HIDDEN * t * t
    assert counter.get_total_flops() == ours.forward - ours.attention_forward + full_attention


def test_roofline_help_lists_device():
    res = subprocess.run([sys.executable, "bench/roofline.py", "--help"], capture_output=True, text=True,
                         cwd=project_root(), timeout=120)
    assert res.returncode == 0, res.stderr[-2000:]
    assert "--device DEVICE" in res.stdout and "--out OUT" in res.stdout
