"""Shared pytest fixtures: where the real IDRiD subset is, skipping with a reason when it is absent."""
import pytest
from drbook.data import idrid_subset_dir

IDRID_MINI = idrid_subset_dir()  # $DRBOOK_IDRID_MINI, else ../shared/datasets/idrid_mini

@pytest.fixture(scope='session')
def idrid_root():
    "The real IDRiD test subset at full resolution (../shared/datasets/idrid_mini, or DRBOOK_IDRID_MINI)."
    if not (IDRID_MINI/'B. Disease Grading').is_dir():
        pytest.skip(f'real IDRiD subset (full resolution) not found at {IDRID_MINI} (set DRBOOK_IDRID_MINI to its folder; '
                    'the downscaled sample in data_samples/idrid is tested without it)')
    return IDRID_MINI
