"""Fixtures for the package tests."""

from __future__ import annotations

from pathlib import Path

import pytest

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """``../shared/data`` (real datasets); skips the test with a message when it is absent."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"real data not found at {SHARED_DATA} (a fresh clone without ../shared/data); "
                    "these tests run in CI where it is present")
    return SHARED_DATA


@pytest.fixture(scope="session")
def synthetic_small():
    """A small generated dataset (150 users x 120 items, seed 0)."""
    from align3gr_kit.data.synthetic import generate_synthetic

    return generate_synthetic(150, 120, seed=0)


@pytest.fixture(autouse=True)
def _fp32_under_auto(monkeypatch):
    """``model.dtype: auto`` means fp32 in every test, on every CPU.

    The tests compare trained and decoded numbers with fp32 references (tolerances of 1e-4 and
    below); on a CPU with AMX/AVX512-BF16, ``auto`` would autocast them to bf16 (about 1e-2 apart),
    so the same test would pass on one machine and fail on another. bf16 is tested where a test asks
    for it (``model.dtype: bfloat16``), and the ``auto`` rule itself in ``tests/test_precision.py``.
    """
    from align3gr_kit.model import precision

    monkeypatch.setattr(precision, "cpu_supports_bf16", lambda: False)


@pytest.fixture(scope="session")
def smoke_run(tmp_path_factory):
    """A finished smoke run (stages 00-06 on ``configs/smoke.yaml``), built once per test session in a
    temporary runs folder; returns its :class:`~align3gr_kit.config.RunConfig`. The views of the method
    (notebooks 01-06) are tested against it. Tests must only read it."""
    from align3gr_kit.config import RunConfig
    from align3gr_kit.stages.contract import ensure_stage
    from align3gr_kit.utils import project_root

    runs = tmp_path_factory.mktemp("smoke-run")
    cfg = RunConfig.from_yaml(str(project_root() / "configs" / "smoke.yaml"), run_name="smoke-view",
                              runs_dir=str(runs))
    ensure_stage(cfg, "06_rf_dpo")
    ensure_stage(cfg, "02_codebooks")
    return cfg
