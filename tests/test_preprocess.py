"""drbook.preprocess on bad inputs, real IDRiD photographs, the cache and interrupted runs."""
import hashlib, io, json, os, signal, subprocess, sys, textwrap, time
from pathlib import Path
import cv2
import numpy as np
import pandas as pd
import pytest
from PIL import Image, ImageOps
from drbook.data import REPORT_COLUMNS, read_aptos

from drbook.preprocess import (ImageReadError, NoFieldOfView, RECIPES, Recipe, crop_fundus, find_corrupt, fov_box,
                               preprocess_dataset, preprocess_image, read_fundus)

ROOT = Path(__file__).resolve().parent.parent


def fundus(h, w, seed=0, radius=None):
    "A fundus-like RGB image: a shaded orange disc with vessels and a bright optic disc on black."
    if min(h, w) > 1200:  # drawn smaller and enlarged: the shading arrays of an 8000×6000 image would take gigabytes
        s = 1200 / min(h, w)
        return cv2.resize(fundus(round(h * s), round(w * s), seed, radius and round(radius * s)), (w, h), interpolation=cv2.INTER_LINEAR)
    rng = np.random.default_rng(seed)
    img = np.zeros((h, w, 3), np.uint8)
    r = radius or min(h, w) // 2 - 2
    c = (w // 2, h // 2)
    cv2.circle(img, c, r, (180, 90, 40), -1)
    cv2.circle(img, (c[0] + r // 2, c[1]), r // 7, (250, 230, 150), -1)
    for _ in range(8):
        a = rng.uniform(0, 2 * np.pi)
        cv2.line(img, (c[0] + r // 2, c[1]), (int(c[0] + r * np.cos(a)), int(c[1] + r * np.sin(a))), (120, 30, 20), max(1, r // 60))
    yy, xx = np.mgrid[:h, :w]
    shade = np.clip(1 - 0.4 * ((xx - c[0])**2 + (yy - c[1])**2) / r**2, 0, 1)
    return np.clip(img * shade[..., None] + rng.normal(0, 2, img.shape) * (img > 0), 0, 255).astype(np.uint8)


def write(path, rgb, params=()):
    "Write an RGB array with OpenCV (BGR order on disk)."
    assert cv2.imwrite(str(path), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), list(params))
    return path


def digests(folder):
    "{name: sha256} of every file under `folder`."
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(Path(folder).rglob('*')) if p.is_file()}


# --------------------------------------------------------------------------------------------------- bad inputs
@pytest.fixture(scope='module')
def bad_inputs(tmp_path_factory):
    "A folder holding each kind of awkward input, and what should become of it (None: processed)."
    d = tmp_path_factory.mktemp('bad')
    base = fundus(600, 800, seed=1)
    ok = write(d/'ok.jpg', base)
    expect = {'ok.jpg': None}
    (d/'truncated.jpg').write_bytes(ok.read_bytes()[:ok.stat().st_size // 2]); expect['truncated.jpg'] = 'truncated'
    (d/'empty.jpg').write_bytes(b''); expect['empty.jpg'] = 'empty file'
    (d/'text.jpg').write_text('this is a text file, not a photograph\n'); expect['text.jpg'] = 'not an image'
    rgba = np.dstack([base, np.where(base.max(2) > 0, 255, 0).astype(np.uint8)])
    rgba[rgba[..., 3] == 0, :3] = 255  # white under the transparent frame: only the alpha says it is background
    Image.fromarray(rgba, 'RGBA').save(d/'alpha.png'); expect['alpha.png'] = None
    cv2.imwrite(str(d/'grey.jpg'), cv2.cvtColor(base, cv2.COLOR_RGB2GRAY)); expect['grey.jpg'] = None  # 1-channel JPEG
    cv2.imwrite(str(d/'deep16.png'), cv2.cvtColor(base, cv2.COLOR_RGB2BGR).astype(np.uint16) * 257); expect['deep16.png'] = None
    Image.fromarray(base).quantize(64).save(d/'palette.png'); expect['palette.png'] = None
    Image.fromarray(base).save(d/'photo.tif'); expect['photo.tif'] = None
    write(d/'tiny.png', fundus(10, 10, seed=2)); expect['tiny.png'] = 'too small'
    write(d/'black.jpg', np.zeros((400, 600, 3), np.uint8)); expect['black.jpg'] = 'no field of view'
    write(d/'blank.png', np.full((400, 600, 3), 200, np.uint8)); expect['blank.png'] = 'no field of view'
    exif = Image.Exif(); exif[0x0112] = 6  # stored lying on its side; viewers turn it 90° clockwise
    Image.fromarray(np.ascontiguousarray(np.rot90(fundus(1200, 1600, seed=3)))).save(d/'exif_rotated.jpg', exif=exif, quality=92)
    expect['exif_rotated.jpg'] = None
    write(d/'huge.jpg', fundus(6000, 8000, seed=4), (cv2.IMWRITE_JPEG_QUALITY, 85)); expect['huge.jpg'] = None
    return d, expect


def test_huge_is_what_it_says(bad_inputs):
    d, _ = bad_inputs
    assert Image.open(d/'huge.jpg').size == (8000, 6000)


def test_bad_inputs_processed_or_reported(bad_inputs, tmp_path):
    d, expect = bad_inputs
    before = digests(d)
    table = pd.DataFrame({'image_path': [str(d/n) for n in expect], 'grade': 0})
    out, report = preprocess_dataset(table, 's4', 128, cache_dir=tmp_path, workers=2, progress=False)
    reasons = dict(zip(report['path'].map(lambda p: Path(p).name), report['reason']))
    for name, why in expect.items():
        row = out[out['image_path'] == str(d/name)].iloc[0]
        if why is None:
            assert name not in reasons, (name, reasons.get(name))
            img = read_fundus(row['preprocessed_path'])
            assert img.shape == (128, 128, 3) and img.max() > 50, name  # a real image, not an empty square
        else:
            assert pd.isna(row['preprocessed_path']), name
            assert why in reasons[name], (name, reasons[name])
    assert out.attrs['preprocess']['failed'] == sum(w is not None for w in expect.values())
    assert digests(d) == before  # every source byte-identical, nothing added or removed


def test_errors_raise_names_the_file(bad_inputs, tmp_path):
    d, _ = bad_inputs
    table = pd.DataFrame({'image_path': [str(d/'ok.jpg'), str(d/'truncated.jpg'), str(d/'grey.jpg')]})
    with pytest.raises(ImageReadError, match=r'truncated\.jpg: truncated JPEG'):
        preprocess_dataset(table, 's3', 64, cache_dir=tmp_path, workers=2, errors='raise', progress=False)
    with pytest.raises(ImageReadError, match=r'missing\.jpg: file not found'):
        preprocess_dataset(pd.DataFrame({'image_path': [str(d/'missing.jpg')]}), 's3', 64, cache_dir=tmp_path,
                           errors='raise', progress=False)


def test_find_corrupt_reports_only_unreadable_files(bad_inputs):
    d, _ = bad_inputs
    before = digests(d)
    report = find_corrupt(sorted(d.iterdir()), workers=2, progress=False)
    assert sorted(Path(p).name for p in report['path']) == ['empty.jpg', 'text.jpg', 'truncated.jpg']
    assert report['reason'].str.len().min() > 5
    assert digests(d) == before


def test_read_fundus_formats(bad_inputs):
    d, _ = bad_inputs
    ref = read_fundus(d/'ok.jpg').astype(int)
    alpha = read_fundus(d/'alpha.png')
    assert alpha.shape == ref.shape and alpha[0, 0].tolist() == [0, 0, 0]  # transparent frame composited over black
    grey = read_fundus(d/'grey.jpg')
    assert grey.shape == ref.shape and (grey[..., 0] == grey[..., 2]).all()
    deep = read_fundus(d/'deep16.png').astype(int)
    assert np.abs(deep - cv2.imread(str(d/'deep16.png'), cv2.IMREAD_UNCHANGED)[..., ::-1] / 257).max() <= 1
    assert read_fundus(d/'palette.png').shape == ref.shape and read_fundus(d/'photo.tif').shape == ref.shape
    with pytest.raises(ImageReadError, match='empty file'): read_fundus(d/'empty.jpg')
    with pytest.raises(NoFieldOfView): crop_fundus(read_fundus(d/'black.jpg'))


@pytest.mark.parametrize('orientation', range(1, 9))
def test_exif_orientation_full_and_reduced(tmp_path, orientation):
    "Every EXIF orientation gives Pillow's upright image, at full size and at reduced decode alike."
    stored = fundus(1200, 1600, seed=5)
    stored[100:300, 100:500] = (0, 255, 0)  # an asymmetric mark, so any wrong turn or flip shows
    exif = Image.Exif(); exif[0x0112] = orientation
    p = tmp_path/f'o{orientation}.jpg'
    Image.fromarray(stored).save(p, exif=exif, quality=95)
    upright = np.asarray(ImageOps.exif_transpose(Image.open(p)).convert('RGB')).astype(int)
    full, small = read_fundus(p), read_fundus(p, max_side=300)
    assert full.shape == upright.shape and np.abs(full - upright).mean() < 2
    assert min(small.shape[:2]) == 300 and small.shape[0] / small.shape[1] == pytest.approx(upright.shape[0] / upright.shape[1])
    assert np.abs(cv2.resize(upright.astype(np.uint8), small.shape[1::-1], interpolation=cv2.INTER_AREA) - small.astype(int)).mean() < 3


def test_huge_image_decoded_reduced(bad_inputs):
    d, _ = bad_inputs
    assert read_fundus(d/'huge.jpg', max_side=512).shape == (750, 1000, 3)  # 1/8 scale, still ≥ 512


# ------------------------------------------------------------------------------------------------ real crops
def test_crop_box_matches_red_channel_fov(idrid_root):
    "On the real photographs the crop box is the field of view found independently, within 3 % of the side."
    paths = sorted(idrid_root.rglob('*.jpg'))
    assert len(paths) >= 40
    for p in paths:
        img = read_fundus(p, max_side=512)
        red = img[..., 0]
        ys, xs = np.nonzero(red > 0.1 * np.percentile(red, 99))  # generous: anything a tenth as red as the retina
        x, y, w, h = fov_box(img)
        side = max(img.shape[:2])
        assert abs(x - xs.min()) < 0.03 * side and abs(x + w - 1 - xs.max()) < 0.03 * side, p.name
        assert abs(y - ys.min()) < 0.03 * side and abs(y + h - 1 - ys.max()) < 0.03 * side, p.name
        crop = crop_fundus(img)
        assert crop.shape[0] == crop.shape[1] == max(w, h)
        assert crop.shape[0] <= 1.03 * max(xs.max() - xs.min(), ys.max() - ys.min()) + 1  # little else


def test_real_images_preprocessed(idrid_root, tmp_path):
    paths = sorted((idrid_root/'B. Disease Grading').rglob('*.jpg'))[:6]
    before = {p: p.read_bytes() for p in paths}
    out, report = preprocess_dataset(pd.DataFrame({'image_path': map(str, paths)}), 's4', 512, cache_dir=tmp_path,
                                     workers=2, progress=False)
    assert report.empty and out['preprocessed_path'].notna().all()
    for p in out['preprocessed_path']:
        img = read_fundus(p)
        assert img.shape == (512, 512, 3)
        assert img[:20, :20].max() < 40 and img[236:276, 236:276].mean() > 40  # corners black, retina bright
    assert all(p.read_bytes() == b for p, b in before.items())


# ----------------------------------------------------------------------------------------- cache and resume
@pytest.fixture()
def photos(tmp_path):
    "40 JPEG photographs (copies of four drawings under distinct names) and their table."
    d = tmp_path/'photos'; d.mkdir()
    data = [cv2.imencode('.jpg', cv2.cvtColor(fundus(900, 1200, seed=s), cv2.COLOR_RGB2BGR))[1].tobytes() for s in range(4)]
    paths = []
    for i in range(40):
        (d/f'img{i:02d}.jpg').write_bytes(data[i % 4]); paths.append(str(d/f'img{i:02d}.jpg'))
    return pd.DataFrame({'image_path': paths, 'grade': [i % 5 for i in range(40)]})


def test_second_run_served_from_cache(photos, tmp_path):
    cache = tmp_path/'cache'
    first, _ = preprocess_dataset(photos, 's3', 96, cache_dir=cache, workers=2, progress=False)
    assert (first.attrs['preprocess']['processed'], first.attrs['preprocess']['cached']) == (40, 0)
    mtimes = {p: os.stat(p).st_mtime_ns for p in first['preprocessed_path']}
    second, _ = preprocess_dataset(photos, 's3', 96, cache_dir=cache, workers=2, progress=False)
    assert (second.attrs['preprocess']['processed'], second.attrs['preprocess']['cached']) == (0, 40)
    assert second['preprocessed_path'].tolist() == first['preprocessed_path'].tolist()
    assert {p: os.stat(p).st_mtime_ns for p in second['preprocessed_path']} == mtimes  # nothing rewritten
    assert json.loads((Path(first.attrs['preprocess']['folder'])/'recipe.json').read_text())['name'] == 's3'
    # an edited source is processed again; another recipe or size gets a cache folder of its own
    src = Path(photos['image_path'][3]); os.utime(src, ns=(time.time_ns(), time.time_ns() + 10**9))
    third, _ = preprocess_dataset(photos, 's3', 96, cache_dir=cache, workers=0, progress=False)
    assert (third.attrs['preprocess']['processed'], third.attrs['preprocess']['cached']) == (1, 39)
    other, _ = preprocess_dataset(photos.iloc[:5], 's3', 64, cache_dir=cache, workers=0, progress=False)
    assert other.attrs['preprocess']['processed'] == 5 and other.attrs['preprocess']['folder'] != first.attrs['preprocess']['folder']


def test_cache_holds_what_the_recipe_gives(photos, tmp_path):
    "The cache holds preprocess_image's result (up to JPEG), and nearly Recipe.apply's on the full decode."
    for name in ['s3', 's4', 'graham']:
        out, _ = preprocess_dataset(photos.iloc[:2], name, 128, cache_dir=tmp_path, workers=0, progress=False)
        for src, dst in zip(out['image_path'], out['preprocessed_path']):
            cached = read_fundus(dst).astype(int)
            assert np.abs(cached - preprocess_image(src, name, 128)).mean() < 2.5, name  # JPEG, quality 95
            assert np.abs(cached - RECIPES[name].apply(read_fundus(src), size=128)).mean() < 6, name


def test_partial_cache_resumes(photos, tmp_path):
    "A run that finished part of the table (here: the first 15 rows) is completed by the next one."
    cache = tmp_path/'cache'
    part, _ = preprocess_dataset(photos.iloc[:15], 's4', 96, cache_dir=cache, workers=2, progress=False)
    full, _ = preprocess_dataset(photos, 's4', 96, cache_dir=cache, workers=2, progress=False)
    assert (full.attrs['preprocess']['processed'], full.attrs['preprocess']['cached']) == (25, 15)
    assert full['preprocessed_path'].iloc[:15].tolist() == part['preprocessed_path'].tolist()


RUNNER = textwrap.dedent('''
    import json, sys
    import pandas as pd
    from drbook.preprocess import preprocess_dataset
    paths, cache = json.loads(sys.argv[1]), sys.argv[2]
    preprocess_dataset(pd.DataFrame({'image_path': paths}), 's3', 1024, cache_dir=cache, workers=2, progress=False)
''')


def finished_images(cache):
    "Images under their final names in the cache (pathlib's glob also matches the hidden temporary files)."
    return sorted(p for p in Path(cache).glob('*/*.jpg') if not p.name.startswith('.'))


def wait_for_group_exit(pgid, timeout=60):
    "Wait until no process of the process group `pgid` is left (the run, its workers, loky's resource tracker)."
    deadline = time.time() + timeout
    while time.time() < deadline:
        try: os.killpg(pgid, 0)
        except ProcessLookupError: return True
        time.sleep(0.05)
    return False


@pytest.mark.parametrize('sig,group', [(signal.SIGINT, True), (signal.SIGTERM, True), (signal.SIGKILL, True),
                                       (signal.SIGTERM, False), (signal.SIGKILL, False)],
                         ids=['ctrl-c', 'sigterm-all', 'sigkill-all', 'sigterm-parent', 'sigkill-parent'])
@pytest.mark.slow
def test_interrupted_run_resumes(tmp_path, sig, group):
    "Kill a run part-way (Ctrl-C, SIGTERM or SIGKILL; to all its processes, or to the parent only): finished images are complete, none is half-written, the rest is done next time."
    d = tmp_path/'big'; d.mkdir()
    data = cv2.imencode('.jpg', cv2.cvtColor(fundus(1800, 2400, seed=7), cv2.COLOR_RGB2BGR))[1].tobytes()
    paths = []
    for i in range(60):  # full-size decodes (1024 px asked of a 1800-px side) keep each image busy for a while
        (d/f'b{i:02d}.jpg').write_bytes(data); paths.append(str(d/f'b{i:02d}.jpg'))
    cache = tmp_path/'cache'
    # SIGINT at its default in the run, as in a terminal: a test run started in the background (`make test &`)
    # inherits SIGINT ignored, and Python then never raises KeyboardInterrupt, so the run would finish every image
    proc = subprocess.Popen([sys.executable, '-c', RUNNER, json.dumps(paths), str(cache)], cwd=ROOT,
                            start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        deadline = time.time() + 120
        while len(finished_images(cache)) < 4 and time.time() < deadline and proc.poll() is None: time.sleep(0.02)
        if group: os.killpg(proc.pid, sig)  # the run and its workers, as Ctrl-C in a terminal does
        else: os.kill(proc.pid, sig)  # the parent alone: its workers must notice and stop by themselves
        proc.wait(timeout=60)
        assert wait_for_group_exit(proc.pid), 'worker processes outlived the interrupted run'
    finally:
        try: os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError: pass
    finished = finished_images(cache)
    print("finished before the interruption:", len(finished))
    assert 4 <= len(finished) < 60, len(finished)  # interrupted part-way
    assert find_corrupt(finished, workers=0, progress=False).empty  # every finished image is complete
    if sig == signal.SIGINT: assert not list(cache.glob('*/.tmp-*'))  # cleaned up on the way out
    table = pd.DataFrame({'image_path': paths})
    out, report = preprocess_dataset(table, 's3', 1024, cache_dir=cache, workers=2, progress=False)
    stats = out.attrs['preprocess']
    assert report.empty and stats['cached'] == len(finished) and stats['processed'] == 60 - len(finished)
    assert not list(cache.glob('*/.tmp-*')) or sig != signal.SIGINT
    assert find_corrupt(out['preprocessed_path'], workers=2, progress=False).empty


# --------------------------------------------------------------------------------------------------- recipes
def test_recipe_hash_is_stable_across_processes():
    code = 'from drbook.preprocess import RECIPES; print(" ".join(RECIPES[k].at_size(224).hash for k in sorted(RECIPES)))'
    there = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True, check=True, cwd=ROOT,
                           env={**os.environ, 'PYTHONHASHSEED': '123'}).stdout.split()
    assert there == [RECIPES[k].at_size(224).hash for k in sorted(RECIPES)]
    assert len(set(there)) == len(RECIPES)
    r = Recipe(('crop', ('clahe', {'tile_grid': [8, 8]}), 'resize'), 'mine', fmt='png')
    assert Recipe.from_dict(json.loads(r.to_json())) == r and Recipe.from_dict(r.to_dict()).hash == r.hash
    assert Recipe(r.steps, 'other', 'png').hash == r.hash != Recipe(r.steps, 'mine', 'jpg').hash


def test_no_tensorflow_import():
    code = 'import sys, drbook.preprocess; print("tensorflow" in sys.modules)'
    assert subprocess.run([sys.executable, '-c', code], capture_output=True, text=True, check=True, cwd=ROOT).stdout.strip() == 'False'


def test_every_bad_input_report_has_one_layout(bad_inputs, tmp_path):
    "Readers, preprocess_dataset and find_corrupt report bad input with the same columns, dtypes and `errors=` words."
    d, _ = bad_inputs
    files = [str(p) for p in sorted(d.iterdir())]
    table = pd.DataFrame({'image_path': files, 'grade': 0}, index=range(10, 10 + len(files)))
    _, prep = preprocess_dataset(table, 's3', 64, cache_dir=tmp_path/'cache', workers=0, progress=False)
    corrupt = find_corrupt(table['image_path'], workers=0, progress=False)
    (tmp_path/'aptos'/'train_images').mkdir(parents=True)
    (tmp_path/'aptos'/'train.csv').write_text('id_code,diagnosis\nx,1\n')
    _, labels = read_aptos(tmp_path/'aptos', errors='report')
    for report in (prep, corrupt, labels):
        assert dict(report.dtypes.astype(str)) == REPORT_COLUMNS and len(report)
    assert set(corrupt['path']) <= set(prep['path'])  # a file that does not decode fails preprocessing too
    where = {p: i for i, p in zip(table.index, files)}
    assert dict(zip(corrupt['path'], corrupt['row'])) == {p: where[p] for p in corrupt['path']}  # the table's rows
    assert dict(zip(prep['path'], prep['row'])) == {p: where[p] for p in prep['path']}
    assert labels['row'].tolist() == [2] and labels['reason'].tolist() == ['missing image']  # the labels file's line
    with pytest.raises(ValueError, match="errors='skip': expected 'report' or 'raise'"): preprocess_dataset(table, errors='skip')

@pytest.mark.slow  # chapter 03 twice in a kernel: about 30 s
def test_chapter_03_stops_on_a_corrupt_file_or_with_skip_corrupt_leaves_it_out(tmp_path):
    "S3's checkJPEG as 03 does it: a truncated photograph stops the chapter, naming it; skip_corrupt leaves it out, deleting nothing."
    from drbook.data import read_samples, save_table
    from drbook.core import read_records
    from drbook.reproduce import run_notebook
    table = read_samples().groupby('grade').head(3).reset_index(drop=True)
    bad = tmp_path/'truncated.jpg'; bad.write_bytes(Path(table['image_path'][0]).read_bytes()[:2000])
    table.loc[len(table)] = {**table.iloc[1].to_dict(), 'image_path': str(bad), 'image_id': 'truncated', 'patient': 'p-truncated'}
    csv = save_table(table, tmp_path/'table.csv')
    nb = Path(__file__).resolve().parent.parent/'nbs'/'03_preprocessing.ipynb'
    for skip in (False, True):
        run = tmp_path/f'run-{skip}'; run.mkdir()
        status, error = run_notebook(nb, run/'03.ipynb', {'table_csv': str(csv), 'image_size': 64, 'skip_corrupt': skip}, run, nb.parent)
        if not skip: assert status == 'failed' and '1 unreadable image' in error, error
        else:
            assert status == 'ok', error
            recs = {r['name']: r['value'] for r in read_records(run)}
            assert recs['corrupt_files'] == 1 and recs['preprocess_failures'] == 0
    assert bad.read_bytes() == Path(table['image_path'][0]).read_bytes()[:2000]  # the file is still there, unchanged
