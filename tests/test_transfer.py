"""drbook.transfer: every registry backbone builds flat at its minimum size, its last conv output is connected to the
output (gradient test), blocks are contiguous, heads serve every task, weights files load, saved models reload."""
import os
os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')
from pathlib import Path
import numpy as np
import pytest
import keras
import tensorflow as tf

from drbook.core import N_GRADES, MULTILABEL
from drbook.tasks import TASKS
from drbook.gradcam import cam_model
from drbook.transfer import (BACKBONES, HEADS, PreprocessInput, add_head, backbone_layers, backbone_of, block_labels,
                             block_names, build_model, calibrate_batchnorm, feature_model,
                             get_backbone, head_layers, head_model, keras_weights_path, resolve_weights, weights_used,
                             PRETRAINED, backbone_arrays, load_pretrained, pretrained_dir, pretrained_file)

OUTPUT_UNITS = {'multiclass': N_GRADES, 'sigmoid': N_GRADES, 'ordinal': N_GRADES - 1, 'regression': 1,
                'multilabel': len(MULTILABEL)}
_MODELS = {}

def model_for(name):
    "Each backbone is built once per session (weights=None, minimum input size, S1 head)."
    if name not in _MODELS:
        keras.utils.set_random_seed(0)
        _MODELS[name] = build_model(name, 'multiclass', get_backbone(name).min_size, head='s1')
    return _MODELS[name]

def _image(size, seed=0):
    return np.random.default_rng(seed).uniform(0, 255, (1, size, size, 3)).astype('float32')

FAST_BACKBONES = ('VGG16', 'ResNet50', 'MobileNetV2', 'MobileNetV2_035', 'InceptionV3', 'EfficientNetB0')  # one of each family in make test-fast

@pytest.mark.parametrize('name', [n if n in FAST_BACKBONES else pytest.param(n, marks=pytest.mark.slow) for n in BACKBONES])
def test_backbone_flat_forward_and_gradient(name):
    bb, model = get_backbone(name), model_for(name)
    # flat graph: no nested model among the layers, the backbone's last conv layer is a layer of the model itself
    assert not any(isinstance(l, keras.Model) for l in model.layers)
    layers = backbone_layers(model)
    assert layers[-1].name == bb.output and bb.last_conv in [l.name for l in layers]
    assert all(l.trainable is False for l in layers) and head_layers(model)[-1].name == 'predictions'
    # one forward pass through the Grad-CAM graph (feature maps, class scores before the softmax), and the gradient of
    # the top class score with respect to the last conv output: it exists and is not all zero
    x = _image(bb.min_size)
    cam = cam_model(model)
    with tf.GradientTape() as tape:
        maps, out = cam(x, training=False)
        score = tf.gather(out[0], tf.argmax(out[0]))
    assert out.shape == (1, N_GRADES) and np.isfinite(out.numpy()).all()
    np.testing.assert_allclose(tf.nn.softmax(out).numpy(), model(x, training=False).numpy(), rtol=1e-4, atol=1e-6)  # the logits
    grads = tape.gradient(score, maps)
    assert grads is not None, f'{name}: no gradient from the output to {bb.last_conv}'
    assert maps.shape[1:] == grads.shape[1:] and bool(tf.reduce_any(grads != 0)), f'{name}: gradient all zero'

@pytest.mark.parametrize('name', [n if n in FAST_BACKBONES else pytest.param(n, marks=pytest.mark.slow) for n in BACKBONES])
def test_blocks_are_contiguous_and_named(name):
    labels = block_labels(model_for(name))
    names = block_names(model_for(name))
    assert len(labels) == len(backbone_layers(model_for(name))) and len(names) >= 5
    # each block is one run of consecutive layers
    runs = [l for i, l in enumerate(labels) if i == 0 or l != labels[i - 1]]
    assert runs == names, f'{name}: a block is split into pieces'

def _ancestors(layer, seen=None):
    "Names of every layer that feeds `layer` (graph traversal through inbound nodes)."
    seen = set() if seen is None else seen
    for node in layer._inbound_nodes:
        for parent in node.parent_nodes:
            op = parent.operation
            if op.name not in seen: seen.add(op.name); _ancestors(op, seen)
    return seen

