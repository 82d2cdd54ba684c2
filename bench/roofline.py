"""Benchmark: the SFT step's achieved model FLOP/s against this machine's own matmul throughput.

Prints ONE JSON line (and writes it to ``--out`` when given)::

    {"gemm": [...], "matmul_limit_gflops": {...}, "sft": {"float32": {...}, "bfloat16": {...}}, ...}

Setup, the kit's real SFT path: the backbone of ``--config`` (``model.base``, LoRA ``r``/``alpha``/
dropout/targets; SA-Init off, which changes initial values, not speed) with the SCID vocabulary of
``--sft-run`` (its ``01_tokenize`` tables), built by :func:`align3gr_kit.model.build_backbone` and
wrapped by :func:`align3gr_kit.model.apply_lora`. The rows are that run's stage-03 SFT rows, tokenized
by :func:`align3gr_kit.train.sft.tokenize_sft` for this backbone (``sft.max_length``) and ordered as the
Trainer orders them (``group_by_length``: transformers' ``get_length_grouped_indices``, seeded); each
step collates ``sft.batch_size`` rows with :class:`~align3gr_kit.train.sft.CompletionCollator`
(``logits_to_keep``), runs forward and backward, and AdamW (``sft.lr``, ``sft.weight_decay``) over the
trainable parameters. fp32, then bf16 autocast (:func:`align3gr_kit.model.precision.autocast`), each
on a fresh copy of the same LoRA model and the same batches.

Measured:

* ``gemm``: for each distinct linear shape of the model (read from its modules: base layers, LoRA
  ``A``/``B``, the LM head) a forward-shaped GEMM ``x [T, in] @ W^T [in, out]`` (``F.linear``, as
  ``nn.Linear`` runs it) with ``T`` = the mean padded tokens of a step's batch (the head: its mean
  ``B x logits_to_keep``); after ``--gemm-warmup`` calls, the best of ``--gemm-repeats``; in fp32, in
  bf16 (tensors cast beforehand: the machine's bf16 GEMM) and in fp32 under bf16 autocast (the casts
  included, as a training step pays them for frozen weights);
* ``matmul_limit_gflops``: per precision, the step's counted matmul FLOPs (linear, LoRA, head:
  :mod:`align3gr_kit.flops`) divided by the time they would take at the measured GEMM speeds of their
  shapes (a FLOP-weighted harmonic mean; backward GEMMs are taken at their forward shape's speed;
  attention's FLOPs, a few percent, are left out of this mean);
* ``sft.<precision>``: steps after ``--warmup``: model FLOPs per step (the batch's real tokens,
  :func:`align3gr_kit.flops.lora_step_flops`), ``achieved_gflops`` = FLOPs / step time,
  ``ratio_to_limit`` = achieved / that precision's limit (bf16 against the pre-cast bf16 GEMMs),
  ``tokens_per_s`` (real tokens), ``examples_per_s``, and ``phases_s``: mean seconds of data
  (collation, device copy), forward, backward and optimiser, each timed between device syncs;
* ``sft.<precision>.profile``: one more step under ``torch.profiler`` (CPU activities; CUDA too on a
  GPU), self time grouped by op: base matmuls (``aten::mm``/``addmm``/``bmm``), LoRA matmuls (an
  ``mm``/``addmm`` with the LoRA rank in a 2-D operand's shape), attention kernels, dtype casts and
  copies, dropout masks (LoRA dropout's ``bernoulli_``), the trainable-token rows (``index_copy``, the
  embedding's dense gradient), optimiser ops and the rest; shares of the profiled step (profiler overhead included, so shares, not seconds, matter).

``--compare 30,15`` measures instead the SFT step before issue 38 (SmolLM2's default system turn in
every prompt, logits at every position, all layers) and after it (an empty system turn, label-only
logits, ``model.keep_layers`` k for each k given; ``--after-dropout 0`` adds each k without LoRA
dropout, whose Bernoulli masks are a large share of a CPU step: the profile's ``dropout masks``),
fp32, each on its own backbone and rows, with its examples/s over the before variant's and its
achieved/limit ratio (:func:`compare_variants`).

Run: ``.venv/bin/python bench/roofline.py --steps 2 --out reports/bench/roofline-<machine>.json``;
``.venv/bin/python bench/roofline.py --compare 30,15 --batch 8 --steps 2 --out reports/bench/roofline-after-<machine>.json``
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import sys
from collections import defaultdict
from pathlib import Path

import torch
import torch.nn.functional as F

from align3gr_kit import bench_device
from align3gr_kit.config import RunConfig
from align3gr_kit.flops import LinearSpec, decoder_linears, lora_step_flops
from align3gr_kit.model import apply_lora, autocast, build_backbone, prompt_frame, trainable_parameters
from align3gr_kit.model.lora import scid_token_ids
from align3gr_kit.model.precision import cpu_supports_bf16
from align3gr_kit.train.sft import CompletionCollator

PRECISIONS = ("float32", "bfloat16")
PHASE = "## "  # prefix of the profiler ranges that mark a step's phases
MATMUL_OPS = {"aten::mm", "aten::addmm", "aten::bmm", "aten::baddbmm"}


def sft_rows(run: Path, model_cfg, max_length: int, seed: int):
    """``(rows, model, tokenizer)``: the backbone of ``model_cfg`` holding every SCID token of the run's
    ``01_tokenize`` tables, and the run's stage-03 SFT rows tokenized for it (a ``datasets.Dataset``
    with ``input_ids``, ``completion_mask``, ``length``; at most ``max_length`` tokens a row)."""
    from datasets import load_from_disk

    from align3gr_kit.scid import load_scid_tables
    from align3gr_kit.train.sft import scid_vocabulary, tokenize_sft

    data = run / "03_sft_prompts" / "sft_dataset"
    if not data.exists():
        raise SystemExit(f"--sft-run {run}: {data} not found; run the first stages of a config first, e.g. "
                         "`python -m align3gr_kit run --config configs/smoke.yaml` (it writes runs/smoke)")
    tokens = scid_vocabulary(*load_scid_tables(run / "01_tokenize"))
    model, tok = build_backbone(model_cfg, [], tokens, seed=seed)
    rows = tokenize_sft(load_from_disk(str(data)), tok, max_length)
    return rows, model, tok


def step_batches(rows, batch: int, n: int, seed: int) -> list[list[dict]]:
    """The first ``n`` batches of ``batch`` rows in the Trainer's ``group_by_length`` order (seeded)."""
    from transformers.trainer_pt_utils import get_length_grouped_indices

    order = get_length_grouped_indices(list(rows["length"]), batch, generator=torch.Generator().manual_seed(seed))
    if len(order) < n * batch:
        raise SystemExit(f"--sft-run has {len(order)} SFT rows, fewer than {n} steps x {batch}; lower --steps")
    return [[{k: rows[int(i)][k] for k in ("input_ids", "completion_mask")} for i in order[s * batch:(s + 1) * batch]]
            for s in range(n)]


