"""The runner and model references: '@08/name' checked before any work, resolved just before the asking notebook starts."""
import json
from pathlib import Path
import pytest
from drbook.profiles import as_profile
from drbook.reproduce import reproduce
from test_reproduce import tiny_nb  # one way to write a test notebook


PUBLISH = ("import os\nfrom pathlib import Path\nfrom drbook import registry\n"
           "for name in ('InceptionV3-s1-adam', 'VGG16-s1-adam'):\n"
           "    folder = Path(os.environ['DRBOOK_RUN_DIR'])/'models'/name; folder.mkdir(parents=True)\n"
           "    (folder/'weights.txt').write_text(name)\n"
           "    registry.publish(f'08/{name}', folder, 'multiclass', {'test_qwk': 0.5})")
USE = ("import os\nfrom pathlib import Path\nfrom drbook.core import record\n"
       "record('model', model)\nrecord('weights', (Path(model)/'weights.txt').read_text())\n"
       "record('env', [os.environ['DRBOOK_PROFILE'], os.environ['DRBOOK_NOTEBOOK']])")

@pytest.fixture
def course(tmp_path, monkeypatch):
    "Notebooks 08_x (publishes two models), 12_y (takes `model`) and 13_z (publishes nothing); runs under tmp_path/runs."
    monkeypatch.delenv('DRBOOK_RUN_DIR', raising=False)
    monkeypatch.setenv('DRBOOK_RUNS', str(tmp_path/'elsewhere'))  # the runner must look in runs_root, not here
    nbs = tmp_path/'nbs'; nbs.mkdir()
    tiny_nb(nbs/'08_x.ipynb', PUBLISH)
    tiny_nb(nbs/'12_y.ipynb', USE, params="model = ''  # a model folder or '@NN/name'")
    tiny_nb(nbs/'13_z.ipynb', "x = 1", params="model = ''")
    return tmp_path, nbs

def run(tmp, nbs, model, only=None, nb='12_y'):
    prof = {'name': 'toy', 'parameters': {nb: {'model': model}}, 'timeout': 120}
    return reproduce(prof, only=only, runs_root=tmp/'runs', nbs_dir=nbs, progress=False, log=lambda *a: None)

def test_a_reference_to_a_chapter_not_in_the_run_and_never_run_stops_before_any_notebook(course):
    tmp, nbs = course
    with pytest.raises(ValueError) as e: run(tmp, nbs, '@08/InceptionV3-s1-adam', only=['12', '13'])
    msg = str(e.value)
    assert '12_y' in msg and 'chapter 08 is not in this run' in msg and "no earlier run of profile 'toy'" in msg, msg
    assert not (tmp/'runs').exists() and not (tmp/'elsewhere').exists()  # nothing executed, no run folder

def test_a_reference_to_a_chapter_that_runs_after_the_asker_stops_before_any_notebook(course):
    tmp, nbs = course
    with pytest.raises(ValueError) as e: run(tmp, nbs, '@13/lesions')
    assert '12_y' in str(e.value) and 'chapter 13 (13_z) runs after 12_y' in str(e.value), str(e.value)
    assert not (tmp/'runs').exists()

def test_a_dataset_reference_is_not_a_model_reference(course):
    tmp, nbs = course  # '@aptos' is a dataset the profile lacks: the dataset check names it, not the model check
    with pytest.raises(ValueError, match="'@aptos' names no dataset"): run(tmp, nbs, '@aptos')

