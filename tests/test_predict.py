"""`drbook predict` end to end: a small model trained here, synthetic and real photographs, broken and hostile file
names, the CSV and the HTML report, the command's exit codes, and the page rendered by a headless Chromium."""
import hashlib, shutil, subprocess, sys
from pathlib import Path
import numpy as np
import pandas as pd
import pytest
from drbook.core import samples_dir, seed_everything
from drbook.preprocess import preprocess_image
from drbook.scratch import build_scratch_cnn
from drbook.train import compile_for, save_model
from drbook.models import save_meta, load_meta
from drbook.predict import predict_folder
from drbook.cli import main

SIZE, RECIPE = 64, 'graham'
HOSTILE = '<img src=x onerror=alert(1)>.jpg'

@pytest.fixture(scope='module')
def model_file(tmp_path_factory):
    "Chapter 07's 'sample' CNN, fitted one epoch on eight synthetic photographs, saved with its model.json."
    seed_everything(0)
    table = pd.read_csv(samples_dir()/'samples.csv').dropna(subset=['grade']).head(8)
    x = np.stack([preprocess_image(samples_dir()/p, RECIPE, SIZE) for p in table['image_path']]).astype('float32')
    model = compile_for(build_scratch_cnn('sample', SIZE), 'multiclass')
    model.fit(x, table['grade'].to_numpy(int), epochs=1, verbose=0)
    path = save_model(model, tmp_path_factory.mktemp('model')/'model.keras')
    save_meta(path, 'multiclass', SIZE, recipe=RECIPE, trained_on='test')
    return path

@pytest.fixture
def photos(tmp_path):
    "A folder of four synthetic photographs (one in a subfolder, one a PNG), a truncated JPEG and a hostile name."
    src = sorted((samples_dir()/'images').glob('*.jpg'))[:4]
    d = tmp_path/'photos'; (d/'sub').mkdir(parents=True)
    shutil.copy(src[0], d/'a.jpg'); shutil.copy(src[1], d/'sub'/'b.jpg'); shutil.copy(src[2], d/HOSTILE)
    from PIL import Image
    Image.open(src[3]).save(d/'c.png')
    (d/'broken.jpg').write_bytes(src[0].read_bytes()[:1500])
    (d/'notes.txt').write_text('not searched: not an image ending')
    return d

def snapshot(folder):
    "Every file under `folder` with a digest of its bytes."
    return {str(p.relative_to(folder)): hashlib.sha1(p.read_bytes()).hexdigest() for p in sorted(folder.rglob('*')) if p.is_file()}

def test_meta_is_saved_beside_the_model(model_file):
    meta = load_meta(model_file)
    assert (meta['task'], meta['image_size'], meta['recipe'].name) == ('multiclass', SIZE, RECIPE)
    assert meta['class_names'][0] == 'No DR' and meta['extra'] == {'trained_on': 'test'}

def test_folder_gives_csv_and_report(model_file, photos, tmp_path):
    before = snapshot(photos)
    table = predict_folder(model_file, photos, tmp_path/'out', progress=False)
    assert snapshot(photos) == before                              # the user's folder is untouched
    assert sorted(table['name']) == sorted(['a.jpg', 'sub/b.jpg', HOSTILE, 'c.png', 'broken.jpg'])
    ok = table[table['error'] == '']
    assert len(ok) == 4 and ok['grade'].between(0, 4).all() and set(ok['referable']) <= {'yes', 'no'}
    np.testing.assert_allclose(ok[[f'score_grade_{g}' for g in range(5)]].sum(axis=1), 1, atol=1e-4)
    assert 'truncated' in table.set_index('name').loc['broken.jpg', 'error']
    csv = pd.read_csv(tmp_path/'out'/'predictions.csv', keep_default_na=False)
    assert list(csv['name']) == list(table['name']) and list(csv.columns)[:6] == ['file', 'name', 'grade', 'grade_name', 'referable', 'referable_score']
    page = (tmp_path/'out'/'report.html').read_text()
    for _, r in ok.iterrows():                                     # every graded image shown, with its heatmap
        assert f"src='{r['photo']}'" in page and f"src='{r['heatmap']}'" in page
        assert (tmp_path/'out'/r['photo']).is_file() and (tmp_path/'out'/r['heatmap']).is_file()
    assert 'broken.jpg' in page and 'truncated JPEG' in page      # the unreadable file listed with its reason
    assert '<img src=x' not in page and '&lt;img src=x onerror=alert(1)&gt;.jpg' in page
    assert 'Not a medical device' in page and '<script>' in page

