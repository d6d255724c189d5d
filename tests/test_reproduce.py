"""The `drbook` command end to end on tiny notebooks: records collected, failures named, exit status."""
import importlib.util, json, re, subprocess, sys
from pathlib import Path
import nbformat
import pytest

ROOT = Path(__file__).resolve().parent.parent

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

@pytest.mark.slow  # runs notebooks in kernels: a few seconds
def test_failure_names_notebook_and_cell_and_exits_nonzero(course):
    tmp, nbs, prof = course
    tiny_nb(nbs/'01_second.ipynb', "x = 1", "1 / 0  # the failing cell")
    r = drbook('reproduce', '--profile', str(prof), '--nbs', str(nbs), '--runs', str(tmp/'runs'))
    assert r.returncode == 1
    assert '01_second' in r.stdout and 'ZeroDivisionError' in r.stdout and '1 / 0' in r.stdout
    run = next((tmp/'runs').iterdir())
    assert (run/'notebooks'/'01_second.ipynb').exists()          # partial output kept
    assert json.loads((run/'summary.json').read_text())['records'] == {'00_first': {'qwk': 0.5}}

@pytest.mark.slow  # a subprocess or several trainings: a few seconds
def test_bad_profile_is_a_clear_error(tmp_path):
    r = drbook('reproduce', '--profile', 'no-such-profile')
    assert r.returncode == 2 and 'not found' in r.stderr and 'sample' in r.stderr
    bad = tmp_path/'bad.yaml'; bad.write_text('parameters: [1, 2]\n')
    r = drbook('reproduce', '--profile', str(bad))
    assert r.returncode == 2 and 'bad.yaml' in r.stderr

@pytest.mark.slow  # runs notebooks in kernels: a few seconds
def test_star_keys_not_declared_are_listed_per_notebook(course):
    tmp, nbs, prof = course
    prof.write_text("description: test\nparameters:\n  '*': {k: 5, epochs: 1}\n  00_first: {k: 2, typo: 1}\n")
    r = drbook('reproduce', '--profile', str(prof), '--nbs', str(nbs), '--runs', str(tmp/'runs'))
    assert r.returncode == 0, r.stderr
    run = next((tmp/'runs').iterdir())
    nb = {n['notebook']: n for n in json.loads((run/'summary.json').read_text())['notebooks']}
    assert nb['00_first']['parameters'] == {'k': 2} and nb['00_first']['unused_parameters'] == ['epochs', 'typo']
    assert nb['01_second']['parameters'] == {} and nb['01_second']['unused_parameters'] == ['epochs', 'k']
    assert 'not passed: epochs, k' in r.stdout
    assert '| 01_second | ok |' in (run/'summary.md').read_text() and 'epochs, k' in (run/'summary.md').read_text()

def test_refuses_a_table_that_a_chapter_reading_images_would_not_take(course):
    tmp, nbs, prof = course
    tiny_nb(nbs/'02_reads.ipynb', "from drbook.data import read_samples\ntable = read_samples()", params="seed = 1")
    tiny_nb(nbs/'03_takes.ipynb', "from drbook.data import load_table\ntable = load_table(table_csv)", params="table_csv = ''")
    prof.write_text("description: test\nparameters:\n  '*': {table_csv: my_table.csv}\n")
    r = drbook('reproduce', '--profile', str(prof), '--nbs', str(nbs), '--runs', str(tmp/'runs'))
    assert r.returncode == 2 and '02_reads' in r.stderr and 'table_csv' in r.stderr
    assert '03_takes' not in r.stderr and '00_first' not in r.stderr
    assert not (tmp/'runs').exists()                                   # refused before starting

NOISE = ['Unable to parse line', 'Passed unknown parameter', 'Kernel is running over TCP', 'IPKernelApp',
         'Task was destroyed', 'absl::InitializeLog', 'cpu_feature_guard', 'E0000 pretend C++ log line']