def batch_tokens(batch: dict) -> tuple[list[int], int, int]:
    """``(real tokens per row, real positions with logits, padded tokens)`` of a collated batch
    (label-only logits: the ``logits_to_keep`` mask's positions; full logits: every real token)."""
    mask = batch["attention_mask"]
    keep = batch.get("logits_to_keep")
    head = int(keep.sum()) if keep is not None else int(mask.sum())
    return mask.sum(1).tolist(), head, int(mask.numel())


def head_rows(batch: dict) -> int:
    """Rows the LM head's GEMM runs on: the mask's positions (label-only) or every padded position."""
    keep = batch.get("logits_to_keep")
    return int(keep.sum()) if keep is not None else int(batch["input_ids"].numel())


def model_dims(model) -> tuple[list[LinearSpec], int, int, int, int]:
    """``(linears, hidden, vocab, trainable head rows, attention width)``: what the FLOP rule
    (:func:`align3gr_kit.flops.lora_step_flops`) needs of a LoRA-wrapped backbone."""
    linears = decoder_linears(model)
    mcfg = model.config
    hidden, vocab = mcfg.hidden_size, model.get_output_embeddings().weight.shape[0]
    attn_dim = mcfg.num_attention_heads * getattr(mcfg, "head_dim", hidden // mcfg.num_attention_heads)
    return linears, hidden, vocab, len(scid_token_ids(model)), attn_dim


#: ``--compare`` variants: (label, model.default_system, label-only logits, keep_layers, LoRA dropout; None = the
#: config's)
BEFORE = ("before: template system turn, full logits, all layers", True, False, 0, None)


def compare_variants(args, cfg, device) -> dict:
    """The SFT step before and after issue 38 on the same machine, fp32: ``BEFORE`` (SmolLM2's default
    system turn in every frame, logits at every position, every layer, the config's LoRA dropout) and,
    for each ``k`` of ``--compare``, the empty system turn, label-only logits and ``model.keep_layers = k``
    (with ``--after-dropout`` d >= 0 also a LoRA dropout of d, each k measured with the config's and
    with d). Each variant
    gets its own backbone, rows (tokenized with its frame), batches (same seed and batch size), its
    model FLOPs and its fp32 matmul limit on its own shapes. Returns ``{label: {...}}`` with
    ``examples_per_s_over_before`` beside each."""
    ks = [int(k) for k in args.compare.split(",") if k.strip()]
    after = "after: empty system turn, label-only logits, keep_layers {}"
    variants = [BEFORE]
    for k in ks:
        variants.append((after.format(k), False, True, k, None))
        if args.after_dropout >= 0:
            variants.append((after.format(k) + f", LoRA dropout {args.after_dropout:g}", False, True, k,
                             args.after_dropout))
    batch_size = args.batch or cfg.sft.batch_size
    max_length = args.max_length or cfg.sft.max_length
    out = {}
    for label, default_system, label_only, keep, dropout in variants:
        model_cfg = dataclasses.replace(cfg.model, sa_init=False, default_system=default_system, keep_layers=keep,
                                        lora_dropout=cfg.model.lora_dropout if dropout is None else dropout)
        rows, base, tok = sft_rows(Path(args.sft_run), model_cfg, max_length, args.seed)
        base.to(device)
        batches = step_batches(rows, batch_size, args.warmup + args.steps, args.seed)
        torch.manual_seed(args.seed)
        model = apply_lora(base, model_cfg)
        linears, hidden, vocab, n_rows, attn_dim = model_dims(model)
        mcfg = model.config
        collate = CompletionCollator(int(tok.pad_token_id), logits_to_keep=label_only)
        recs, _ = run_steps(model, batches, collate, "float32", device, cfg.sft.lr, cfg.sft.weight_decay,
                            args.warmup, False)
        flops = secs = 0.0
        real = head = 0
        for r in recs:
            lengths, h, _ = batch_tokens(r["batch"])
            flops += lora_step_flops(linears, hidden, vocab, n_rows, mcfg.num_hidden_layers, attn_dim, lengths, h).total
            real, head = real + sum(lengths), head + h
            secs += sum(r[k] for k in ("data", "forward", "backward", "optimizer"))
        n = len(recs)
        t_pad = round(sum(batch_tokens(r["batch"])[2] for r in recs) / n)
        shapes = gemm_shapes(linears, hidden, vocab, n_rows, real / n, head / n)
        for sh in shapes:
            tokens = round(sum(head_rows(r["batch"]) for r in recs) / n) if sh["kind"] == "head" else t_pad
            sh["gflops"] = gemm_gflops(tokens, sh["in"], sh["out"], "float32", device, args.gemm_warmup,
                                       args.gemm_repeats)
        limit = sum(sh["flops"] for sh in shapes) / sum(sh["flops"] / sh["gflops"] for sh in shapes)
        out[label] = {"layers": mcfg.num_hidden_layers, "lora_dropout": model_cfg.lora_dropout, "frame_tokens": sum(len(x) for x in prompt_frame(tok)),
                      "steps": n, "step_s": round(secs / n, 3), "real_tokens_per_step": real / n,
                      "head_positions_per_step": head / n, "model_gflops_per_step": round(flops / n / 1e9, 2),
                      "achieved_gflops": round(flops / secs / 1e9, 2), "matmul_limit_gflops": round(limit, 2),
                      "ratio_to_limit": round(flops / secs / 1e9 / limit, 4),
                      "tokens_per_s": round(real / secs, 1), "examples_per_s": round(batch_size * n / secs, 3),
                      "losses": [round(r["loss"], 4) for r in recs]}
        print(f"# {label}: {out[label]['step_s']} s/step, {out[label]['examples_per_s']} examples/s, "
              f"ratio to limit {out[label]['ratio_to_limit']}", file=sys.stderr, flush=True)
        del model, base, recs
    first = out[BEFORE[0]]["examples_per_s"]
    for v in out.values():
        v["examples_per_s_over_before"] = round(v["examples_per_s"] / first, 3)
    return out


def gemm_gflops(tokens: int, n_in: int, n_out: int, mode: str, device, warmup: int, repeats: int) -> float:
    """GFLOP/s of ``F.linear(x [tokens, n_in], W [n_out, n_in])``: ``mode`` ``float32``, ``bfloat16``
    (both tensors bf16) or ``autocast`` (fp32 tensors under the kit's bf16 autocast); best of ``repeats``."""
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(tokens, n_in, generator=gen).to(device)
    w = torch.randn(n_out, n_in, generator=gen).to(device) / n_in**0.5
    if mode == "bfloat16":
        x, w = x.bfloat16(), w.bfloat16()
    ctx = (lambda: autocast("bfloat16", device)) if mode == "autocast" else (lambda: autocast("float32", device))
    best = float("inf")
    for i in range(warmup + repeats):
        with ctx(), torch.no_grad(), bench_device.timed(device) as t:
            F.linear(x, w)
        if i >= warmup:
            best = min(best, t.seconds)
    return 2.0 * tokens * n_in * n_out / best / 1e9


def gemm_shapes(linears: list[LinearSpec], hidden: int, vocab: int, rows: int, t: float, h: float) -> list[dict]:
    """Distinct GEMM shapes of a step, each with its model FLOPs per step (the ``flops`` module's rule).

    ``t``: real tokens a step, ``h``: real positions with logits, ``rows``: trainable head rows."""
    shapes: dict[tuple, dict] = {}

    def add(kind: str, n_in: int, n_out: int, flops: float) -> None:
        entry = shapes.setdefault((kind, n_in, n_out), {"kind": kind, "in": n_in, "out": n_out, "count": 0, "flops": 0.0})
        entry["count"] += 1
        entry["flops"] += flops

    for s in linears:
        add("base", s.in_features, s.out_features, (6 if s.weight_trains else 4) * s.in_features * s.out_features * t)
        if s.lora_rank:
            add("lora_A", s.in_features, s.lora_rank, 6 * s.in_features * s.lora_rank * t)
            add("lora_B", s.lora_rank, s.out_features, 6 * s.lora_rank * s.out_features * t)
    add("head", hidden, vocab, 4.0 * hidden * vocab * h + 2.0 * hidden * rows * h)
    return list(shapes.values())


def run_steps(model, batches: list[list[dict]], collate, precision: str, device, lr: float, weight_decay: float,
              warmup: int, profile: bool) -> tuple[list[dict], object | None]:
    """Train ``model`` on ``batches``; returns per-step ``{data, forward, backward, optimizer, batch}``
    records (after ``warmup``) and, with ``profile``, the profiler of one extra step (the last batch)."""
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr, weight_decay=weight_decay)
    model.train()

    def step(rows: list[dict]) -> dict:
        rec = {}
        with bench_device.timed(device) as t, torch.profiler.record_function(PHASE + "data"):
            batch = bench_device.to_device(collate(rows), device)
        rec["data"] = t.seconds
        with bench_device.timed(device) as t, torch.profiler.record_function(PHASE + "forward"):
            with autocast(precision, device):
                loss = model(**batch).loss
        rec["forward"] = t.seconds
        with bench_device.timed(device) as t, torch.profiler.record_function(PHASE + "backward"):
            loss.backward()
        rec["backward"] = t.seconds
        with bench_device.timed(device) as t, torch.profiler.record_function(PHASE + "optimizer"):
            opt.step()
            opt.zero_grad(set_to_none=True)
        rec["optimizer"] = t.seconds
        rec["batch"], rec["loss"] = batch, float(loss.detach())
        return rec

    records = [step(rows) for rows in batches]
    prof = None
    if profile:
        acts = [torch.profiler.ProfilerActivity.CPU]
        if device.type == "cuda":
            acts.append(torch.profiler.ProfilerActivity.CUDA)
        with torch.profiler.profile(activities=acts, record_shapes=True) as prof:
            step(batches[-1])
    return records[warmup:], prof


