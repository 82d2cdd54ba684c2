"""The ``bench/`` scripts' one harness: device, clock, peak memory and the JSON line out, in one place.

Every bench script takes ``--device`` (:func:`add_device_argument`; default ``cuda`` when
``torch.cuda.is_available()``, else ``cpu``), reads its clocks through :func:`timed` (which
synchronizes the device before and after: CUDA kernels run asynchronously, so a clock read without a
sync measures the launch, not the work), resets the peak-memory counter before each measured part
(:func:`reset_peak`) and reports it after (:func:`peak_memory_mb`).

Peak memory means two different things, and the outputs say which (:func:`peak_memory_kind`):

* on a GPU, ``torch.cuda.max_memory_allocated`` since the last :func:`reset_peak` (tensors only, not
  the CUDA context or the caching allocator's reserve);
* on the CPU, the process's peak resident set (``resource.getrusage(RUSAGE_SELF).ru_maxrss``), which
  no call can reset: a later part's peak includes every earlier part's.

torch is imported inside the functions that need it: a bench with no torch work (the feedback
simulator) takes ``--device`` and reports its peak RSS without loading torch, which would add seconds
and hundreds of MiB to what it measures.

Each script prints its result as one JSON line on stdout (:func:`emit`) and its header on stderr
(:func:`header`), so ``python bench/x.py ... | tail -1`` is the result.

Reference: PyTorch, "CUDA semantics: asynchronous execution"
(https://pytorch.org/docs/stable/notes/cuda.html#asynchronous-execution).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import resource
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator

if TYPE_CHECKING:
    import torch


def pick_device(arg: str | None = "auto") -> torch.device:
    """The device a bench runs on, from its ``--device`` value.

    Args:
        arg: ``auto`` / ``None`` / ``""`` (``cuda`` when ``torch.cuda.is_available()``, else ``cpu``),
            ``cpu``, ``cuda`` or ``cuda:N``.
    Returns:
        ``torch.device``; a bare ``cuda`` stays index-less (torch's current device).
    Raises:
        ValueError: an unknown device, CUDA asked for where none is visible, or an index beyond the
            visible GPUs (the message names ``--device`` and what this machine has).
    """
    import torch

    if arg in (None, "", "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(arg)
    except (RuntimeError, ValueError) as err:
        raise ValueError(f"--device: {arg!r} is not a device ({err}); use cpu, cuda or cuda:N") from err
    if device.type not in ("cpu", "cuda"):
        raise ValueError(f"--device: {arg!r} is not supported by the benches; use cpu, cuda or cuda:N")
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"--device {arg}: torch sees no CUDA GPU here (torch.cuda.is_available() is False); "
                             "use --device cpu")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise ValueError(f"--device {arg}: only {torch.cuda.device_count()} GPU(s) are visible "
                             f"(cuda:0..cuda:{torch.cuda.device_count() - 1})")
    return device


def _device_type(arg: str) -> torch.device:
    """argparse ``type=`` for ``--device``: :func:`pick_device`, its message kept in the usage error."""
    try:
        return pick_device(arg)
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from err


def add_device_argument(parser: argparse.ArgumentParser, cpu_by_nature: str | None = None) -> None:
    """Add ``--device`` to a bench's parser; ``args.device`` is then a ``torch.device``.

    Args:
        parser: the script's parser.
        cpu_by_nature: for a script with no torch work, why it runs on the CPU whatever ``--device``
            says (e.g. "reads saved ranks"); the flag is then accepted for a uniform interface, kept
            as the string given and reported by :func:`cpu_by_nature_note`.
    """
    if cpu_by_nature:
        parser.add_argument("--device", default="auto",
                            help=f"accepted for a uniform bench interface; this script runs on the CPU by nature "
                                 f"({cpu_by_nature})")
        return
    parser.add_argument("--device", type=_device_type, default="auto",
                        help="cpu, cuda or cuda:N (default: cuda when torch sees a GPU, else cpu)")


def cpu_by_nature_note(arg: str, reason: str) -> str:
    """Print (to stderr) that a script with no torch work runs on the CPU; return ``"cpu"``.

    ``arg`` is the ``--device`` value given; a GPU named there is said to be unused, not refused.
    """
    asked = "" if arg in ("auto", "cpu", "", None) else f" (--device {arg} unused)"
    print(f"# device cpu: {reason}, on the CPU by nature{asked}", file=sys.stderr, flush=True)
    return "cpu"


def _is_cuda(device: torch.device | str) -> bool:
    """``device`` (a ``torch.device`` or its string) is a CUDA device."""
    return str(device).split(":")[0] == "cuda"


def sync(device: torch.device | str) -> None:
    """Wait until every kernel queued on ``device`` has finished (a no-op on the CPU, which runs eagerly)."""
    if _is_cuda(device):
        import torch

        torch.cuda.synchronize(device)


@dataclass
class Timing:
    """What :func:`timed` measured: ``seconds`` of wall time, set when the block ends."""

    seconds: float = float("nan")


@contextlib.contextmanager
def timed(device: torch.device | str) -> Iterator[Timing]:
    """Time a block on ``device``: sync, read the clock, run the block, sync, read the clock.

    Usage: ``with timed(device) as t: step(); print(t.seconds)``. The sync before keeps earlier
    queued work out of the block's time; the one after keeps the block's own work in it.
    """
    timing = Timing()
    sync(device)
    start = time.perf_counter()
    yield timing
    sync(device)
    timing.seconds = time.perf_counter() - start


def reset_peak(device: torch.device | str) -> None:
    """Start a new peak-memory measurement on a GPU; the CPU's peak RSS cannot be reset (see the module)."""
    if _is_cuda(device):
        import torch

        torch.cuda.reset_peak_memory_stats(device)


def peak_memory_mb(device: torch.device | str) -> float:
    """Peak memory in MiB: GPU tensors since :func:`reset_peak`, or the process's peak RSS on the CPU."""
    if _is_cuda(device):
        import torch

        return torch.cuda.max_memory_allocated(device) / 2**20
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss / 2**20 if sys.platform == "darwin" else rss / 2**10  # macOS: bytes, Linux: KiB


def peak_memory_kind(device: torch.device | str) -> str:
    """What :func:`peak_memory_mb` measures on ``device``, for the outputs."""
    if _is_cuda(device):
        return "torch.cuda.max_memory_allocated"
    return "process peak RSS"


def device_name(device: torch.device | str) -> str:
    """The hardware behind ``device``: the GPU model, or the CPU model (``/proc/cpuinfo``) with torch's
    thread count when torch is loaded (else the core count)."""
    if _is_cuda(device):
        import torch

        return torch.cuda.get_device_name(device)
    cpu = platform.processor() or platform.machine()
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    torch = sys.modules.get("torch")  # not imported for it: see the module docstring
    return f"{cpu}, {torch.get_num_threads()} torch threads" if torch else f"{cpu}, {os.cpu_count()} cores"


def compute_dtype(device: torch.device | str, precision: str | None) -> str:
    """The dtype the forward passes compute in for ``model.dtype = precision`` on ``device``.

    ``precision`` None means the script runs no torch model ("none"); otherwise the autocast dtype of
    :func:`align3gr_kit.model.precision.autocast_dtype`, ``float32`` when it autocasts to nothing.
    """
    if precision is None:
        return "none"
    from align3gr_kit.model.precision import autocast_dtype

    dtype = autocast_dtype(precision, device)
    return "float32" if dtype is None else str(dtype).removeprefix("torch.")


def describe(device: torch.device | str, precision: str | None, peak: bool = True) -> str:
    """One line naming the device and its hardware, the compute dtype and (``peak``) the peak memory.

    E.g. ``device cuda (NVIDIA H100 80GB HBM3), compute dtype bfloat16 (model.dtype auto), peak memory
    812.3 MiB (torch.cuda.max_memory_allocated)``.
    """
    dtype = compute_dtype(device, precision)
    line = f"device {device} ({device_name(device)}), compute dtype {dtype}"
    if precision is not None:
        line += f" (model.dtype {precision})"
    if peak:
        line += f", peak memory {peak_memory_mb(device):.1f} MiB ({peak_memory_kind(device)})"
    return line


def device_fields(device: torch.device | str, precision: str | None, peak: bool = True) -> dict[str, Any]:
    """The same facts as :func:`describe` for a JSON output: ``device``, ``device_name``,
    ``compute_dtype``, ``peak_memory_of`` and (``peak``) ``peak_memory_mb`` rounded to 0.1 (a script
    that measures several parts reports one peak per part under its own keys instead)."""
    out = {"device": str(device), "device_name": device_name(device), "compute_dtype": compute_dtype(device, precision),
           "peak_memory_of": peak_memory_kind(device)}
    if peak:
        out["peak_memory_mb"] = round(peak_memory_mb(device), 1)
    return out


def header(device: torch.device | str, precision: str | None) -> None:
    """Print the bench's header line to stderr (device and compute dtype; stdout keeps its JSON or markdown)."""
    print(f"# {describe(device, precision, peak=False)}", file=sys.stderr, flush=True)


def to_device(batch: dict[str, Any], device: torch.device | str) -> dict[str, Any]:
    """A collated batch with every tensor moved to ``device`` (other values as they are)."""
    import torch

    return {k: v.to(device) if torch.is_tensor(v) else v for k, v in batch.items()}


def emit(record: dict[str, Any]) -> None:
    """Print a bench's result as one JSON line on stdout (flushed: a parent reading line by line, e.g.
    bench/token_level.py's children, gets it at once)."""
    print(json.dumps(record), flush=True)
