"""Benches on any device (align3gr_kit.bench_device and every bench/*.py script): the device picked,
clocks read between device syncs, peak memory and compute dtype reported. CUDA is mocked: these
branches are checked on a CPU-only machine."""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time

import pytest
import torch

from align3gr_kit import bench_device
from align3gr_kit.utils import project_root

BENCH = project_root() / "bench"
SCRIPTS = sorted(BENCH.glob("*.py"))


def fake_cuda(monkeypatch, calls: list | None = None, gpus: int = 1) -> None:
    """A visible CUDA GPU with native bf16 ("NVIDIA H100"); syncs and peak resets are recorded in ``calls``."""
    calls = [] if calls is None else calls
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: gpus)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: True)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "NVIDIA H100")
    monkeypatch.setattr(torch.cuda, "synchronize", lambda device=None: calls.append(("sync", str(device))))
    monkeypatch.setattr(torch.cuda, "reset_peak_memory_stats", lambda device=None: calls.append(("reset", str(device))))
    monkeypatch.setattr(torch.cuda, "max_memory_allocated", lambda device=None: 5 * 2**20)


def test_pick_device_defaults_to_cpu_without_cuda_and_to_cuda_with_it(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert bench_device.pick_device() == torch.device("cpu")
    assert bench_device.pick_device(None) == bench_device.pick_device("") == torch.device("cpu")
    with pytest.raises(ValueError, match=r"--device cuda: torch sees no CUDA GPU.*use --device cpu"):
        bench_device.pick_device("cuda")
    fake_cuda(monkeypatch, gpus=2)
    assert bench_device.pick_device("auto") == torch.device("cuda")
    assert bench_device.pick_device("cuda:1") == torch.device("cuda", 1)
    assert bench_device.pick_device("cpu") == torch.device("cpu")
    with pytest.raises(ValueError, match=r"--device cuda:2: only 2 GPU\(s\) are visible"):
        bench_device.pick_device("cuda:2")
    with pytest.raises(ValueError, match="not supported by the benches"):
        bench_device.pick_device("meta")
    with pytest.raises(ValueError, match="is not a device"):
        bench_device.pick_device("gpu0")


def test_device_flag_parses_to_a_device_and_refuses_cuda_without_one(monkeypatch, capsys):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    parser = argparse.ArgumentParser()
    bench_device.add_device_argument(parser)
    assert parser.parse_args([]).device == torch.device("cpu")
    with pytest.raises(SystemExit):
        parser.parse_args(["--device", "cuda"])
    assert "use --device cpu" in capsys.readouterr().err  # the reason, not argparse's bare "invalid value"
    fake_cuda(monkeypatch)
    assert parser.parse_args([]).device == torch.device("cuda")


def test_timer_syncs_cuda_before_and_after_the_block(monkeypatch):
    calls: list = []
    fake_cuda(monkeypatch, calls)
    with bench_device.timed(torch.device("cuda")) as t:
        calls.append("work")
        time.sleep(0.02)
    assert calls == [("sync", "cuda"), "work", ("sync", "cuda")]
    assert 0.02 <= t.seconds < 1.0
    calls.clear()
    with bench_device.timed("cpu") as t:  # nothing to wait for on the CPU
        time.sleep(0.01)
    assert calls == [] and t.seconds >= 0.01


def test_peak_memory_on_cuda_is_reset_and_read_from_the_allocator(monkeypatch):
    calls: list = []
    fake_cuda(monkeypatch, calls)
    bench_device.reset_peak("cuda:0")
    assert calls == [("reset", "cuda:0")]
    assert bench_device.peak_memory_mb("cuda:0") == 5.0
    assert bench_device.peak_memory_kind("cuda") == "torch.cuda.max_memory_allocated"


def test_peak_memory_on_cpu_is_the_process_peak_rss():
    bench_device.reset_peak("cpu")  # a no-op: the peak RSS cannot be reset
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    peak = bench_device.peak_memory_mb("cpu")
    after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    assert before <= peak <= after and peak > 10  # Linux reports KiB: a python with torch is well above 10 MiB
    assert bench_device.peak_memory_kind("cpu") == "process peak RSS"


@pytest.mark.parametrize("precision, dtype", [("float32", "float32"), ("bfloat16", "bfloat16"), ("auto", "float32")])
def test_describe_names_device_dtype_and_peak_memory_on_cpu(precision, dtype):
    line = bench_device.describe("cpu", precision)  # conftest: auto = fp32 on every CPU
    assert line.startswith("device cpu (")
    assert f"compute dtype {dtype} (model.dtype {precision})" in line
    assert line.endswith("MiB (process peak RSS)") and "peak memory " in line
    assert "peak memory" not in bench_device.describe("cpu", precision, peak=False)
    fields = bench_device.device_fields("cpu", precision)
    assert fields["compute_dtype"] == dtype and fields["device"] == "cpu" and fields["peak_memory_mb"] > 0


def test_describe_on_a_gpu_names_the_gpu_and_autocast_dtype(monkeypatch):
    fake_cuda(monkeypatch)
    line = bench_device.describe(torch.device("cuda"), "auto")
    assert line == ("device cuda (NVIDIA H100), compute dtype bfloat16 (model.dtype auto), "
                    "peak memory 5.0 MiB (torch.cuda.max_memory_allocated)")
    assert bench_device.compute_dtype("cuda", "float32") == "float32"
    assert bench_device.compute_dtype("cuda", None) == "none"


def test_to_device_moves_tensors_only():
    batch = {"input_ids": torch.ones(2, 3, dtype=torch.long), "n": 4}
    moved = bench_device.to_device(batch, "meta")  # a device every torch build has
    assert moved["input_ids"].device.type == "meta" and moved["input_ids"].shape == (2, 3)
    assert moved["n"] == 4 and batch["input_ids"].device.type == "cpu"


def test_a_script_without_torch_work_takes_device_without_loading_torch():
    code = ("import argparse, sys\nfrom align3gr_kit import bench_device as b\n"
            "p = argparse.ArgumentParser(); b.add_device_argument(p, cpu_by_nature='numpy only')\n"
            "d = b.cpu_by_nature_note(p.parse_args(['--device', 'cuda']).device, 'numpy only')\n"
            "print(b.device_fields(d, None)['peak_memory_of'], 'torch' in sys.modules)")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=project_root(), check=True)
    assert res.stdout.split() == ["process", "peak", "RSS", "False"]
    assert "numpy only, on the CPU by nature (--device cuda unused)" in res.stderr


