"""drbook.gradcam: Grad-CAM equals a plain per-image GradientTape reference on flat, nested, Sequential and reloaded
models and for every task; all-zero maps stay zeros; a saturated softmax still gives a map; bad input is refused."""
import numpy as np
import pytest
import tensorflow as tf
import keras
from drbook.tasks import output_layer
from drbook.train import save_model, load_model
from drbook.gradcam import (gradcam, gradcam_plus_plus, layer_cam, score_cam, guided_backprop, guided_gradcam,
                            feature_layer, overlay)

SIZE = 24

def _convs(x):
    x = keras.layers.Rescaling(1 / 255, name='rescaling')(x)
    x = keras.layers.Conv2D(6, 3, activation='relu', name='conv1')(x)
    return keras.layers.Conv2D(8, 3, activation='relu', name='conv2')(x)

def flat_model(task='multiclass'):
    keras.utils.set_random_seed(0)
    inputs = keras.Input((SIZE, SIZE, 3), name='image')
    x = keras.layers.GlobalAveragePooling2D(name='gap')(_convs(inputs))
    return keras.Model(inputs, output_layer(x, task), name=f'flat_{task}')

def nested_model():
    "keras.io's transfer-learning style: the backbone called as one layer."
    keras.utils.set_random_seed(0)
    b_in = keras.Input((SIZE, SIZE, 3)); base = keras.Model(b_in, _convs(b_in), name='base')
    inputs = keras.Input((SIZE, SIZE, 3), name='image')
    x = keras.layers.GlobalAveragePooling2D(name='gap')(base(inputs, training=False))
    return keras.Model(inputs, output_layer(x, 'multiclass'), name='nested')

def sequential_model():
    keras.utils.set_random_seed(0)
    return keras.Sequential([keras.Input((SIZE, SIZE, 3)), keras.layers.Rescaling(1 / 255),
                             keras.layers.Conv2D(6, 3, activation='relu', name='conv1'),
                             keras.layers.Conv2D(8, 3, activation='relu', name='conv2'),
                             keras.layers.GlobalAveragePooling2D(), keras.layers.Dense(5, name='logits'),
                             keras.layers.Activation('softmax', name='predictions')], name='seq')

@pytest.fixture(scope='module')
def images(): return np.random.default_rng(0).uniform(0, 255, (6, SIZE, SIZE, 3)).astype('float32')

def reference(features_fn, images, class_index=None):
    "Grad-CAM one image at a time: `features_fn(image[None])` → (feature maps, logits) inside a GradientTape."
    out = []
    for i, im in enumerate(images):
        with tf.GradientTape() as tape:
            feats, logits = features_fn(im[None])
            logits = tf.reshape(logits, (1, -1))
            c = int(tf.argmax(logits[0])) if class_index is None else class_index[i]
            score = logits[0, c]
        w = tf.reduce_mean(tape.gradient(score, feats), axis=(1, 2))
        cam = tf.nn.relu(tf.reduce_sum(feats * w[:, None, None, :], -1))[..., None]
        cam = tf.image.resize(cam, im.shape[:2])[0, ..., 0].numpy()
        out.append(cam / cam.max() if cam.max() > 0 else cam)
    return np.stack(out)

def flat_fn(model, layer='conv2'):
    return keras.Model(model.inputs, [model.get_layer(layer).output, model.get_layer('logits').output])

def nested_fn(model):
    base = model.get_layer('base')
    def fn(x):  # the backbone's feature maps, then the head on them, by hand
        feats = base(x, training=False)
        return feats, model.get_layer('logits')(model.get_layer('gap')(feats))
    return fn

def test_flat_equals_reference(images):
    m = flat_model()
    test = gradcam(m, images)
    assert test.shape == (6, SIZE, SIZE) and test.dtype == np.float32
    np.testing.assert_allclose(test, reference(flat_fn(m), images), atol=1e-4)

def test_class_index_forms(images):
    m = flat_model(); idx = [0, 1, 2, 3, 4, 0]
    np.testing.assert_allclose(gradcam(m, images, idx), reference(flat_fn(m), images, idx), atol=1e-4)
    np.testing.assert_allclose(gradcam(m, images, 3), reference(flat_fn(m), images, [3] * 6), atol=1e-4)
    every = gradcam(m, images, 'all')
    assert every.shape == (6, 5, SIZE, SIZE)
    np.testing.assert_allclose(every[:, 2], reference(flat_fn(m), images, [2] * 6), atol=1e-4)

def test_batches_do_not_change_maps(images):
    m = flat_model()
    np.testing.assert_allclose(gradcam(m, images, batch_size=4), gradcam(m, images), atol=1e-6)

def test_nested_equals_reference(images):
    m = nested_model()
    assert feature_layer(m) == 'base/conv2'  # the address of the nested layer
    np.testing.assert_allclose(gradcam(m, images), reference(nested_fn(m), images), atol=1e-4)

def test_sequential_equals_reference(images):
    m = sequential_model()
    np.testing.assert_allclose(gradcam(m, images), reference(flat_fn(m), images), atol=1e-4)

def test_reloaded_models(images, tmp_path):
    for m in (flat_model(), nested_model()):
        back = load_model(save_model(m, tmp_path/f'{m.name}.keras'))
        np.testing.assert_allclose(gradcam(back, images), gradcam(m, images), atol=1e-5)

