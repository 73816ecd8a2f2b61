"""Shared test fixtures and paths."""
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
CONFIGS = REPO / "configs"
REFERENCE = REPO.parent / "shared" / "reference"


@pytest.fixture(scope="session")
def reference_dir() -> Path:
    """The official reference files (../shared/reference); skips where absent."""
    if not REFERENCE.is_dir():
        pytest.skip(f"reference files not found at {REFERENCE} (shared/ is not beside the repo)")
    return REFERENCE
