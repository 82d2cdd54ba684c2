"""The spellings of ``model.dtype`` and the one precision each means.

A leaf module (no imports): :mod:`align3gr_kit.config` reads it for the field's choices and
:mod:`align3gr_kit.model.precision` for :func:`~align3gr_kit.model.precision.canonical`, so a name the
validator accepts is one the model code handles, and building a config needs no torch.
"""

DTYPE_NAMES: dict[str, str] = {"auto": "auto", "float32": "float32", "fp32": "float32", "bfloat16": "bfloat16",
                               "bf16": "bfloat16", "float16": "float16", "fp16": "float16"}
