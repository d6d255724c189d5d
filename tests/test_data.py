"""drbook.data: the canonical table, its CSV round trip, and every reader on tiny fixtures of each dataset's own
layout (including broken ones) and on the real IDRiD subset."""
import csv, hashlib, importlib.util, os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from drbook import data
from drbook.data import (TABLE_COLUMNS, REPORT_COLUMNS, conform_table, save_table, load_table, read_samples, read_aptos,
                         read_eyepacs, read_idrid_grading, read_idrid_segmentation, read_messidor, read_folder,
                         read_mask)

# ---------------------------------------------------------------- helpers building fixtures

def image(path, size=(8, 6), value=100):
    "A small RGB image at `path` (format from the extension), folders created."
    path = Path(path); path.parent.mkdir(parents=True, exist_ok=True)
    Image.new('RGB', size, (value, value, value)).save(path)
    return path

def mask(path, size=(8, 6), box=(1, 1, 4, 3)):
    "A 1-bit TIFF mask with a lesion rectangle `box`, like IDRiD's."
    path = Path(path); path.parent.mkdir(parents=True, exist_ok=True)
    m = Image.new('1', size, 0); m.paste(1, box); m.save(path)
    return path

def write(path, text):
    path = Path(path); path.parent.mkdir(parents=True, exist_ok=True); path.write_text(text)
    return path

def snapshot(root):
    "{relative path: sha256} of every file under `root`, and the set of folders."
    root = Path(root)
    files = {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() for p in root.rglob('*') if p.is_file()}
    return files, {str(p.relative_to(root)) for p in root.rglob('*') if p.is_dir()}

def make_aptos(root, rows=(('a1', 2), ('b2', 0), ('c3', 4))):
    for i, _ in rows: image(root/'train_images'/f'{i}.png')
    write(root/'train.csv', 'id_code,diagnosis\n' + ''.join(f'{i},{g}\n' for i, g in rows))
    return root

IDRID_TRAIN_CSV = 'a. IDRiD_Disease Grading_Training Labels.csv'
IDRID_TEST_CSV = 'b. IDRiD_Disease Grading_Testing Labels.csv'

def make_idrid(root):
    "A miniature IDRiD in the official layout, with the official CSV quirks (trailing empty columns, header space)."
    g = root/'B. Disease Grading'
    for i in ['IDRiD_001', 'IDRiD_002', 'IDRiD_003']: image(g/'1. Original Images'/'a. Training Set'/f'{i}.jpg')
    for i in ['IDRiD_001', 'IDRiD_002']: image(g/'1. Original Images'/'b. Testing Set'/f'{i}.jpg')
    write(g/'2. Groundtruths'/IDRID_TRAIN_CSV, 'Image name,Retinopathy grade,Risk of macular edema ,,,,\n'
          'IDRiD_001,3,2,,,,\nIDRiD_002,0,0,,,,\nIDRiD_003,4,1,,,,\n')
    write(g/'2. Groundtruths'/IDRID_TEST_CSV, 'Image name,Retinopathy grade,Risk of macular edema \n'
          'IDRiD_001,1,0\nIDRiD_002,2,1\n')
    s = root/'A. Segmentation'
    gt = s/'2. All Segmentation Groundtruths'
    for i in ['IDRiD_01', 'IDRiD_02']: image(s/'1. Original Images'/'a. Training Set'/f'{i}.jpg')
    image(s/'1. Original Images'/'b. Testing Set'/'IDRiD_55.jpg')
    mask(gt/'a. Training Set'/'1. Microaneurysms'/'IDRiD_01_MA.tif')
    mask(gt/'a. Training Set'/'1. Microaneurysms'/'IDRiD_02_MA.tif')
    mask(gt/'a. Training Set'/'2. Haemorrhages'/'IDRiD_02_HE.tif')
    (gt/'a. Training Set'/'4. Soft Exudates').mkdir(parents=True)  # the folder exists, no image has a mask
    mask(gt/'a. Training Set'/'5. Optic Disc'/'IDRiD_01_OD.tif')
    mask(gt/'b. Testing Set'/'3. Hard Exudates'/'IDRiD_55_EX.tif')
    return root

# ---------------------------------------------------------------- import and the table

def test_table_columns_are_the_documented_ones():
    "Column names, order and dtypes as CONTRIBUTING.md documents them."
    expected = [('image_path', 'string'), ('image_id', 'string'), ('source', 'string'), ('split', 'string'),
                ('grade', 'Int64'), ('messidor_grade', 'Int64'), ('dme_risk', 'Int64'), ('patient', 'string'),
                ('eye', 'string'), ('has_MA', 'boolean'), ('has_HE', 'boolean'), ('has_EX', 'boolean'),
                ('has_SE', 'boolean'), ('mask_MA', 'string'), ('mask_HE', 'string'), ('mask_EX', 'string'),
                ('mask_SE', 'string'), ('mask_OD', 'string')]
    assert [(c, t) for c, (t, _) in TABLE_COLUMNS.items()] == expected
    assert all(isinstance(d, str) and d for _, d in TABLE_COLUMNS.values())
    t = conform_table(pd.DataFrame())
    assert [str(t[c].dtype) for c in TABLE_COLUMNS] == [t for _, t in expected]

