"""Benchmark: one Softmax-DPO optimiser step with full sequences vs the shared prompt, on the same batches.

Prints ONE JSON line::

    {"full_step_s": ..., "shared_step_s": ..., "speedup": ..., "loss_max_abs_diff": ..., ...}

Setup: the backbone (``--model``: ``tiny-llama``, the kit's small from-scratch Llama, by default; or
``smollm2-135m``, built by :func:`align3gr_kit.model.backbone.build_backbone`) with a handful of SCID
tokens (``--levels`` x ``--codes``, seeded normal rows). ``--steps`` batches of ``--prompts`` preference
prompts are drawn once (seeded): each prompt is random text-vocabulary ids in the chat frame the kit
uses, ``--prompt-len`` tokens +-20% (so a batch needs padding), with 1 chosen and ``--n-rejected``
rejected responses of 5 or 6 SCID tokens. Both layouts run from the same starting weights (deep copies):
the policy (LoRA as the kit applies it, with trainable SCID rows, for ``smollm2-135m``; full
fine-tuning for ``tiny-llama``; ``--lora``/``--no-lora`` override) and its frozen starting copy as the
on-the-fly reference, as in a DPO stage. One step = the policy's forward and backward, the
reference's forward (``no_grad``), the Softmax-DPO loss and an AdamW step:

- ``full``: ``SoftmaxDPOCollator(share_prompt=False)``, 1 + N full ``prompt + response`` sequences
  per prompt;
- ``shared``: ``share_prompt=True``, one packed row per prompt with a tree attention mask
  (:mod:`align3gr_kit.dpo.shared_prompt`).

Output: ``*_step_s`` the mean step time (over steps 2..N when ``--steps`` > 1, step 1 warming up
kernels and the optimiser state; the one step otherwise), ``speedup`` = full / shared,
``*_tokens`` the tokens (padding included) one step feeds each model, ``loss_max_abs_diff`` the
largest |loss_full - loss_shared| over the steps, ``logps_max_abs_diff`` the largest difference of the
policy's response log-probs at step 1 (same weights in both layouts), ``*_peak_memory_mb`` the peak
memory of each layout (:mod:`align3gr_kit.bench_device`; ``peak_memory_of`` says which: on a GPU
``torch.cuda.max_memory_allocated``, reset before each layout; on the CPU the process's peak RSS,
which cannot be reset: the shared layout runs first, so its peak is its own, the full layout's
includes everything before it). The reference equals the starting policy, so the step-1 loss is
``log(1 + N)`` in both layouts; later steps differ from it.

Everything runs on ``--device`` (default: CUDA when present), autocast as ``--precision``
(``model.dtype``) says on that device; each step is timed between two device syncs. The header line
(stderr) names the device and compute dtype.

Run: ``.venv/bin/python bench/dpo_speed.py`` (tiny, seconds) and
``.venv/bin/python bench/dpo_speed.py --model smollm2-135m --steps 1 --prompts 2`` (minutes, fp32).
"""

from __future__ import annotations

import argparse
import copy

import numpy as np
import torch

from align3gr_kit import bench_device
from align3gr_kit.config import ModelConfig
from align3gr_kit.dpo import SoftmaxDPOCollator, make_reference, softmax_dpo_loss
from align3gr_kit.dpo.trainer import score_batch
from align3gr_kit.model import apply_lora, autocast, build_backbone, prompt_frame
from align3gr_kit.model.precision import cpu_supports_bf16

# text for the tiny-llama BPE (the bench's prompts are random ids of its vocabulary anyway)
CORPUS = [f"user {u} watched the movie number {m} and rated it {r} stars" for u in range(50) for m, r in ((u * 7 % 31, u % 5 + 1),)]


def make_examples(tokenizer, scid_tokens: list[list[str]], n_batches: int, prompts: int, n_rejected: int,
                  prompt_len: int, seed: int) -> tuple[list[list[dict]], dict[str, list[int]]]:
    """``n_batches`` lists of ``prompts`` preference examples and the prompt ids behind each prompt key."""
    rng = np.random.default_rng(seed)
    head, tail = prompt_frame(tokenizer)
    scid_ids = set(tokenizer.convert_tokens_to_ids([t for level in scid_tokens for t in level]))
    specials = set(tokenizer.all_special_ids)
    text_ids = np.array([i for i in range(min(len(tokenizer), 49152)) if i not in specials and i not in scid_ids])
    prompt_ids: dict[str, list[int]] = {}

    def response() -> str:
        n = int(rng.integers(5, 7))  # 5 or 6 SCID tokens
        return "".join(scid_tokens[lv][int(rng.integers(len(scid_tokens[lv])))] for lv in range(n))

    batches = []
    for b in range(n_batches):
        batch = []
        for k in range(prompts):
            n_text = max(1, int(prompt_len * rng.uniform(0.8, 1.2)) - len(head) - len(tail))
            key = f"prompt {b}.{k}"
            prompt_ids[key] = head + rng.choice(text_ids, n_text).tolist() + tail
            batch.append({"prompt": key, "chosen": response(), "rejected": [response() for _ in range(n_rejected)]})
        batches.append(batch)
    return batches, prompt_ids


