"""drbook.finetune: freeze strategies give S3's trainable-parameter counts, BatchNormalization stays in inference
mode, and a two-stage fine-tune trains one keyed model per stage, each starting from the one before, and resumes after an
interruption in stage 2."""
import os
os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')
import math
import numpy as np
import pandas as pd
import pytest
import keras
import tensorflow as tf

from drbook.finetune import (S2_TABLE3, Stage, fine_tune, frozen_count, parameter_report, s2_stages, s4_schedule,
                             set_trainable, stage_config, stage_history, two_stage)
from drbook.train import load_model
from drbook.transfer import backbone_layers, build_model, calibrate_batchnorm, head_layers

@pytest.fixture(scope='module')
def vgg():
    return build_model('VGG16', 'multiclass', 224, head='s3_flatten128')  # S3's VGG16 fine-tuning model (exp. 2)

@pytest.fixture(scope='module')
def mnv2():
    return build_model('MobileNetV2', 'multiclass', 224, head='s3_gap512x2')  # S3's MobileNetV2 model 4

def _counts(model): r = parameter_report(model); return r['trainable'], r['non_trainable']

@pytest.mark.parametrize('strategy,expected', [  # S3 §5.1 model summaries (Figures of experiments 2, 4, 5 and 6)
    ('frozen', (3_212_037, 14_714_688)), ('block5_conv1', (10_291_461, 7_635_264)),
    ('block4_conv1', (16_191_237, 1_735_488)), ('block4', (16_191_237, 1_735_488)), ('unfrozen', (17_926_725, 0))])
def test_vgg16_counts_match_s3(vgg, strategy, expected):
    assert _counts(set_trainable(vgg, strategy)) == expected

def test_vgg16_from_block1_with_gap_head_matches_s3():
    model = build_model('VGG16', 'multiclass', 224, head='s3_gap256')  # S3 VGG16 experiment 3, unfrozen from block1
    assert _counts(set_trainable(model, 'block1')) == (14_847_301, 0)
    assert _counts(set_trainable(model, 'frozen')) == (132_613, 14_714_688)

def _bn_gamma_beta(model, strategy):
    "gamma + beta parameters of the BatchNormalization layers that `strategy` leaves unfrozen."
    layers = backbone_layers(model)[frozen_count(model, strategy):]
    return sum(int(np.prod(w.shape)) for l in layers if isinstance(l, keras.layers.BatchNormalization)
               for w in (l.gamma, l.beta) if w is not None)

@pytest.mark.parametrize('strategy,expected', [  # S3 §5.2 model summaries: experiments 5, 6 and 7 on model 4
    ('block_16', (1_807_173, 1_371_904)), ('block_15', (2_127_173, 1_051_904)), ('block_1', (3_143_141, 35_936))])
def test_mobilenetv2_counts_match_s3(mnv2, strategy, expected):
    # S3 counts the unfrozen BatchNormalization layers' gamma and beta as trainable
    assert _counts(set_trainable(mnv2, strategy, freeze_batchnorm=False)) == expected
    # drbook's default keeps them frozen: exactly their gamma and beta move to the non-trainable side
    bn = _bn_gamma_beta(mnv2, strategy)
    assert _counts(set_trainable(mnv2, strategy)) == (expected[0] - bn, expected[1] + bn)
    if strategy == 'block_16': assert bn == 2 * (960 + 960 + 320 + 1280)  # block_16's three BN layers and Conv_1_bn

def test_frozen_batchnorm_runs_in_inference_mode(mnv2):
    rng = np.random.default_rng(0)
    calibrate_batchnorm(mnv2, rng.uniform(0, 255, (8, 224, 224, 3)))
    x = rng.uniform(0, 255, (4, 224, 224, 3)).astype('float32')
    probe = keras.Model(mnv2.input, mnv2.get_layer('out_relu').output)
    bn = mnv2.get_layer('Conv_1_bn'); mean = bn.moving_mean.numpy().copy()
    set_trainable(mnv2, 'block_1')
    np.testing.assert_allclose(probe(x, training=True).numpy(), probe(x, training=False).numpy(), atol=1e-4)
    np.testing.assert_array_equal(bn.moving_mean.numpy(), mean)
    set_trainable(mnv2, 'block_1', freeze_batchnorm=False)
    assert np.abs(probe(x, training=True).numpy() - probe(x, training=False).numpy()).max() > 1e-2
    assert not np.array_equal(bn.moving_mean.numpy(), mean)  # training mode updated the statistics