@pytest.mark.parametrize('name', ['InceptionV3', 'InceptionResNetV2'])
def test_end_marked_blocks_follow_the_graph(name):
    "Blocks read from end markers hold exactly the layers feeding their end layer and not the previous one."
    model = model_for(name); layers = backbone_layers(model); labels = block_labels(model)
    ends = {lab: max(i for i, l in enumerate(labels) if l == lab) for lab in block_names(model)}
    prev = set()
    for lab in block_names(model)[:-1]:
        end = layers[ends[lab]]
        mine = (_ancestors(end) | {end.name}) - prev
        got = {l.name for l, b in zip(layers, labels) if b == lab}
        assert got <= mine, f'{name}: {sorted(got - mine)[:5]} in block {lab} do not feed its end {end.name}'
        prev |= mine

def test_registry_lookup_and_sizes():
    assert set(BACKBONES) == {'VGG16', 'ResNet50', 'ResNet101', 'ResNet152', 'InceptionV3', 'InceptionResNetV2',
                              'MobileNetV2', 'MobileNetV2_035', *[f'EfficientNetB{i}' for i in range(5)]}
    assert get_backbone('efficientnetb3').default_size == 300
    with pytest.raises(KeyError, match='known: VGG16'): get_backbone('Xception')
    with pytest.raises(ValueError, match='at least 32 px'): build_model('ResNet50', image_size=16)
    # VGG16's blocks are block1..block5; MobileNetV2's end with block_16 and the top conv
    assert block_names(build_model('VGG16', image_size=32)) == [f'block{i}' for i in range(1, 6)]
    assert block_names(model_for('MobileNetV2'))[-3:] == ['block_15', 'block_16', 'Conv_1']
    assert block_names(model_for('EfficientNetB0'))[:3] == ['stem', 'block1a', 'block2a']

@pytest.mark.parametrize('name', ['VGG16', 'ResNet50', 'InceptionV3', 'MobileNetV2', 'EfficientNetB0'])
def test_preprocess_layer_matches_keras(name):
    x = np.random.default_rng(1).uniform(0, 255, (2, 8, 8, 3)).astype('float32')
    ref = getattr(keras.applications, get_backbone(name).module).preprocess_input(x.copy())
    np.testing.assert_allclose(keras.ops.convert_to_numpy(PreprocessInput(name)(x)), ref, rtol=1e-5, atol=1e-4)

@pytest.mark.parametrize('task', list(TASKS))
@pytest.mark.parametrize('head', list(HEADS))
def test_every_head_serves_every_task(head, task):
    feats = keras.Input((3, 3, 64))
    model = keras.Model(feats, add_head(feats, task, head))
    assert model.output.shape == (None, OUTPUT_UNITS[task])
    out = model(np.ones((2, 3, 3, 64), 'float32')).numpy()
    assert out.shape == (2, OUTPUT_UNITS[task]) and np.isfinite(out).all()
    if head.startswith('s2_'): assert model.losses, 'S2 heads carry L1 + L2 penalties'
    if head == 's4_conv': assert sum(isinstance(l, keras.layers.Conv2D) for l in model.layers) == 3

def test_head_presets_follow_the_seeds():
    feats = keras.Input((7, 7, 512))
    s1 = keras.Model(feats, add_head(feats, 'sigmoid', 's1'))
    assert [type(l).__name__ for l in s1.layers[1:]] == ['GlobalAveragePooling2D', 'Dropout', 'Dense', 'Activation']
    assert s1.get_layer('head_dropout').rate == 0.5 and s1.output.shape == (None, 5)
    # S3 VGG16 experiment 1: Flatten -> Dense 256 -> Dense 5 = 6,422,784 + 1,285 parameters
    assert keras.Model(feats, add_head(feats, 'multiclass', 's3_flatten256')).count_params() == 6_422_784 + 1_285
    s2 = keras.Model(feats, add_head(feats, 'multiclass', 's2_32_16'))
    assert [l.units for l in s2.layers if isinstance(l, keras.layers.Dense)] == [32, 16, 5]
    with pytest.raises(KeyError, match='unknown head'): add_head(feats, 'multiclass', 'nope')
    with pytest.raises(ValueError, match="'gap' or 'flatten'"): add_head(feats, 'multiclass', 's1', pooling='max')