def op_group(name: str, shapes, rank: int, body_dims: set[int]) -> str:
    """The profile table's group of one op (see the module docstring)."""
    if name in MATMUL_OPS:
        two_d = [s for s in shapes if isinstance(s, (list, tuple)) and len(s) == 2]
        if rank and rank not in body_dims and any(rank in s for s in two_d):
            return "LoRA matmuls"
        return "base matmuls (mm/addmm/bmm)"
    if "scaled_dot_product" in name or "flash_attention" in name:
        return "attention kernels"
    if name in ("aten::index_copy", "aten::index_copy_", "aten::embedding_dense_backward"):
        return "trainable-token rows"
    if name in ("aten::to", "aten::_to_copy", "aten::copy_"):
        return "dtype casts and copies"
    if "bernoulli" in name or "dropout" in name:
        return "dropout masks"
    if name.startswith("aten::_foreach") or "adamw" in name.lower():
        return "optimiser ops"
    return "other ops"


def profile_table(prof, device, rank: int, body_dims: set[int]) -> dict:
    """``{"phases_share": {...}, "ops_share": {...}, "profiled_step_s": s}`` from one profiled step."""
    gpu = device.type == "cuda"
    events = prof.key_averages(group_by_input_shape=True)
    phases = {e.key[len(PHASE):]: e.cpu_time_total for e in events if e.key.startswith(PHASE)}
    step_us = sum(phases.values()) or 1.0
    groups: dict[str, float] = defaultdict(float)
    for e in events:
        if e.key.startswith(PHASE) or (gpu and not e.self_device_time_total):
            continue
        us = e.self_device_time_total if gpu else e.self_cpu_time_total
        groups[op_group(e.key, e.input_shapes, rank, body_dims)] += us
    total_ops = sum(groups.values()) or 1.0
    return {"profiled_step_s": round(step_us / 1e6, 3),
            "phases_share": {k: round(v / step_us, 4) for k, v in phases.items()},
            "ops_of": "self device time" if gpu else "self CPU time",
            "ops_share": {k: round(v / total_ops, 4) for k, v in sorted(groups.items(), key=lambda kv: -kv[1])}}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--config", default="configs/default.yaml", help="model.* (LoRA) and sft.* (batch, length, lr)")
    p.add_argument("--sft-run", default="runs/smoke", help="a run folder with 01_tokenize and 03_sft_prompts")
    p.add_argument("--batch", type=int, default=0, help="rows a step; 0 = the config's sft.batch_size")
    p.add_argument("--max-length", type=int, default=0, help="tokens a row at most; 0 = the config's sft.max_length")
    p.add_argument("--steps", type=int, default=3, help="measured steps per precision")
    p.add_argument("--warmup", type=int, default=1, help="steps before the measured ones (kernels, optimiser state)")
    p.add_argument("--gemm-warmup", type=int, default=1)
    p.add_argument("--gemm-repeats", type=int, default=3)
    p.add_argument("--precisions", default=",".join(PRECISIONS), help="comma-separated: float32, bfloat16")
    p.add_argument("--no-profile", action="store_true", help="skip the profiled step")
    p.add_argument("--threads", type=int, default=0, help="torch threads; 0 = torch's default")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--compare", default="", help="comma-separated keep_layers values: measure only the before/after "
                   "SFT step (fp32; see compare_variants), e.g. 30,15")
    p.add_argument("--after-dropout", type=float, default=-1.0, help="with --compare: also measure each after "
                   "variant at this LoRA dropout (e.g. 0: no dropout masks); -1 = only the config's")
    p.add_argument("--out", default="", help="also write the JSON to this file (e.g. reports/bench/roofline-<machine>.json)")
    bench_device.add_device_argument(p)
    args = p.parse_args()
    precisions = [x.strip() for x in args.precisions.split(",") if x.strip()]
    if not precisions or set(precisions) - set(PRECISIONS):
        p.error(f"--precisions {args.precisions!r}: use a comma-separated subset of {', '.join(PRECISIONS)}")
    if args.threads:
        torch.set_num_threads(args.threads)
    device = args.device
    bench_device.header(device, "float32")

    cfg = RunConfig.from_yaml(args.config)
    if args.compare:
        record = {"bench": "roofline-compare", "config": args.config, "sft_run": args.sft_run, "base": cfg.model.base,
                  "batch": args.batch or cfg.sft.batch_size, "max_length": args.max_length or cfg.sft.max_length,
                  "warmup": args.warmup, "threads": torch.get_num_threads(), "cpu_bf16_units": cpu_supports_bf16(),
                  **bench_device.device_fields(device, "float32", peak=False),
                  "flop_rule": "align3gr_kit.flops (Kaplan et al. 2020; frozen base: fwd 2NT + bwd 2NT; LoRA 6NT; "
                               "causal attention)",
                  "variants": compare_variants(args, cfg, device)}
        bench_device.emit(record)
        if args.out:
            Path(args.out).parent.mkdir(parents=True, exist_ok=True)
            Path(args.out).write_text(json.dumps(record, indent=2) + "\n")
            print(f"# written to {args.out}", file=sys.stderr, flush=True)
        return
    model_cfg = dataclasses.replace(cfg.model, sa_init=False)
    batch_size = args.batch or cfg.sft.batch_size
    max_length = args.max_length or cfg.sft.max_length
    with bench_device.timed("cpu") as load:
        rows, base, tok = sft_rows(Path(args.sft_run), model_cfg, max_length, args.seed)
    base.to(device)
    batches = step_batches(rows, batch_size, args.warmup + args.steps, args.seed)
    torch.manual_seed(args.seed)
    start = apply_lora(base, model_cfg)
    trainable = trainable_parameters(start)
    collate = CompletionCollator(int(tok.pad_token_id), logits_to_keep=True)  # label-only logits, as SFT runs

    linears, hidden, vocab, n_rows, attn_dim = model_dims(start)  # n_rows: the head rows that train
    mcfg = start.config
    rank = max((s.lora_rank for s in linears), default=0)
    body_dims = {d for s in linears for d in (s.in_features, s.out_features)} | {hidden, vocab}

    sft, measured = {}, []
    for precision in precisions:
        bench_device.reset_peak(device)
        recs, prof = run_steps(copy.deepcopy(start), batches, collate, precision, device, cfg.sft.lr,
                               cfg.sft.weight_decay, args.warmup, not args.no_profile)
        flops, real, head, padded, secs = 0.0, 0, 0, 0, 0.0
        for r in recs:
            lengths, h, pad = batch_tokens(r["batch"])
            flops += lora_step_flops(linears, hidden, vocab, n_rows, mcfg.num_hidden_layers, attn_dim,
                                     lengths, h).total
            real, head, padded = real + sum(lengths), head + h, padded + pad
            secs += sum(r[k] for k in ("data", "forward", "backward", "optimizer"))
        measured = recs
        out = {"steps": len(recs), "step_s": round(secs / len(recs), 3),
               "model_gflops_per_step": round(flops / len(recs) / 1e9, 2),
               "achieved_gflops": round(flops / secs / 1e9, 2),
               "tokens_per_s": round(real / secs, 1), "examples_per_s": round(batch_size * len(recs) / secs, 3),
               "real_tokens_per_step": real / len(recs), "padded_tokens_per_step": padded / len(recs),
               "head_positions_per_step": head / len(recs),
               "phases_s": {k: round(sum(r[k] for r in recs) / len(recs), 3)
                            for k in ("data", "forward", "backward", "optimizer")},
               "losses": [round(r["loss"], 4) for r in recs],
               "peak_memory_mb": round(bench_device.peak_memory_mb(device), 1)}
        if prof is not None:
            out["profile"] = profile_table(prof, device, rank, body_dims)
        sft[precision] = out
        print(f"# {precision}: {out['step_s']} s/step, {out['achieved_gflops']} GFLOP/s achieved", file=sys.stderr,
              flush=True)

    # GEMMs at the measured steps' mean sizes (the last precision's batches: the same batches for each).
    n = len(measured)
    t_real = sum(sum(batch_tokens(r["batch"])[0]) for r in measured) / n
    h_real = sum(batch_tokens(r["batch"])[1] for r in measured) / n
    t_pad = round(sum(batch_tokens(r["batch"])[2] for r in measured) / n)
    h_pad = round(sum(head_rows(r["batch"]) for r in measured) / n)
    modes = {"float32": "float32", "bfloat16": "bfloat16", "bfloat16_autocast": "autocast"}
    shapes = gemm_shapes(linears, hidden, vocab, n_rows, t_real, h_real)
    for s in shapes:
        tokens = h_pad if s["kind"] == "head" else t_pad
        s["tokens"] = tokens
        for label, mode in modes.items():
            s[f"{label}_gflops"] = round(gemm_gflops(tokens, s["in"], s["out"], mode, device,
                                                     args.gemm_warmup, args.gemm_repeats), 2)
    limit = {label: sum(s["flops"] for s in shapes) / sum(s["flops"] / s[f"{label}_gflops"] for s in shapes)
             for label in modes}
    for precision, out in sft.items():
        out["ratio_to_limit"] = round(out["achieved_gflops"] / limit[precision], 4)
    for s in shapes:
        s["flops_per_step"] = round(s.pop("flops") / 1e9, 3)

    record = {
        "bench": "roofline",
        "config": args.config, "sft_run": args.sft_run, "base": model_cfg.base,
        "lora_r": model_cfg.lora_r, "lora_dropout": model_cfg.lora_dropout,
        "batch": batch_size, "max_length": max_length, "warmup": args.warmup,
        "threads": torch.get_num_threads(), "cpu_bf16_units": cpu_supports_bf16(),
        "trainable": trainable["trainable"], "load_s": round(load.seconds, 2),
        **bench_device.device_fields(device, "float32", peak=False),
        "compute_dtype": " vs ".join(bench_device.compute_dtype(device, x) for x in precisions),
        "flop_rule": "align3gr_kit.flops (Kaplan et al. 2020; frozen base: fwd 2NT + bwd 2NT; LoRA 6NT; causal attention)",
        "gemm": shapes,
        "gemm_note": "GFLOP/s of F.linear at a step's mean padded tokens (head: B x logits_to_keep), best of repeats",
        "matmul_limit_gflops": {k: round(v, 2) for k, v in limit.items()},
        "sft": sft,
    }
    bench_device.emit(record)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(record, indent=2) + "\n")
        print(f"# written to {args.out}", file=sys.stderr, flush=True)


if __name__ == "__main__":
    main()