def test_fraction_and_count_strategies():
    model = build_model('ResNet50', 'multiclass', 32, head='s2_16')
    layers = backbone_layers(model); n = len(layers)
    k = frozen_count(model, 0.5)
    assert k == math.floor(n / 2 + 0.5)
    set_trainable(model, 0.5)
    assert not any(l.trainable for l in layers[:k])
    assert all(l.trainable for l in layers[k:] if not isinstance(l, keras.layers.BatchNormalization))
    assert not any(l.trainable for l in layers if isinstance(l, keras.layers.BatchNormalization))
    assert all(l.trainable for l in head_layers(model))
    assert frozen_count(model, 155) == 155 and frozen_count(model, 0.0) == 0 and frozen_count(model, 1.0) == n
    assert layers[frozen_count(model, 'conv5')].name == 'conv5_block1_1_conv'
    assert layers[frozen_count(model, 'conv4_block2')].name == 'conv4_block2_1_conv'
    rep = parameter_report(model)
    assert rep['trainable'] + rep['non_trainable'] == rep['total'] == model.count_params()
    assert rep['backbone_trainable'] + rep['head_trainable'] == rep['trainable']
    with pytest.raises(ValueError, match='no layer or block'): frozen_count(model, 'block_16')
    with pytest.raises(ValueError, match=r'\[0, 1\]'): frozen_count(model, 1.5)
    with pytest.raises(ValueError, match='cannot freeze'): frozen_count(model, n + 1)
    with pytest.raises(TypeError): frozen_count(model, True)

def test_efficientnet_stage_prefix():
    model = build_model('EfficientNetB0', 'multiclass', 32)
    assert backbone_layers(model)[frozen_count(model, 'block6')].name == 'block6a_expand_conv'

def test_schedules_and_s2_table():
    assert [(s.strategy, s.learning_rate, s.optimizer) for s in s4_schedule(2, 3)] == [('frozen', 0.01, 'sgd'), ('unfrozen', 0.001, 'sgd')]
    assert len(S2_TABLE3) == 15 and len({(c['backbone'], c['strategy'], c['learning_rate']) for c in S2_TABLE3.values()}) == 15
    assert {c['backbone'] for c in S2_TABLE3.values()} == {'ResNet50', 'ResNet101', 'ResNet152'}
    assert sorted({c['learning_rate'] for c in S2_TABLE3.values()}) == [0.000025, 0.00015, 0.00075]
    partial = {n: c for n, c in S2_TABLE3.items() if n.endswith('_partial')}  # S2 froze layers 1-155 (ResNet50/101), 1-455 (ResNet152)
    assert {c['backbone']: c['strategy'] for c in partial.values()} == {'ResNet50': 155, 'ResNet101': 155, 'ResNet152': 455}
    assert len(partial) == 3 and all((c['batch_size'], c['epochs'], c['head']) == (32, 100, 's2_16') for c in partial.values())
    assert s2_stages('resnet50_frozen_lr0.00015')[0] == Stage('resnet50_frozen_lr0.00015', 'frozen', 0.00015, 200, 'adam')
    with pytest.raises(KeyError, match='no row'): s2_stages('resnet18_frozen')

def _toy_data(n=24, size=32, seed=0):
    "Images whose grade is written in their brightness, as (train, val) tf.data sets, the images, and the tables that key them."
    rng = np.random.default_rng(seed)
    y = np.arange(n) % 5
    x = (rng.uniform(0, 40, (n, size, size, 3)) + 40 * y[:, None, None, None]).astype('float32')
    ds = lambda a, b: tf.data.Dataset.from_tensor_slices((a, b)).batch(8)
    t = pd.DataFrame({'image_id': [f'toy{i}' for i in range(n)], 'grade': y})
    return ds(x, y), ds(x[:10], y[:10]), x, {'train': t, 'val': t.iloc[:10]}

class _Stop(Exception): pass