def test_local_weights_file_is_loaded(tmp_path):
    # a headless MobileNetV2 weights file, as someone would copy it onto an offline machine
    keras.utils.set_random_seed(5)
    donor = keras.applications.MobileNetV2(include_top=False, weights=None, input_shape=(32, 32, 3))
    path = tmp_path/'mobilenet_v2_notop.weights.h5'
    donor.save_weights(path)
    keras.utils.set_random_seed(6)
    model = build_model('MobileNetV2', image_size=32, weights=path)
    np.testing.assert_array_equal(model.get_layer('Conv1').kernel.numpy(), donor.get_layer('Conv1').kernel.numpy())
    np.testing.assert_array_equal(model.get_layer('Conv_1_bn').moving_variance.numpy(),
                                  donor.get_layer('Conv_1_bn').moving_variance.numpy())
    assert weights_used(path) == 'file:mobilenet_v2_notop.weights.h5' and weights_used('none') == 'none (random)'
    with pytest.raises(FileNotFoundError, match='does not exist'): build_model('MobileNetV2', image_size=32, weights=tmp_path/'x.h5')

def test_keras_weights_path_follows_keras_home(tmp_path, monkeypatch):
    monkeypatch.setenv('KERAS_HOME', str(tmp_path))
    assert keras_weights_path('ResNet152') == tmp_path/'models'/'resnet152_weights_tf_dim_ordering_tf_kernels_notop.h5'
    assert keras_weights_path('EfficientNetB2').name == 'efficientnetb2_notop.h5'
    assert keras_weights_path('MobileNetV2', 128).name.endswith('_1.0_128_no_top.h5')
    assert resolve_weights('imagenet') == 'imagenet' and resolve_weights(None) is None

def test_saved_model_reloads_with_its_scaling_and_conv_output(tmp_path):
    from drbook.train import save_model, load_model
    model = model_for('MobileNetV2')
    x = _image(32, seed=3)
    save_model(model, tmp_path/'m.keras')
    loaded = load_model(tmp_path/'m.keras', compile=False)
    np.testing.assert_allclose(loaded(x).numpy(), model(x).numpy(), rtol=1e-5, atol=1e-6)
    assert backbone_of(loaded).name == 'MobileNetV2'
    maps, _ = cam_model(loaded)(x)
    assert maps.shape == (1, 1, 1, 1280)

def test_calibrate_batchnorm_gives_random_backbones_live_features():
    keras.utils.set_random_seed(0)
    model = build_model('ResNet50', image_size=32)
    cam = cam_model(model)
    batch = np.random.default_rng(2).uniform(0, 255, (8, 32, 32, 3)).astype('float32')
    before = np.abs(cam(batch)[0].numpy()).mean()
    moving = model.get_layer('conv5_block3_3_bn').moving_variance.numpy().copy()
    calibrate_batchnorm(model, batch)
    after = cam(batch)[0].numpy()
    assert not np.allclose(model.get_layer('conv5_block3_3_bn').moving_variance.numpy(), moving)
    assert np.isfinite(after).all() and after.std(axis=0).mean() > 0  # features differ between images
    assert all(not l.trainable for l in backbone_layers(model))  # still frozen afterwards
    assert before != np.abs(after).mean()

def test_backbone_of_rejects_foreign_models():
    inp = keras.Input((8, 8, 3)); m = keras.Model(inp, keras.layers.Dense(2)(inp))
    with pytest.raises(ValueError, match='no PreprocessInput layer'): backbone_of(m)

@pytest.mark.parametrize('head', ['s1', 's3_flatten256', 's2_32_16', 's4_conv'])
def test_feature_and_head_models_compose_and_share_weights(head):
    keras.utils.set_random_seed(0)
    model = build_model('MobileNetV2', 'multilabel', 32, head=head)
    x = np.random.default_rng(4).uniform(0, 255, (8, 32, 32, 3)).astype('float32')
    calibrate_batchnorm(model, x)  # random weights: give the frozen backbone live features
    hm = head_model(model)
    np.testing.assert_allclose(hm(feature_model(model)(x)).numpy(), model(x).numpy(), rtol=1e-5, atol=1e-6)
    # training the head model trains the full model's head (the layers are shared, not copied)
    w = model.get_layer('logits').kernel.numpy().copy()
    hm.compile(optimizer=keras.optimizers.SGD(0.1), loss='binary_crossentropy')
    hm.fit(feature_model(model)(x), np.ones((8, len(MULTILABEL)), 'float32'), epochs=1, verbose=0)
    assert not np.allclose(model.get_layer('logits').kernel.numpy(), w)