def test_conform_table_order_dtypes_extras_and_no_mutation():
    df = pd.DataFrame({'extra': ['x', 'y'], 'grade': ['1', 3.0], 'image_id': ['a', 'b'], 'has_EX': ['False', 1],
                       'source': [None, 'synthetic']})
    before = df.copy()
    t = conform_table(df, source='folder')
    assert list(t.columns) == list(TABLE_COLUMNS) + ['extra']
    assert t['grade'].tolist() == [1, 3] and str(t['grade'].dtype) == 'Int64'
    assert t['has_EX'].tolist() == [False, True]
    assert t['source'].tolist() == ['folder', 'synthetic']  # `source` fills only where missing
    assert t['patient'].isna().all() and t['mask_OD'].isna().all()
    pd.testing.assert_frame_equal(df, before)

@pytest.mark.parametrize('col,value,message', [
    ('grade', 5, "1 row(s) have grade out of range 0–4: 1 (b): grade = 5"),
    ('grade', -1, 'have grade out of range 0–4: 1 (b): grade = -1'),
    ('messidor_grade', 4, 'have messidor_grade out of range 0–3: 1 (b): messidor_grade = 4'),
    ('dme_risk', 3, 'have dme_risk out of range 0–2: 1 (b): dme_risk = 3'),
    ('grade', 'two', "have grade not a whole number: 1 (b): grade = 'two'"),
    ('grade', 1.5, 'have grade not a whole number: 1 (b): grade = 1.5'),
    ('eye', 'both', "have an eye not 'left' or 'right': 1 (b): eye = 'both'"),
    ('has_MA', 'perhaps', "have has_MA not True/False: 1 (b): has_MA = 'perhaps'"),
])
def test_conform_table_rejects_bad_values_naming_the_row(col, value, message):
    df = pd.DataFrame({'image_id': ['a', 'b'], col: [pd.NA, value]}).astype({col: object})
    with pytest.raises(ValueError) as e: conform_table(df)
    assert message in str(e.value)
    assert ': 0 (a)' not in str(e.value)

def test_save_load_round_trip_relative_paths(tmp_path):
    root = tmp_path/'ds'
    t = conform_table(pd.DataFrame({
        'image_path': [str(root/'images'/'a.png'), str(root/'images'/'b.png')], 'image_id': ['a', 'b'],
        'grade': [0, 4], 'has_MA': [pd.NA, True], 'mask_MA': [pd.NA, str(root/'masks'/'b_MA.png')],
        'preprocessed_path': [str(tmp_path/'cache'/'a.png'), pd.NA], 'has_NV': [False, True]}), source='synthetic')
    save_table(t, root/'table.csv')
    rows = list(csv.DictReader(open(root/'table.csv')))
    assert [r['image_path'] for r in rows] == ['images/a.png', 'images/b.png']
    assert rows[1]['mask_MA'] == 'masks/b_MA.png' and rows[0]['preprocessed_path'] == '../cache/a.png'
    assert sorted(p.name for p in root.iterdir()) == ['table.csv']  # no temporary file left behind
    back = load_table(root/'table.csv')
    assert back['preprocessed_path'].tolist()[0] == str(tmp_path/'cache'/'a.png') and pd.isna(back['preprocessed_path'][1])
    assert str(back['preprocessed_path'].dtype) == 'string'
    assert back['has_NV'].tolist() == [False, True] and str(back['has_NV'].dtype) == 'boolean'  # extra has_* stay boolean
    pd.testing.assert_frame_equal(back.drop(columns=['preprocessed_path', 'has_NV']), t.drop(columns=['preprocessed_path', 'has_NV']))
    # moving the folder keeps the table valid: paths follow the CSV
    moved = tmp_path/'moved'; root.rename(moved)
    assert load_table(moved/'table.csv')['image_path'].tolist() == [str(moved/'images'/'a.png'), str(moved/'images'/'b.png')]

def test_load_table_errors_name_the_file(tmp_path):
    with pytest.raises(FileNotFoundError, match='absent.csv not found'): load_table(tmp_path/'absent.csv')
    write(tmp_path/'few.csv', 'image_path,grade\na.png,1\n')
    with pytest.raises(ValueError, match=r"few.csv: missing columns \['image_id'"): load_table(tmp_path/'few.csv')
    write(tmp_path/'broken.csv', ','.join(TABLE_COLUMNS) + '\n"a.png,1\n')
    with pytest.raises(ValueError, match='broken.csv: not a readable CSV'): load_table(tmp_path/'broken.csv')
    save_table(conform_table(pd.DataFrame({'image_id': ['a', 'b', 'c'], 'grade': [0, 1, 2]})), tmp_path/'t.csv')
    text = (tmp_path/'t.csv').read_text().splitlines()
    text[3] = text[3].replace(',2,', ',9,')
    write(tmp_path/'t.csv', '\n'.join(text) + '\n')
    with pytest.raises(ValueError, match=r"t.csv: 1 row\(s\) have grade out of range 0–4: line 4 \(c\): grade = 9"):
        load_table(tmp_path/'t.csv')

