"""drbook.activations: the rebuilt call graph computes what the model computes (flat, nested, Sequential, reloaded,
drbook's own models), shares the model's weights, keeps inference mode, reaches layers inside nested models with a
gradient; the last conv layer is found everywhere; bad names, shared layers and conv-less models get clear errors."""
import os
os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')
import numpy as np
import pytest
import keras
import tensorflow as tf

from drbook.activations import (activation_model, activation_stats, activations, conv_and_pool_layers, find_layer, graph_model,
                                last_conv_layer, layer_addresses, plot_activations)
from drbook.scratch import build_scratch_cnn
from drbook.train import load_model, save_model
from drbook.transfer import build_model

SIZE = 32

def _images(n=2, size=SIZE, seed=0):
    return np.random.default_rng(seed).uniform(0, 255, (n, size, size, 3)).astype('float32')

def _np(t): return keras.ops.convert_to_numpy(t)

def nested_mobilenet(size=SIZE, name='nested'):
    "The keras.io transfer-learning model: a MobileNetV2 called as one layer with training=False."
    keras.utils.set_random_seed(0)
    base = keras.applications.MobileNetV2(include_top=False, weights=None, input_shape=(size, size, 3))
    inputs = keras.Input((size, size, 3), name='image')
    x = keras.layers.Rescaling(1 / 127.5, offset=-1, name='rescaling')(inputs)
    x = base(x, training=False)
    x = keras.layers.GlobalAveragePooling2D(name='gap')(x)
    x = keras.layers.Dropout(0.5, name='dropout')(x)
    return keras.Model(inputs, keras.layers.Dense(5, name='logits')(x), name=name)

def small_sequential(name='seq'):
    keras.utils.set_random_seed(1)
    return keras.Sequential([keras.Input((SIZE, SIZE, 3)), keras.layers.Rescaling(1 / 255),
                             keras.layers.Conv2D(8, 3, activation='relu', name='c1'), keras.layers.BatchNormalization(name='bn'),
                             keras.layers.MaxPooling2D(name='p1'), keras.layers.Conv2D(8, 3, activation='relu', name='c2'),
                             keras.layers.GlobalAveragePooling2D(), keras.layers.Dropout(0.5), keras.layers.Dense(3, name='out')],
                            name=name)

def sequential_inside_functional():
    "A functional model calling a Sequential feature extractor as one layer, then a head."
    features = keras.Sequential([keras.Input((SIZE, SIZE, 3)), keras.layers.Conv2D(4, 3, name='inner_conv'),
                                 keras.layers.BatchNormalization(name='inner_bn'), keras.layers.ReLU(name='inner_relu')],
                                name='features')
    inputs = keras.Input((SIZE, SIZE, 3))
    x = features(inputs, training=False)
    x = keras.layers.GlobalAveragePooling2D()(x)
    return keras.Model(inputs, keras.layers.Dense(2, name='head')(x), name='seq_in_fn')

def functional_inside_sequential():
    "A Sequential whose first layer is a functional model (a nested MobileNetV2)."
    keras.utils.set_random_seed(2)
    base = keras.applications.MobileNetV2(include_top=False, weights=None, input_shape=(SIZE, SIZE, 3))
    return keras.Sequential([keras.Input((SIZE, SIZE, 3)), base, keras.layers.GlobalAveragePooling2D(),
                             keras.layers.Dense(3, name='out')], name='fn_in_seq')

def _randomise_bn(model):
    "Give every BatchNormalization non-trivial moving statistics, so that training vs inference mode would show."
    rng = np.random.default_rng(3)
    for layer in layer_addresses(model).values():
        if isinstance(layer, keras.layers.BatchNormalization):
            layer.moving_mean.assign(rng.normal(0, 0.5, layer.moving_mean.shape).astype('float32'))
            layer.moving_variance.assign(rng.uniform(0.5, 2, layer.moving_variance.shape).astype('float32'))
    return model

