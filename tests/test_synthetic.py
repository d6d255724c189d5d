"""drbook.synthetic: determinism, grades read back from the drawn lesions, every lesion pixel inside its mask and the
field of view, and the embedded data_samples/ (its table, its files, and a rebuild that reproduces its manifest)."""
import os, subprocess, sys
from pathlib import Path
import cv2
import numpy as np
import pandas as pd
import pytest
from scipy import ndimage
from drbook import synthetic as syn
from drbook.data import TABLE_COLUMNS, load_table

ROOT = Path(__file__).resolve().parent.parent
SAMPLES = ROOT/'data_samples'


def independent_fov(geo):
    "The field of view recomputed here from the geometry, pixel by pixel, without drbook's code."
    ys, xs = np.indices((geo['h'], geo['w']))
    inside = np.hypot(xs - geo['cx'], ys - geo['cy']) <= geo['R']
    if geo['notch'] is not None:
        x0, y0, x1, y1 = geo['notch']
        inside &= ~((xs >= x0) & (xs < x1) & (ys >= y0) & (ys < y1))
    return inside


def independent_grade(masks, centre):
    "Simplified ICDR grade from masks, recomputed with scipy's labelling (quadrants: rows above / columns right of the centre)."
    if masks['NV'].any(): return 4
    he = masks['HE']
    ys, xs = np.indices(he.shape)
    up, right = ys < centre[1], xs >= centre[0]
    counts = [ndimage.label(he & q, structure=np.ones((3, 3)))[1] for q in (up & right, up & ~right, ~up & ~right, ~up & right)]
    if min(counts) >= syn.SEVERE_HE_PER_QUADRANT: return 3
    if masks['HE'].any() or masks['EX'].any() or masks['SE'].any(): return 2
    return int(masks['MA'].any())


def scenes(n_per_grade=4, size=256):
    "A few scenes of every grade, both eyes, drawn through make_fundus (so their grade has been read back)."
    for grade in range(5):
        for k in range(n_per_grade):
            image, masks, scene = syn.make_fundus(100 + k, grade, size, eye=('left', 'right')[k % 2])
            yield image, masks, scene


def test_same_seed_same_image_different_seed_different_image():
    a, ma, _ = syn.make_fundus(11, 3)
    b, mb, _ = syn.make_fundus(11, 3)
    c, _, _ = syn.make_fundus(12, 3)
    assert a.tobytes() == b.tobytes() and all(np.array_equal(ma[t], mb[t]) for t in syn.MASK_TYPES)
    assert a.shape != c.shape or not np.array_equal(a, c)


def test_same_seed_same_files_whatever_the_processes(tmp_path):
    syn.build_samples(tmp_path/'a', n_per_grade=2, size=96, seed=3, processes=1)
    syn.build_samples(tmp_path/'b', n_per_grade=2, size=96, seed=3, processes=2)
    syn.build_samples(tmp_path/'c', n_per_grade=2, size=96, seed=4, processes=1)
    files = lambda d: sorted(p.relative_to(d).as_posix() for p in d.rglob('*') if p.is_file())
    assert files(tmp_path/'a') == files(tmp_path/'b')
    for f in files(tmp_path/'a'): assert (tmp_path/'a'/f).read_bytes() == (tmp_path/'b'/f).read_bytes(), f
    images = [f for f in files(tmp_path/'a') if f.startswith('images/')]
    assert len(images) == 10
    different = [f for f in images if (tmp_path/'c'/f).exists() and (tmp_path/'c'/f).read_bytes() != (tmp_path/'a'/f).read_bytes()]
    assert len(different) == len(images)  # another seed: every image differs


@pytest.mark.parametrize('size', [128, 256])
def test_grade_read_back_agrees_with_target_and_lesions(size):
    for image, masks, scene in scenes(6, size):
        geo = scene['geo']
        assert independent_grade(masks, (geo['cx'], geo['cy'])) == scene['grade']
        drawn = {les['type'] for les in scene['lesions']}
        present = {t for t in syn.LESION_TYPES if masks[t].any()}
        assert present <= drawn
        if scene['grade'] == 0: assert present == set()
        if scene['grade'] == 1: assert present == {'MA'}
        if scene['grade'] == 4: assert 'NV' in present