def test_options_and_a_second_run_in_the_same_folder(model_file, photos, tmp_path):
    first = predict_folder(model_file, photos/'sub', tmp_path/'out', cam='gradcam++', progress=False)
    table = predict_folder(model_file, [photos/'a.jpg', photos/'c.png'], tmp_path/'out', tta=True, cam='none', progress=False)
    assert list(table['name']) == ['a.jpg', 'c.png'] and table['heatmap'].isna().all()
    assert sorted(p.name for p in (tmp_path/'out'/'report_files').iterdir()) == ['00001-photo.png', '00002-photo.png']
    assert len(first) == 1

def test_bad_arguments_are_clear(model_file, photos, tmp_path):
    with pytest.raises(ValueError, match='never writes next to your images'): predict_folder(model_file, photos, photos/'out')
    with pytest.raises(ValueError, match='never writes next to your images'): predict_folder(model_file, photos/'a.jpg', photos)
    with pytest.raises(FileNotFoundError, match='no such file'): predict_folder(model_file, tmp_path/'nothing', tmp_path/'out')
    with pytest.raises(ValueError, match="cam='grad'"): predict_folder(model_file, photos, tmp_path/'out', cam='grad')
    bare = tmp_path/'bare'/'model.keras'; bare.parent.mkdir(); shutil.copy(model_file, bare)
    with pytest.raises(ValueError, match='no model.json beside it'): predict_folder(bare, photos, tmp_path/'out')
    with pytest.raises(ValueError, match='takes 64 px'):
        predict_folder(bare, photos, tmp_path/'out', recipe='graham', image_size=32, task='multiclass')
    t = predict_folder(bare, photos/'sub', tmp_path/'out', recipe='none', image_size=SIZE, task='multiclass', progress=False)
    assert t['grade'].notna().all()

def test_exit_codes(model_file, photos, tmp_path):
    out = str(tmp_path/'out')
    assert main(['predict', str(model_file), str(photos), '--out', out]) == 0
    bad = tmp_path/'bad'; bad.mkdir(); (bad/'x.jpg').write_bytes(b'not an image')
    assert main(['predict', str(model_file), str(bad), '--out', out]) == 1        # nothing could be graded
    assert 'not an image' in (tmp_path/'out'/'report.html').read_text()
    assert main(['predict', str(model_file), str(photos), '--out', str(photos/'o')]) == 2
    assert main(['predict', str(tmp_path/'missing.keras'), str(photos), '--out', out]) == 2
    assert main(['predict', str(model_file), str(photos), '--out', out, '--cam', 'nope']) == 2
    with pytest.raises(SystemExit) as e: main(['predict', str(model_file), str(photos)])  # --out is required
    assert e.value.code == 2