def test_read_samples_default_and_explicit(tmp_path, monkeypatch):
    t = conform_table(pd.DataFrame({'image_path': [str(image(tmp_path/'img'/'a.png'))], 'image_id': ['a'], 'grade': [1]}),
                      source='synthetic')
    save_table(t, tmp_path/'samples.csv')
    monkeypatch.setenv('DRBOOK_SAMPLES', str(tmp_path))
    pd.testing.assert_frame_equal(read_samples(), t)
    pd.testing.assert_frame_equal(read_samples(tmp_path/'samples.csv'), t)
    pd.testing.assert_frame_equal(read_samples(tmp_path), t)
    monkeypatch.setenv('DRBOOK_SAMPLES', str(tmp_path/'nowhere'))
    with pytest.raises(FileNotFoundError, match='samples.csv'): read_samples()

# ---------------------------------------------------------------- APTOS 2019

def test_aptos_reads_its_layout(tmp_path):
    root = make_aptos(tmp_path/'aptos')
    image(root/'test_images'/'zz.png')  # unlabelled test images are not part of the table
    before = snapshot(root)
    t = read_aptos(root)
    assert snapshot(root) == before
    assert list(t.columns) == list(TABLE_COLUMNS)
    assert t['image_id'].tolist() == ['a1', 'b2', 'c3'] and t['grade'].tolist() == [2, 0, 4]
    assert t['image_path'].tolist() == [str(root/'train_images'/f'{i}.png') for i in ['a1', 'b2', 'c3']]
    assert set(t['source']) == {'aptos2019'} and set(t['split']) == {'train'}
    assert t['messidor_grade'].isna().all() and t['patient'].isna().all()

@pytest.mark.parametrize('csv_text,error,lines,reason,kept', [
    ('id_code,diagnosis\na1,2\nmissing,1\n', FileNotFoundError, [3], 'missing image', ['a1']),
    ('id_code,diagnosis\na1,2\nb2,0\na1,2\n', ValueError, [2, 4], "duplicate id 'a1' (lines 2, 4)", ['b2']),
    ('id_code,diagnosis\na1,5\nb2,0\n', ValueError, [2], 'diagnosis 5 is out of range 0–4', ['b2']),
    ('id_code,diagnosis\na1,-1\n', ValueError, [2], 'diagnosis -1 is out of range 0–4', []),
    ('id_code,diagnosis\na1,2\nb2,moderate\n', ValueError, [3], "diagnosis 'moderate' is not a whole number", ['a1']),
    ('id_code,diagnosis\na1,2.5\n', ValueError, [2], "diagnosis '2.5' is not a whole number", []),
    ('id_code,diagnosis\na1,\nc3,1\n', ValueError, [2], 'diagnosis is empty', ['c3']),
    ('id_code,diagnosis\n,2\n', ValueError, [2], 'id_code is empty', []),
    ('id_code,diagnosis\na1,2,3\nb2,1\n', ValueError, [2], '3 fields, the header has 2', ['b2']),
])
def test_aptos_bad_rows_raise_or_report(tmp_path, csv_text, error, lines, reason, kept):
    root = make_aptos(tmp_path/'aptos')
    write(root/'train.csv', csv_text)
    before = snapshot(root)
    with pytest.raises(error) as e: read_aptos(root)
    for n in lines: assert f'line {n}: {reason}: ' in str(e.value)
    assert str(root) in str(e.value)
    t, report = read_aptos(root, errors='report')
    assert list(report.columns) == list(REPORT_COLUMNS) == ['path', 'row', 'reason']
    assert report['row'].tolist() == lines and set(report['reason']) == {reason}
    assert t['image_id'].tolist() == kept and list(t.columns) == list(TABLE_COLUMNS)
    assert snapshot(root) == before

def test_aptos_report_keeps_good_rows_and_reports_the_rest(tmp_path):
    root = make_aptos(tmp_path/'aptos')
    write(root/'train.csv', 'id_code,diagnosis\na1,2\nmissing,1\nb2,7\nc3,4\nc3,4\n')
    t, report = read_aptos(root, errors='report')
    assert t['image_id'].tolist() == ['a1']
    assert report['row'].tolist() == [3, 4, 5, 6]
    assert report['reason'].tolist() == ['missing image', 'diagnosis 7 is out of range 0–4',
                                         "duplicate id 'c3' (lines 5, 6)", "duplicate id 'c3' (lines 5, 6)"]
    assert report['path'][0] == str(root/'train_images'/'missing.png') and report['path'][1] == str(root/'train.csv')
    with pytest.raises(ValueError) as e: read_aptos(root)  # mixed problems: a ValueError listing all of them
    assert all(f'line {n}:' in str(e.value) for n in (3, 4, 5, 6)) and '4 problem(s)' in str(e.value)