# drbook's own pretrained backbone, shipped in pretrained/ ------------------------------------------------------------

def _shipped():
    with np.load(pretrained_file('drbook-synthetic')) as f: return dict(f)

@pytest.mark.parametrize('size', [96, 128])
def test_drbook_synthetic_builds_with_the_files_weights(size):
    model = build_model('MobileNetV2_035', 'multiclass', size, weights='drbook-synthetic')
    shipped, loaded = _shipped(), backbone_arrays(model)
    assert set(loaded) == set(shipped) and len(shipped) > 200
    for k, v in shipped.items(): np.testing.assert_array_equal(loaded[k], v, err_msg=k)
    assert all(not l.trainable for l in backbone_layers(model))  # frozen, as for any weights
    assert model.get_layer('Conv1').kernel.shape == (3, 3, 3, 16)  # width 0.35: 16 stem filters, not 32
    # the pretrained backbone gives live, image-dependent features without any BatchNormalization calibration
    x = np.random.default_rng(0).uniform(0, 255, (4, size, size, 3)).astype('float32')
    f = feature_model(model)(x).numpy()
    assert np.isfinite(f).all() and f.std(axis=0).mean() > 1e-3

def test_drbook_synthetic_refuses_other_backbones():
    with pytest.raises(ValueError, match="fit backbone 'MobileNetV2_035' only, not 'MobileNetV2'"):
        build_model('MobileNetV2', image_size=96, weights='drbook-synthetic')
    with pytest.raises(ValueError, match="not 'VGG16'"):
        load_pretrained(build_model('VGG16', image_size=32), 'drbook-synthetic')

