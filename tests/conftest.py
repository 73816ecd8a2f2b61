"""Shared test fixtures and paths."""
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
CONFIGS = REPO / "configs"
REFERENCE = REPO.parent / "shared" / "reference"


@pytest.fixture(scope="session")
def reference_dir() -> Path:
    """The official reference files beside the checkout (``../shared/reference``); skips where absent."""
    if not REFERENCE.is_dir():
        pytest.skip(f"reference files not found at {REFERENCE} (a plain clone has no reference files beside it)")
    return REFERENCE