def test_aptos_missing_or_unreadable_files(tmp_path):
    root = make_aptos(tmp_path/'aptos')
    (root/'train.csv').rename(root/'labels.csv')
    with pytest.raises(FileNotFoundError, match=r'labels file .*train.csv not found'): read_aptos(root)
    with pytest.raises(FileNotFoundError, match=r'labels file .*train.csv not found'): read_aptos(root, errors='report')
    assert len(read_aptos(root, csv='labels.csv')) == 3
    write(root/'train.csv', 'id_code,diagnosis\n"a1,2\n')
    with pytest.raises(ValueError, match=r'train.csv: unreadable CSV'): read_aptos(root)
    write(root/'train.csv', 'id,grade\na1,2\n')
    with pytest.raises(ValueError, match=r"train.csv: missing columns \['id_code', 'diagnosis'\]"): read_aptos(root)
    write(root/'train.csv', '')
    with pytest.raises(ValueError, match=r'train.csv: empty labels file'): read_aptos(root)
    with pytest.raises(FileNotFoundError, match=r'APTOS 2019 image folder .*pngs not found'): read_aptos(root, images='pngs')
    with pytest.raises(FileNotFoundError, match='nowhere'): read_aptos(tmp_path/'nowhere')
    with pytest.raises(ValueError, match="errors='ignore': expected 'report' or 'raise'"): read_aptos(root, errors='ignore')

# ---------------------------------------------------------------- EyePACS 2015

@pytest.mark.parametrize('images,folder', [(None, 'train'), ('train_small', 'train_small'), (None, '.')])
def test_eyepacs_patient_eye_and_image_folder(tmp_path, images, folder):
    root = tmp_path/'eyepacs'
    for n in ['10_left', '10_right', '13_left']: image(root/folder/f'{n}.jpeg')
    write(root/'trainLabels.csv', 'image,level\n10_left,0\n10_right,1\n13_left,4\n')
    before = snapshot(root)
    t = read_eyepacs(root, images=images)
    assert snapshot(root) == before
    assert t[['patient', 'eye', 'grade']].values.tolist() == [['10', 'left', 0], ['10', 'right', 1], ['13', 'left', 4]]
    assert t['image_path'][2] == os.path.normpath(root/folder/'13_left.jpeg')
    assert set(t['source']) == {'eyepacs2015'}

def test_eyepacs_bad_inputs(tmp_path):
    root = tmp_path/'eyepacs'
    for n in ['10_left', '10_right', '13_left', '14']: image(root/'train'/f'{n}.jpeg')
    write(root/'trainLabels.csv', 'image,level\n10_left,0\n10_right,x\n13_left,4\n14,2\n15_left,1\n10_left,0\n')
    with pytest.raises(ValueError) as e: read_eyepacs(root)
    msg = str(e.value)
    assert "line 3: level 'x' is not a whole number" in msg
    assert 'line 5: name is not <patient>_<left|right>' in msg and '14.jpeg' in msg
    assert 'line 6: missing image' in msg and '15_left.jpeg' in msg
    assert "duplicate id '10_left' (lines 2, 7)" in msg
    t, report = read_eyepacs(root, errors='report')
    assert t['image_id'].tolist() == ['13_left']
    assert sorted(report['row'].tolist()) == [2, 3, 5, 6, 7]

# ---------------------------------------------------------------- IDRiD

def test_idrid_grading_official_layout(tmp_path):
    root = make_idrid(tmp_path/'IDRiD')
    before = snapshot(root)
    t = read_idrid_grading(root)
    assert snapshot(root) == before
    assert t[['split', 'image_id', 'grade', 'dme_risk']].values.tolist() == [
        ['train', 'IDRiD_001', 3, 2], ['train', 'IDRiD_002', 0, 0], ['train', 'IDRiD_003', 4, 1],
        ['test', 'IDRiD_001', 1, 0], ['test', 'IDRiD_002', 2, 1]]
    assert t['image_path'][3].endswith(os.path.join('b. Testing Set', 'IDRiD_001.jpg'))
    assert read_idrid_grading(root, split='train')['image_id'].tolist() == ['IDRiD_001', 'IDRiD_002', 'IDRiD_003']
    assert len(read_idrid_grading(root/'B. Disease Grading', split='test')) == 2  # the part folder itself
    with pytest.raises(ValueError, match="split must be 'train', 'test' or None"): read_idrid_grading(root, split='val')
    with pytest.raises(FileNotFoundError, match="no 'B. Disease Grading' folder"): read_idrid_grading(tmp_path)

