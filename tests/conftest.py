"""Shared pytest fixtures: where the real IDRiD subset is, skipping with a reason when it is absent."""
import os
from pathlib import Path
import pytest

ROOT = Path(__file__).resolve().parent.parent
IDRID_MINI = Path(os.environ.get('DRBOOK_IDRID_MINI', ROOT.parent/'shared'/'datasets'/'idrid_mini'))

@pytest.fixture(scope='session')
def idrid_root() -> Path:
    "The real IDRiD test subset (../shared/datasets/idrid_mini, or DRBOOK_IDRID_MINI)."
    if not (IDRID_MINI/'B. Disease Grading').is_dir():
        pytest.skip(f'real IDRiD subset not found at {IDRID_MINI} (set DRBOOK_IDRID_MINI to its folder)')
    return IDRID_MINI