@pytest.mark.parametrize('task', ['multiclass', 'sigmoid', 'ordinal', 'regression', 'multilabel'])
def test_every_task(images, task):
    m = flat_model(task)
    np.testing.assert_allclose(gradcam(m, images, 0), reference(flat_fn(m), images, [0] * 6), atol=1e-4)
    for fn in (gradcam_plus_plus, layer_cam, score_cam):
        maps = fn(m, images, 0)
        assert maps.shape == (6, SIZE, SIZE) and np.isfinite(maps).all() and maps.min() >= 0 and maps.max() <= 1

@pytest.mark.parametrize('build', [flat_model, nested_model, sequential_model])
def test_every_method_on_every_kind(images, build):
    m = build(); before = [w.copy() for w in m.get_weights()]
    for fn in (gradcam_plus_plus, layer_cam, score_cam):
        maps = fn(m, images)
        assert maps.shape == (6, SIZE, SIZE) and np.isfinite(maps).all() and maps.max() <= 1
    gb, ggc = guided_backprop(m, images), guided_gradcam(m, images)
    assert gb.shape == ggc.shape == images.shape and np.isfinite(gb).all() and np.abs(gb).max() > 0
    assert all((a == b).all() for a, b in zip(before, m.get_weights()))  # the model is not changed
    conv1 = (m.get_layer('base') if m.name == 'nested' else m).get_layer('conv1')
    assert conv1.activation.__name__ == 'relu'  # not replaced by the guided one

def test_guided_backprop_gates_negative_gradients():
    "One ReLU: the guided gradient is the plain one where both the input and the incoming gradient are positive."
    inputs = keras.Input((4, 4, 1))
    x = keras.layers.Conv2D(1, 1, activation='relu', name='conv', kernel_initializer='ones', use_bias=False)(inputs)
    x = keras.layers.Flatten()(x)
    w = np.array([[1.], [-1.]] * 8, 'float32')
    m = keras.Model(inputs, output_layer(x, 'regression'))
    m.get_layer('logits').set_weights([w, np.zeros(1, 'float32')])
    img = np.linspace(-1, 1, 16, dtype='float32').reshape(1, 4, 4, 1)
    m2 = keras.Model(m.inputs, m.get_layer('logits').output)
    with tf.GradientTape() as t:
        x_ = tf.constant(img); t.watch(x_); y = m2(x_)
    plain = t.gradient(y, x_).numpy()
    want = np.where(plain > 0, plain, 0)
    np.testing.assert_allclose(guided_backprop(m, img), want, atol=1e-6)

def test_all_zero_map_stays_zero():
    m = keras.Sequential([keras.Input((8, 8, 3)), keras.layers.Conv2D(2, 3, activation='relu', name='conv', kernel_initializer='ones'),
                          keras.layers.GlobalAveragePooling2D(),
                          keras.layers.Dense(1, name='logits', kernel_initializer=keras.initializers.Constant(-1.)),
                          keras.layers.Activation('sigmoid', name='predictions')])
    x = np.full((2, 8, 8, 3), 100., 'float32')
    for fn in (gradcam, gradcam_plus_plus, layer_cam):
        maps = fn(m, x)
        assert not np.isnan(maps).any() and (maps == 0).all(), fn.__name__

def test_saturated_softmax_still_gives_a_map(images):
    m = flat_model()
    k, b = m.get_layer('logits').get_weights()
    m.get_layer('logits').set_weights([k * 1e4, b])
    assert m.predict(images, verbose=0).max(1).min() > 0.999999  # saturated
    maps = gradcam(m, images)
    assert (maps.max(axis=(1, 2)) == 1).all()

def test_bad_input(images):
    m = flat_model()
    with pytest.raises(ValueError, match="layer='nope'.*no such layer"): gradcam(m, images, layer='nope')
    with pytest.raises(ValueError, match="layer='gap' outputs rank 2, expected 4-D"): gradcam(m, images, layer='gap')
    with pytest.raises(ValueError, match=r"images must have shape \(n, 24, 24, 3\).*got \(6, 20, 20, 3\)"):
        gradcam(m, images[:, :20, :20])
    with pytest.raises(ValueError, match=r"pass images\[None\]"): gradcam(m, images[0])
    with pytest.raises(ValueError, match="images must be numbers"): gradcam(m, images.astype(str))
    with pytest.raises(ValueError, match="class_index=5 is out of range: the model has 5"): gradcam(m, images, 5)
    with pytest.raises(ValueError, match=r"class_index=-2 is out of range"): gradcam(m, images, -2)
    with pytest.raises(ValueError, match=r"one index per image \(6\)"): gradcam(m, images, [0, 1])
    dense = keras.Sequential([keras.Input((SIZE, SIZE, 3)), keras.layers.Flatten(), keras.layers.Dense(5, name='logits'),
                              keras.layers.Activation('softmax', name='predictions')])
    with pytest.raises(ValueError, match="has no convolution"): gradcam(dense, images)
    soft = keras.Sequential([keras.Input((SIZE, SIZE, 3)), keras.layers.Conv2D(4, 3), keras.layers.GlobalAveragePooling2D(),
                             keras.layers.Dense(5, activation='softmax')])
    with pytest.raises(ValueError, match="before softmax/sigmoid"): gradcam(soft, images)
    with pytest.raises(ValueError, match=r"image must have shape \(H, W, 3\)"): overlay(images[0, ..., 0], np.zeros((4, 4)))

def test_overlay():
    img = np.full((16, 16, 3), 255., 'float32')
    out = overlay(img, np.zeros((4, 4)), alpha=0.5)
    assert out.shape == (16, 16, 3) and out.dtype == np.float32 and 0 <= out.min() and out.max() <= 1
