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
    prof.write_text("description: test\nparameters:\n  00_first: {k: 2}\n")
    return tmp_path, nbs, prof

@pytest.mark.slow  # runs notebooks in kernels: a few seconds
def test_run_collects_records_and_summary(course):
    tmp, nbs, prof = course
    r = drbook('reproduce', '--profile', str(prof), '--nbs', str(nbs), '--runs', str(tmp/'runs'))
    assert r.returncode == 0, r.stderr
    run = next((tmp/'runs').iterdir())
    s = json.loads((run/'summary.json').read_text())
    assert s['ok'] and s['records'] == {'00_first': {'qwk': 0.5}, '01_second': {'rows': [1, 2]}}
    assert s['notebooks'][0]['parameters'] == {'k': 2} and s['notebooks'][0]['unused_parameters'] == []
    assert (run/'notebooks'/'00_first.ipynb').exists() and '| 00_first | ok |' in (run/'summary.md').read_text()
    assert 'Summary:' in r.stdout and 'No reference at' in r.stdout and s['comparison']['reference'] is None

@pytest.mark.slow  # three `drbook` processes: about 4 s
def test_a_parameter_no_notebook_declares_stops_the_run_before_it_starts(course):
    tmp, nbs, prof = course
    for params, named in [("00_first: {k: 2, typo: 1}", '00_first does not declare typo'),
                          ("'*': {k: 2, epochz: 1}", "'*' parameter(s) epochz"),
                          ("09_absent: {k: 2}", "'09_absent', which it does not run")]:
        prof.write_text(f"description: test\nparameters:\n  {params}\n")
        r = drbook('reproduce', '--profile', str(prof), '--nbs', str(nbs), '--runs', str(tmp/'runs'))
        assert r.returncode == 2 and named in r.stderr, (params, r.stderr)
    assert not (tmp/'runs').exists()

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
    prof.write_text("description: test\nparameters:\n  '*': {k: 5}\n  00_first: {k: 2}\n")
    r = drbook('reproduce', '--profile', str(prof), '--nbs', str(nbs), '--runs', str(tmp/'runs'))
    assert r.returncode == 0, r.stderr
    run = next((tmp/'runs').iterdir())
    nb = {n['notebook']: n for n in json.loads((run/'summary.json').read_text())['notebooks']}
    assert nb['00_first']['parameters'] == {'k': 2} and nb['00_first']['unused_parameters'] == []
    assert nb['01_second']['parameters'] == {} and nb['01_second']['unused_parameters'] == ['k']
    assert 'not passed: k' in r.stdout
    assert '| 01_second | ok | ' in (run/'summary.md').read_text() and '| k |' in (run/'summary.md').read_text()

@pytest.mark.slow  # a `drbook` process: about 2 s
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

# --- references, comparison, real-data profiles (issue 12) ---

def _run_dirs(root): return sorted(p for p in Path(root).iterdir() if p.is_dir())

@pytest.mark.slow  # four tiny runs in kernels: about 20 s
def test_a_reference_value_edited_beyond_its_tolerance_fails_the_run_naming_the_record(course):
    tmp, nbs, prof = course
    for _ in range(2): assert drbook('reproduce', '--profile', str(prof), '--nbs', str(nbs), '--runs', str(tmp/'runs')).returncode == 0
    ref = tmp/'ref.json'
    r = drbook('reference', '--update', *map(str, _run_dirs(tmp/'runs')), '--out', str(ref))
    assert r.returncode == 0 and '3 records of 2 notebooks, from 2 run(s)' in r.stdout, (r.stdout, r.stderr)
    other = tmp/'other.json'; other.write_text(json.dumps({'profile': 'sample', 'notebooks': {}}))
    r = drbook('reference', '--update', str(_run_dirs(tmp/'runs')[0]), '--out', str(other))
    assert r.returncode == 2 and "is the reference of profile 'sample', not of these runs' 'p'" in r.stderr, r.stderr
    data = json.loads(ref.read_text())
    assert data['notebooks']['00_first']['qwk'] == {'value': 0.5, 'tolerance': 0.02, 'better': 'higher', 'runs': [0.5, 0.5]}  # a score: another machine's margin
    r = drbook('reproduce', '--profile', str(prof), '--nbs', str(nbs), '--runs', str(tmp/'runs2'), '--reference', str(ref))
    assert r.returncode == 0, r.stderr
    assert 'Against the reference' in r.stdout and '| 00_first | 1 | 0 |' in r.stdout  # the per-notebook table: 1 ok
    data['notebooks']['00_first']['qwk'].update(value=0.7, tolerance=0.1)  # 0.5 is now 0.2 below: beyond 0.1
    data['notebooks']['01_second']['rows[2]'] = {'value': 3, 'tolerance': 0}  # a record the run does not make
    ref.write_text(json.dumps(data))
    r = drbook('reproduce', '--profile', str(prof), '--nbs', str(nbs), '--runs', str(tmp/'runs3'), '--reference', str(ref))
    assert r.returncode == 1
    assert '00_first: qwk (REGRESSION: 0.5 against 0.7 ± 0.1)' in r.stderr and '01_second: rows[2] (missing' in r.stderr, r.stderr
    s = json.loads((_run_dirs(tmp/'runs3')[0]/'summary.json').read_text())
    assert s['ok'] and not s['passed'] and len(s['comparison']['failing']) == 2
    md = (_run_dirs(tmp/'runs3')[0]/'summary.md').read_text()
    assert '| 00_first | qwk | 0.5 | 0.7 | 0.1 | REGRESSION |' in md and '| 01_second | rows[2] |  | 3 | 0 | missing |' in md

