"""Trained models as keyed artefacts: chapters reuse a model only when everything that made it is the same."""
import json, os
from pathlib import Path
import numpy as np
import pytest
import papermill as pm
from drbook.core import PROJECT_ROOT, samples_dir
from drbook.data import load_table, save_table
from drbook import registry

NBS = PROJECT_ROOT/'nbs'


def _run_07(tmp_path, table_csv, tag):
    "Execute chapter 07 outside a run folder, small and fast; return the executed notebook's text."
    out = tmp_path/f'07_{tag}.ipynb'
    pm.execute_notebook(str(NBS/'07_scratch_cnn.ipynb'), str(out), cwd=str(NBS), kernel_name='python3', progress_bar=False,
                        parameters=dict(table_csv=str(table_csv), experiments=['sample'], image_size=48, epochs=2, batch_size=32, size_study=''))
    return out.read_text(encoding='utf-8')


def _models(cache:Path)->dict:
    "{folder name: mtime of its model.keras} of the finished models in the model cache."
    return {p.parent.name: p.stat().st_mtime_ns for p in (cache/'models').glob('*/model.keras')}


@pytest.mark.slow
def test_chapter_07_trains_once_per_configuration(tmp_path, monkeypatch):
    "Two tables train two models; the first table again reuses its model without training."
    cache = tmp_path/'cache'
    monkeypatch.setenv('DRBOOK_CACHE', str(cache))
    for k in ('DRBOOK_RUN_DIR', 'DRBOOK_NOTEBOOK'): monkeypatch.delenv(k, raising=False)
    table = load_table(samples_dir()/'samples.csv')
    a = save_table(table[np.arange(len(table)) % 5 != 0], tmp_path/'a'/'table.csv')
    b = save_table(table[np.arange(len(table)) % 7 != 0], tmp_path/'b'/'table.csv')
    _run_07(tmp_path, a, 'a')
    after_a = _models(cache)
    assert len(after_a) == 1
    _run_07(tmp_path, b, 'b')
    after_b = _models(cache)
    assert len(after_b) == 2 and set(after_a) < set(after_b)  # another table: another model, the first one kept
    text = _run_07(tmp_path, a, 'a_again')
    assert _models(cache) == after_b  # nothing trained, nothing rewritten
    assert 'reusing the model trained earlier' in text
    index = registry.read_index(cache/'models')  # published outside a run: the model cache's index
    assert Path(index['07/sample']['folder']).name in after_a


def test_load_refuses_an_unfinished_model_and_reads_format_1(tmp_path, monkeypatch):
    "A model folder whose training did not finish is refused by name; drbook 0.1's model.json still reads."
    from drbook.models import load, load_meta, save_meta
    save_meta(tmp_path, 'multiclass', 64, recipe='graham', complete=False)
    (tmp_path/'model.keras').write_bytes(b'')
    with pytest.raises(ValueError, match='still training'): load(tmp_path)
    (tmp_path/'model.json').write_text(json.dumps({'task': 'regression', 'image_size': 32, 'recipe': None,
                                                   'cutpoints': [0.5, 1.5, 2.5, 3.5]}))  # format 1, no key
    meta = load_meta(tmp_path)
    assert (meta['format'], meta['complete'], meta['key']) == (1, True, '')
    np.testing.assert_array_equal(meta['cutpoints'], [0.5, 1.5, 2.5, 3.5])


def test_reference_resolves_in_the_run_then_an_earlier_run(tmp_path, monkeypatch):
    "In a run, '@08/x' is looked up in the run; when 08 did not run there, in the latest earlier run of the profile."
    runs = tmp_path/'runs'
    monkeypatch.setenv('DRBOOK_RUNS', str(runs)); monkeypatch.setenv('DRBOOK_PROFILE', 'sample')
    old, new, other = runs/'sample-20260101-000000', runs/'sample-20260102-000000', runs/'idrid-mini-20260103-000000'
    for run, name in [(old, 'old'), (new, 'new'), (other, 'other')]:
        (run/'models'/name).mkdir(parents=True)
        monkeypatch.setenv('DRBOOK_RUN_DIR', str(run))
        registry.publish(f'08/{name}' if run != new else f'07/{name}', run/'models'/name, 'multiclass')
    current = runs/'sample-20260104-000000'; current.mkdir()
    assert registry.resolve_reference('@08/old', run=current) == (old/'models'/'old').resolve()
    with pytest.raises(LookupError, match='it published: 08/old'): registry.resolve_reference('@08/other', run=current)
    assert registry.find_run('08', 'idrid-mini') == other