def run(policy: torch.nn.Module, ref: torch.nn.Module, batches: list[dict], lr: float, beta: float,
        precision: str) -> dict[str, list]:
    """Softmax-DPO steps on collated ``batches`` (on the policy's device): losses, step seconds, step-1
    policy log-probs."""
    device = next(policy.parameters()).device
    opt = torch.optim.AdamW([p for p in policy.parameters() if p.requires_grad], lr=lr)
    policy.train()
    out: dict[str, list] = {"losses": [], "seconds": [], "logps": []}
    for batch in batches:
        with bench_device.timed(device) as t:
            with autocast(precision, device):
                chosen, rejected = score_batch(policy, batch)
                with torch.no_grad():
                    ref_chosen, ref_rejected = score_batch(ref, batch)
            mask = batch["rejected_mask"]
            loss = softmax_dpo_loss(chosen, rejected, ref_chosen, ref_rejected, beta, mask).mean()
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
        out["seconds"].append(t.seconds)
        out["losses"].append(float(loss.detach()))
        if not out["logps"]:
            out["logps"] = torch.cat([chosen.detach(), rejected.detach()[mask]]).tolist()
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", default="tiny-llama", help="model.base: tiny-llama (default) or smollm2-135m")
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--prompts", type=int, default=4, help="preference prompts per step")
    p.add_argument("--n-rejected", type=int, default=20)
    p.add_argument("--prompt-len", type=int, default=150, help="prompt tokens (each prompt +-20%%)")
    p.add_argument("--levels", type=int, default=6, help="SCID levels (responses use the first 5 or 6)")
    p.add_argument("--codes", type=int, default=8, help="SCID tokens per level")
    p.add_argument("--lora", action=argparse.BooleanOptionalAction, default=None,
                   help="train the policy with LoRA (default: on for smollm2-135m, off for tiny-llama)")
    p.add_argument("--precision", default="float32",
                   help="model.dtype for both layouts: float32 (default: the layouts' losses compare exactly), "
                        "auto, bfloat16")
    p.add_argument("--lr", type=float, default=1e-4)
    p.add_argument("--beta", type=float, default=0.1)
    p.add_argument("--threads", type=int, default=0, help="torch threads; 0 = torch's default")
    p.add_argument("--seed", type=int, default=0)
    bench_device.add_device_argument(p)
    args = p.parse_args()
    if args.levels < 6:
        p.error("--levels must be >= 6 (responses have 5 or 6 SCID tokens)")
    if args.threads:
        torch.set_num_threads(args.threads)
    lora = args.model != "tiny-llama" if args.lora is None else args.lora
    device = args.device
    bench_device.header(device, args.precision)

    cfg = ModelConfig(base=args.model, lora=lora, lora_r=8, lora_alpha=16, lora_dropout=0.0,
                      max_positions=max(512, 2 * args.prompt_len))
    scid = [[f"<{chr(ord('a') + lv)}_{c}>" for c in range(args.codes)] for lv in range(args.levels)]
    with bench_device.timed("cpu") as load:
        model, tok = build_backbone(cfg, CORPUS, [t for level in scid for t in level], seed=args.seed)
    model.float().to(device)  # fp32 master weights, whatever model.dtype loads; autocast does the rest
    examples, prompt_ids = make_examples(tok, scid, args.steps, args.prompts, args.n_rejected, args.prompt_len, args.seed)
    ref = make_reference(model)
    torch.manual_seed(args.seed)
    start = apply_lora(model, cfg) if lora else model

    results, tokens, peak_mb = {}, {}, {}
    for layout, share in (("shared", True), ("full", False)):
        collator = SoftmaxDPOCollator(tok, max_length=2 * args.prompt_len, encode_prompt=prompt_ids.__getitem__,
                                      share_prompt=share)
        batches = [bench_device.to_device(collator(b), device) for b in examples]
        tokens[layout] = int(batches[0]["input_ids"].numel())
        bench_device.reset_peak(device)
        results[layout] = run(copy.deepcopy(start), ref, batches, args.lr, args.beta, args.precision)
        peak_mb[layout] = bench_device.peak_memory_mb(device)
    timed = slice(1, None) if args.steps > 1 else slice(None)
    step_s = {k: float(np.mean(v["seconds"][timed])) for k, v in results.items()}
    full, shared = results["full"], results["shared"]
    bench_device.emit({
        "model": args.model,
        "lora": lora,
        "precision": args.precision,
        "steps": args.steps,
        "prompts": args.prompts,
        "n_rejected": args.n_rejected,
        "prompt_len": args.prompt_len,
        "threads": torch.get_num_threads(),
        "cpu_bf16_units": cpu_supports_bf16(),
        "load_s": round(load.seconds, 2),
        "full_tokens": tokens["full"],
        "shared_tokens": tokens["shared"],
        **bench_device.device_fields(device, args.precision, peak=False),
        "shared_peak_memory_mb": round(peak_mb["shared"], 1),
        "full_peak_memory_mb": round(peak_mb["full"], 1),
        "full_step_s": round(step_s["full"], 3),
        "shared_step_s": round(step_s["shared"], 3),
        "speedup": round(step_s["full"] / step_s["shared"], 2),
        "loss_full": [round(x, 6) for x in full["losses"]],
        "loss_shared": [round(x, 6) for x in shared["losses"]],
        "loss_max_abs_diff": float(max(abs(a - b) for a, b in zip(full["losses"], shared["losses"]))),
        "logps_max_abs_diff": float(max(abs(a - b) for a, b in zip(full["logps"], shared["logps"]))),
    })


if __name__ == "__main__":
    main()
