"""Several processes (``accelerate launch`` / ``torchrun``): what the kit refuses, and how work is shared.

* :func:`refuse_data_parallel` / :func:`refuse_sharded_engine`: setups the kit cannot run right are
  stopped before any model or Trainer exists, with the command that works (several visible GPUs
  without a launch would get ``nn.DataParallel`` from transformers' Trainer; ZeRO-3 and sharded FSDP
  hold no whole parameter on a rank, so copying, merging and saving the model would see shards).
* :func:`sharded_map`: a list cut into batches of ``batch_size`` (as one process cuts it), batch ``j``
  computed by rank ``j % world``, results gathered in the original order on every rank. Every batch
  is then the same tensor as in one process, so the results are the one-process results.
* :func:`from_main`: a value computed by the main process and broadcast to the others.
* :func:`examples_hash` / :func:`check_ranks_agree`: every rank must train on identical examples
  (else DDP pairs different batches, or hangs when the datasets differ in length); a mismatch stops
  the run with the ranks' hashes.

The process group itself is created by :func:`align3gr_kit.distributed.process_state` (with the config's
timeout). In one process every function here does the plain thing (no collective).
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
from typing import Any, Callable, Sequence

from align3gr_kit.config import DistributedConfig
from align3gr_kit.errors import InputError

DEFAULT_TIMEOUT_MINUTES = DistributedConfig().timeout_minutes


class LaunchError(InputError):
    """A launch the kit refuses (several GPUs without a launch, a sharded engine); says what to run instead."""


def launched() -> bool:
    """True inside a distributed launch of several processes (``WORLD_SIZE`` > 1, set by torchrun,
    ``accelerate launch`` and the DeepSpeed launcher before the process starts)."""
    return int(os.environ.get("WORLD_SIZE", "1") or 1) > 1


def world() -> tuple[int, int]:
    """``(rank, world size)`` of the initialised process group, ``(0, 1)`` without one."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def this_command() -> str:
    """The command line of this process as a user would type it after ``python`` (``-m align3gr_kit train
    sft --config C``), for messages that say what to run instead."""
    script = sys.argv[0] if sys.argv else ""
    if script.endswith("__main__.py") and os.path.basename(os.path.dirname(script)) == "align3gr_kit":
        head = "-m align3gr_kit"
    elif script.endswith(os.path.join("train", "sft_main.py")):
        head = "-m align3gr_kit.train.sft_main"
    else:
        head = script or "<your script>"
    return " ".join([head, *sys.argv[1:]])


def refuse_data_parallel() -> None:
    """Stop when several GPUs are visible and no distributed launch is active.

    transformers' ``TrainingArguments`` then sets ``n_gpu`` to the device count and the Trainer wraps
    the model in ``nn.DataParallel`` (one process driving every GPU: slow, deprecated, and a path the
    kit never tested), silently. Raises :class:`LaunchError` with the launch command and the one-GPU
    alternative; nothing on one GPU, on CPUs, or inside a launch (``LOCAL_RANK`` set by the launcher).
    """
    import torch

    n = torch.cuda.device_count()
    # LOCAL_RANK, not WORLD_SIZE: a launch of one process is still one process per GPU (accelerate's
    # state and the Trainer read LOCAL_RANK to choose distributed mode, where n_gpu is 1)
    if n > 1 and os.environ.get("LOCAL_RANK") is None:
        cmd = this_command()
        raise LaunchError(
            f"{n} GPUs are visible but this is not a distributed launch: transformers' Trainer would wrap the model "
            f"in nn.DataParallel. Run one process per GPU: accelerate launch --multi_gpu --num_processes {n} {cmd} "
            f"(or torchrun --nproc_per_node {n} {cmd}), or use one GPU: CUDA_VISIBLE_DEVICES=0 python {cmd}"
        )