@pytest.mark.slow  # chapters 08 and 12 in kernels: about two minutes
def test_a_profile_hands_the_model_08_trained_to_12(tmp_path, monkeypatch):
    "12_gradcam with model '@08/<name>' explains the very model 08 trained in that run; 12 trains nothing of its own."
    from drbook.reproduce import reproduce
    name = '08/MobileNetV2_035-s1-adam'
    prof = {'name': 'handover', 'notebooks': ['08_transfer_learning', '12_gradcam'],
            'parameters': {'08_transfer_learning': {'heads': 's1', 'optimizers': 'adam', 'baseline': '', 'epochs': 2},
                           '12_gradcam': {'model': f'@{name}'}}}
    s = reproduce(prof, runs_root=tmp_path/'runs', log=lambda *a: None, progress=False)
    assert [n['status'] for n in s['notebooks']] == ['ok', 'ok'], [(n['notebook'], n['error']) for n in s['notebooks']]
    run = Path(s['run_dir'])
    entry = registry.read_index(run)[name]
    assert s['records']['12_gradcam']['model_key'] == entry['key']  # 12 explained the model 08 published, by its key
    assert not list((run/'models').glob('quick-grader-*'))  # and trained no model of its own
    executed = json.loads((run/'notebooks'/'12_gradcam.ipynb').read_text())
    params = next(c for c in executed['cells'] if 'injected-parameters' in c['metadata'].get('tags', []))
    assert entry['folder'] in ''.join(params['source'])  # the runner passed 08's folder


def test_fitted_cutpoints_and_thresholds_live_in_model_json(tmp_path):
    "Cut-points and thresholds saved with the model come back unchanged and decode grades as the originals; bad files are named."
    from drbook.models import load_meta, save_meta
    from drbook.tasks import scores_to_grades
    cut = np.array([0.61, 1.13, 1.87, 2.34])
    save_meta(tmp_path/'reg', 'regression', 64, cutpoints=cut, fitted_on='validation')
    back = load_meta(tmp_path/'reg')
    x = np.random.default_rng(0).uniform(0, 4, 100)
    np.testing.assert_array_equal(scores_to_grades(x, 'regression', back['cutpoints']), scores_to_grades(x, 'regression', cut))
    thr = np.array([0.2, 0.35, 0.5, 0.61, 0.44])
    save_meta(tmp_path/'les', 'multilabel', 64, thresholds=thr)
    np.testing.assert_array_equal(load_meta(tmp_path/'les')['thresholds'], thr)
    assert sorted(p.name for p in tmp_path.rglob('*') if p.is_file()) == ['model.json', 'model.json']  # no temporary files
    with pytest.raises(ValueError, match='cutpoints must be sorted'): save_meta(tmp_path/'bad', 'regression', 64, cutpoints=[2, 1, 3, 4])
    assert not (tmp_path/'bad'/'model.json').exists()
    (tmp_path/'reg'/'model.json').write_text('{not json')
    with pytest.raises(ValueError, match=r'model\.json: not valid JSON'): load_meta(tmp_path/'reg')
    (tmp_path/'reg'/'model.json').write_text(json.dumps({'task': 'softmax', 'image_size': 64}))
    with pytest.raises(ValueError, match="unknown task 'softmax'"): load_meta(tmp_path/'reg')


@pytest.mark.slow  # chapter 07 twice in kernels: about a minute
def test_two_runs_of_chapter_07_record_the_same_numbers(tmp_path, monkeypatch):
    "Seeded Keras and TensorFlow with op determinism: two runs of 07 train the same weights and record identical results."
    from drbook.core import latest_records
    table = load_table(samples_dir()/'samples.csv')
    a = save_table(table[np.arange(len(table)) % 5 != 0], tmp_path/'a'/'table.csv')
    records = []
    for i in range(2):
        run = tmp_path/f'run{i}'; run.mkdir()
        monkeypatch.setenv('DRBOOK_RUN_DIR', str(run)); monkeypatch.setenv('DRBOOK_NOTEBOOK', '07_scratch_cnn')
        _run_07(tmp_path, a, f'det{i}')
        records.append({n: v for (nb, n), v in latest_records(run).items() if nb == '07_scratch_cnn'})
    assert records[0] == records[1]
    assert {'test_qwk_sample', 'results', 'epochs_sample'} <= set(records[0])
