"""Benchmark: LoRA training speed of a backbone in fp32 vs bf16 autocast, on the same batches.

Prints ONE JSON line::

    {"bf16_over_fp32": ..., "fp32_tokens_per_s": ..., "bf16_tokens_per_s": ..., "loss_abs_diff": ..., ...}

Setup: the backbone (``--base``, default ``smollm2-135m``) with ``--scid-codes`` x 3 levels of item
SCID tokens (normal init), LoRA as the kit applies it (:func:`align3gr_kit.model.apply_lora`: all
linear layers, rank ``--lora-r``, trainable SCID rows). ``--steps`` batches of ``--batch`` x
``--length`` tokens are drawn once (seeded): a prompt of random text-vocabulary ids in the chat frame
the kit uses, then a 3-token SCID completion + EOS, labels on the completion only and logits only
where they are scored (:class:`align3gr_kit.train.sft.CompletionCollator`, as SFT does). Both runs start from the same weights (a deep
copy) and train with AdamW (lr ``--lr``) on the same batches, fp32 first, then under
``torch.autocast(device, bfloat16)`` with fp32 master weights (what ``model.dtype: auto`` does where
the hardware has bf16 units), both on ``--device`` (default: CUDA when present; autocast through
:func:`align3gr_kit.model.precision.autocast` on that device). Each step is timed between two device
syncs; the header line (stderr) names the device, the JSON adds each run's peak memory
(:mod:`align3gr_kit.bench_device`: on a GPU ``torch.cuda.max_memory_allocated``, reset before each
run; on the CPU the process's peak RSS, which includes the earlier run's).

- ``*_tokens_per_s``: tokens (padding included; there is none) per second over steps 2..N (step 1
  warms up kernels and the optimiser state);
- ``bf16_over_fp32``: the ratio (>1: bf16 is faster). CPUs without AMX/AVX512-BF16 emulate bf16,
  so expect < 1 there; ``cpu_bf16_units`` says which kind of CPU ran it;
- ``loss_fp32`` / ``loss_bf16``: the loss of the last step; ``loss_abs_diff`` and
  ``loss_max_abs_diff`` (over all steps): how far bf16 autocast drifts from fp32.

Run: ``.venv/bin/python bench/train_speed.py --steps 6 --batch 8 --length 128``
"""

from __future__ import annotations

import argparse
import copy
import sys

import numpy as np
import torch

from align3gr_kit import bench_device
from align3gr_kit.config import ModelConfig
from align3gr_kit.model import apply_lora, autocast, build_backbone, prompt_frame, trainable_parameters
from align3gr_kit.model.precision import cpu_supports_bf16
from align3gr_kit.train.sft import CompletionCollator


def make_batches(tokenizer, scid_ids: list[int], steps: int, batch: int, length: int, seed: int) -> list[dict]:
    """``steps`` collated batches of ``batch`` rows of exactly ``length`` tokens (see the module docstring)."""
    rng = np.random.default_rng(seed)
    head, tail = prompt_frame(tokenizer)
    specials = set(tokenizer.all_special_ids)
    text_ids = np.array([i for i in range(min(len(tokenizer), 49152)) if i not in specials and i not in set(scid_ids)])
    n_comp = 3 + 1
    n_text = length - len(head) - len(tail) - n_comp
    if n_text < 1:
        raise ValueError(f"--length {length} leaves no room for prompt text after the {len(head) + len(tail)}-token frame")
    collate = CompletionCollator(int(tokenizer.pad_token_id), logits_to_keep=True)
    out = []
    for _ in range(steps):
        rows = []
        for _ in range(batch):
            prompt = head + rng.choice(text_ids, n_text).tolist() + tail
            comp = rng.choice(scid_ids, 3).tolist() + [int(tokenizer.eos_token_id)]
            rows.append({"input_ids": prompt + comp, "completion_mask": [0] * len(prompt) + [1] * len(comp)})
        out.append(collate(rows))
    return out