def test_idrid_grading_bad_rows(tmp_path):
    root = make_idrid(tmp_path/'IDRiD')
    csv_path = root/'B. Disease Grading'/'2. Groundtruths'/IDRID_TRAIN_CSV
    write(csv_path, 'Image name,Retinopathy grade,Risk of macular edema ,,\nIDRiD_001,3,3,,\nIDRiD_002,5,0,,\n'
          'IDRiD_003,4,1,,\nIDRiD_009,1,1,,\n')
    with pytest.raises(ValueError) as e: read_idrid_grading(root, split='train')
    msg = str(e.value)
    assert 'line 2: Risk of macular edema 3 is out of range 0–2' in msg
    assert 'line 3: Retinopathy grade 5 is out of range 0–4' in msg
    assert 'line 5: missing image' in msg and 'IDRiD_009.jpg' in msg
    t, report = read_idrid_grading(root, errors='report')
    assert t[['split', 'image_id']].values.tolist() == [['train', 'IDRiD_003'], ['test', 'IDRiD_001'], ['test', 'IDRiD_002']]
    assert report['row'].tolist() == [2, 3, 5]
    (root/'B. Disease Grading'/'2. Groundtruths'/IDRID_TEST_CSV).unlink()
    with pytest.raises(FileNotFoundError, match='Testing Labels.csv not found'): read_idrid_grading(root)

def test_idrid_grading_value_in_an_unnamed_column_is_reported(tmp_path):
    root = make_idrid(tmp_path/'IDRiD')
    write(root/'B. Disease Grading'/'2. Groundtruths'/IDRID_TRAIN_CSV,
          'Image name,Retinopathy grade,Risk of macular edema ,,,\nIDRiD_001,3,2,,,\nIDRiD_002,0,0,,note,\n')
    t, report = read_idrid_grading(root, split='train', errors='report')
    assert t['image_id'].tolist() == ['IDRiD_001']
    assert report[['row', 'reason']].values.tolist() == [[3, '6 fields, the header has 3']]

def test_idrid_segmentation_has_and_masks(tmp_path):
    root = make_idrid(tmp_path/'IDRiD')
    before = snapshot(root)
    t = read_idrid_segmentation(root)
    assert snapshot(root) == before
    assert t[['split', 'image_id']].values.tolist() == [['train', 'IDRiD_01'], ['train', 'IDRiD_02'], ['test', 'IDRiD_55']]
    assert t['has_MA'].tolist()[:2] == [True, True] and pd.isna(t['has_MA'][2])  # no MA folder in test: unknown
    assert t['has_HE'].tolist()[:2] == [False, True]
    assert t['has_SE'].tolist()[:2] == [False, False]  # folder present, no mask: absent
    assert pd.isna(t['has_EX'][0]) and t['has_EX'][2]  # no EX folder in train: unknown
    assert t['mask_OD'].notna().tolist() == [True, False, False] and 'has_OD' not in t
    assert t['mask_HE'][1] == str(root/'A. Segmentation'/'2. All Segmentation Groundtruths'/'a. Training Set'/
                                  '2. Haemorrhages'/'IDRiD_02_HE.tif')
    assert t['grade'].isna().all()

def test_idrid_segmentation_has_is_na_without_lesion_folder(tmp_path):
    root = make_idrid(tmp_path/'IDRiD')
    t = read_idrid_segmentation(root, split='test')
    assert t['has_MA'].isna().all() and t['has_EX'].tolist() == [True]

def test_idrid_segmentation_mask_for_unknown_image(tmp_path):
    root = make_idrid(tmp_path/'IDRiD')
    ma = root/'A. Segmentation'/'2. All Segmentation Groundtruths'/'a. Training Set'/'1. Microaneurysms'
    mask(ma/'IDRiD_07_MA.tif'); write(ma/'notes.txt', 'x'); write(ma/'.DS_Store', 'x')
    with pytest.raises(ValueError) as e: read_idrid_segmentation(root)
    assert 'mask for an unknown image IDRiD_07' in str(e.value) and 'IDRiD_07_MA.tif' in str(e.value)
    assert 'not a mask name IDRiD_NN_MA.tif' in str(e.value) and 'notes.txt' in str(e.value)
    assert '.DS_Store' not in str(e.value)
    t, report = read_idrid_segmentation(root, errors='report')
    assert len(t) == 3 and report['row'].isna().all()
    assert sorted(Path(p).name for p in report['path']) == ['IDRiD_07_MA.tif', 'notes.txt']

def test_idrid_segmentation_missing_images(tmp_path):
    with pytest.raises(FileNotFoundError, match="no 'A. Segmentation' folder"): read_idrid_segmentation(tmp_path)
    (tmp_path/'A. Segmentation').mkdir()
    with pytest.raises(FileNotFoundError, match='IDRiD segmentation image folder'): read_idrid_segmentation(tmp_path)

# ---------------------------------------------------------------- Messidor

def make_messidor(root):
    for base, names in {'Base11': ['20051019_38557_0100_PP', '20051020_43808_0100_PP'], 'Base12': ['20051020_55701_0100_PP']}.items():
        for n in names: image(root/base/f'{n}.tif')
    write(root/'Base11'/'Annotation_Base11.csv', 'Image name,Ophthalmologic department,Retinopathy grade,Risk of macular edema \n'
          '20051019_38557_0100_PP.tif,Service Ophtalmologie Lariboisière,3,2\n'
          '20051020_43808_0100_PP.tif,Service Ophtalmologie Lariboisière,0,0\n')
    write(root/'Base12'/'Annotation_Base12.csv', 'Image name,Ophthalmologic department,Retinopathy grade,Risk of macular edema\n'
          '20051020_55701_0100_PP.tif,CHU de St Etienne,1,1\n')
    return root