@pytest.mark.slow  # three tiny runs in kernels: about 15 s
def test_compare_two_runs_prints_the_table_and_fails_on_a_regression(course):
    tmp, nbs, prof = course
    for k in (2, 1, 3):  # qwk 0.5, then 0.25 (worse), then 0.75 (better)
        prof.write_text(f"description: test\nparameters:\n  00_first: {{k: {k}}}\n")
        assert drbook('reproduce', '--profile', str(prof), '--nbs', str(nbs), '--runs', str(tmp/'runs')).returncode == 0
    a, worse, better = map(str, _run_dirs(tmp/'runs'))
    r = drbook('compare', a, worse)
    assert r.returncode == 1 and '| 00_first | qwk | 0.25 | 0.5 | 0 | REGRESSION |' in r.stdout, r.stdout
    r = drbook('compare', a, better)
    assert r.returncode == 0 and '| 00_first | qwk | 0.75 | 0.5 | 0 | improved |' in r.stdout, r.stdout
    r = drbook('compare', a, a, '--all')
    assert r.returncode == 0 and '| 01_second | rows[1] | 2 | 2 | 0 | ok |' in r.stdout
    assert drbook('compare', a, str(tmp)).returncode == 2  # not a run folder

def test_every_profile_sets_only_declared_parameters():
    from drbook.profiles import check_parameters, list_profiles, load_profile
    names = list_profiles()
    assert {'sample', 'idrid-mini', 's1-aptos2019', 's2-resnet-finetune', 's3-eyepacs2015', 's4-multilabel'} <= set(names), names
    for n in names:
        prof = load_profile(n)
        plan = check_parameters(prof)
        assert plan, n
        if n != 'sample': assert prof['require_gpu'] or n == 'idrid-mini', n
        if n.startswith('s') and n != 'sample':
            assert prof['datasets'] and prof['expected_time'] and prof['paper']['figures'], n  # the seeds' profiles

@pytest.mark.slow  # a `drbook` process: about 2 s
def test_check_names_the_missing_dataset_folder_at_once(tmp_path):
    env_data = tmp_path/'no-data-here'
    r = subprocess.run([str(Path(sys.executable).parent/'drbook'), 'reproduce', '--check', '--profile', 's1-aptos2019'],
                       capture_output=True, text=True, env={**__import__('os').environ, 'DRBOOK_DATA': str(env_data)})
    assert r.returncode == 2 and str(env_data/'aptos2019') in r.stderr and 'does not exist' in r.stderr, r.stderr
    assert "dataset 'aptos'" in r.stderr

@pytest.mark.slow  # imports TensorFlow to look for a GPU: a few seconds
def test_require_gpu_fails_at_once_on_a_cpu_machine(tmp_path):
    import tensorflow as tf
    if tf.config.list_physical_devices('GPU'): pytest.skip('this machine has a GPU')
    r = drbook('reproduce', '--profile', 's1-aptos2019', '--require-gpu', '--runs', str(tmp_path/'runs'))
    assert r.returncode == 2 and 'needs a GPU' in r.stderr and not (tmp_path/'runs').exists()