@pytest.mark.slow
def test_the_installed_command(model_file, photos, tmp_path):
    drbook = Path(sys.executable).parent/'drbook'
    r = subprocess.run([str(drbook), 'predict', str(model_file), str(photos), '--out', str(tmp_path/'out'), '--batch-size', '2'],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert '4 of 5 file(s) graded' in r.stdout and 'drbook predict' in r.stderr  # the summary, and the progress bar
    r = subprocess.run([str(drbook), 'predict', str(model_file)], capture_output=True, text=True)
    assert r.returncode == 2 and 'required' in r.stderr

def test_real_idrid_photographs(model_file, idrid_root, tmp_path):
    train = idrid_root/'B. Disease Grading'/'1. Original Images'/'a. Training Set'
    two = sorted(train.glob('*.jpg'))[:2]
    if len(two) < 2: pytest.skip(f'fewer than two photographs in {train}')
    table = predict_folder(model_file, two, tmp_path/'out', progress=False)
    assert list(table['name']) == [p.name for p in two] and (table['error'] == '').all()
    assert table['grade'].between(0, 4).all()
    page = (tmp_path/'out'/'report.html').read_text()
    assert all(p.name in page for p in two)

def test_report_renders_in_a_headless_browser(model_file, photos, tmp_path):
    browser = shutil.which('chromium') or shutil.which('chromium-browser')
    if browser is None: pytest.skip('no chromium or chromium-browser on PATH to render report.html')
    predict_folder(model_file, photos, tmp_path/'out', progress=False)
    png = tmp_path/'report.png'
    r = subprocess.run([browser, '--headless', '--no-sandbox', '--disable-gpu', f'--screenshot={png}', '--window-size=1200,2000',
                        (tmp_path/'out'/'report.html').as_uri()], capture_output=True, text=True, timeout=120)
    assert png.is_file(), r.stderr[-2000:]
    from PIL import Image
    a = np.asarray(Image.open(png).convert('RGB'), dtype=float)
    assert a.std() > 20                                            # not a blank page
    assert (np.abs(a[..., 0] - a[..., 2]) > 60).mean() > 0.01      # colour: the photographs and heatmaps are drawn


def test_calibrated_report_renders_in_a_headless_browser(calibrated_model, photos, tmp_path):
    "A calibrated model's report, as the browser builds it: the calibration, and a refer flag and set per photograph."
    browser = shutil.which('chromium') or shutil.which('chromium-browser')
    if browser is None: pytest.skip('no chromium or chromium-browser on PATH to render report.html')
    table = predict_folder(calibrated_model, photos, tmp_path/'out', progress=False, cam='none')
    r = subprocess.run([browser, '--headless', '--no-sandbox', '--disable-gpu', '--dump-dom', (tmp_path/'out'/'report.html').as_uri()],
                       capture_output=True, text=True, timeout=120)
    dom = r.stdout
    assert 'temperature 1.500' in dom and dom.count('<b>refer: ') == int((table['error'] == '').sum()), r.stderr[-2000:]


def test_training_and_prediction_decode_a_photograph_the_same_way(tmp_path):
    "A JPEG stored on its side (EXIF orientation 6) reaches a model upright, pixel for pixel the same, in training and in predict."
    from PIL import Image
    from drbook.pipeline import make_dataset
    from drbook.predict import model_input
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 255, (40, 80, 3), dtype=np.uint8)
    exif = Image.Exif(); exif[0x0112] = 6  # 'rotate 90° clockwise to view'
    Image.fromarray(pixels).save(tmp_path/'side.jpg', exif=exif, quality=95)
    table = pd.DataFrame({'image_path': [str(tmp_path/'side.jpg')], 'grade': [0]})
    trained_on = next(iter(make_dataset(table, 'multiclass', 32, batch_size=1, cache=False)))[0][0].numpy()
    predicted_on = model_input(tmp_path/'side.jpg', None, 32)
    assert np.array_equal(trained_on, predicted_on.astype(np.float32))
    assert predicted_on[:, :7].max() == 0 and predicted_on[:, -7:].max() == 0  # upright (tall): black bands left and right
    assert predicted_on[:7].max() > 0  # not the sideways picture, which would be padded above and below


def test_model_by_folder_and_by_reference(model_file, photos, tmp_path, monkeypatch):
    "predict takes the model's folder or the '@NN/name' a chapter published; an unknown name lists the published ones."
    from drbook.registry import publish
    from drbook.predict import model_settings
    monkeypatch.setenv('DRBOOK_CACHE', str(tmp_path/'cache')); monkeypatch.delenv('DRBOOK_RUN_DIR', raising=False)
    monkeypatch.setenv('DRBOOK_RUNS', str(tmp_path/'runs'))
    publish('07/sample', model_file.parent, 'multiclass')
    _, by_folder = model_settings(model_file.parent)
    _, by_reference = model_settings('@07/sample')
    assert by_folder['model'] == by_reference['model'] == str(model_file)
    assert by_folder['recipe'].name == RECIPE and by_folder['image_size'] == SIZE and by_folder['metadata']
    with pytest.raises(LookupError, match='sample'): model_settings('@07/absent')
    with pytest.raises(FileNotFoundError, match='no model at'): model_settings(tmp_path/'nowhere')


def test_heatmap_methods_are_gradcams_vocabulary():
    "drbook predict's --cam takes the names of drbook.gradcam.METHODS (and drbook 0.1's 'guided'), or 'none'."
    from drbook.gradcam import METHODS
    from drbook.predict import check_cam
    assert [check_cam(m) for m in METHODS] == list(METHODS)
    assert (check_cam('guided'), check_cam('none')) == ('guided_gradcam', 'none')
    with pytest.raises(ValueError, match=r"cam='heat': expected 'none' or one of \['gradcam'"): check_cam('heat')


@pytest.fixture
def calibrated_model(model_file, tmp_path):
    "A copy of the test model whose model.json carries a temperature and a conformal threshold."
    from drbook.trust import calibration_doc, save_calibration
    folder = tmp_path/'calibrated'; shutil.copytree(model_file.parent, folder)
    save_calibration(folder, calibration_doc(1.5, 0.9, 0.1, n_val=30, table='test table'))
    return folder