def test_every_lesion_pixel_inside_its_mask_and_the_field_of_view():
    for image, masks, scene in scenes(4):
        fov = independent_fov(scene['geo'])
        base, _ = syn.render_scene(scene, types=())
        for t in syn.LESION_TYPES:
            alone, m = syn.render_scene(scene, types=(t,))
            assert np.array_equal(m[t], masks[t])  # a type's mask does not depend on the other types
            changed = (alone != base).any(-1)
            assert not (changed & ~masks[t]).any(), f"{t}: pixels drawn outside the mask"
            assert not (masks[t] & ~fov).any(), f"{t}: mask outside the field of view"
            assert changed.sum() >= 0.9 * masks[t].sum()  # and the mask is (nearly) all drawn
        for les in scene['lesions']:  # each lesion drawn alone, with no clipping: placed wholly inside the field
            canvas, m = np.full(base.shape, 0.5, np.float32), np.zeros(fov.shape, bool)
            syn.draw_lesion(canvas, m, les)
            assert m.any() and not (m & ~fov).any(), les['kind']


def test_frame_is_dark_and_field_is_not():
    for image, masks, scene in scenes(2):
        fov = independent_fov(scene['geo']).astype(np.uint8)
        far_out = cv2.dilate(fov, np.ones((9, 9), np.uint8)) == 0  # 4 px away from the field (blur spreads the rim)
        well_in = cv2.erode(fov, np.ones((9, 9), np.uint8)) == 1
        if far_out.any(): assert image[far_out].mean() < 20 and np.percentile(image[far_out].max(-1), 99) < 40
        assert image[well_in].max(-1).mean() > 60


def test_grade_rules_on_hand_made_masks():
    blank = {t: np.zeros((60, 60), bool) for t in syn.LESION_TYPES}
    assert syn.icdr_grade(blank, (30, 30)) == 0
    he = blank['HE'].copy()
    for y0, x0 in [(5, 35), (5, 5), (35, 5), (35, 35)]:  # separate spots in each quadrant
        for k in range(syn.SEVERE_HE_PER_QUADRANT): he[y0 + 6 * k:y0 + 6 * k + 2, x0:x0 + 2] = True
    assert syn.icdr_grade({**blank, 'HE': he}, (30, 30)) == 3 == independent_grade({**blank, 'HE': he}, (30, 30))
    he[5:7, 5:7] = False  # one quadrant one short
    assert syn.icdr_grade({**blank, 'HE': he}, (30, 30)) == 2 == independent_grade({**blank, 'HE': he}, (30, 30))


def committed_table():
    if not (SAMPLES/'samples.csv').exists(): pytest.fail(f'{SAMPLES}/samples.csv is missing: run `python -m drbook.synthetic`')
    return load_table(SAMPLES/'samples.csv')


def test_committed_samples_load_and_their_files_exist():
    table = committed_table()
    assert list(table.columns[:len(TABLE_COLUMNS)]) == list(TABLE_COLUMNS)
    assert set(table.source) == {'synthetic'} and table.image_id.is_unique
    assert table.grade.value_counts().to_dict() == {g: syn.SAMPLES['n_per_grade'] for g in range(5)}
    assert (table.groupby('patient').eye.apply(lambda e: tuple(sorted(e))) == ('left', 'right')).all()
    for path in table.image_path:
        assert Path(path).is_file() and Path(path).parent == SAMPLES/'images'
    for t in syn.MASK_TYPES:
        has = table[f'mask_{t}'].notna()
        if t != 'OD': assert (table[f'has_{t}'].astype(str) == 'True').tolist() == has.tolist()
        assert all(Path(p).is_file() for p in table.loc[has, f'mask_{t}'])
    assert table.mask_OD.notna().all()
    for t in syn.LESION_TYPES: assert table[f'mask_{t}'].notna().sum() >= 40, t  # every lesion type well represented
    first = cv2.imread(table.image_path[0])
    assert first.shape[0] == syn.SAMPLES['size']
    assert syn.check_manifest(SAMPLES) == []
    assert 'not for clinical use' in (SAMPLES/'README.txt').read_text()