def train_run(model: torch.nn.Module, batches: list[dict], lr: float, precision: str) -> tuple[list[float], list[float]]:
    """Train ``model`` on ``batches`` (both on the same device); returns ``(losses, step seconds)``."""
    device = next(model.parameters()).device
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr)
    model.train()
    losses, seconds = [], []
    for b in batches:
        with bench_device.timed(device) as t:
            with autocast(precision, device):
                loss = model(**b).loss
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
        seconds.append(t.seconds)
        losses.append(float(loss.detach()))
    return losses, seconds


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--base", default="smollm2-135m", help="model.base (a wheel model, hub name or folder)")
    p.add_argument("--steps", type=int, default=6)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--length", type=int, default=128, help="tokens per row (prompt frame + text + SCID + EOS)")
    p.add_argument("--lora-r", type=int, default=8)
    p.add_argument("--scid-codes", type=int, default=64, help="codes per level of the 3-level item SCIDs")
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--threads", type=int, default=0, help="torch threads; 0 = torch's default")
    p.add_argument("--seed", type=int, default=0)
    bench_device.add_device_argument(p)
    args = p.parse_args()
    if args.steps < 2:
        p.error("--steps must be >= 2 (the first step is warm-up)")
    if args.threads:
        torch.set_num_threads(args.threads)
    device = args.device
    print(f"# {bench_device.describe(device, 'float32', peak=False)} vs "
          f"{bench_device.compute_dtype(device, 'bfloat16')} autocast", file=sys.stderr, flush=True)

    cfg = ModelConfig(base=args.base, lora=True, lora_r=args.lora_r, lora_alpha=2 * args.lora_r, lora_dropout=0.0)
    tokens = [f"<{lvl}_{c}>" for lvl in "abc" for c in range(args.scid_codes)]
    with bench_device.timed("cpu") as load:
        model, tok = build_backbone(cfg, [], tokens, seed=args.seed)
    model.to(device)  # fp32 master weights (build_backbone); autocast does the rest
    scid_ids = tok.convert_tokens_to_ids(tokens)
    batches = [bench_device.to_device(b, device)
               for b in make_batches(tok, scid_ids, args.steps, args.batch, args.length, args.seed)]
    torch.manual_seed(args.seed)
    start = apply_lora(model, cfg)
    trainable = trainable_parameters(start)

    results = {}
    for precision in ("float32", "bfloat16"):
        bench_device.reset_peak(device)
        losses, seconds = train_run(copy.deepcopy(start), batches, args.lr, precision)
        timed = sum(seconds[1:])
        results[precision] = {"losses": losses, "step_s": timed / (len(seconds) - 1),
                              "tokens_per_s": args.batch * args.length * (len(seconds) - 1) / timed,
                              "peak_mb": bench_device.peak_memory_mb(device)}
    f32, b16 = results["float32"], results["bfloat16"]
    bench_device.emit({
        "base": args.base,
        "steps": args.steps,
        "batch": args.batch,
        "length": args.length,
        "threads": torch.get_num_threads(),
        "cpu_bf16_units": cpu_supports_bf16(),
        "trainable": trainable["trainable"],
        "load_s": round(load.seconds, 2),
        **bench_device.device_fields(device, "float32", peak=False),
        "compute_dtype": f"float32 vs {bench_device.compute_dtype(device, 'bfloat16')}",
        "fp32_peak_memory_mb": round(f32["peak_mb"], 1),
        "bf16_peak_memory_mb": round(b16["peak_mb"], 1),
        "fp32_step_s": round(f32["step_s"], 3),
        "bf16_step_s": round(b16["step_s"], 3),
        "fp32_tokens_per_s": round(f32["tokens_per_s"], 1),
        "bf16_tokens_per_s": round(b16["tokens_per_s"], 1),
        "bf16_over_fp32": round(b16["tokens_per_s"] / f32["tokens_per_s"], 3),
        "loss_fp32": round(f32["losses"][-1], 5),
        "loss_bf16": round(b16["losses"][-1], 5),
        "loss_abs_diff": round(abs(f32["losses"][-1] - b16["losses"][-1]), 5),
        "loss_max_abs_diff": round(max(abs(a - b) for a, b in zip(f32["losses"], b16["losses"])), 5),
    })


if __name__ == "__main__":
    main()