@pytest.mark.slow  # imports TensorFlow in the kernel, twice (about 15 s)
def test_quiet_run_sends_kernel_and_library_noise_to_the_log(course):
    tmp, nbs, prof = course
    # a parameters line with two '=' that papermill's own parser cannot read: it warns twice when `k` is passed
    tiny_nb(nbs/'00_first.ipynb', "import os\n_ = os.write(2, b'E0000 pretend C++ log line\\n')",
            "import tensorflow as tf\nfrom drbook.core import record\nrecord('k', k)", params="k = 1  # k = the factor")
    prof.write_text("description: test\nparameters:\n  00_first: {k: 2}\n")
    r = drbook('reproduce', '--profile', str(prof), '--nbs', str(nbs), '--runs', str(tmp/'runs'), '--only', '00')
    assert r.returncode == 0, r.stderr
    out = r.stdout + r.stderr
    assert not [n for n in NOISE if n in out], out
    assert not re.search(r'^[IWEF]\d{4} ', out, re.M), out                 # TensorFlow's C++ logger
    assert [l for l in r.stdout.splitlines() if l.startswith('  ')] == [l for l in r.stdout.splitlines() if '00_first' in l and ' ok ' in l]
    run = next((tmp/'runs').iterdir())
    log = (run/'reproduce.log').read_text()
    for n in ['E0000 pretend C++ log line', 'Unable to parse line', 'Passed unknown parameter: k']: assert n in log, log
    assert json.loads((run/'summary.json').read_text())['records'] == {'00_first': {'k': 2}}
    r = drbook('reproduce', '--profile', str(prof), '--nbs', str(nbs), '--runs', str(tmp/'runs'), '--only', '00', '--verbose')
    assert r.returncode == 0 and 'E0000 pretend C++ log line' in r.stderr and 'Unable to parse line' in r.stderr

@pytest.mark.slow  # a subprocess or several trainings: a few seconds
def test_records_of_a_folder_that_is_not_a_run_is_an_error(tmp_path):
    r = drbook('records', str(tmp_path))
    assert r.returncode == 2 and 'not a run folder' in r.stderr and str(tmp_path) in r.stderr and r.stdout == ''
    r = drbook('records', str(tmp_path/'missing'))
    assert r.returncode == 2 and 'not a run folder' in r.stderr

def test_gate_requires_table_csv_where_images_are_read(tmp_path):
    spec = importlib.util.spec_from_file_location('check_notebooks', ROOT/'tools'/'check_notebooks.py')
    check = importlib.util.module_from_spec(spec); spec.loader.exec_module(check)
    def chapter(name, params, code):
        nb = nbformat.v4.new_notebook()
        nb.cells = [nbformat.v4.new_code_cell('#| default_exp x'), nbformat.v4.new_markdown_cell('# X\n> x'),
                    nbformat.v4.new_code_cell(params, metadata={'tags': ['parameters']}), nbformat.v4.new_code_cell(code)]
        nbformat.write(nb, tmp_path/name); return tmp_path/name
    bad = chapter('20_bad.ipynb', 'seed = 1', 'table = read_samples()')
    assert [m for m in check.problems(bad) if 'table_csv' in m and 'read_samples' in m]
    good = chapter('21_good.ipynb', "table_csv = ''  # '' = the samples", 'table = load_table(table_csv) if table_csv else read_samples()')
    assert check.problems(good) == []
    assert check.problems(chapter('22_none.ipynb', 'seed = 1', 'x = 1')) == []

@pytest.mark.slow
def test_a_table_in_the_profile_reaches_every_chapter_that_reads_images(idrid_root, tmp_path):
    "Acceptance of issue 8: `'*': {table_csv: <an IDRiD table>}` runs 03, 04 and 07 on IDRiD's images only."
    from drbook.data import read_idrid_grading, save_table
    table = read_idrid_grading(idrid_root)
    csv = save_table(table, tmp_path/'idrid.csv')
    graded = int(table['grade'].notna().sum())
    prof = tmp_path/'idrid.yaml'
    prof.write_text(f"description: IDRiD subset\nparameters:\n  '*': {{table_csv: {json.dumps(str(csv))}}}\n")
    r = drbook('reproduce', '--profile', str(prof), '--runs', str(tmp_path/'runs'), '--only', '03', '04', '07')
    run = next((tmp_path/'runs').iterdir())
    s = json.loads((run/'summary.json').read_text())
    assert r.returncode == 0, (r.stdout, r.stderr, [(n['notebook'], n['error']) for n in s['notebooks']])
    for nb in ['03_preprocessing', '04_pipeline', '07_scratch_cnn']:
        n = next(n for n in s['notebooks'] if n['notebook'] == nb)
        assert n['parameters'].get('table_csv') == str(csv) and 'table_csv' not in n['unused_parameters'], n
        assert s['records'].get(nb, {}).get('n_images') == graded, (nb, s['records'].get(nb), graded)