def sharded_engine() -> str | None:
    """The engine of this launch when it shards parameters across ranks (DeepSpeed ZeRO-3, FSDP other than
    ``NO_SHARD``), read from the environment ``accelerate launch`` sets; None otherwise."""
    if os.environ.get("ACCELERATE_USE_DEEPSPEED", "false").lower() == "true":
        stage = os.environ.get("ACCELERATE_DEEPSPEED_ZERO_STAGE", "")
        config_file = os.environ.get("ACCELERATE_DEEPSPEED_CONFIG_FILE", "")
        if not stage and config_file and os.path.exists(config_file):
            with open(config_file) as f:
                stage = str(json.load(f).get("zero_optimization", {}).get("stage", ""))
        if stage == "3":
            return "DeepSpeed ZeRO-3"
    if os.environ.get("ACCELERATE_USE_FSDP", "false").lower() == "true":
        strategy = os.environ.get("FSDP_SHARDING_STRATEGY", "FULL_SHARD").upper()
        if strategy not in ("3", "NO_SHARD"):
            return f"FSDP ({strategy})"
    return None


def refuse_sharded_engine() -> None:
    """Stop a launch whose engine shards the parameters (:func:`sharded_engine`).

    Every stage copies its model (the DPO reference), merges LoRA deltas into it and saves it; under
    ZeRO-3 or sharded FSDP a rank holds a shard of each parameter, so those would read or write
    pieces. ZeRO-2 shards only the optimiser state and the gradients (every rank keeps whole
    parameters), and is supported, as is plain DDP.
    """
    engine = sharded_engine()
    if engine is not None:
        raise LaunchError(f"{engine} shards the model's parameters across ranks, and the kit copies, merges and saves "
                          "whole models; use DeepSpeed ZeRO-2 (zero_stage: 2 in the accelerate config) or plain DDP "
                          "(accelerate launch --multi_gpu)")


def refuse_deepspeed_low_precision_merge(precision: str) -> None:
    """Stop the DPO stages under DeepSpeed when they would train in bf16 or fp16.

    DeepSpeed's ``bf16``/``fp16`` modes (which the Trainer turns on from ``TrainingArguments(bf16=...)``)
    cast the module itself to the low precision and keep fp32 master copies only inside its optimiser,
    for the *trainable* parameters. The frozen base that a DPO stage merges its LoRA delta into is then
    bf16, and deltas below bf16's rounding step (``dpo.lr`` 5e-6 gives about 5e-5, bf16's step near 0.02
    is about 1.2e-4) vanish in the merge: the loss :mod:`align3gr_kit.model.precision` exists to prevent.
    SFT (stage 04) under DeepSpeed ZeRO-2 is allowed (its deltas are far larger); DPO runs under plain
    DDP, where the weights stay fp32 and only the compute autocasts, or under DeepSpeed in fp32.
    """
    from align3gr_kit.model.precision import trainer_precision

    if os.environ.get("ACCELERATE_USE_DEEPSPEED", "false").lower() != "true":
        return
    low = [k for k, on in trainer_precision(precision).items() if on]
    if low:
        raise LaunchError(
            f"DeepSpeed with {low[0]} (model.dtype = {precision!r}) holds the model's weights in {low[0]}, and a DPO "
            "stage's small LoRA delta merged into them would round away; launch the DPO stages under DDP "
            "(accelerate launch --config_file configs/accelerate/ddp.yaml ...: fp32 weights, bf16 autocast) or "
            "set --set model.dtype=float32 to run DeepSpeed in fp32")


def _gather(obj: list) -> list:
    from accelerate.utils import gather_object

    process_state()  # gather_object reads accelerate's state; it exists whenever the group does
    return gather_object(obj)


def sharded_map(items: Sequence[Any], batch_size: int, fn: Callable[[list[Any]], Sequence[Any]],
                sharded: bool = True) -> list[Any]:
    """``fn`` over ``items`` split between the processes of a launch; the per-item results in order.

    ``items`` is cut into consecutive batches of ``batch_size`` (the last one shorter), the cut a single
    process makes; rank ``r`` takes batches ``r, r + world, ...`` and calls ``fn`` once on their
    concatenation. Only the last batch can be short and it is the last of its rank's, so when ``fn``
    cuts its input into batches of ``batch_size`` it decodes exactly the batches of one process. The
    results are gathered (``accelerate.utils.gather_object``) and put back in item order, on every rank.

    Args:
        items: the work (prompts, row indices, examples).
        batch_size: the batch size ``fn`` uses inside.
        fn: ``fn(list of items) -> sequence of one result per item`` (a list or an array's rows).
        sharded: False: this process alone calls ``fn(items)`` (every process of a launch must otherwise
            call this together).
    Returns:
        ``[result of items[0], result of items[1], ...]``, the same on every rank.
    """
    rank, size = world()
    if not sharded or size == 1:
        return list(fn(list(items)))
    starts = list(range(0, len(items), batch_size))
    mine = [j for j in range(len(starts)) if j % size == rank]
    chunk = [x for j in mine for x in items[starts[j]:starts[j] + batch_size]]
    out = fn(chunk) if chunk else []
    if len(out) != len(chunk):
        raise RuntimeError(f"sharded_map: fn returned {len(out)} results for {len(chunk)} items")
    pieces, at = [], 0
    for j in mine:
        n = len(items[starts[j]:starts[j] + batch_size])
        pieces.append((j, list(out[at:at + n])))
        at += n
    gathered = sorted(_gather(pieces), key=lambda p: p[0])
    if [j for j, _ in gathered] != list(range(len(starts))):
        raise RuntimeError(f"sharded_map: gathered batches {[j for j, _ in gathered]}, expected 0..{len(starts) - 1}")
    return [x for _, piece in gathered for x in piece]


