"""Which dtype the forward passes autocast to, decided in one place (``model.dtype``).

``model.dtype: auto`` means:

* CUDA GPU with bf16 support: bf16 autocast (the Trainer's ``bf16=True``);
* CPU with AMX tiles or AVX512-BF16 (Sapphire Rapids and later Xeons): bf16 autocast with fp32
  master weights. SmolLM2-135M + LoRA trains several times faster that way (LIBRARY-NOTES, "bf16
  on this CPU"): the matrix multiplications run on the bf16 units;
* any other CPU: plain fp32. Without those instructions bf16 is emulated and *slower* than fp32.

``float32`` forces fp32, ``bfloat16`` forces bf16 autocast (also where it is emulated: for checks).

The weights stay as loaded (fp32 unless :func:`align3gr_kit.model.backbone.resolve_dtype` loads a
hub model in bf16 on a GPU); autocast runs the matrix multiplications in the lower precision and
keeps reductions (softmax, losses, log-probs) in fp32.

Reference: PyTorch automatic mixed precision, https://pytorch.org/docs/stable/amp.html
("CPU Ops that can autocast to bfloat16").
"""

from __future__ import annotations

import contextlib

import torch

from align3gr_kit.utils import cpu_supports_bf16  # decided here; tests patch this name

_NAMES = {"auto": "auto", "float32": "float32", "fp32": "float32", "bfloat16": "bfloat16", "bf16": "bfloat16"}


def autocast_dtype(name: str, device: str | torch.device = "cpu") -> torch.dtype | None:
    """The dtype to autocast to for ``model.dtype = name`` on ``device``; ``None`` = plain fp32.

    Raises:
        ValueError: an unknown name (the message lists the valid ones).
    """
    if name not in _NAMES:
        raise ValueError(f"model.dtype: unknown value {name!r}; use auto, float32 or bfloat16")
    name = _NAMES[name]
    kind = torch.device(device).type
    if name == "float32":
        return None
    if name == "bfloat16":
        return torch.bfloat16
    if kind == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else None
    if kind == "cpu":
        return torch.bfloat16 if cpu_supports_bf16() else None
    return None


def autocast(name: str, device: str | torch.device = "cpu") -> contextlib.AbstractContextManager:
    """``torch.autocast`` to :func:`autocast_dtype` on ``device``, or a no-op context for fp32."""
    dtype = autocast_dtype(name, device)
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(torch.device(device).type, dtype=dtype)


def trainer_bf16(name: str) -> bool:
    """``TrainingArguments(bf16=...)`` for ``model.dtype = name`` on the device the Trainer will use.

    On CPU the Trainer (``use_cpu=True``) turns ``bf16=True`` into accelerate's CPU bf16 autocast.
    """
    device = "cuda" if torch.cuda.is_available() else "cpu"
    return autocast_dtype(name, device) == torch.bfloat16
