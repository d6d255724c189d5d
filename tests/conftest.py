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

# the profiles' rehearsals (tests/test_rehearse_<profile>.py, minutes each), longest first: `make test` runs pytest-xdist
# with --no-loadscope-reorder, so files start in this order and the short ones fill in while these run
REHEARSALS = ('test_rehearse_s3.py', 'test_rehearse_s2.py', 'test_rehearse_s1.py', 'test_rehearse_s4.py')

def pytest_collection_modifyitems(session, config, items):
    "The rehearsals first, longest first; every other test in its collected order (a stable sort)."
    items.sort(key=lambda item: REHEARSALS.index(item.path.name) if item.path.name in REHEARSALS else len(REHEARSALS))

@pytest.fixture
def rehearse(tmp_path):
    "Run a profile's rehearsal with the `drbook` command (drbook.rehearsal); `(run folder, summary)` once checked that it passed."
    import json, subprocess, sys
    from pathlib import Path
    from drbook.references import reference_path
    def run(name):
        r = subprocess.run([str(Path(sys.executable).parent/'drbook'), 'reproduce', '--profile', name, '--rehearse',
                            '--runs', str(tmp_path/'runs')], capture_output=True, text=True)
        folder = next((tmp_path/'runs').iterdir())
        s = json.loads((folder/'summary.json').read_text())
        assert r.returncode == 0, (r.stdout[-3000:], r.stderr[-3000:], [(n['notebook'], n['error']) for n in s['notebooks']])
        assert s['passed'] and all(n['status'] == 'ok' for n in s['notebooks'])
        assert s['comparison']['reference'] == str(reference_path(f'{name}-rehearsal')) and s['comparison']['rows']
        missing = [p['record'] for p in s['paper'] if p['run'] is None]
        assert s['paper'] and not missing, missing  # every figure of the paper has a value in the run
        assert f"({len(s['paper'])} of {len(s['paper'])} recorded)" in r.stdout
        print(r.stdout)  # the paper-versus-run table (pytest -s shows it)
        return folder, s
    yield run
    import shutil  # the trained models take gigabytes (S2's ResNet152s with their optimiser state): the summary is kept
    for models in (tmp_path/'runs').glob('*/models'): shutil.rmtree(models, ignore_errors=True)
