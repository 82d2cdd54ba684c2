"""Benchmark: trie beam search (``constrained_beam_search``) vs ``generate`` + ``prefix_allowed_tokens_fn``.

Both decoders run on the same model, prompts and catalogue; prints ONE JSON line::

    {"speedup": ..., "top20_agreement": ..., "top20_agreement_ties": ..., "invalid": 0, ...}

- ``speedup``: users/second of the trie decoder divided by users/second of the generate path
  (goal >= 10).
- ``top20_agreement``: fraction of users whose ranked top-``beam`` item lists are identical
  (same items, same order). ``top20_agreement_ties`` also accepts lists that differ only by swapping
  items whose scores are within ``--tie-tol`` of each other: the two paths compute the same
  log-probs through different batch shapes (generate runs the prompt once per beam), so scores
  agree to ~1e-6 and items closer than that may legitimately come out in either order (goal >= 0.99).
- ``invalid``: returned ids that are not real items (both paths; must be 0).

Default setup (no ``--run-dir``): a fixed random tiny LlamaForCausalLM (the kit's tiny-llama shape:
hidden 128, 2 layers, 4 heads) over a 2000-token text vocabulary plus the SCID tokens, 500 items x 4
levels (3 random code levels of 16 codes + a collision-resolving level, like the tokenizer stage
makes), prompts of 80-120 tokens, left-padded. Its lm_head is scaled (``--logit-scale``) so that
item scores spread like a trained model's rather than being near-uniform.

With ``--run-dir runs/<run>``: the SFT model saved in ``04_sft/model`` (model, tokenizer and item
SCIDs, read by ``align3gr_kit.model.backbone.load_model``) and the task-A prompts of the first
``--users`` test users of ``00_data/split``, encoded as the evaluation encodes them.

Both paths run on ``--device`` (default: CUDA when present) under ``--precision`` (``model.dtype``:
``float32`` by default, so that the two paths' scores are comparable to ~1e-6); every timing syncs the
device first. The header line (stderr) names the device and compute dtype; the JSON adds the peak
memory (:mod:`align3gr_kit.bench_device`).

``--reference whole`` compares instead the trie search with the prompts' shared opening run once
(the default, issue 38) against the same search running every prompt whole (``share_prefix=False``):
the speedup is then what the shared prefix saves, on ``--run-dir`` prompts (the chat frame and the
template's first words); the random default prompts share nothing.

Run: ``.venv/bin/python bench/decode.py --users 64 --beam 20``;
``.venv/bin/python bench/decode.py --run-dir runs/default --users 160 --batch-size 16 --reference whole``
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from align3gr_kit import bench_device
from align3gr_kit.decoding import ItemTrie, constrained_beam_search, generate_reference, trie_from_scids
from align3gr_kit.decoding.beam import BeamResult
from align3gr_kit.model.precision import autocast


def synthetic_codes(n_items: int, levels: int, codebook: int, rng: np.random.Generator) -> np.ndarray:
    """``[n_items, levels]`` codes: random on the first ``levels-1`` levels, last = rank among duplicates."""
    prefix = rng.integers(0, codebook, size=(n_items, levels - 1))
    last = np.zeros(n_items, dtype=np.int64)
    seen: dict[tuple, int] = {}
    for i, row in enumerate(map(tuple, prefix)):
        last[i] = seen.get(row, 0)
        seen[row] = last[i] + 1
    return np.concatenate([prefix, last[:, None]], axis=1)


def build_default(args, rng: np.random.Generator):
    """Tiny random Llama, its item trie and the id range prompts are drawn from."""
    codes = synthetic_codes(args.n_items, args.levels, args.codebook, rng)
    text_vocab = 2000
    # one token per (level, code) actually used, appended after the text vocabulary
    offsets = np.concatenate([[0], np.cumsum(codes.max(0) + 1)[:-1]]) + text_vocab
    rows = torch.as_tensor(codes + offsets)
    vocab = int(rows.max()) + 1
    cfg = LlamaConfig(
        vocab_size=vocab,
        hidden_size=128,
        intermediate_size=512,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=4,
        max_position_embeddings=512,
        pad_token_id=0,
        bos_token_id=1,
        eos_token_id=2,
    )
    torch.manual_seed(args.seed)
    model = LlamaForCausalLM(cfg)
    with torch.no_grad():
        model.lm_head.weight.mul_(args.logit_scale)
    return model.eval(), ItemTrie(rows), (3, text_vocab)


def build_from_run(args):
    """SFT model, item trie and the test users' task-A prompts of a run directory.

    Prompts are built and encoded exactly as the evaluation does (``align3gr_kit.evaluate``).
    """
    from align3gr_kit.evaluate import evaluation_prompts
    from align3gr_kit.model.encoding import encode_prompts, left_pad
    from align3gr_kit.stages.contract import get_stage

    run = Path(args.run_dir)
    model, tokenizer, item_scids, user_scids = get_stage("04_sft").load_artifacts(run / "04_sft").load_model("float32")
    samples = get_stage("00_data").load_artifacts(run / "00_data").split.samples("test").head(args.users)
    prompts = evaluation_prompts(samples, item_scids, user_scids, user_scid_in_prompt=not args.no_user_scid)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    ids, mask = left_pad(encode_prompts(tokenizer, prompts), pad)
    return model.eval(), trie_from_scids(item_scids, tokenizer), (ids, mask)


def make_prompts(n: int, id_range: tuple[int, int], rng: np.random.Generator, lo: int = 80, hi: int = 120):
    """``n`` left-padded random prompts of ``lo..hi`` tokens: ``input_ids``, ``attention_mask`` ``[n, hi]``."""
    lengths = rng.integers(lo, hi + 1, size=n)
    ids = torch.zeros(n, hi, dtype=torch.long)
    mask = torch.zeros(n, hi, dtype=torch.long)
    for i, length in enumerate(lengths):
        ids[i, hi - length :] = torch.as_tensor(rng.integers(id_range[0], id_range[1], size=length))
        mask[i, hi - length :] = 1
    return ids, mask


def trie_search(model, ids, mask, trie, beam_width: int, precision: str) -> BeamResult:
    """The kit's trie beam search, autocast as ``model.dtype = precision`` says."""
    return constrained_beam_search(model, ids, mask, trie, beam_width=beam_width, precision=precision)


