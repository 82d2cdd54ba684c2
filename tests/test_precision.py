"""``model.dtype``: fp32 weights everywhere, the compute dtype per machine, refusals at config time
(align3gr_kit.model.precision). CUDA is mocked: these branches are checked on a CPU-only machine."""

import re

import pytest
import torch

from align3gr_kit.config import ConfigError, RunConfig
from align3gr_kit.model import precision
from align3gr_kit.model.precision import cpu_supports_bf16 as real_probe  # before conftest's patch

NAMES = ["auto", "float32", "fp32", "bfloat16", "bf16", "float16", "fp16"]


def fake_cuda(monkeypatch, native_bf16: bool) -> None:
    """A visible CUDA GPU; ``native_bf16`` False is a V100/T4: bf16 only through emulation."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported",
                        lambda including_emulation=True: native_bf16 or including_emulation)


def no_cuda(monkeypatch, cpu_units: bool) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(precision, "cpu_supports_bf16", lambda: cpu_units)


@pytest.mark.parametrize("units, expected", [(True, torch.bfloat16), (False, None)])
def test_auto_on_cpu_uses_bf16_only_with_bf16_units(monkeypatch, units, expected):
    no_cuda(monkeypatch, units)
    assert precision.autocast_dtype("auto", "cpu") is expected
    assert precision.trainer_precision("auto") == {"bf16": expected is not None, "fp16": False}
    assert precision.autocast_dtype("float32", "cpu") is None and precision.autocast_dtype("fp32", "cpu") is None
    assert precision.autocast_dtype("bf16", "cpu") is torch.bfloat16  # forced, also where it is emulated
    with precision.autocast("auto", "cpu"):
        assert torch.is_autocast_enabled("cpu") is (expected is not None)
    with pytest.raises(ValueError, match=r"auto, float32 \(fp32\), bfloat16 \(bf16\) or float16 \(fp16\)"):
        precision.autocast_dtype("half", "cpu")


@pytest.mark.parametrize("native, auto", [(True, torch.bfloat16), (False, torch.float16)])
def test_auto_on_cuda_uses_real_bf16_else_fp16_with_loss_scaling(monkeypatch, native, auto):
    """The emulation-counting ``is_bf16_supported()`` says True on a V100; auto must ask for native bf16."""
    fake_cuda(monkeypatch, native)
    assert torch.cuda.is_bf16_supported()  # what the old rule asked: True on both GPUs
    assert precision.autocast_dtype("auto", "cuda") is auto
    assert precision.trainer_precision("auto") == {"bf16": native, "fp16": not native}
    assert precision.trainer_precision("fp32") == {"bf16": False, "fp16": False}
    assert precision.trainer_precision("fp16") == {"bf16": False, "fp16": True}


def test_fp16_is_a_compute_dtype():
    """The known bug: ``fp16`` passed config validation, then ``autocast_dtype`` raised 'unknown value'."""
    assert precision.autocast_dtype("fp16", "cuda") is torch.float16
    assert precision.autocast_dtype("float16", "cpu") is torch.float16


@pytest.mark.parametrize("name", NAMES)
def test_weights_are_fp32_whatever_model_dtype_says(monkeypatch, name):
    fake_cuda(monkeypatch, True)  # the old rule loaded bf16 weights exactly here (auto on an Ampere GPU)
    assert precision.weight_dtype(name) is torch.float32
    with pytest.raises(ValueError, match="model.dtype: unknown value 'half'"):
        precision.weight_dtype("half")


# machine -> (value -> refused?)
MACHINES = {
    "cpu without bf16 units": (lambda mp: no_cuda(mp, False), {"bf16": False, "fp16": True}),
    "cpu with bf16 units": (lambda mp: no_cuda(mp, True), {"bf16": False, "fp16": True}),
    "ampere gpu": (lambda mp: fake_cuda(mp, True), {"bf16": False, "fp16": False}),
    "v100 gpu": (lambda mp: fake_cuda(mp, False), {"bf16": True, "fp16": False}),
}


@pytest.mark.parametrize("machine", list(MACHINES))
def test_an_impossible_dtype_stops_at_config_time(monkeypatch, machine):
    setup, refused = MACHINES[machine]
    setup(monkeypatch)
    for name in NAMES:
        short = {"bfloat16": "bf16", "float16": "fp16"}.get(name, name)
        if not refused.get(short, False):
            assert precision.unsupported_reason(name) is None, name
            assert RunConfig().override({"model.dtype": name}, source="--set").model.dtype == name
            continue
        with pytest.raises(ConfigError) as err:
            RunConfig().override({"model.dtype": name}, source="--set")
        msg = str(err.value)
        assert "\n" not in msg and msg.startswith(f"--set: model.dtype = {name!r}: ") and "this machine supports" in msg
        supports = msg.split("this machine supports", 1)[1]
        assert bool(re.search(r"\bfloat16\b", supports.split(";")[0])) is machine.endswith("gpu")
        with pytest.raises(ValueError, match="this machine supports"):  # and never reaches a Trainer
            precision.trainer_precision(name)


def test_a_recorded_config_is_readable_on_any_machine(monkeypatch):
    """A manifest's settings (an fp16 GPU run) read back on a CPU: the machine check is the running
    machine's, not the reader's."""
    no_cuda(monkeypatch, False)
    recorded = RunConfig().to_dict()
    recorded["model"]["dtype"] = "fp16"
    with pytest.raises(ConfigError, match="needs a CUDA GPU"):
        RunConfig.from_dict(recorded, source="manifest.json")
    assert RunConfig.from_dict(recorded, source="manifest.json", recorded=True).model.dtype == "fp16"


def test_bf16_on_a_cpu_without_units_is_allowed_and_emulated(monkeypatch):
    no_cuda(monkeypatch, False)
    assert precision.unsupported_reason("bf16") is None
    assert precision.trainer_precision("bf16") == {"bf16": True, "fp16": False}
    with precision.autocast("bf16", "cpu"):
        y = torch.ones(2, 2) @ torch.ones(2, 2)
    assert y.dtype is torch.bfloat16


def test_trainer_precision_reaches_accelerate(monkeypatch, tmp_path):
    """``TrainingArguments(**trainer_precision(...))`` on this CPU: bf16 becomes accelerate's mixed precision."""
    from transformers import TrainingArguments

    no_cuda(monkeypatch, False)
    for name, mixed in (("bf16", "bf16"), ("float32", "no")):
        args = TrainingArguments(output_dir=str(tmp_path), use_cpu=True, report_to="none",
                                 **precision.trainer_precision(name))
        assert args.mixed_precision == mixed


@pytest.mark.parametrize("amx, avx512_bf16, expected", [(True, False, True), (False, True, True), (False, False, False)])
def test_the_probe_reads_torch_cpu(monkeypatch, amx, avx512_bf16, expected):
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: amx, raising=False)
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: avx512_bf16, raising=False)
    assert real_probe() is expected