def test_messidor_keeps_its_own_scale(tmp_path):
    root = make_messidor(tmp_path/'messidor')
    before = snapshot(root)
    t = read_messidor(root)
    assert snapshot(root) == before
    assert t[['image_id', 'messidor_grade', 'dme_risk']].values.tolist() == [
        ['20051019_38557_0100_PP', 3, 2], ['20051020_43808_0100_PP', 0, 0], ['20051020_55701_0100_PP', 1, 1]]
    assert t['grade'].isna().all() and set(t['source']) == {'messidor'}
    assert t['image_path'][2] == str(root/'Base12'/'20051020_55701_0100_PP.tif')
    one = read_messidor(root/'Base11'/'Annotation_Base11.csv')
    assert len(one) == 2
    # a spreadsheet kept apart from its images
    sheet = write(tmp_path/'sheets'/'base12.csv', (root/'Base12'/'Annotation_Base12.csv').read_text())
    assert read_messidor(sheet, images=root/'Base12')['image_id'].tolist() == ['20051020_55701_0100_PP']

def test_messidor_bad_rows(tmp_path):
    root = make_messidor(tmp_path/'messidor')
    write(root/'Base12'/'Annotation_Base12.csv', 'Image name,Ophthalmologic department,Retinopathy grade,Risk of macular edema\n'
          '20051020_55701_0100_PP.tif,CHU de St Etienne,4,0\nabsent.tif,CHU,1,0\n')
    with pytest.raises(ValueError) as e: read_messidor(root)
    assert 'line 2: Retinopathy grade 4 is out of range 0–3' in str(e.value) and 'Annotation_Base12.csv' in str(e.value)
    assert 'line 3: missing image' in str(e.value)
    t, report = read_messidor(root, errors='report')
    assert len(t) == 2 and len(report) == 2
    (tmp_path/'empty').mkdir()
    with pytest.raises(FileNotFoundError, match='no Messidor annotation spreadsheet'): read_messidor(tmp_path/'empty')

def test_messidor_spreadsheets_need_a_reader_engine(tmp_path):
    root = make_messidor(tmp_path/'messidor')
    xls = write(root/'Base13'/'Annotation_Base13.xls', 'not really a spreadsheet')
    if importlib.util.find_spec('xlrd') is None:
        with pytest.raises(ImportError, match=r'Annotation_Base13.xls: reading .xls needs the xlrd package'): read_messidor(root)
    else:
        with pytest.raises(ValueError, match='Annotation_Base13.xls: unreadable spreadsheet'): read_messidor(root)
    xls.unlink()
    df = pd.DataFrame({'Image name': ['20051020_55701_0100_PP.tif'], 'Ophthalmologic department': ['CHU'],
                       'Retinopathy grade': [2], 'Risk of macular edema ': [0]})
    xlsx = root/'Base12'/'Annotation_Base12.xlsx'
    if importlib.util.find_spec('openpyxl') is None:
        xlsx.write_bytes(b'PK\x03\x04')
        with pytest.raises(ImportError, match=r'reading .xlsx needs the openpyxl package'): read_messidor(xlsx)
    else:
        df.to_excel(xlsx, index=False)
        assert read_messidor(xlsx)['messidor_grade'].tolist() == [2]

# ---------------------------------------------------------------- class-per-folder

def test_folder_tree(tmp_path):
    root = tmp_path/'tree'
    for g, names in {0: ['a.png', 'b.JPG'], 3: ['c.jpeg'], 4: ['d.png']}.items():
        for n in names: image(root/str(g)/n)
    write(root/'3'/'README.txt', 'ignored'); write(root/'labels.csv', 'ignored'); write(root/'0'/'.hidden.png', 'x')
    before = snapshot(root)
    t = read_folder(root, split='train')
    assert snapshot(root) == before
    assert t[['image_id', 'grade', 'split']].values.tolist() == [['a', 0, 'train'], ['b', 0, 'train'], ['c', 3, 'train'], ['d', 4, 'train']]
    assert t['image_path'][1] == str(root/'0'/'b.JPG') and set(t['source']) == {'folder'}
    assert set(read_folder(root, source='synthetic')['source']) == {'synthetic'}

def test_folder_tree_bad_inputs(tmp_path):
    root = tmp_path/'tree'
    image(root/'0'/'a.png'); image(root/'2'/'b.png'); image(root/'2'/'a.jpg'); image(root/'7'/'c.png'); image(root/'mild'/'d.png')
    with pytest.raises(ValueError) as e: read_folder(root)
    msg = str(e.value)
    assert 'folder name 7 is out of range 0–4' in msg and "folder name 'mild' is not a whole number" in msg
    assert "duplicate id 'a' (in 2 grade folders)" in msg
    t, report = read_folder(root, errors='report')
    assert t['image_id'].tolist() == ['b'] and len(report) == 4
    with pytest.raises(FileNotFoundError, match='no grade folders'): read_folder(root/'0')
    with pytest.raises(FileNotFoundError, match='not found'): read_folder(tmp_path/'absent')

