"""drbook.gradcam: Grad-CAM equals a plain per-image GradientTape reference on flat, nested, Sequential and reloaded
models and for every task; all-zero maps stay zeros; a saturated softmax still gives a map; bad input is refused."""
import numpy as np
import pytest
import tensorflow as tf
import keras
from drbook.tasks import output_layer
from drbook.train import save_model, load_model
from drbook.gradcam import (gradcam, gradcam_plus_plus, layer_cam, score_cam, guided_backprop, guided_gradcam,
                            feature_layer, overlay, keras_io_gradcam, cam_model, normalise_maps, METHODS, cam_method)

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

def reference(grad_model, images, class_index=None):
    "drbook's one reference: keras.io's Grad-CAM, one image and one GradientTape at a time, upsampled to the images."
    return keras_io_gradcam(grad_model, images, class_index, size=images.shape[1:3])

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
    inp = keras.Input((SIZE, SIZE, 3))
    op = keras.Model(inp, keras.ops.softmax(keras.layers.Dense(5)(keras.layers.GlobalAveragePooling2D()(keras.layers.Conv2D(4, 3)(inp)))))
    with pytest.raises(ValueError, match="operation such as keras.ops.softmax follows it"): gradcam(op, images)
    conv_soft = keras.Sequential([keras.Input((SIZE, SIZE, 3)), keras.layers.Conv2D(4, 3), keras.layers.Conv2D(5, 3, activation='softmax')])
    with pytest.raises(ValueError, match=r"ends in .*\(Conv2D, activation 'softmax'\), whose scores before the activation cannot be read"):
        gradcam(conv_soft, images, layer=conv_soft.layers[0].name)
    with pytest.raises(ValueError, match=r"image must have shape \(H, W, 3\)"): overlay(images[0, ..., 0], np.zeros((4, 4)))

def test_overlay():
    img = np.full((16, 16, 3), 255., 'float32')
    out = overlay(img, np.zeros((4, 4)), alpha=0.5)
    assert out.shape == (16, 16, 3) and out.dtype == np.float32 and 0 <= out.min() and out.max() <= 1

# keras.io-style classifiers: the last layer is Dense(5, activation='softmax'), no logits tensor in the model

def keras_io_mobilenet():
    "keras.io's transfer-learning style: a MobileNetV2 backbone called as one layer, pooling, Dense(5, softmax)."
    keras.utils.set_random_seed(1)
    base = keras.applications.MobileNetV2(input_shape=(96, 96, 3), alpha=0.35, weights=None, include_top=False)
    inputs = keras.Input((96, 96, 3))
    x = keras.layers.Rescaling(1 / 127.5, offset=-1)(inputs)
    x = keras.layers.GlobalAveragePooling2D()(base(x, training=False))
    return keras.Model(inputs, keras.layers.Dense(5, activation='softmax')(x), name='keras_io_mobilenet'), base

def keras_io_sequential():
    keras.utils.set_random_seed(2)
    return keras.Sequential([keras.Input((SIZE, SIZE, 3)), keras.layers.Rescaling(1 / 255),
                             keras.layers.Conv2D(6, 3, activation='relu'), keras.layers.Conv2D(8, 3, activation='relu', name='last_conv'),
                             keras.layers.GlobalAveragePooling2D(), keras.layers.Dense(5, activation='softmax')], name='seq_softmax')

def pre_softmax(dense, x):
    "The Dense layer's score before its softmax, written out: x @ kernel + bias."
    return tf.matmul(x, dense.kernel) + dense.bias

def assert_unchanged(model, weights, preds, x):
    assert all((a == b).all() for a, b in zip(weights, model.get_weights()))
    assert model.layers[-1].activation.__name__ == 'softmax' and len(model.outputs) == 1
    np.testing.assert_array_equal(model.predict(x, verbose=0), preds)

def test_keras_io_nested_mobilenet_softmax_equals_gradient_tape():
    m, base = keras_io_mobilenet()
    x = np.random.default_rng(3).uniform(0, 255, (4, 96, 96, 3)).astype('float32')
    from drbook.transfer import calibrate_batchnorm
    calibrate_batchnorm(base, x / 127.5 - 1)  # random BatchNorm statistics would leave the features flat
    weights, preds = [w.copy() for w in m.get_weights()], m.predict(x, verbose=0)
    rescale, gap, dense = m.layers[1], m.layers[3], m.layers[-1]
    def grad_model(im):  # by hand: the backbone's output, and the head's score before the softmax
        feats = base(rescale(im), training=False)
        return feats, pre_softmax(dense, gap(feats))
    assert feature_layer(m) == f'{base.name}/out_relu'
    for idx in (None, [0, 1, 2, 3]):
        np.testing.assert_allclose(gradcam(m, x, idx), reference(grad_model, x, idx), atol=1e-4)
    assert_unchanged(m, weights, preds, x)

def test_keras_io_sequential_softmax_equals_gradient_tape(images):
    m = keras_io_sequential()
    weights, preds = [w.copy() for w in m.get_weights()], m.predict(images, verbose=0)
    k = [l.name for l in m.layers].index('last_conv')
    def grad_model(im):
        h = im
        for l in m.layers[:k + 1]: h = l(h)
        return h, pre_softmax(m.layers[-1], m.layers[-2](h))
    for idx in (None, 4):
        np.testing.assert_allclose(gradcam(m, images, idx), reference(grad_model, images, idx), atol=1e-4)
    feats, scores = cam_model(m)(images)
    np.testing.assert_allclose(tf.nn.softmax(scores).numpy(), preds, atol=1e-6)  # the scores are the softmax's logits
    for name, fn in METHODS.items():  # every method explains it, and leaves it alone
        out = fn(m, images)
        assert np.isfinite(out).all() and out.shape[:3] == images.shape[:3], name
    assert_unchanged(m, weights, preds, images)

def test_one_normalisation_and_one_vocabulary():
    maps = np.stack([np.zeros((3, 3)), np.arange(9.).reshape(3, 3)])
    out = normalise_maps(maps)
    assert (out[0] == 0).all() and out[1].max() == 1 and not np.isnan(out).any()
    assert normalise_maps(maps, size=(6, 6)).shape == (2, 6, 6)
    assert cam_method('gradcam') is gradcam
    with pytest.raises(ValueError, match=r"cam='gradcam\+\+\+': expected one of \['gradcam', 'gradcam\+\+'"): cam_method('gradcam+++', 'cam')
