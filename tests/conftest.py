"""Shared fixtures: an isolated state folder per test and the real data samples beside the repo."""

from __future__ import annotations

from pathlib import Path

import pytest

from pipeline.settings import StatePaths, get_state_paths

REPO = Path(__file__).resolve().parent.parent
SHARED_DATA = REPO.parent / "shared" / "data"


@pytest.fixture
def state(tmp_path, monkeypatch) -> StatePaths:
    """A fresh SHOPML_HOME for one test."""
    monkeypatch.setenv("SHOPML_HOME", str(tmp_path / "state"))
    monkeypatch.delenv("SHOPML_DVC_REMOTE", raising=False)
    return get_state_paths()


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The real public samples in ../shared/data (read, never copied)."""
    if not SHARED_DATA.is_dir():
        raise FileNotFoundError(f"real data samples not found at {SHARED_DATA}; the tests read them from there")
    return SHARED_DATA


def write_csv(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text.lstrip("\n"))
    return path
