"""drbook.scratch: S3's from-scratch networks rebuilt layer by layer, checked against S3's model summaries (§4)."""
import os
os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')
import numpy as np
import pytest
import keras
from drbook import train
from drbook.tasks import TASKS
from drbook.scratch import EXPERIMENTS, ScratchConfig, build_scratch_cnn, feature_map_sizes, min_image_size

# Read off S3's model summaries (Figures 4.1, 4.3, 4.5, 4.7, 4.9): total parameters at 224 × 224, the side of the
# feature maps after each Conv2D and MaxPooling2D, the Flatten width, and the parameters of every layer that has any.
S3 = {
    'exp1': (1_355_621, [223, 111, 110, 55, 54, 18, 17, 3], 2304, [416, 8256, 32896, 131328, 1180160, 2565]),
    'exp2': (1_355_621, [223, 111, 110, 55, 54, 18, 17, 3], 2304, [416, 8256, 32896, 131328, 1180160, 2565]),
    'exp3': (6_948_165, [222, 111, 109, 54, 52, 17, 15, 5], 6400, [896, 18496, 73856, 295168, 6554624, 5125]),
    'exp4': (6_673_125, [223, 111, 110, 55, 54, 18, 17, 5], 3200, [416, 8256, 32896, 65664, 6555648, 10245]),
    'exp5': (3_452_773, [223, 111, 110, 55, 54, 18, 17, 5], 6400, [416, 8256, 32896, 131328, 3277312, 2565]),
}
S3_DROPOUT = {'exp1': 0, 'exp2': 2, 'exp3': 2, 'exp4': 2, 'exp5': 0}  # Dropout layers in each summary


@pytest.fixture(autouse=True)
def _float32():
    keras.mixed_precision.set_global_policy('float32')
    yield
    keras.mixed_precision.set_global_policy('float32')


@pytest.mark.parametrize('name', list(S3))
def test_experiment_matches_s3_summary(name):
    total, sides, flat, layer_params = S3[name]
    m = build_scratch_cnn(name, 224)
    assert m.count_params() == total == EXPERIMENTS[name].params_224
    assert [l.output.shape[1] for l in m.layers if isinstance(l, (keras.layers.Conv2D, keras.layers.MaxPooling2D))] == sides
    assert feature_map_sizes(name, 224) == sides
    assert m.get_layer('flatten').output.shape[-1] == flat
    assert [l.count_params() for l in m.layers if l.count_params()] == layer_params
    assert sum(isinstance(l, keras.layers.Dropout) for l in m.layers) == S3_DROPOUT[name]
    assert all(l.rate == 0.5 for l in m.layers if isinstance(l, keras.layers.Dropout))
    assert m.output.shape[-1] == 5 and m.get_layer('predictions').get_config()['activation'] == 'softmax'


def test_experiments_use_s3_training_settings():
    for name in S3:
        c = EXPERIMENTS[name]
        assert (c.optimizer, c.learning_rate) == ('adam', 1e-4)
        assert c.balanced == (name != 'exp5')  # experiment 5 used the full imbalanced training split


def test_input_is_rescaled_first():
    m = build_scratch_cnn('exp1', 224)
    assert isinstance(m.layers[1], keras.layers.Rescaling) and m.layers[1].scale == pytest.approx(1 / 255)
    assert m.input.shape[1:] == (224, 224, 3) and m.layers[2].name == 'conv1'


def test_min_image_size_is_the_boundary():
    for name in EXPERIMENTS:
        s = min_image_size(name)
        build_scratch_cnn(name, s)
        with pytest.raises(ValueError, match=f'at least {s} px'): build_scratch_cnn(name, s - 1)


def test_unknown_configuration():
    with pytest.raises(ValueError, match="unknown configuration 'exp6'"): build_scratch_cnn('exp6')


@pytest.mark.parametrize('task', list(TASKS))
def test_every_task_head(task):
    m = build_scratch_cnn('sample', 64, task=task)
    assert m.get_layer('predictions').output.shape[-1] == {'multiclass': 5, 'sigmoid': 5, 'ordinal': 4, 'regression': 1,
                                                           'multilabel': 5}[task]


def test_augmentation_block_adds_no_parameters():
    aug = keras.Sequential([keras.layers.RandomFlip('horizontal_and_vertical')], name='sequential')
    m = build_scratch_cnn('exp1', 224, augmentation=aug)
    assert m.layers[1].name == 'sequential' and m.count_params() == 1_355_621


def test_custom_configuration():
    c = ScratchConfig('mine', kernel_size=3, pool_sizes=(2, 2, 2, 2), filters=(8, 8, 8, 8), dense=16, dropout=0.25)
    m = build_scratch_cnn(c, 48)
    sides = feature_map_sizes(c, 48)
    assert m.get_layer('flatten').output.shape[-1] == sides[-1] ** 2 * 8
    assert m.name == 'mine' and m.get_layer('dropout1').rate == 0.25


def test_mixed_precision_keeps_float32_outputs():
    train.use_mixed_precision(True)
    m = build_scratch_cnn('sample', 64)
    assert m.get_layer('conv1').compute_dtype == 'float16' and m.output.dtype == 'float32'


def test_sample_trains_saves_and_reloads(tmp_path):
    rng = np.random.default_rng(0)
    x, y = rng.uniform(0, 255, (8, 64, 64, 3)).astype('float32'), rng.integers(0, 5, 8)
    m = train.compile_for(build_scratch_cnn('sample', 64), 'multiclass', learning_rate=1e-3)
    before = m.get_layer('conv1').get_weights()[0].copy()
    m.fit(x, y, epochs=1, batch_size=4, verbose=0)
    assert not np.allclose(before, m.get_layer('conv1').get_weights()[0])
    reloaded = train.load_model(train.save_model(m, tmp_path/'sample.keras'))
    np.testing.assert_allclose(reloaded.predict(x, verbose=0), m.predict(x, verbose=0), atol=1e-5)
