"""Shared test fixtures and paths."""
import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
CONFIGS = REPO / "configs"
# HKD_REFERENCE names another copy (e.g. for a checkout that is not beside shared/).
REFERENCE = Path(os.environ.get("HKD_REFERENCE", REPO.parent / "shared" / "reference"))


@pytest.fixture(scope="session")
def reference_dir() -> Path:
    """The official reference files beside the checkout (``../shared/reference``); skips where absent."""
    if not REFERENCE.is_dir():
        pytest.skip(f"reference files not found at {REFERENCE} (a plain clone has no reference files beside it)")
    return REFERENCE