# ---------------------------------------------------------------- masks

def test_read_mask_formats(tmp_path):
    m = read_mask(mask(tmp_path/'one_bit.tif', size=(10, 7), box=(2, 1, 5, 4)))
    assert m.shape == (7, 10) and m.dtype == bool and m.sum() == 9 and m[1:4, 2:5].all()
    pal = Image.new('P', (6, 4), 0); pal.putpalette([0, 0, 0, 255, 0, 0]); pal.putpixel((3, 2), 1)
    pal.save(tmp_path/'palette.tif')
    m = read_mask(tmp_path/'palette.tif')
    assert m.shape == (4, 6) and m.sum() == 1 and m[2, 3]
    arr = np.zeros((5, 5), np.uint8); arr[0, 0] = 255
    Image.fromarray(arr).save(tmp_path/'grey.png')
    assert read_mask(tmp_path/'grey.png').sum() == 1
    write(tmp_path/'bad.tif', 'garbage')
    with pytest.raises(ValueError, match='bad.tif: not a readable mask image'): read_mask(tmp_path/'bad.tif')
    with pytest.raises(FileNotFoundError, match='absent.tif not found'): read_mask(tmp_path/'absent.tif')

# ---------------------------------------------------------------- the real IDRiD subset

def _csv_grades(path):
    "{image name: (grade, dme risk)} parsed with the csv module, independently of drbook."
    with open(path, newline='', encoding='utf-8-sig') as f:
        rows = list(csv.reader(f))
    head = [h.strip() for h in rows[0]]
    name, grade, risk = head.index('Image name'), head.index('Retinopathy grade'), head.index('Risk of macular edema')
    return {r[name]: (int(r[grade]), int(r[risk])) for r in rows[1:] if r and r[name].strip()}

def test_real_idrid_grading_matches_the_csvs(idrid_root):
    t = read_idrid_grading(idrid_root)
    gt = idrid_root/'B. Disease Grading'/'2. Groundtruths'
    for split, name, n in [('train', IDRID_TRAIN_CSV, 30), ('test', IDRID_TEST_CSV, 10)]:
        expected = _csv_grades(gt/name)
        part = t[t['split'] == split]
        assert len(part) == n == len(expected)
        assert {r.image_id: (r.grade, r.dme_risk) for r in part.itertuples()} == expected
        assert all(Path(p).is_file() for p in part['image_path'])
    assert sorted(t['grade'].value_counts().tolist()) == [8] * 5

def test_real_idrid_segmentation_masks(idrid_root):
    t = read_idrid_segmentation(idrid_root)
    assert len(t) == 8
    counts = t.groupby('split')[['has_MA', 'has_HE', 'has_EX', 'has_SE']].sum()
    assert counts.loc['train'].tolist() == [4, 4, 4, 1] and counts.loc['test'].tolist() == [4, 4, 4, 2]
    # exactly the masks present in the folder, each where the table says
    on_disk = {str(p) for p in (idrid_root/'A. Segmentation').rglob('*.tif')}
    in_table = {p for c in ['MA', 'HE', 'EX', 'SE', 'OD'] for p in t[f'mask_{c}'].dropna()}
    assert {os.path.realpath(p) for p in in_table} == {os.path.realpath(p) for p in on_disk}
    assert t['mask_OD'].isna().all()
    for r in t.itertuples():
        with Image.open(r.image_path) as im: width, height = im.size
        for c in ['MA', 'HE', 'EX', 'SE']:
            assert pd.notna(getattr(r, f'mask_{c}')) == getattr(r, f'has_{c}')
            if getattr(r, f'has_{c}'):
                m = read_mask(getattr(r, f'mask_{c}'))
                assert m.dtype == bool and m.shape == (height, width)
                assert 0 < m.sum() < m.size  # a lesion, and not the whole image

def test_real_idrid_is_unchanged_by_reading(idrid_root):
    before = snapshot(idrid_root)
    assert len(before[0]) >= 80
    read_idrid_grading(idrid_root); read_idrid_grading(idrid_root, errors='report')
    t = read_idrid_segmentation(idrid_root)
    for p in t['mask_SE'].dropna(): read_mask(p)
    assert snapshot(idrid_root) == before

def test_table_paths_may_start_with_home(tmp_path, monkeypatch):
    "A profile's `table_csv: ~/data/table.csv` works: save_table and load_table expand `~`."
    monkeypatch.setenv('HOME', str(tmp_path))
    t = conform_table(pd.DataFrame({'image_path': [str(tmp_path/'data'/'a.png')], 'image_id': ['a'], 'grade': [2]}), source='folder')
    assert save_table(t, '~/data/table.csv') == tmp_path/'data'/'table.csv'
    assert load_table('~/data/table.csv')['image_path'].tolist() == [str(tmp_path/'data'/'a.png')]

# ---------------------------------------------------------------- the IDRiD sample shipped in data_samples/idrid

SAMPLE = data.IDRID_SAMPLE

