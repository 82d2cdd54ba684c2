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
