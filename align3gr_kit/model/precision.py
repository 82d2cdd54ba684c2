"""Precision, decided in one place (``model.dtype``): fp32 weights everywhere, bf16/fp16 for compute only.

**Weights.** Every weight that training changes, directly or through a LoRA delta merged into it
after a stage, is held in fp32 on every device, whatever ``model.dtype`` says:
:func:`align3gr_kit.model.backbone.build_backbone` and :func:`~align3gr_kit.model.backbone.load_model`
load weights in :func:`weight_dtype` (fp32). Why: bf16 keeps 8 significant bits, so near a weight of
0.02 its step is about 1.2e-4; a DPO stage at ``lr`` 5e-6 merges deltas of order 5e-5, and merged
into bf16 weights most of them round back to the old value, silently (the next stage's reference and
the evaluated model inherit the loss). fp16 keeps 11 bits and is no better for small deltas.

**Compute.** ``model.dtype`` picks the dtype the forward passes autocast to: the kit's own passes
(evaluation, reference log-probs, beam search, the keyword extractor) through :func:`autocast`, and
the Trainer's through ``TrainingArguments(**trainer_precision(name))``, which is accelerate's
autocast; with fp16 accelerate also scales the loss (``GradScaler``: fp16's range is too small for
raw gradients). Autocast runs the matrix multiplications in the lower precision and keeps
reductions (softmax, log-softmax, losses) in fp32; the optimiser updates the fp32 weights.

Values of ``model.dtype``:

* ``auto``: on a CUDA GPU with native bf16 (``torch.cuda.is_bf16_supported(including_emulation=False)``:
  compute capability 8.0 and later) bf16; on an older CUDA GPU (V100, T4: bf16 only emulated, slow)
  fp16 with loss scaling; on a CPU with AMX tiles or AVX512-BF16 (:func:`align3gr_kit.utils.cpu_supports_bf16`;
  SmolLM2-135M + LoRA trains several times faster so, LIBRARY-NOTES "bf16 on this CPU") bf16; on any
  other CPU plain fp32 (bf16 emulated there is *slower* than fp32).
* ``float32`` / ``fp32``: plain fp32.
* ``bfloat16`` / ``bf16``: bf16 autocast. Refused on a CUDA GPU without native bf16. Allowed on a
  CPU without bf16 units, where it is emulated and slow: for checks and tests of the bf16 path.
* ``float16`` / ``fp16``: fp16 autocast with loss scaling; needs a CUDA GPU. On a CPU accelerate
  enables neither fp16 autocast nor the scaler (``Accelerator``: ``native_amp`` only when the device
  is not the CPU), so the Trainer would silently train in fp32 while evaluation ran in fp16: refused.

A value this machine cannot run stops when the config is built (``ModelConfig.check`` calls
:func:`unsupported_reason`), never after the weights are loaded.

Reference: PyTorch automatic mixed precision, https://pytorch.org/docs/stable/amp.html
("CPU Ops that can autocast to bfloat16", "Gradient Scaling").
"""

from __future__ import annotations

import contextlib

import torch

from align3gr_kit.dtypes import DTYPE_NAMES as _NAMES  # the one list, shared with ModelConfig.dtype's choices
from align3gr_kit.utils import cpu_supports_bf16  # decided here; tests patch this name

_VALID = "auto, float32 (fp32), bfloat16 (bf16) or float16 (fp16)"


def canonical(name: str) -> str:
    """``model.dtype`` spelled one way: ``auto``, ``float32``, ``bfloat16`` or ``float16``.

    Raises:
        ValueError: an unknown name (the message lists the valid ones).
    """
    if name not in _NAMES:
        raise ValueError(f"model.dtype: unknown value {name!r}; use {_VALID}")
    return _NAMES[name]


def weight_dtype(name: str) -> torch.dtype:
    """The dtype weights are loaded and held in under ``model.dtype = name``: fp32 for every value
    (module docstring: merged updates below bf16's step would be lost); ``name`` is checked only.

    Raises:
        ValueError: an unknown name.
    """
    canonical(name)
    return torch.float32