def test_the_shipped_idrid_sample_reads_through_the_readers():
    t = read_idrid_grading(SAMPLE)
    per_grade = t.groupby(['split', 'grade']).size().unstack('grade')
    assert per_grade.loc['train'].tolist() == [4] * 5 and per_grade.loc['test'].tolist() == [1] * 5
    for split, name in [('train', IDRID_TRAIN_CSV), ('test', IDRID_TEST_CSV)]:
        part = t[t['split'] == split]
        assert {r.image_id: (r.grade, r.dme_risk) for r in part.itertuples()} == _csv_grades(SAMPLE/'B. Disease Grading'/'2. Groundtruths'/name)
    header = (SAMPLE/'B. Disease Grading'/'2. Groundtruths'/IDRID_TRAIN_CSV).read_text().splitlines()[0]
    assert header.startswith('Image name,Retinopathy grade,Risk of macular edema ,')  # IDRiD's quirks kept
    for p in t['image_path']:
        with Image.open(p) as im: assert im.format == 'JPEG' and max(im.size) == 720, p

def test_the_shipped_idrid_sample_has_aligned_masks_for_its_segmentation_photographs():
    t = read_idrid_segmentation(SAMPLE)
    assert t['image_id'].tolist() == ['IDRiD_01', 'IDRiD_02', 'IDRiD_03', 'IDRiD_04', 'IDRiD_55', 'IDRiD_56', 'IDRiD_57', 'IDRiD_58']
    counts = t.groupby('split')[['has_MA', 'has_HE', 'has_EX', 'has_SE']].sum()
    assert counts.loc['train'].tolist() == [4, 4, 4, 1] and counts.loc['test'].tolist() == [4, 4, 4, 2]  # as the full subset
    for r in t.itertuples():
        with Image.open(r.image_path) as im: width, height = im.size
        assert max(width, height) == 720
        for c in ['MA', 'HE', 'EX', 'SE']:
            assert pd.notna(getattr(r, f'mask_{c}')) == getattr(r, f'has_{c}')
            if getattr(r, f'has_{c}'):
                m = read_mask(getattr(r, f'mask_{c}'))
                assert m.shape == (height, width) and 0 < m.sum() < 0.2 * m.size, (r.image_id, c)

def test_the_shipped_idrid_sample_carries_its_licence_and_stays_small():
    readme = (SAMPLE/'README.txt').read_text()
    for needed in ['Creative Commons Attribution 4.0', 'Porwal', 'Data 3(3):25, 2018', 'Selection:', 'Downscaling:', 'Re-encoding:']:
        assert needed in readme, needed
    assert 'Creative Commons Attribution 4.0' in (SAMPLE/'LICENSE.txt').read_text()
    assert 'Attribution 4.0 International' in (SAMPLE/'CC-BY-4.0.txt').read_text()
    listed = data.read_manifest(SAMPLE)
    files = {p.relative_to(SAMPLE).as_posix(): p for p in SAMPLE.rglob('*') if p.is_file() and p.name != data.MANIFEST}
    assert set(listed) == set(files) and all(data.sha256_file(p) == listed[f] for f, p in files.items())
    blocks = lambda folder: sum(-(-p.stat().st_size // 4096) * 4096 for p in folder.rglob('*') if p.is_file())  # du's 4 KiB blocks
    assert blocks(SAMPLE) < 2 * 2**20 and blocks(SAMPLE.parent) < 15 * 2**20, (blocks(SAMPLE), blocks(SAMPLE.parent))

def test_the_default_idrid_root_is_the_subset_when_present_else_the_sample(tmp_path, monkeypatch):
    monkeypatch.setenv('DRBOOK_IDRID_MINI', str(tmp_path/'absent'))
    assert data.default_idrid_root() == SAMPLE
    (tmp_path/'idrid'/'B. Disease Grading').mkdir(parents=True)
    monkeypatch.setenv('DRBOOK_IDRID_MINI', str(tmp_path/'idrid'))
    assert data.default_idrid_root() == tmp_path/'idrid'

@pytest.mark.slow  # downscales 23 full-resolution photographs: about 30 s
def test_the_idrid_sample_is_remade_byte_for_byte_from_the_subset(idrid_root, tmp_path):
    spec = importlib.util.spec_from_file_location('make_idrid_sample', Path(__file__).resolve().parent.parent/'tools'/'make_idrid_sample.py')
    tool = importlib.util.module_from_spec(spec); spec.loader.exec_module(tool)
    out = tool.make_sample(idrid_root, tmp_path/'idrid')
    assert (out/data.MANIFEST).read_text() == (SAMPLE/data.MANIFEST).read_text()
    kept = (out/'B. Disease Grading'/'2. Groundtruths'/IDRID_TRAIN_CSV).read_bytes().splitlines(keepends=True)
    assert set(kept) <= set((idrid_root/'B. Disease Grading'/'2. Groundtruths'/IDRID_TRAIN_CSV).read_bytes().splitlines(keepends=True))
    with pytest.raises(FileExistsError, match='left alone'): tool.make_sample(idrid_root, tmp_path)  # not a sample folder