def test_altered_or_missing_pretrained_file_is_refused_naming_it(tmp_path, monkeypatch):
    spec = PRETRAINED['drbook-synthetic']
    for f in (spec.file, 'MANIFEST.sha256'): (tmp_path/f).write_bytes((pretrained_dir()/f).read_bytes())
    monkeypatch.setenv('DRBOOK_PRETRAINED', str(tmp_path))
    assert pretrained_file() == tmp_path/spec.file  # an intact copy passes
    data = bytearray((tmp_path/spec.file).read_bytes()); data[len(data) // 2] ^= 0xFF
    (tmp_path/spec.file).write_bytes(bytes(data))
    with pytest.raises(ValueError, match=f'{tmp_path/spec.file} were altered'):
        build_model('MobileNetV2_035', image_size=96, weights='drbook-synthetic')
    (tmp_path/spec.file).unlink()
    with pytest.raises(FileNotFoundError, match=f'{tmp_path/spec.file} are missing'): resolve_weights('drbook-synthetic')
    (tmp_path/spec.file).write_bytes(b'x')
    (tmp_path/'MANIFEST.sha256').unlink()
    with pytest.raises(FileNotFoundError, match='lists no sha256'): pretrained_file()

def test_drbook_synthetic_label_and_record():
    import hashlib, json
    spec = PRETRAINED['drbook-synthetic']
    sha = hashlib.sha256(pretrained_file().read_bytes()).hexdigest()
    assert weights_used('drbook-synthetic') == f'drbook-synthetic (MobileNetV2_035, sha256 {sha[:8]})'
    assert resolve_weights('drbook-synthetic') == 'drbook-synthetic'
    rec = json.loads((pretrained_dir()/spec.file.replace('.npz', '.json')).read_text())
    assert rec['sha256'] == sha and rec['backbone'] == spec.backbone  # the record describes the shipped file
    assert rec['settings']['seed'] != 2026 and rec['source_task_metrics']['mean_auc'] > 0.8  # another seed; it learnt the task
    assert pretrained_file().stat().st_size < 3e6  # small enough to ship

# --- extra_runs and balance, as chapters 08 and 09 read them

def test_parse_runs_reads_s3s_triples_in_registry_spelling():
    from drbook.transfer import parse_runs
    assert parse_runs('MobileNetV2:s3_gap256:adam, mobilenetv2 : s3_gap512x2 : sgd,') == [
        ('MobileNetV2', 's3_gap256', 'adam'), ('MobileNetV2', 's3_gap512x2', 'sgd')]
    assert parse_runs('') == [] and parse_runs(' , ') == []
    runs = parse_runs('MobileNetV2:s3_gap512x2:unfrozen,VGG16:s3_gap256:block4_conv1,VGG16:s3_gap256:unfrozen', 'strategy', None)
    assert [f'test_accuracy_{b}_{h}_{s}' for b, h, s in runs] == [  # the record names chapter 09 gives them
        'test_accuracy_MobileNetV2_s3_gap512x2_unfrozen', 'test_accuracy_VGG16_s3_gap256_block4_conv1',
        'test_accuracy_VGG16_s3_gap256_unfrozen']

@pytest.mark.parametrize('runs,bad,message', [
    ('VGG16:s3_gap256', 'VGG16:s3_gap256', "expected 'backbone:head:optimiser'"),
    ('VGG16:s3_gap256:adam:x', 'VGG16:s3_gap256:adam:x', "expected 'backbone:head:optimiser'"),
    ('VGG16::adam', 'VGG16::adam', "expected 'backbone:head:optimiser'"),
    ('VGG16:s1:adam,AlexNet:s1:adam', 'AlexNet:s1:adam', "unknown backbone 'AlexNet'; known: VGG16"),
    ('MobileNetV2:s3_gap1024:adam', 'MobileNetV2:s3_gap1024:adam', "unknown head 's3_gap1024'; known: s1"),
    ('MobileNetV2:s3_gap256:rmsprop', 'MobileNetV2:s3_gap256:rmsprop', "optimiser must be one of \\['adam', 'sgd'\\]"),
    ('VGG16:s1:sgd,vgg16:s1:sgd', 'vgg16:s1:sgd', 'named twice')])
def test_parse_runs_refuses_a_bad_triple_naming_it(runs, bad, message):
    from drbook.transfer import parse_runs
    with pytest.raises(ValueError, match=f"run '{bad}': .*{message}|run '{bad}' is {message}"): parse_runs(runs)

def test_balance_gives_the_training_split_equal_grade_counts():
    "08 and 09 with balance=True: drbook.splits.balance(how='under') on the training split, as chapter 07 does."
    from drbook.splits import balance, load_graded, prepare_splits
    train = prepare_splits(load_graded(''), '', 64, (0.7, 0.15, 0.15), seed=42)[0]['train']
    counts = train['grade'].value_counts()
    assert counts.nunique() > 1  # the sample's training split is not balanced to begin with
    balanced = balance(train, how='under', seed=42)
    assert (balanced['grade'].value_counts() == counts.min()).all() and set(balanced['grade']) == set(train['grade'])
    assert balanced['image_id'].is_unique and set(balanced['image_id']) <= set(train['image_id'])  # a subset, nothing repeated

def test_rescale_unit_feeds_the_backbone_pixels_in_0_1_and_survives_saving(tmp_path):
    "S2's scaling: rescale='unit' replaces the backbone's preprocess_input with x / 255; '' keeps it; the choice is saved."
    x = _image(32, seed=3)
    unit = build_model('ResNet50', 'multiclass', 32, head='s2_16', rescale='unit')
    scaled = keras.Model(unit.input, unit.get_layer('preprocess_input').output)
    np.testing.assert_allclose(scaled.predict(x, verbose=0), x / 255, rtol=1e-6, atol=1e-7)
    plain = build_model('ResNet50', 'multiclass', 32, head='s2_16')
    assert plain.get_layer('preprocess_input').rescale == '' and backbone_of(unit).name == 'ResNet50'
    unit.save(tmp_path/'unit.keras')
    again = keras.models.load_model(tmp_path/'unit.keras', compile=False)
    assert again.get_layer('preprocess_input').rescale == 'unit'
    np.testing.assert_allclose(again.predict(x, verbose=0), unit.predict(x, verbose=0), rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="rescale='imagenet': expected ''"): build_model('ResNet50', image_size=32, rescale='imagenet')