CALIBRATED = ['calibrated_referable', 'prediction_set', 'uncertainty', 'refer']

def test_calibrated_model_shows_probability_set_uncertainty_and_refer(calibrated_model, photos, tmp_path):
    from drbook.core import REFERABLE_FROM
    from drbook.models import load_meta
    assert load_meta(calibrated_model)['extra']['trained_on'] == 'test'  # the other fields are kept
    predict_folder(calibrated_model, photos, tmp_path/'out', progress=False, cam='none')
    csv = pd.read_csv(tmp_path/'out'/'predictions.csv', keep_default_na=False)
    ok = csv[csv['error'] == '']
    assert list(csv.columns)[5:11] == ['referable_score', *CALIBRATED, 'score_grade_0']
    p = ok[[f'score_grade_{g}' for g in range(5)]].to_numpy(float)
    z = np.log(np.clip(p, 1e-30, None)) / 1.5                      # softmax(log p / T) = softmax(logits / T)
    cal = np.exp(z - z.max(1, keepdims=True)); cal /= cal.sum(1, keepdims=True)
    np.testing.assert_allclose(ok['calibrated_referable'].astype(float), cal[:, REFERABLE_FROM:].sum(1), atol=1e-4)
    sets = [sorted(set(np.flatnonzero(1 - c <= 0.9)) | {int(c.argmax())}) for c in cal]  # 1 − p ≤ q̂, and the predicted grade
    from drbook.trust import set_text
    assert ok['prediction_set'].tolist() == [set_text(np.isin(np.arange(5), s)) for s in sets]
    assert ok['refer'].tolist() == ['yes' if max(s) >= REFERABLE_FROM else 'no' for s in sets]
    page = (tmp_path/'out'/'report.html').read_text()
    assert 'temperature 1.500' in page and 'at least 90%' in page and page.count('<b>refer: ') == len(ok)
    assert 'not calibrated' not in page

def test_uncalibrated_model_says_so(model_file, photos, tmp_path):
    predict_folder(model_file, photos, tmp_path/'out', progress=False, cam='none')
    csv = pd.read_csv(tmp_path/'out'/'predictions.csv', keep_default_na=False)
    assert (csv[CALIBRATED] == '').all().all()                     # the columns are there, empty
    page = (tmp_path/'out'/'report.html').read_text()
    assert 'This model was <b>not calibrated</b>' in page and 'calibration: none' in page and '<b>refer: ' not in page

def test_csv_cells_cannot_run_as_spreadsheet_formulas(model_file, photos, tmp_path):
    "OWASP's CSV injection advice: a cell beginning with =, +, - or @ is prefixed with a single quote."
    names = ['=HYPERLINK("example.com","x").jpg', '+1+2.jpg', '-3.jpg', '@SUM(A1).jpg']
    for n in names: shutil.copy(photos/'a.jpg', photos/n)
    table = predict_folder(model_file, photos, tmp_path/'out', progress=False, cam='none')
    assert set(names) <= set(table['name'])                          # the table in memory keeps the real names
    csv = pd.read_csv(tmp_path/'out'/'predictions.csv', keep_default_na=False)
    assert sorted(n for n in csv['name'] if n.startswith("'")) == sorted("'" + n for n in names)
    text = ['file', 'name', 'grade_name', 'referable', 'prediction_set', 'refer', 'photo', 'heatmap', 'error']
    assert not [v for col in text for v in csv[col] if v[:1] in ('=', '+', '-', '@')]
    assert (csv.loc[csv['error'] == '', 'score_grade_0'].astype(float) >= 0).all()  # numbers stay numbers

def test_calibrate_command_writes_model_json(model_file, tmp_path, capsys):
    from drbook.models import load_meta
    folder = tmp_path/'m'; shutil.copytree(model_file.parent, folder)
    assert main(['calibrate', str(folder), '--alpha', '1.5']) == 2
    assert 'alpha must be a number strictly between 0 and 1' in capsys.readouterr().err
    assert main(['calibrate', str(folder), '--alpha', '0.2']) == 0
    c = load_meta(folder)['extra']['calibration']
    assert c['alpha'] == 0.2 and c['temperature'] > 0 and c['n_val'] > 0 and c['sets'] == 'lac'
    assert 'written into its model.json' in capsys.readouterr().out
