"""drbook.tasks against real models: the logits stay reachable in every model drbook builds, their gradient lives where
the activation is saturated, drbook's own loss matches NumPy and reloads in a fresh process, and bad rows are named."""
import os, subprocess, sys, textwrap
os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')
import numpy as np
import pandas as pd
import pytest
import keras
import tensorflow as tf
from drbook.core import seed_everything
from drbook.tasks import TASKS, keras_objects, logits_layer, output_layer, targets
from drbook.scratch import build_scratch_cnn
from drbook.transfer import backbone_of, build_model
from drbook import train


def saturate(model, task):
    "Push the logits far apart (bias 100 on output 0, −100 elsewhere) so softmax/sigmoid outputs are exactly 0 or 1."
    layer = logits_layer(model)
    w, b = layer.get_weights()
    b = np.full_like(b, -100.0); b[0] = 100.0
    layer.set_weights([w, b])


def gradients(model, conv_name, images):
    "Gradients of output 0 after and before the activation with respect to the layer `conv_name`'s output."
    probe = keras.Model(model.inputs, [model.get_layer(conv_name).output, logits_layer(model).output, model.output])
    with tf.GradientTape(persistent=True) as tape:
        conv, logits, out = probe(images, training=False)
        score, logit = out[:, 0], logits[:, 0]
    return out.numpy(), tape.gradient(score, conv).numpy(), tape.gradient(logit, conv).numpy()


def models(task):
    "A from-scratch CNN and two transfer models (dense head, S4's convolutional head) for `task`, with their last conv layer."
    seed_everything(0)
    yield build_scratch_cnn('sample', 64, task=task), 'conv4'
    for head in ('s1', 's4_conv'):
        m = build_model('MobileNetV2', task, 64, head=head, weights=None)
        yield m, backbone_of(m).last_conv


@pytest.mark.parametrize('task', list(TASKS))
def test_logits_gradient_survives_a_saturated_output(task):
    images = np.random.default_rng(1).uniform(0, 255, (3, 64, 64, 3)).astype('float32')
    for model, conv in models(task):
        assert logits_layer(model).get_config()['activation'] == 'linear'
        assert model.layers[-1].get_config()['activation'] == TASKS[task].activation
        if TASKS[task].activation != 'linear': saturate(model, task)
        out, g_out, g_logit = gradients(model, conv, images)
        assert np.abs(g_logit).max() > 1e-6, f'{model.name}: the logit does not depend on {conv}'
        if TASKS[task].activation == 'linear':  # regression: the output is the logit
            np.testing.assert_allclose(g_out, g_logit, rtol=1e-5, atol=1e-9)
        else:  # the activation is saturated: its output carries no gradient, the logit does
            assert np.allclose(out[:, 0], 1.0), f'{model.name}: output 0 is not saturated ({out[:, 0]})'
            assert np.abs(g_out).max() == 0.0, f'{model.name}: a saturated {TASKS[task].activation} still has a gradient'


def test_a_model_without_logits_is_named():
    inputs = keras.Input((4,))
    plain = keras.Model(inputs, keras.layers.Dense(5, activation='softmax', name='dense_softmax')(inputs))
    with pytest.raises(ValueError, match="does not keep its logits.*'dense_softmax'"): logits_layer(plain)


@pytest.mark.slow
def test_compiled_lesion_model_reloads_safely_in_a_fresh_process(tmp_path):
    inputs = keras.Input((8, 8, 3))
    m = keras.Model(inputs, output_layer(keras.layers.GlobalAveragePooling2D()(inputs), 'multilabel'))
    train.compile_for(m, 'multilabel', pos_weight=[1, 2, 3, 4, 5])
    path = train.save_model(m, tmp_path/'m.keras')
    code = textwrap.dedent(f'''
        from drbook.train import load_model
        m = load_model({str(path)!r})
        print(type(m.loss).__name__, m.loss.pos_weight, m.get_layer('logits').units)''')
    r = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True, env={**os.environ, 'TF_CPP_MIN_LOG_LEVEL': '3'})
    assert r.returncode == 0, r.stderr[-2000:]
    assert r.stdout.split('\n')[-2] == 'WeightedBinaryCrossentropy [1.0, 2.0, 3.0, 4.0, 5.0] 5'


def test_weighted_bce_against_numpy():
    rng = np.random.default_rng(1)
    y = (rng.random((50, 5)) < 0.3).astype('float32')
    p = rng.uniform(0.01, 0.99, (50, 5)).astype('float32')
    w = rng.uniform(0.5, 4, 5)
    expected = -np.mean(np.mean(w * y * np.log(p) + (1 - y) * np.log(1 - p), axis=1))
    wbce = keras_objects()['WeightedBinaryCrossentropy']
    assert float(wbce(w)(y, p)) == pytest.approx(expected, rel=1e-5)
    assert float(wbce(np.ones(5))(y, p)) == pytest.approx(float(keras.losses.BinaryCrossentropy()(y, p)), rel=1e-5)


def test_fit_refuses_a_model_of_another_task(tmp_path):
    inputs = keras.Input((8, 8, 3))
    m = train.compile_for(keras.Model(inputs, output_layer(keras.layers.GlobalAveragePooling2D()(inputs), 'ordinal')), 'ordinal')
    ds = tf.data.Dataset.from_tensor_slices((np.zeros((4, 8, 8, 3), 'float32'), np.zeros((4, 4), 'float32'))).batch(2)
    with pytest.raises(ValueError, match="has 4 outputs but task 'multiclass' needs 5"):
        train.fit(m, ds, ds, tmp_path, epochs=1, task='multiclass')
    with pytest.raises(ValueError, match='pos_weight'):  # lesion labels have no grade to weight
        train.fit(train.compile_for(keras.Model(inputs, output_layer(keras.layers.GlobalAveragePooling2D()(inputs), 'multilabel')),
                                    'multilabel'), ds, ds, tmp_path, epochs=1, task='multilabel', class_weight=[1] * 5)


def test_targets_bad_rows_are_named():
    df = pd.DataFrame({'image_id': ['x1', 'x2', 'x3'], 'grade': pd.array([0, None, 7], dtype='Int64'),
                       'has_MA': pd.array([True, None, False], dtype='boolean'), 'has_HE': [False] * 3,
                       'has_EX': [False] * 3, 'has_SE': [False] * 3})
    with pytest.raises(ValueError, match=r'no ICDR grade: 1 \(x2\)'): targets(df, 'multiclass')
    with pytest.raises(ValueError, match=r'outside 0–4: 2 \(x3\)'): targets(df.drop(index=1), 'regression')
    with pytest.raises(ValueError, match=r'unknown lesion labels.*1 \(x2\)'): targets(df, 'multilabel')
    with pytest.raises(ValueError, match=r"has_SE"): targets(df.drop(columns='has_SE'), 'multilabel')
    with pytest.raises(ValueError, match='unknown task'): targets(df, 'softmax')
