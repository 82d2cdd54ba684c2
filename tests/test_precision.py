"""``model.dtype``: which dtype the forward passes autocast to (align3gr_kit.model.precision)."""

import pytest
import torch

from align3gr_kit.model import precision
from align3gr_kit.model.precision import cpu_supports_bf16 as real_probe  # before conftest's patch


@pytest.mark.parametrize("units, expected", [(True, torch.bfloat16), (False, None)])
def test_auto_uses_bf16_only_on_cpus_with_bf16_units(monkeypatch, units, expected):
    monkeypatch.setattr(precision, "cpu_supports_bf16", lambda: units)
    assert precision.autocast_dtype("auto", "cpu") is expected
    assert precision.trainer_bf16("auto") is (expected is not None) or torch.cuda.is_available()
    assert precision.autocast_dtype("float32", "cpu") is None and precision.autocast_dtype("fp32", "cpu") is None
    assert precision.autocast_dtype("bf16", "cpu") is torch.bfloat16  # forced, also where it is emulated
    with precision.autocast("auto", "cpu"):
        assert torch.is_autocast_enabled("cpu") is (expected is not None)
    with pytest.raises(ValueError, match="auto, float32 or bfloat16"):
        precision.autocast_dtype("half", "cpu")


@pytest.mark.parametrize("amx, avx512_bf16, expected", [(True, False, True), (False, True, True), (False, False, False)])
def test_the_probe_reads_torch_cpu(monkeypatch, amx, avx512_bf16, expected):
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: amx, raising=False)
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: avx512_bf16, raising=False)
    assert real_probe() is expected