def cuda_bf16_native() -> bool:
    """Whether the current CUDA GPU computes bf16 natively (not emulated as on V100/T4); False without one."""
    return torch.cuda.is_available() and torch.cuda.is_bf16_supported(including_emulation=False)


def training_device() -> str:
    """``cuda`` when a CUDA GPU is visible, else ``cpu``: the device the Trainer uses (``use_cpu`` otherwise)."""
    return "cuda" if torch.cuda.is_available() else "cpu"


def autocast_dtype(name: str, device: str | torch.device = "cpu") -> torch.dtype | None:
    """The dtype to autocast to for ``model.dtype = name`` on ``device``; ``None`` = plain fp32.

    Raises:
        ValueError: an unknown name (the message lists the valid ones).
    """
    name = canonical(name)
    kind = torch.device(device).type
    if name == "float32":
        return None
    if name == "bfloat16":
        return torch.bfloat16
    if name == "float16":
        return torch.float16
    if kind == "cuda":
        return torch.bfloat16 if cuda_bf16_native() else torch.float16
    if kind == "cpu":
        return torch.bfloat16 if cpu_supports_bf16() else None
    return None


def autocast(name: str, device: str | torch.device = "cpu") -> contextlib.AbstractContextManager:
    """``torch.autocast`` to :func:`autocast_dtype` on ``device``, or a no-op context for fp32."""
    dtype = autocast_dtype(name, device)
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(torch.device(device).type, dtype=dtype)


def _machine_supports() -> str:
    """What this machine can run, in words (for error messages), e.g. ``auto (= bfloat16), float32, bfloat16; ...``."""
    if torch.cuda.is_available():
        if cuda_bf16_native():
            return "auto (= bfloat16), float32, bfloat16, float16"
        return "auto (= float16 with loss scaling), float32, float16 (this CUDA GPU has no native bf16)"
    if cpu_supports_bf16():
        return "auto (= bfloat16), float32, bfloat16; float16 needs a CUDA GPU"
    return ("auto (= float32), float32, bfloat16 (emulated on this CPU without bf16 units: slow, for checks); "
            "float16 needs a CUDA GPU")


def unsupported_reason(name: str) -> str | None:
    """Why ``model.dtype = name`` cannot run on this machine, in one line naming the field, the value and
    what the machine supports; ``None`` when it can.

    Raises:
        ValueError: an unknown name.
    """
    value = canonical(name)
    if value == "float16" and not torch.cuda.is_available():
        why = ("fp16 mixed precision needs a CUDA GPU (on a CPU accelerate applies neither fp16 autocast nor "
               "loss scaling, so training would silently run in fp32) and none is visible")
    elif value == "bfloat16" and torch.cuda.is_available() and not cuda_bf16_native():
        why = "this CUDA GPU has no native bf16 (it would be emulated, slowly)"
    else:
        return None
    return f"model.dtype = {name!r}: {why}; this machine supports {_machine_supports()}"


def trainer_precision(name: str) -> dict[str, bool]:
    """``TrainingArguments(**trainer_precision(name))``: ``{"bf16": ..., "fp16": ...}`` for ``model.dtype = name``
    on the device the Trainer will use (:func:`training_device`).

    ``bf16=True`` is accelerate's bf16 autocast (on a GPU and, with ``use_cpu=True``, on a CPU);
    ``fp16=True`` is its fp16 autocast with a ``GradScaler`` (CUDA only). The weights stay fp32.

    Raises:
        ValueError: an unknown name, or one this machine cannot run (:func:`unsupported_reason`).
    """
    reason = unsupported_reason(name)
    if reason is not None:
        raise ValueError(reason)
    dtype = autocast_dtype(name, training_device())
    return {"bf16": dtype == torch.bfloat16, "fp16": dtype == torch.float16}
