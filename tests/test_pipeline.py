"""Tests of drbook.pipeline: the tf.data dataset (shapes, values, alignment, caching, augmentation
on training data only), clear errors on bad tables, and training a model from it."""
import os, subprocess, sys, textwrap
os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')
from pathlib import Path
import cv2
import numpy as np
import pandas as pd
import pytest
import keras
import tensorflow as tf
from drbook.core import MULTILABEL
from drbook.tasks import targets
from drbook.pipeline import augmentation, image_paths, load_image, make_dataset

SIZE = 32  # side of the generated images (and of the dataset, so resizing is the identity)

def red(grade): return 40 * grade + 20  # the grade is written into the red level of each image

def write_images(folder, grades, size=SIZE, suffix='.png'):
    "One image per grade: red encodes the grade, green the row number, and a white block marks the top-left corner."
    paths = []
    for i, g in enumerate(grades):
        rgb = np.zeros((size, size, 3), np.uint8)
        rgb[..., 0], rgb[..., 1], rgb[..., 2] = red(g), 5 * i, 100
        rgb[:size // 4, :size // 2] = 255  # asymmetric, so flips and rotations are visible
        path = Path(folder)/f'row{i:03d}{suffix}'
        cv2.imwrite(str(path), rgb[..., ::-1])  # OpenCV writes BGR
        paths.append(str(path))
    return paths

@pytest.fixture
def table(tmp_path):
    "A canonical-looking table of 20 PNGs, grades 0–4 four times, with known lesion labels."
    grades = [i % 5 for i in range(20)]
    rng = np.random.default_rng(0)
    lesions = rng.random((20, 4)) < 0.4
    df = pd.DataFrame({'image_path': write_images(tmp_path, grades), 'image_id': [f'row{i:03d}' for i in range(20)],
                       'grade': pd.array(grades, dtype='Int64')})
    for j, k in enumerate(MULTILABEL[:4]): df[f'has_{k}'] = pd.array(lesions[:, j], dtype='boolean')
    return df

def batches(ds):
    "All images and targets of a dataset, concatenated."
    xs, ys = zip(*[(x.numpy(), y.numpy()) for x, y in ds])
    return np.concatenate(xs), np.concatenate(ys)

# --- the dataset -----------------------------------------------------------------------------------------------

@pytest.mark.parametrize('task,shape,dtype', [('multiclass', (), tf.int32), ('sigmoid', (5,), tf.float32),
                                              ('ordinal', (4,), tf.float32), ('regression', (), tf.float32),
                                              ('multilabel', (5,), tf.float32)])
def test_shapes_dtypes_and_range(table, task, shape, dtype):
    ds = make_dataset(table, task, image_size=24, batch_size=8)
    (x, y), n = next(iter(ds)), 0
    assert x.shape == (8, 24, 24, 3) and x.dtype == tf.float32
    assert y.shape == (8, *shape) and y.dtype == dtype
    xs, ys = batches(ds)
    assert len(xs) == len(table) and xs.min() >= 0 and xs.max() == 255  # [0, 255], not rescaled
    np.testing.assert_array_equal(ys, targets(table, task))  # every row once, in table order

def test_images_are_the_files_unchanged_without_augmentation(table):
    xs, _ = batches(make_dataset(table, 'multiclass', SIZE, batch_size=6))
    for x, path in zip(xs, table['image_path']):
        np.testing.assert_array_equal(x, cv2.imread(path)[..., ::-1].astype(np.float32))

def test_targets_stay_with_their_images_when_shuffled(table):
    ds = make_dataset(table, 'multiclass', SIZE, batch_size=7, shuffle=True, augment='flips', seed=3)
    for epoch in range(2):
        xs, ys = batches(ds)
        assert sorted(ys) == sorted(targets(table, 'multiclass'))
        assert list(ys) != list(targets(table, 'multiclass'))  # actually shuffled
        centre = xs[:, SIZE // 2, SIZE // 2]  # away from the white block, whatever the flip
        np.testing.assert_array_equal(centre[:, 0], [red(g) for g in ys])  # red encodes the target's grade
        rows = (centre[:, 1] / 5).astype(int)
        np.testing.assert_array_equal(ys, table['grade'].to_numpy()[rows])

def test_augmentation_only_when_asked(table):
    plain, _ = batches(make_dataset(table, 'multiclass', SIZE, batch_size=10))
    flipped, _ = batches(make_dataset(table, 'multiclass', SIZE, batch_size=10, augment='flips', seed=1))
    s3, _ = batches(make_dataset(table, 'multiclass', SIZE, batch_size=10, augment='s3', seed=1))
    assert (np.abs(flipped - plain).reshape(len(plain), -1).max(axis=1) > 0).sum() >= 5  # most images flipped
    # a flip only moves pixels: each image keeps its multiset of values
    np.testing.assert_array_equal(np.sort(flipped.reshape(len(plain), -1), axis=1), np.sort(plain.reshape(len(plain), -1), axis=1))
    assert np.abs(s3 - plain).max() > 0 and s3.min() >= 0 and s3.max() <= 255
    jitter = augmentation('s4', brightness=0.3, contrast=0.3, seed=2)
    j, _ = batches(make_dataset(table, 'multiclass', SIZE, batch_size=10, augment=jitter))
    assert np.abs(j - plain).max() > 0 and j.min() >= 0 and j.max() <= 255

def test_augmentation_presets():
    names = lambda preset: [l.__class__.__name__ for l in augmentation(preset).layers]
    assert names('s3') == ['RandomFlip', 'RandomZoom', 'RandomRotation']
    assert names('s4') == ['RandomTranslation', 'RandomRotation', 'RandomFlip']
    assert names('flips') == ['RandomFlip']
    assert names('flips')[-1] == 'RandomFlip' and augmentation('flips', 0.1, 0.1).layers[-1].__class__.__name__ == 'RandomContrast'
    zoom = augmentation('s3').layers[1]
    assert zoom.fill_mode == 'constant' and zoom.fill_value == 0
    with pytest.raises(ValueError, match='unknown augmentation preset'): augmentation('cutmix')

def test_preprocessed_path_is_preferred(table, tmp_path):
    folder = tmp_path/'prep'; folder.mkdir()
    prep = write_images(folder, [4] * len(table))  # every "preprocessed" image says grade 4
    t2 = table.assign(preprocessed_path=prep)
    assert image_paths(t2) == prep
    xs, _ = batches(make_dataset(t2, 'multiclass', SIZE, batch_size=20))
    assert (xs[:, SIZE // 2, SIZE // 2, 0] == red(4)).all()
    xs, _ = batches(make_dataset(t2, 'multiclass', SIZE, batch_size=20, path_column='image_path'))
    np.testing.assert_array_equal(xs[:, SIZE // 2, SIZE // 2, 0], [red(g) for g in table['grade']])

def test_fits_any_image_in_a_square_without_stretching(tmp_path):
    cv2.imwrite(str(tmp_path/'wide.png'), np.dstack([np.full((40, 80, 3), 90, np.uint8), np.full((40, 80), 255, np.uint8)]))  # 2:1, opaque alpha
    cv2.imwrite(str(tmp_path/'tall.jpg'), np.full((64, 32), 90, np.uint8))  # 1:2 grayscale JPEG
    img = load_image(str(tmp_path/'wide.png'), 16).numpy()
    assert img.shape == (16, 16, 3) and img.dtype == np.uint8
    assert img[:3].max() == 0 and img[-3:].max() == 0 and img[5:11].min() == 90  # black bands above and below
    df = pd.DataFrame({'image_path': [str(tmp_path/'wide.png'), str(tmp_path/'tall.jpg')], 'grade': [1, 2]})
    xs, _ = batches(make_dataset(df, 'regression', 16, batch_size=2))
    assert xs.shape == (2, 16, 16, 3)
    tall = xs[1]
    assert tall[:, :3].max() == 0 and tall[:, -3:].max() == 0 and np.abs(tall[:, 5:11] - 90).max() <= 2  # bands left and right

def test_file_cache(table, tmp_path):
    prefix = tmp_path/'cache'/'train'
    first, _ = batches(make_dataset(table, 'multiclass', SIZE, batch_size=8, cache=str(prefix)))
    written = sorted(p.name for p in prefix.parent.iterdir())
    assert written and all(name.startswith(f'train-{SIZE}px-') for name in written)
    again, _ = batches(make_dataset(table, 'multiclass', SIZE, batch_size=8, cache=str(prefix)))
    np.testing.assert_array_equal(first, again)
    assert sorted(p.name for p in prefix.parent.iterdir()) == written  # served from the same cache files
    # a different image size (or different files) gets its own cache, never a stale one
    small, _ = batches(make_dataset(table, 'multiclass', 16, batch_size=8, cache=str(prefix)))
    assert small.shape[1:] == (16, 16, 3)

# --- bad input -------------------------------------------------------------------------------------------------

def test_missing_file_is_named(table):
    bad = table.copy()
    bad.loc[3, 'image_path'] = '/no/such/folder/lost_eye.png'
    with pytest.raises(FileNotFoundError, match='lost_eye.png'): make_dataset(bad, 'multiclass', SIZE)

def test_missing_column_is_named(table):
    with pytest.raises(ValueError, match="'image_path'"): make_dataset(table.drop(columns='image_path'), 'multiclass', SIZE)
    with pytest.raises(ValueError, match="'grade'"): make_dataset(table.drop(columns='grade'), 'ordinal', SIZE)
    with pytest.raises(ValueError, match="'mask_MA'"): make_dataset(table, 'multiclass', SIZE, path_column='mask_MA')
    with pytest.raises(ValueError, match='empty'): make_dataset(table.iloc[:0], 'multiclass', SIZE)

def test_every_reader_format_decodes(tmp_path):
    "A TIFF (IDRiD's masks, Messidor's photographs) goes through the pipeline like a JPEG: one decoder, read_fundus."
    cv2.imwrite(str(tmp_path/'eye.tif'), np.full((8, 8, 3), 90, np.uint8))
    df = pd.DataFrame({'image_path': [str(tmp_path/'eye.tif')], 'grade': [0]})
    x, _ = next(iter(make_dataset(df, 'multiclass', 8, batch_size=1, cache=False)))
    assert x.shape == (1, 8, 8, 3) and np.allclose(x.numpy(), 90)

def test_missing_path_value_names_row(table):
    bad = table.astype({'image_path': object})
    bad.loc[5, 'image_path'] = None
    with pytest.raises(ValueError, match=r'5 \(row005\)'): make_dataset(bad, 'multiclass', SIZE)

# --- training --------------------------------------------------------------------------------------------------

def test_trains_a_model_one_step(table):
    keras.utils.set_random_seed(0)
    inputs = keras.Input((SIZE, SIZE, 3))
    x = keras.layers.Rescaling(1 / 255)(inputs)
    x = keras.layers.GlobalAveragePooling2D()(keras.layers.Conv2D(4, 3)(x))
    model = keras.Model(inputs, keras.layers.Dense(4, activation='sigmoid')(x))
    model.compile(optimizer='adam', loss='binary_crossentropy')
    before = [w.copy() for w in model.get_weights()]
    ds = make_dataset(table, 'ordinal', SIZE, batch_size=8, augment='s3', shuffle=True)
    history = model.fit(ds, epochs=1, steps_per_epoch=1, verbose=0)
    assert np.isfinite(history.history['loss'][0])
    assert any(np.abs(a - b).max() > 0 for a, b in zip(before, model.get_weights()))

@pytest.mark.slow
def test_trains_under_a_mirrored_strategy(table, tmp_path):
    "Two virtual CPUs stand in for two GPUs: the dataset and its augmentation work under MirroredStrategy."
    table.to_pickle(tmp_path/'table.pkl')
    script = textwrap.dedent(f"""
        import os; os.environ['TF_CPP_MIN_LOG_LEVEL'] = '2'
        import tensorflow as tf, keras, pandas as pd, numpy as np
        cpu = tf.config.list_physical_devices('CPU')[0]
        tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
        from drbook.pipeline import make_dataset
        strategy = tf.distribute.MirroredStrategy(['/cpu:0', '/cpu:1'])
        ds = make_dataset(pd.read_pickle({str(tmp_path/'table.pkl')!r}), 'multilabel', {SIZE}, batch_size=8, augment='s4', shuffle=True)
        with strategy.scope():
            inputs = keras.Input(({SIZE}, {SIZE}, 3))
            x = keras.layers.GlobalAveragePooling2D()(keras.layers.Rescaling(1 / 255)(inputs))
            model = keras.Model(inputs, keras.layers.Dense(5, activation='sigmoid')(x))
            model.compile(optimizer='adam', loss='binary_crossentropy')
        h = model.fit(ds, epochs=1, verbose=0)
        assert strategy.num_replicas_in_sync == 2 and np.isfinite(h.history['loss'][0])
        print('ok')
        """)
    done = subprocess.run([sys.executable, '-c', script], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0 and 'ok' in done.stdout, done.stderr[-3000:]

# --- real photographs ------------------------------------------------------------------------------------------

def test_real_idrid_photographs(idrid_root):
    grading = idrid_root/'B. Disease Grading'
    labels = pd.read_csv(next((grading/'2. Groundtruths').glob('b.*.csv')))
    folder = grading/'1. Original Images'/'b. Testing Set'
    df = pd.DataFrame({'image_path': [str(folder/f'{i}.jpg') for i in labels['Image name']],
                       'image_id': labels['Image name'], 'grade': labels['Retinopathy grade'].astype('Int64')})
    xs, ys = batches(make_dataset(df, 'multiclass', 64, batch_size=4))
    assert xs.shape == (len(df), 64, 64, 3) and xs.dtype == np.float32
    np.testing.assert_array_equal(ys, df['grade'].to_numpy(int))
    centre, corner = xs[:, 24:40, 24:40].mean(axis=(1, 2, 3)), xs[:, :4, :4].mean(axis=(1, 2, 3))
    assert (centre > corner + 20).all()  # the bright field of view in the middle, the black frame at the corners