def _counted(x, y, fail_at=0):
    "A training set of (x, y) that counts the batches it gives, and raises at batch `fail_at` (1-based; 0: never), as a killed run."
    given = []
    def batches():
        for i in range(0, len(x), 8):
            given.append(i)
            if len(given) == fail_at: raise _Stop('killed')
            yield x[i:i + 8], y[i:i + 8]
    spec = (tf.TensorSpec((None, *x.shape[1:]), tf.float32), tf.TensorSpec((None,), tf.int64))
    return tf.data.Dataset.from_generator(batches, output_signature=spec), given

CONFIG = dict(builder='transfer', backbone='MobileNetV2', head='s1', image_size=32, recipe='', augment='', batch_size=8, seed=1,
              weights='random')

def _model(x):
    model = build_model('MobileNetV2', 'multiclass', 32, head='s1')
    return calibrate_batchnorm(model, x[:16])

@pytest.mark.slow
def test_each_stage_is_a_keyed_model_that_starts_from_the_previous_one(tmp_path):
    train, val, x, tables = _toy_data()
    stages = two_stage(head_epochs=2, finetune_epochs=2, head_lr=1e-2, finetune_lr=1e-4, unfreeze='block_15')
    run = lambda st, **kw: fine_tune('toy', lambda: _model(x), CONFIG, st, tables, (train, val), verbose=0, patience=0, root=tmp_path, **kw)
    first, = run(stages[:1])
    initial = first.model.get_layer('block_16_project').kernel.numpy().copy()
    one, two = run(stages)
    assert one.reused and one.key == first.key and one.folder == first.folder  # stage 1 is not trained again
    assert not two.reused and two.meta['config']['weights'] == one.key and two.meta['config']['strategy'] == 'block_15'
    assert two.folder.name.startswith('toy-finetune_block_15_lr0.0001-')
    # stage 2 trained the unfrozen block, kept BN and the bottom frozen, and left stage 1's saved model as it was
    assert not np.allclose(two.model.get_layer('block_16_project').kernel.numpy(), initial)
    np.testing.assert_array_equal(load_model(one.path).get_layer('block_16_project').kernel.numpy(), initial)
    assert parameter_report(two.model)['trainable'] == parameter_report(set_trainable(_model(x), 'block_15'))['trainable']
    history = stage_history([one, two])
    assert list(history['stage']) == ['head'] * 2 + [stages[1].name] * 2 and list(history['stage_epoch']) == [1, 2, 1, 2]
    assert list(history.index) == [1, 2, 3, 4] and np.isfinite(history['loss']).all() and 'val_accuracy' in history
    # the same call again trains nothing; another strategy or another first stage makes new models
    assert all(t.reused for t in run(stages))
    other = run(two_stage(2, 2, 1e-2, 1e-4, unfreeze='unfrozen'))
    assert other[0].key == one.key and other[1].key != two.key
    changed = run(two_stage(2, 2, 5e-3, 1e-4, unfreeze='block_15'))
    assert changed[0].key != one.key and changed[1].key != two.key and changed[1].meta['config']['weights'] == changed[0].key

@pytest.mark.slow
def test_a_schedule_killed_in_stage_2_resumes_there(tmp_path):
    _, val, x, tables = _toy_data()
    y = np.arange(len(x)) % 5
    stages = two_stage(head_epochs=2, finetune_epochs=3, head_lr=1e-2, finetune_lr=1e-4, unfreeze='block_15')
    run = lambda ds: fine_tune('toy', lambda: _model(x), CONFIG, stages, tables, (ds, val), verbose=0, patience=0, root=tmp_path, checkpoint_every=0)
    per_epoch = 3  # 24 images in batches of 8
    killed, _ = _counted(x, y, fail_at=2 * per_epoch + per_epoch + 2)  # stage 1's two epochs, stage 2's first, then killed
    with pytest.raises(Exception, match='killed'): run(killed)
    folders = sorted(p.name for p in tmp_path.iterdir())
    assert len(folders) == 2 and folders[1].startswith('toy-head-') and folders[0].startswith('toy-finetune_block_15')
    assert (tmp_path/folders[0]/'resume').is_dir()  # stage 2's first epoch is saved
    again, given = _counted(x, y)
    one, two = run(again)
    assert one.reused and not two.reused
    assert len(given) == 2 * per_epoch  # only stage 2's epochs 2 and 3 ran
    assert len(two.history['loss']) == 3 and not (two.folder/'resume').exists()