MODELS = {
    'scratch': lambda: build_scratch_cnn('sample', 64),
    'transfer_mobilenet': lambda: build_model('MobileNetV2', image_size=SIZE, weights=None),
    'transfer_vgg16': lambda: build_model('VGG16', image_size=SIZE, weights=None, head='s3_flatten256'),
    'nested': nested_mobilenet,
    'sequential': small_sequential,
    'sequential_inside_functional': sequential_inside_functional,
    'functional_inside_sequential': functional_inside_sequential,
}
LAST_CONV = {'scratch': 'pool4', 'transfer_mobilenet': 'out_relu', 'transfer_vgg16': 'block5_pool',
             'nested': 'mobilenetv2_1.00_32/out_relu', 'sequential': 'c2',
             'sequential_inside_functional': 'features/inner_relu',
             'functional_inside_sequential': 'mobilenetv2_1.00_32/out_relu'}

def _size(model): return model.inputs[0].shape[1]

@pytest.mark.parametrize('kind', list(MODELS))
def test_last_output_equals_model(kind):
    model = _randomise_bn(MODELS[kind]())
    x = _images(2, _size(model))
    last = last_conv_layer(model)
    assert last == LAST_CONV[kind]
    rebuilt = graph_model(model, [last])
    feats, out = [_np(t) for t in rebuilt(x)]
    np.testing.assert_allclose(out, _np(model(x)), atol=1e-5)
    assert feats.ndim == 4 and feats.shape[0] == 2
    assert len(rebuilt.weights) == len(model.weights)
    assert all(any(w is v for v in model.weights) for w in rebuilt.weights)  # the model's own variables, no copies

@pytest.mark.parametrize('kind', ['nested', 'scratch', 'sequential', 'functional_inside_sequential'])
def test_reloaded_from_keras_file(kind, tmp_path):
    model = _randomise_bn(MODELS[kind]())
    graph_model(model, [last_conv_layer(model)])  # rebuilding must leave the model saveable as it was
    reloaded = load_model(save_model(model, tmp_path/f'{kind}.keras'), compile=False)
    x = _images(2, _size(model))
    np.testing.assert_allclose(_np(reloaded(x)), _np(model(x)), atol=1e-5)
    last = last_conv_layer(reloaded)
    assert last == LAST_CONV[kind]
    feats, out = [_np(t) for t in graph_model(reloaded, [last])(x)]
    np.testing.assert_allclose(out, _np(model(x)), atol=1e-5)
    feats_orig = _np(graph_model(model, [last])(x)[0])
    np.testing.assert_allclose(feats, feats_orig, atol=1e-5)

def test_inner_layer_equals_backbone_alone():
    "The output of a layer inside the nested backbone is what the backbone computes on the scaled image."
    model = _randomise_bn(nested_mobilenet())
    base = model.get_layer('mobilenetv2_1.00_32')
    x = _images()
    conv1, block, out = graph_model(model, ['Conv1', 'mobilenetv2_1.00_32/block_3_expand_relu'])(x)
    direct = keras.Model(base.inputs, [base.get_layer('Conv1').output, base.get_layer('block_3_expand_relu').output])
    d1, d2 = direct(x / 127.5 - 1, training=False)
    np.testing.assert_allclose(_np(conv1), _np(d1), atol=1e-4)
    np.testing.assert_allclose(_np(block), _np(d2), atol=1e-4)

def test_weights_are_shared_not_copied():
    model = small_sequential()
    rebuilt = graph_model(model, ['c1'])
    x = _images()
    kernel = model.get_layer('c1').kernel
    kernel.assign(kernel * 2.0)  # change the model: the rebuilt one changes with it
    np.testing.assert_allclose(_np(rebuilt(x)[-1]), _np(model(x)), atol=1e-5)

def test_inference_mode_kept():
    "Dropout off and BatchNormalization on its moving statistics: repeated calls agree with each other and the model."
    model = _randomise_bn(nested_mobilenet())
    rebuilt = graph_model(model, ['out_relu'])
    x = _images(4)
    a, b = _np(rebuilt(x)[-1]), _np(rebuilt(x)[-1])
    np.testing.assert_array_equal(a, b)
    np.testing.assert_allclose(a, _np(model(x, training=False)), atol=1e-5)
    one = _np(rebuilt(x[:1])[-1])  # inference: an image's output does not depend on the rest of the batch
    np.testing.assert_allclose(one, a[:1], atol=1e-5)