@pytest.mark.slow  # a `drbook` process reading IDRiD: about 2 s
def test_check_reads_the_datasets_and_prints_the_plan(idrid_root):
    r = drbook('reproduce', '--check', '--profile', 'idrid-mini')
    assert r.returncode == 0, r.stderr
    assert "dataset 'grading': 40 rows read" in r.stdout and '07_scratch_cnn' in r.stdout and "table_csv='@grading'" in r.stdout

def test_the_sample_reference_covers_every_chapter_with_measured_tolerances():
    ref = json.loads((ROOT/'reference'/'sample.json').read_text())
    from drbook.profiles import chapter_notebooks
    recording = {p.stem for p in chapter_notebooks() if "record(" in p.read_text()}
    assert recording <= set(ref['notebooks']), recording - set(ref['notebooks'])
    checked = 0
    for nb, entries in ref['notebooks'].items():
        for k, e in entries.items():
            if e['tolerance'] is None: assert e.get('note'), (nb, k); continue  # not checked, and says why
            checked += 1
            assert len(e['runs']) >= 3, (nb, k)  # every checked tolerance measured on three runs or more
            if all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in e['runs']):
                assert e['tolerance'] >= max(e['runs']) - min(e['runs']), (nb, k)
    assert checked >= 200, checked  # the headline figures of every chapter, and everything computed without training
    # tight enough to catch a model that got worse: 0.03 off 07's test QWK, 3 points off 09's accuracies
    nbs = ref['notebooks']
    assert 0 < nbs['07_scratch_cnn']['test_qwk_sample']['tolerance'] < 0.03, nbs['07_scratch_cnn']['test_qwk_sample']
    acc = {k: e['tolerance'] for k, e in nbs['09_fine_tuning'].items() if k.startswith('test_accuracy')}
    assert acc and all(t is not None and t < 3 for t in acc.values()), acc

@pytest.mark.slow  # the real-data profile: data, preprocessing, scratch CNN, Grad-CAM and lesion chapters on IDRiD (minutes)
def test_the_idrid_mini_profile_runs_real_photographs_through_the_course_and_matches_its_reference(idrid_root, tmp_path):
    r = drbook('reproduce', '--profile', 'idrid-mini', '--runs', str(tmp_path/'runs'))
    run = _run_dirs(tmp_path/'runs')[0]
    s = json.loads((run/'summary.json').read_text())
    assert r.returncode == 0, (r.stdout, r.stderr, [(n['notebook'], n['error']) for n in s['notebooks']])
    assert s['passed'] and s['comparison']['reference'] and len(s['comparison']['rows']) > 20
    assert all(n['status'] == 'ok' for n in s['notebooks'])
    assert s['records']['07_scratch_cnn']['n_images'] == 40  # IDRiD's graded photographs, not the synthetic samples

@pytest.mark.slow  # a tiny run in kernels: a few seconds
def test_the_summary_prints_the_authors_figures_beside_the_run(course):
    tmp, nbs, prof = course
    prof.write_text("description: test\nparameters:\n  00_first: {k: 2}\npaper:\n  source: 'S9 (Someone et al.), Table 1'\n"
                    "  figures:\n    - {notebook: 00_first, record: qwk, value: 0.81, what: 'QWK on their test set'}\n"
                    "    - {notebook: 01_second, record: 'rows[1]', value: 7, what: 'a table cell'}\n"
                    "    - {notebook: 01_second, record: auc, value: 0.9, what: 'a figure the chapter does not record'}\n")
    r = drbook('reproduce', '--profile', str(prof), '--nbs', str(nbs), '--runs', str(tmp/'runs'))
    assert r.returncode == 0, r.stderr
    run = _run_dirs(tmp/'runs')[0]
    md = (run/'summary.md').read_text()
    assert "S9 (Someone et al.), Table 1. These are the authors' results on their data" in md
    assert '| 00_first | QWK on their test set | 0.81 | 0.5 | `qwk` |' in md and '| 01_second | a table cell | 7 | 2 | `rows[1]` |' in md
    assert '| 01_second | a figure the chapter does not record | 0.9 | not recorded | `auc` |' in md
    assert [p['run'] for p in json.loads((run/'summary.json').read_text())['paper']] == [0.5, 2, None]
    bad = tmp/'bad.yaml'; bad.write_text("description: x\npaper: {source: s, figures: [{notebook: 00_first, value: 1}]}\n")
    assert drbook('reproduce', '--check', '--profile', str(bad), '--nbs', str(nbs)).returncode == 2