@pytest.mark.slow  # three tiny notebooks in kernels, twice: about 15 s
def test_the_asking_notebook_receives_the_folder_08_published_and_an_unknown_name_lists_08s(course):
    tmp, nbs = course
    s = run(tmp, nbs, '@08/InceptionV3-s1-adam')
    assert [n['status'] for n in s['notebooks']] == ['ok', 'ok', 'ok'], s['notebooks']
    folder = Path(s['run_dir'])/'models'/'InceptionV3-s1-adam'
    rec = s['records']['12_y']
    assert rec['model'] == str(folder.resolve()) and Path(rec['model']).is_absolute()
    assert rec['weights'] == 'InceptionV3-s1-adam' and rec['env'] == ['toy', '12_y']  # 08's model of this run
    assert s['notebooks'][1]['parameters'] == {'model': str(folder.resolve())}
    assert Path(s['run_dir']).parent == tmp/'runs'
    s = run(tmp, nbs, '@08/nonexistent')
    assert [n['status'] for n in s['notebooks']] == ['ok', 'failed', 'skipped'], s['notebooks']
    err = s['notebooks'][1]['error']
    assert '@08/nonexistent' in err and '08/InceptionV3-s1-adam' in err and '08/VGG16-s1-adam' in err, err
    assert not Path(s['notebooks'][1]['output']).exists() and '12_y' not in s['records']  # it never started
    # an earlier run of the profile published 08: a run of 12 alone takes its model
    s2 = run(tmp, nbs, '@08/VGG16-s1-adam', only=['12'])
    assert s2['records']['12_y']['weights'] == 'VGG16-s1-adam' and s2['ok']
    assert s2['records']['12_y']['model'].startswith(str(tmp/'runs')) and s2['run_dir'] not in s2['records']['12_y']['model']

def test_a_profile_given_as_a_dict_is_validated_as_a_yaml_file_is(course, tmp_path):
    tmp, nbs = course
    for bad, named in [({'paramters': {}}, "unknown keys ['paramters']"), ({'parameters': {'12_y': 3}}, '`parameters` maps'),
                       ({'datasets': {'a': {'reader': 'nope', 'root': 'x'}}}, "dataset 'a' needs `reader`"),
                       ({'paper': {'figures': [{'notebook': '12_y'}]}}, '`paper` holds')]:
        with pytest.raises(ValueError, match=named.replace('[', r'\[').replace(']', r'\]')):
            reproduce({'name': 'toy', **bad}, runs_root=tmp/'runs', nbs_dir=nbs, progress=False)
        y = tmp_path/'toy.yaml'; y.write_text(json.dumps(bad))  # JSON is YAML: the same error from the file
        with pytest.raises(ValueError, match=named.replace('[', r'\[').replace(']', r'\]')): as_profile(str(y))
    assert not (tmp/'runs').exists()

@pytest.mark.slow  # three tiny notebooks in kernels, two at a time: about 10 s
def test_two_jobs_run_side_by_side_and_the_asking_notebook_waits_for_the_model_it_takes(course):
    tmp, nbs = course
    stamp = "import os, time\nfrom drbook.core import record\nrecord('{0}', [time.time(), os.environ['DRBOOK_NOTEBOOK']])\n"
    tiny_nb(nbs/'08_x.ipynb', stamp.format('start') + "time.sleep(4)\n" + PUBLISH + "\nrecord('end', time.time())")
    tiny_nb(nbs/'12_y.ipynb', stamp.format('start') + USE, params="model = ''")
    tiny_nb(nbs/'13_z.ipynb', stamp.format('start'), params="model = ''")
    prof = {'name': 'toy', 'parameters': {'12_y': {'model': '@08/VGG16-s1-adam'}}, 'timeout': 120, 'jobs': 2}
    s = reproduce(prof, runs_root=tmp/'runs', nbs_dir=nbs, progress=False, log=lambda *a: None)
    assert [(n['notebook'], n['status']) for n in s['notebooks']] == [('08_x', 'ok'), ('12_y', 'ok'), ('13_z', 'ok')]
    r = s['records']
    assert [r[nb]['start'][1] for nb in ('08_x', '12_y', '13_z')] == ['08_x', '12_y', '13_z']  # each kernel its own env
    assert r['13_z']['start'][0] < r['08_x']['end']   # 13 needs nothing: it ran beside 08
    assert r['12_y']['start'][0] > r['08_x']['end']   # 12 takes 08's model: it started once 08 had finished
    assert r['12_y']['weights'] == 'VGG16-s1-adam' and r['12_y']['env'] == ['toy', '12_y']