def test_every_bench_script_is_found():
    names = {p.name for p in SCRIPTS}
    assert {"decode.py", "dpo_speed.py", "train_speed.py", "where_recall.py", "paired_runs.py"} <= names


# One interpreter for all the scripts' --help (each imports torch and transformers: ~10 s apiece alone).
HELP_ALL = """
import contextlib, io, json, runpy, sys
out = {}
for path in sys.argv[1:]:
    sys.argv, text = [path, "--help"], io.StringIO()
    with contextlib.redirect_stdout(text):
        try:
            runpy.run_path(path, run_name="__main__")
            code = "no exit"
        except SystemExit as done:
            code = done.code
    out[path] = [code, text.getvalue()]
print(json.dumps(out))
"""


def test_every_bench_script_takes_device():
    res = subprocess.run([sys.executable, "-c", HELP_ALL, *map(str, SCRIPTS)], capture_output=True, text=True,
                         cwd=project_root(), timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    helps = json.loads(res.stdout.strip().splitlines()[-1])
    assert sorted(helps) == sorted(map(str, SCRIPTS))
    for path, (code, text) in helps.items():
        assert code in (0, None), f"{path} --help exited with {code}"
        assert "--device DEVICE" in text, f"{path} --help lists no --device"


def test_decode_bench_reports_device_dtype_and_peak_memory_on_cpu():
    """The smallest real bench run: its JSON names the device, the compute dtype and the peak memory,
    and its header (stderr) the device before any number."""
    res = subprocess.run([sys.executable, str(BENCH / "decode.py"), "--users", "2", "--beam", "3", "--n-items", "30",
                          "--repeats", "1", "--batch-size", "2", "--threads", "1", "--device", "cpu"],
                         capture_output=True, text=True, cwd=project_root(), timeout=120)
    assert res.returncode == 0, res.stderr[-2000:]
    out = json.loads(res.stdout.strip().splitlines()[-1])
    assert (out["device"], out["compute_dtype"], out["peak_memory_of"]) == ("cpu", "float32", "process peak RSS")
    assert out["peak_memory_mb"] > 10 and out["invalid"] == 0
    assert res.stderr.startswith("# device cpu (") and "compute dtype float32" in res.stderr
