"""The `drbook` command end to end on tiny notebooks: records collected, failures named, exit status."""
import json, subprocess, sys
from pathlib import Path
import nbformat
import pytest

def tiny_nb(path, *sources, params=None):
    nb = nbformat.v4.new_notebook()
    if params: nb.cells.append(nbformat.v4.new_code_cell(params, metadata={'tags': ['parameters']}))
    nb.cells += [nbformat.v4.new_code_cell(s) for s in sources]
    nb.metadata['kernelspec'] = {'name': 'python3', 'language': 'python', 'display_name': 'Python 3'}
    nbformat.write(nb, path)

def drbook(*args, cwd=None):
    "Run the installed `drbook` console script."
    return subprocess.run([str(Path(sys.executable).parent/'drbook'), *args], capture_output=True, text=True, cwd=cwd)

@pytest.fixture
def course(tmp_path):
    nbs = tmp_path/'nbs'; nbs.mkdir()
    tiny_nb(nbs/'00_first.ipynb', "from drbook.core import record\nrecord('qwk', 0.25 * k)", params="k = 1  # the run's factor, quoted 'like this'")
    tiny_nb(nbs/'01_second.ipynb', "from drbook.core import record\nrecord('rows', [1, 2])")
    prof = tmp_path/'p.yaml'
    prof.write_text("description: test\nparameters:\n  00_first: {k: 2, typo: 1}\n")
    return tmp_path, nbs, prof

def test_run_collects_records_and_summary(course):
    tmp, nbs, prof = course
    r = drbook('reproduce', '--profile', str(prof), '--nbs', str(nbs), '--runs', str(tmp/'runs'))
    assert r.returncode == 0, r.stderr
    run = next((tmp/'runs').iterdir())
    s = json.loads((run/'summary.json').read_text())
    assert s['ok'] and s['records'] == {'00_first': {'qwk': 0.5}, '01_second': {'rows': [1, 2]}}
    assert s['notebooks'][0]['parameters'] == {'k': 2} and s['notebooks'][0]['unused_parameters'] == ['typo']
    assert (run/'notebooks'/'00_first.ipynb').exists() and 'typo' in (run/'summary.md').read_text()
    assert 'Summary:' in r.stdout

def test_failure_names_notebook_and_cell_and_exits_nonzero(course):
    tmp, nbs, prof = course
    tiny_nb(nbs/'01_second.ipynb', "x = 1", "1 / 0  # the failing cell")
    r = drbook('reproduce', '--profile', str(prof), '--nbs', str(nbs), '--runs', str(tmp/'runs'))
    assert r.returncode == 1
    assert '01_second' in r.stdout and 'ZeroDivisionError' in r.stdout and '1 / 0' in r.stdout
    run = next((tmp/'runs').iterdir())
    assert (run/'notebooks'/'01_second.ipynb').exists()          # partial output kept
    assert json.loads((run/'summary.json').read_text())['records'] == {'00_first': {'qwk': 0.5}}

def test_bad_profile_is_a_clear_error(tmp_path):
    r = drbook('reproduce', '--profile', 'no-such-profile')
    assert r.returncode == 2 and 'not found' in r.stderr and 'sample' in r.stderr
    bad = tmp_path/'bad.yaml'; bad.write_text('parameters: [1, 2]\n')
    r = drbook('reproduce', '--profile', str(bad))
    assert r.returncode == 2 and 'bad.yaml' in r.stderr