def test_gradient_reaches_inner_layer():
    "Grad-CAM's need: the logits differentiate with respect to a feature map inside the nested backbone."
    model = nested_mobilenet()
    rebuilt = graph_model(model, ['out_relu', 'logits'])
    x = tf.constant(_images())
    with tf.GradientTape() as tape:
        feats, logits, _ = rebuilt(x)
        tape.watch(feats)
        score = tf.reduce_sum(logits[:, 0])
    grads = tape.gradient(score, feats)
    assert grads is not None and grads.shape == feats.shape and float(tf.reduce_max(tf.abs(grads))) > 0

def test_several_outputs_and_the_nested_model_itself():
    model = nested_mobilenet()
    rebuilt = graph_model(model, ['mobilenetv2_1.00_32', 'gap', model.get_layer('logits')])
    assert [tuple(t.shape) for t in rebuilt.outputs] == [(None, 1, 1, 1280), (None, 1280), (None, 5), (None, 5)]
    base_out, _, logits, out = [_np(t) for t in rebuilt(_images())]
    np.testing.assert_allclose(logits, out, atol=1e-6)  # no activation after 'logits' here
    assert graph_model(model).outputs[0].shape == (None, 5)  # no layer asked: the model's output alone

def test_multi_input_model():
    a, b = keras.Input((SIZE, SIZE, 3), name='a'), keras.Input((SIZE, SIZE, 3), name='b')
    x = keras.layers.Concatenate(name='cat')([keras.layers.Conv2D(2, 3, name='ca')(a), keras.layers.Conv2D(2, 3, name='cb')(b)])
    model = keras.Model([a, b], keras.layers.Dense(1, name='out')(keras.layers.Flatten()(x)), name='two_inputs')
    xa, xb = _images(seed=1), _images(seed=2)
    cat, out = graph_model(model, ['cat'])([xa, xb])
    np.testing.assert_allclose(_np(out), _np(model([xa, xb])), atol=1e-5)
    assert cat.shape == (2, SIZE - 2, SIZE - 2, 4)

def test_addresses_and_find_layer():
    model = nested_mobilenet()
    addresses = list(layer_addresses(model))
    assert addresses[0] == 'rescaling' and addresses[-1] == 'logits'
    assert addresses.index('mobilenetv2_1.00_32/out_relu') < addresses.index('mobilenetv2_1.00_32') < addresses.index('gap')
    assert find_layer(model, 'block_16_project') == 'mobilenetv2_1.00_32/block_16_project'
    assert find_layer(model, model.get_layer('gap')) == 'gap'

def test_unknown_layer_names_the_argument():
    model = nested_mobilenet()
    with pytest.raises(ValueError, match=r"outputs\[1\]='out_reluu'.*no such layer.*mobilenetv2_1.00_32/out_relu"):
        graph_model(model, ['gap', 'out_reluu'])
    with pytest.raises(ValueError, match="no such layer"):
        graph_model(model, [keras.layers.Dense(3, name='elsewhere')])

def test_ambiguous_name_asks_for_an_address():
    inputs = keras.Input((SIZE, SIZE, 3))
    one = keras.Sequential([keras.Input((SIZE, SIZE, 3)), keras.layers.Conv2D(2, 3, padding='same', name='conv')], name='one')
    two = keras.Sequential([keras.Input((SIZE, SIZE, 2)), keras.layers.Conv2D(2, 3, padding='same', name='conv')], name='two')
    model = keras.Model(inputs, two(one(inputs)), name='twins')
    with pytest.raises(ValueError, match=r"ambiguous.*'one/conv', 'two/conv'"):
        graph_model(model, ['conv'])
    x = _images()
    first, out = graph_model(model, ['one/conv'])(x)
    np.testing.assert_allclose(_np(out), _np(model(x)), atol=1e-5)
    np.testing.assert_allclose(_np(first), _np(one(x)), atol=1e-5)

def test_shared_layer_refused():
    shared = keras.layers.Conv2D(3, 3, padding='same', name='shared')
    inputs = keras.Input((SIZE, SIZE, 3))
    model = keras.Model(inputs, shared(shared(inputs)), name='twice')
    with pytest.raises(ValueError, match='called more than once'):
        graph_model(model)
    base = keras.Sequential([keras.Input((SIZE, SIZE, 3)), keras.layers.Conv2D(3, 3, padding='same')], name='block')
    siamese = keras.Model(inputs, base(base(inputs)), name='siamese')  # a nested model called twice
    with pytest.raises(ValueError, match='called more than once'):
        graph_model(siamese)