def test_committed_grades_follow_their_masks():
    table = committed_table()
    for row in table.itertuples():
        m = {t: (cv2.imread(getattr(row, f'mask_{t}'), cv2.IMREAD_GRAYSCALE) > 0) if pd.notna(getattr(row, f'mask_{t}')) else None
             for t in syn.LESION_TYPES}
        has = {t: m[t] is not None and m[t].any() for t in m}
        assert all(has[t] == (m[t] is not None) for t in m), row.image_id  # no empty mask files
        if has['NV']: expected = {4}
        elif has['HE'] and ndimage.label(m['HE'], structure=np.ones((3, 3)))[1] >= 4 * syn.SEVERE_HE_PER_QUADRANT: expected = {2, 3}
        elif has['HE'] or has['EX'] or has['SE']: expected = {2}
        else: expected = {int(has['MA'])}
        assert row.grade in expected, row.image_id


@pytest.mark.slow
def test_rebuilding_data_samples_reproduces_the_manifest(tmp_path):
    committed_table()
    syn.build_samples(tmp_path/'data_samples')  # the settings in syn.SAMPLES, as the committed folder
    assert (tmp_path/'data_samples'/syn.MANIFEST).read_text() == (SAMPLES/syn.MANIFEST).read_text()


DRAW_AND_HASH = """
import hashlib, sys, cv2, numpy as np
if sys.argv[1] == 'plain': cv2.setUseOptimized(False)  # OpenCV without its vector code (SSE4/AVX2/AVX-512 paths)
from drbook.synthetic import make_fundus, _encode
h = hashlib.sha256()
for i in range(10):
    image, masks, scene = make_fundus(i, i % 5, 200, eye=('left', 'right')[i % 2])
    h.update(_encode('.jpg', image[..., ::-1], cv2.IMWRITE_JPEG_QUALITY, scene['camera']['jpeg_quality']))
    for t in sorted(masks): h.update(_encode('.png', masks[t].astype(np.uint8) * 255, cv2.IMWRITE_PNG_BILEVEL, 1))
print(h.hexdigest())
"""


def test_same_bytes_without_vector_instructions():
    "What another CPU would do: NumPy and OpenCV without their AVX2 code paths draw the same bytes."
    try: from numpy._core._multiarray_umath import __cpu_features__
    except ImportError: __cpu_features__ = {}
    run = lambda mode, env: subprocess.run([sys.executable, '-c', DRAW_AND_HASH, mode], capture_output=True, text=True,
                                           check=True, env={**os.environ, **env}).stdout.strip()
    plain_env = {'NPY_DISABLE_CPU_FEATURES': 'X86_V3'} if __cpu_features__.get('X86_V3') else {}
    assert run('simd', {}) == run('plain', plain_env)


def test_command_line_and_no_tensorflow(tmp_path):
    code = "import sys, drbook.synthetic; print('tensorflow' in sys.modules or 'keras' in sys.modules)"
    out = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == 'False'
    dest = tmp_path/'cli'
    subprocess.run([sys.executable, '-m', 'drbook.synthetic', str(dest), '--n-per-grade', '1', '--size', '96', '--processes', '1'],
                   check=True, capture_output=True, env={**os.environ, 'TF_CPP_MIN_LOG_LEVEL': '2'})
    assert len(load_table(dest/'samples.csv')) == 5 and syn.check_manifest(dest) == []


def test_refuses_to_replace_a_folder_it_did_not_build(tmp_path):
    (tmp_path/'mine').mkdir(); (tmp_path/'mine'/'notes.txt').write_text('keep me')
    with pytest.raises(FileExistsError, match='left alone'): syn.build_samples(tmp_path/'mine', n_per_grade=1, size=96)
    assert (tmp_path/'mine'/'notes.txt').read_text() == 'keep me'


def test_a_dataset_inside_a_dataset_keeps_its_own_manifest(tmp_path):
    "data_samples/idrid has its own MANIFEST.sha256: the synthetic manifest neither lists nor checks it, but a stray file is caught."
    from drbook.synthetic import check_manifest, dataset_files, write_manifest
    (tmp_path/'images').mkdir(); (tmp_path/'images'/'a.jpg').write_bytes(b'a')
    (tmp_path/'idrid').mkdir(); (tmp_path/'idrid'/'x.jpg').write_bytes(b'x'); write_manifest(tmp_path/'idrid')
    write_manifest(tmp_path)
    assert dataset_files(tmp_path) == ['images/a.jpg'] and check_manifest(tmp_path) == []
    (tmp_path/'stray.txt').write_text('?')
    assert any('stray.txt' in p for p in check_manifest(tmp_path))