def from_main(fn: Callable[[], Any]) -> Any:
    """``fn()`` computed by the main process and broadcast to every rank (``broadcast_object_list``);
    in one process, ``fn()``. Every rank of a launch must call it at the same point."""
    rank, size = world()
    if size == 1:
        return fn()
    from accelerate.utils import broadcast_object_list

    process_state()
    box = [fn() if rank == 0 else None]
    return broadcast_object_list(box, from_process=0)[0]


def examples_hash(examples: Sequence[dict]) -> str:
    """sha256 (16 hex digits) of preference examples as canonical JSON (floats by their exact repr)."""
    from align3gr_kit.utils import _json_default

    text = json.dumps(list(examples), sort_keys=True, default=_json_default)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def check_ranks_agree(value: str, what: str) -> list[str]:
    """Gather ``value`` (a hash) from every rank; raise when they differ. Returns the per-rank values.

    Raises:
        RuntimeError: naming ``what`` and each rank's value.
    """
    _, size = world()
    values = [value] if size == 1 else _gather([value])
    if len(set(values)) > 1:
        listing = ", ".join(f"rank {r}: {v}" for r, v in enumerate(values))
        raise RuntimeError(f"{what}: the ranks disagree ({listing}); every rank must train on identical data. "
                           "Build it once and share it (align3gr_kit.distributed.sharded_map / from_main)")
    return values


def main_decides(flag: bool) -> bool:
    """The main process's ``flag`` on every rank (one broadcast of one number); in one process, ``flag``.

    For decisions taken from a per-rank reading such as the wall clock, which must be the same on every
    rank because what follows has collectives (a checkpoint save)."""
    _, size = world()
    if size == 1:
        return flag
    import torch

    box = torch.tensor([1 if flag else 0], device=process_state().device)
    torch.distributed.broadcast(box, src=0)
    return bool(box.item())


def process_state(cfg=None):
    """accelerate's ``PartialState`` for this process, created the same way everywhere.

    ``cfg`` (a :class:`~align3gr_kit.config.RunConfig`): the first call creates the state, and with it
    the process group of a distributed launch, with ``distributed.timeout_minutes`` (default 120) as its
    timeout. The state is a singleton and ``torch.distributed`` keeps the group of whoever initialised it
    first (``TrainingArguments`` resets accelerate's state but cannot re-create the group), so the entry
    points (``train``, ``sft_main``, the stages) call this first, before any ``TrainingArguments``. Later
    calls return the existing state. Every call first refuses several visible GPUs without a launch
    and engines that shard parameters (ZeRO-3, FSDP) (above).

    Without GPUs it is created with ``cpu=True``, so that under ``accelerate launch`` (or torchrun)
    the gloo process group is set up and only rank 0 is the main process; otherwise accelerate may
    see no GPU, stay single-process, and every rank would think itself the main one.
    """
    from datetime import timedelta

    import torch
    from accelerate import PartialState

    refuse_data_parallel()  # cheap checks, on every call: a state made elsewhere must not skip them
    refuse_sharded_engine()
    if PartialState._shared_state:
        return PartialState()
    minutes = cfg.distributed.timeout_minutes if cfg is not None else DEFAULT_TIMEOUT_MINUTES
    return PartialState(cpu=not torch.cuda.is_available(), timeout=timedelta(minutes=minutes))