def test_model_without_input():
    with pytest.raises(ValueError, match='no defined input'):
        graph_model(keras.Sequential([keras.layers.Conv2D(2, 3)], name='unbuilt'))

def test_last_conv_errors():
    no_conv = keras.Sequential([keras.Input((SIZE, SIZE, 3)), keras.layers.Rescaling(1 / 255), keras.layers.Flatten(),
                                keras.layers.Dense(2)], name='no_conv')
    with pytest.raises(ValueError, match="'no_conv' has no convolutional layer"):
        last_conv_layer(no_conv)
    signal = keras.Sequential([keras.Input((64, 3)), keras.layers.Conv1D(4, 3), keras.layers.Flatten(), keras.layers.Dense(2)],
                              name='signal')
    with pytest.raises(ValueError, match="'signal' has no layer with a 4-D output"):
        last_conv_layer(signal)

def test_same_name_outside_and_inside_a_nested_model():
    "An outer layer named like a layer of the nested backbone: each level keeps its names."
    keras.utils.set_random_seed(0)
    base = keras.applications.MobileNetV2(include_top=False, weights=None, input_shape=(SIZE, SIZE, 3))
    inputs = keras.Input((SIZE, SIZE, 3))
    x = keras.layers.Conv2D(3, 1, name='Conv1')(inputs)  # MobileNetV2 has a 'Conv1' too
    x = keras.layers.GlobalAveragePooling2D()(base(x, training=False))
    model = keras.Model(inputs, keras.layers.Dense(2)(x), name='clash')
    outer, inner, out = graph_model(model, ['Conv1', 'mobilenetv2_1.00_32/Conv1'])(_images())
    assert outer.shape[-1] == 3 and inner.shape[-1] == 32
    np.testing.assert_allclose(_np(out), _np(model(_images())), atol=1e-5)


@pytest.mark.parametrize('kind', ['scratch', 'nested', 'sequential', 'functional_inside_sequential'])
def test_activation_model_default_layers(kind, tmp_path):
    "Every conv and pooling output, in call order, also after a reload; each equals graph_model's."
    model = MODELS[kind]()
    reloaded = load_model(save_model(model, tmp_path/'m.keras'), compile=False)
    x = _images(1, _size(model))
    layers = conv_and_pool_layers(model)
    assert conv_and_pool_layers(reloaded) == layers
    acts, again = activations(model, x[0]), activations(reloaded, x)
    assert list(acts) == layers == list(again)
    for a in layers: np.testing.assert_allclose(acts[a], again[a], atol=1e-5)
    assert all(v.ndim == 3 for v in acts.values())
    if kind == 'scratch': assert layers == [f'{k}{i}' for i in range(1, 5) for k in ('conv', 'pool')]

def test_activation_stats_counts_dead_channels():
    model = small_sequential()
    stats = activation_stats(activations(model, np.zeros((SIZE, SIZE, 3), 'float32'), ['c1', 'p1']))
    assert stats.columns.tolist() == ['layer', 'height', 'width', 'channels', 'dead', 'mean', 'max']
    assert stats[['height', 'channels']].values.tolist() == [[SIZE - 2, 8], [(SIZE - 2) // 2, 8]]
    assert ((0 <= stats['dead']) & (stats['dead'] <= 1)).all()

def test_activation_bad_input():
    model = small_sequential()
    with pytest.raises(ValueError, match=r"layers\[1\]='c9'"):
        activation_model(model, ['c1', 'c9'])
    with pytest.raises(ValueError, match='layers is empty'):
        activation_model(model, [])
    no_conv = keras.Sequential([keras.Input((SIZE, SIZE, 3)), keras.layers.Flatten(), keras.layers.Dense(2)], name='no_conv')
    with pytest.raises(ValueError, match="'no_conv' has no convolution or pooling layer.*pass `layers`"):
        activation_model(no_conv)
    with pytest.raises(ValueError, match='one image'):
        activations(model, _images(2))
    with pytest.raises(ValueError, match=r"feature maps.*'out'"):
        plot_activations(model, _images(1)[0], ['c1', 'out'])

def test_plot_activations_grid():
    import matplotlib; matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    fig = plot_activations(nested_mobilenet(), _images(1)[0], max_maps=4, max_layers=3)
    assert len(fig.axes) == 3 * 5
    plt.close(fig)