def test_stage_config_keys_the_stage_and_its_start():
    s = two_stage(unfreeze=0.5, finetune_lr=1e-4)
    c = stage_config(CONFIG, s[1], start='ab12')
    assert (c['weights'], c['strategy'], c['learning_rate'], c['optimizer'], c['stage']) == ('ab12', 0.5, 1e-4, 'adam', 'finetune_0.5_lr0.0001')
    assert stage_config(CONFIG, s[0])['weights'] == 'random' and 'pos_weight' not in c
    assert stage_config(CONFIG, s[0], pos_weight=[1, 2])['pos_weight'] == [1, 2]

@pytest.mark.slow
def test_fine_tuning_the_shipped_backbone_moves_only_the_unfrozen_layers():
    "drbook-synthetic at 96 px: unfreezing from block_13 trains block_13 onwards, leaves the layers below and every BN as shipped."
    keras.utils.set_random_seed(0)
    model = build_model('MobileNetV2_035', 'multiclass', 96, head='s1', weights='drbook-synthetic')
    set_trainable(model, 'block_13')
    k = frozen_count(model, 'block_13')
    assert backbone_layers(model)[k].name == 'block_13_expand'
    before = {l.name: [w.copy() for w in l.get_weights()] for l in backbone_layers(model)}
    model.compile(optimizer=keras.optimizers.Adam(1e-3), loss=keras.losses.SparseCategoricalCrossentropy(from_logits=False))
    x = np.random.default_rng(0).uniform(0, 255, (8, 96, 96, 3)).astype('float32')
    model.fit(x, np.arange(8) % 5, epochs=1, batch_size=8, verbose=0)
    changed = {l.name for l in backbone_layers(model) if any(not np.array_equal(a, b) for a, b in zip(before[l.name], l.get_weights()))}
    assert 'block_13_expand' in changed and 'Conv_1' in changed
    assert not changed & {l.name for l in backbone_layers(model)[:k]}  # below block 13: as shipped
    assert not any(isinstance(model.get_layer(n), keras.layers.BatchNormalization) for n in changed)  # BN frozen

def test_extra_runs_strategies_parse_and_an_unknown_block_is_named():
    "09's extra_runs: 'backbone:head:strategy' triples; a strategy its backbone lacks fails before training, naming its blocks."
    from drbook.transfer import parse_runs
    runs = parse_runs('VGG16:s3_gap256:block4_conv1, VGG16:s3_gap256:unfrozen', 'strategy', None)
    assert runs == [('VGG16', 's3_gap256', 'block4_conv1'), ('VGG16', 's3_gap256', 'unfrozen')]
    small = build_model('VGG16', 'multiclass', 32, head='s3_gap256')
    assert frozen_count(small, 'block4_conv1') == [l.name for l in backbone_layers(small)].index('block4_conv1')
    with pytest.raises(ValueError, match="run 'VGG16:s3_gap256': expected 'backbone:head:strategy'"):
        parse_runs('VGG16:s3_gap256', 'strategy', None)
    with pytest.raises(ValueError, match="VGG16 has no layer or block 'block_16'; its blocks: block1"):
        frozen_count(small, 'block_16')

def test_s2_dropout_only_on_the_rows_s2_states_it_for():
    "S2 gives dropout 0.5 for the frozen rows at 0.000025 and the partial rows (Figures 10-15), none for the others."
    from drbook.finetune import S2_DROPOUT
    with_dropout = {n for n, c in S2_TABLE3.items() if c['dropout']}
    assert with_dropout == {f'{a}_{r}' for a in ('resnet50', 'resnet101', 'resnet152') for r in ('frozen_lr2.5e-05', 'partial')}
    assert {c['dropout'] for c in S2_TABLE3.values()} == {0.0, 0.5} and set(S2_DROPOUT.values()) == {0.5}
    for name in ('resnet50_frozen_lr0.00015', 'resnet50_frozen_lr2.5e-05'):  # the row's dropout reaches the head it builds
        c = S2_TABLE3[name]
        model = build_model(c['backbone'], 'multiclass', 32, head=c['head'], dropout=c['dropout'])
        rates = [l.rate for l in head_layers(model) if isinstance(l, keras.layers.Dropout)]
        assert rates == ([0.5] * len([l for l in head_layers(model) if isinstance(l, keras.layers.Dense)][:-1]) if c['dropout'] else [])