def whole_search(model, ids, mask, trie, beam_width: int, precision: str) -> BeamResult:
    """The trie beam search running every prompt whole (no shared prefix): ``--reference whole``."""
    return constrained_beam_search(model, ids, mask, trie, beam_width=beam_width, precision=precision,
                                   share_prefix=False)


def generate_search(model, ids, mask, trie, beam_width: int, precision: str) -> BeamResult:
    """``generate`` + ``prefix_allowed_tokens_fn`` under the same autocast as :func:`trie_search`."""
    with autocast(precision, next(model.parameters()).device):
        return generate_reference(model, ids, mask, trie, beam_width=beam_width)


def run_batches(fn, model, ids, mask, trie, beam, batch_size, precision: str) -> tuple[BeamResult, float]:
    """All prompts through ``fn`` in batches of ``batch_size``: ``(results on the CPU, seconds)``, the
    clock read after the device has finished."""
    parts = []
    with bench_device.timed(next(model.parameters()).device) as t:
        for s in range(0, len(ids), batch_size):
            parts.append(fn(model, ids[s : s + batch_size], mask[s : s + batch_size], trie, beam, precision).cpu())
    return BeamResult.concat(parts), t.seconds


def agreement(a: BeamResult, b: BeamResult, tol: float) -> tuple[float, float]:
    """(exact list agreement, tie-aware agreement) over users; see the module docstring."""
    exact = ties = 0
    for ia, sa, ib, sb in zip(a.items, a.scores, b.items, b.scores):
        if torch.equal(ia, ib):
            exact += 1
            ties += 1
            continue
        da = {int(i): float(s) for i, s in zip(ia, sa) if i >= 0}
        db = {int(i): float(s) for i, s in zip(ib, sb) if i >= 0}
        if set(da) == set(db) and all(abs(da[i] - db[i]) < tol for i in da):
            # same items and scores: any difference in order is among items within tol of each other
            order_ok = all(
                ia[j] == ib[j] or abs(da[int(ia[j])] - da[int(ib[j])]) < tol
                for j in range(len(ia))
                if ia[j] >= 0
            )
            ties += int(order_ok)
    n = len(a.items)
    return exact / n, ties / n


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--users", type=int, default=64)
    p.add_argument("--beam", type=int, default=20)
    p.add_argument("--n-items", type=int, default=500)
    p.add_argument("--levels", type=int, default=4)
    p.add_argument("--codebook", type=int, default=16, help="codes per level of the synthetic SCIDs")
    p.add_argument("--batch-size", type=int, default=32, help="users per decoding call (DecodeConfig.batch_size)")
    p.add_argument("--run-dir", default="", help="runs/<run> with a trained 04_sft/model; default: tiny random model")
    p.add_argument("--no-user-scid", action="store_true", help="--run-dir prompts without the user SCID")
    p.add_argument("--logit-scale", type=float, default=20.0, help="lm_head scale of the random model")
    p.add_argument("--tie-tol", type=float, default=1e-4)
    p.add_argument("--repeats", type=int, default=3, help="timed runs of each path (best is reported)")
    p.add_argument("--threads", type=int, default=0, help="torch threads; 0 = torch's default")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--precision", default="float32", help="model.dtype of both paths (auto, float32, bfloat16)")
    p.add_argument("--reference", choices=("generate", "whole"), default="generate",
                   help="what the trie search is timed against: generate(), or itself without a shared prefix")
    bench_device.add_device_argument(p)
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = args.device
    bench_device.header(device, args.precision)

    rng = np.random.default_rng(args.seed)
    if args.run_dir:
        model, trie, (ids, mask) = build_from_run(args)
        args.users = len(ids)
    else:
        model, trie, id_range = build_default(args, rng)
        ids, mask = make_prompts(args.users, id_range, rng)
    model = model.to(device)
    ids, mask = ids.to(device), mask.to(device)

    # warm-up (first calls pay one-off allocation/dispatch costs)
    reference = whole_search if args.reference == "whole" else generate_search
    trie_search(model, ids[:2], mask[:2], trie, args.beam, args.precision)
    reference(model, ids[:2], mask[:2], trie, args.beam, args.precision)
    bench_device.reset_peak(device)

    # Interleaved repeats, best time of each path: the machine may be shared, and the minimum is
    # the least disturbed measurement of the same deterministic work.
    t_fast = t_ref = float("inf")
    for _ in range(args.repeats):
        fast, t = run_batches(trie_search, model, ids, mask, trie, args.beam, args.batch_size, args.precision)
        t_fast = min(t_fast, t)
        ref, t = run_batches(reference, model, ids, mask, trie, args.beam, args.batch_size, args.precision)
        t_ref = min(t_ref, t)
    exact, ties = agreement(fast, ref, args.tie_tol)

    def valid(r: BeamResult) -> torch.Tensor:
        return ((r.items >= 0) & (r.items < trie.n_items)) | ((r.items == -1) & torch.isinf(r.scores))

    same = [j for j in range(args.users) if torch.equal(fast.items[j], ref.items[j])]
    finite = torch.isfinite(fast.scores[same])
    score_gap = float((fast.scores[same] - ref.scores[same]).abs()[finite].max()) if same else None
    bench_device.emit({
        "speedup": round(t_ref / t_fast, 2),
        "reference": args.reference,
        "top20_agreement": round(exact, 4),
        "top20_agreement_ties": round(ties, 4),
        "invalid": int((~valid(fast)).sum() + (~valid(ref)).sum()),
        "users": args.users,
        "beam_width": args.beam,
        "n_items": trie.n_items,
        "levels": trie.levels,
        "trie_seconds": round(t_fast, 3),
        f"{args.reference}_seconds": round(t_ref, 3),
        "trie_users_per_s": round(args.users / t_fast, 1),
        f"{args.reference}_users_per_s": round(args.users / t_ref, 1),
        "max_score_diff": score_gap,
        "model": args.run_dir or "tiny-random-llama",
        "threads": torch.get_num_threads(),
        "precision": args.precision,
        **bench_device.device_fields(device, args.precision),
    })


if __name__ == "__main__":
    main()
