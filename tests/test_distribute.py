"""Several devices and mixed precision, as far as a CPU machine allows: every chapter's model builder trains a step under
`MirroredStrategy` over two logical CPU devices, the chapters' own build-then-`compile_for` path distributes (or says it
does not), and under `mixed_float16` outputs, losses and Grad-CAM maps stay float32.

Logical devices must be configured before TensorFlow initialises its devices, which other tests in this pytest process
may already have done; so each check runs this file as a script in a fresh process (`python test_distribute.py MODE`),
which prints one JSON line of what it measured, and the tests assert on it."""
import json, os, subprocess, sys, time
from pathlib import Path
import pytest

ROOT = Path(__file__).resolve().parent.parent
DEVICES = ['/cpu:0', '/cpu:1']


# ---------------------------------------------------------------------------------------------------------------------
# The worker: runs in a fresh process.

def _setup(logical_cpus:int):
    "Import TensorFlow with `logical_cpus` logical CPU devices (before anything initialises them)."
    import tensorflow as tf
    if logical_cpus > 1:
        cpu = tf.config.list_physical_devices('CPU')[0]
        tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * logical_cpus)
    return tf


def _data(task, size, n=4, seed=0):
    "`n` random images of side `size` in [0, 255] and targets for `task`."
    import numpy as np
    from drbook.tasks import encode_ordinal
    rng = np.random.default_rng(seed)
    x, g = rng.uniform(0, 255, (n, size, size, 3)).astype('float32'), np.arange(n) % 5
    y = {'multiclass': g, 'sigmoid': np.eye(5, dtype='float32')[g], 'ordinal': encode_ordinal(g),
         'regression': g.astype('float32')[:, None], 'multilabel': (rng.uniform(size=(n, 5)) < 0.5).astype('float32')}[task]
    return x, y


def _builders(images, every:bool=True):
    "`{name: (build, task, image side)}`: every chapter's model builder, small (`every=False`: one or two per chapter)."
    from drbook.scratch import EXPERIMENTS, build_scratch_cnn, min_image_size
    from drbook.transfer import build_model, calibrate_batchnorm
    from drbook.finetune import set_trainable
    from drbook.ensemble import MemberSpec, build_member
    from drbook.lesion_model import lesion_model
    from drbook.tasks import TASKS
    def mobilenet(task, head, **kw):  # random weights: BatchNormalization set to the images' statistics, so features are not dead
        return calibrate_batchnorm(build_model('MobileNetV2', task, 32, head=head, weights=None, **kw), images(32))
    size = lambda k: max(min_image_size(k), 48)
    b = {f'07 scratch {k}': (lambda k=k: build_scratch_cnn(k, size(k)), 'multiclass', size(k)) for k in (EXPERIMENTS if every else ['sample'])}
    b['08 transfer MobileNetV2/s2_16'] = (lambda: mobilenet('sigmoid', 's2_16'), 'sigmoid', 32)
    b['09 finetune MobileNetV2 from block_15'] = (lambda: set_trainable(mobilenet('multiclass', 's3_gap512'), 'block_15'), 'multiclass', 32)
    b['10 member scratch/sample'] = (lambda: build_member(MemberSpec('a', 'scratch', 'sample', 'regression'), 48), 'regression', 48)
    if every: b['10 member transfer/MobileNetV2'] = (lambda: build_member(MemberSpec('b', 'transfer', 'MobileNetV2', 'ordinal'), 32,
                                                                          images=images(32)), 'ordinal', 32)
    b['13 lesions scratch'] = (lambda: lesion_model('scratch', 64), 'multilabel', 64)
    b['13 lesions MobileNetV2'] = (lambda: calibrate_batchnorm(lesion_model('MobileNetV2', 32), images(32)), 'multilabel', 32)
    for t in TASKS: b[f'03a task {t}'] = (lambda t=t: build_scratch_cnn('sample', 48, t), t, 48)
    return b


def _step(model, task, size):
    "Train `model` (compiled by the caller) one step on 4 images; what changed and how it went."
    import numpy as np
    x, y = _data(task, size)
    before = [v.numpy().copy() for v in model.trainable_weights]
    loss = model.fit(x, y, batch_size=4, epochs=1, verbose=0, shuffle=False).history['loss'][0]
    changed = [not np.array_equal(b, v.numpy()) for b, v in zip(before, model.trainable_weights)]
    logits = model.get_layer('logits').kernel
    return {'loss': float(loss), 'replicas': int(model.distribute_strategy.num_replicas_in_sync), 'strategy': id(model.distribute_strategy),
            'variable': type(getattr(logits, 'value', logits)).__name__, 'changed': sum(changed), 'trainable': len(changed),
            'logits_changed': changed[[id(v) for v in model.trainable_weights].index(id(logits))]}


def mirrored():
    "Every builder built inside a 2-CPU MirroredStrategy's scope, compiled with compile_for, trained one step."
    tf = _setup(2)
    from drbook.core import seed_everything
    from drbook.train import compile_for
    strategy = tf.distribute.MirroredStrategy(DEVICES)
    images = lambda size: _data('multiclass', size, 8, seed=1)[0]
    out = {'devices': [d.name for d in tf.config.list_logical_devices('CPU')], 'replicas': strategy.num_replicas_in_sync, 'models': {}}
    for name, (build, task, size) in _builders(images).items():
        seed_everything(0); t = time.time()
        with strategy.scope(): model = build()
        out['models'][name] = {**_step(compile_for(model, task), task, size), 'seconds': round(time.time() - t, 2)}
    return out


def chapters():
    """The chapters' own path, `compile_for(builder(...))` with no scope of their own, on a machine where get_strategy()
    returns a MirroredStrategy (several GPUs); here over two CPUs."""
    tf = _setup(2)
    import warnings, tempfile
    import keras
    import drbook.core, drbook.train
    from drbook.train import compile_for, fit
    from drbook.tasks import output_layer
    drbook.core._STRATEGY[:] = [tf.distribute.MirroredStrategy(DEVICES)]  # what get_strategy makes with several GPUs
    out = {}
    def run(name, build, task, size):
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter('always')
            try: out[name] = _step(compile_for(build(), task), task, size)
            except Exception as e: out[name] = {'error': f'{type(e).__name__}: {e}'[:300]}
        out[name]['warnings'] = [str(w.message) for w in caught if 'one device' in str(w.message)]
    images = lambda size: _data('multiclass', size, 8, seed=1)[0]
    for name, (build, task, size) in _builders(images, every=False).items():
        if not name.startswith('03a'): run(name, build, task, size)
    def plain():
        inp = keras.Input((32, 32, 3)); x = keras.layers.GlobalAveragePooling2D()(keras.layers.Conv2D(4, 3)(inp))
        return keras.Model(inp, output_layer(x, 'multiclass'))
    run('plain model built outside any scope', plain, 'multiclass', 32)
    try:  # built outside, compiled inside the scope: Keras refuses at the first step, naming the scope
        model = plain()
        with drbook.core.strategy_scope(): compile_for(model, 'multiclass')
        _step(model, 'multiclass', 32)
        out['outside, compiled inside a scope'] = {'error': None}
    except Exception as e: out['outside, compiled inside a scope'] = {'error': str(e)}
    # drbook.train.fit (checkpoints, history) on a model built by strategy_scope
    from drbook.scratch import build_scratch_cnn
    x, y = _data('multiclass', 48, 8)
    ds = tf.data.Dataset.from_tensor_slices((x, y)).batch(4)
    model = compile_for(build_scratch_cnn('sample', 48), 'multiclass')
    with tempfile.TemporaryDirectory() as d:
        h = fit(model, ds, ds, d, epochs=2, task='multiclass', verbose=0)
        out['drbook.train.fit'] = {'loss': h['loss'], 'replicas': int(model.distribute_strategy.num_replicas_in_sync),
                                   'strategy': id(model.distribute_strategy),
                                   'files': sorted(p.name for p in Path(d).iterdir())}
    return out


def mixed():
    "Under mixed_float16: output dtypes, a step's loss and Grad-CAM maps of every builder (one CPU device)."
    _setup(1)
    import numpy as np, keras
    from drbook.core import seed_everything
    from drbook.train import compile_for, use_mixed_precision
    from drbook.gradcam import gradcam
    out = {'models': {}}
    try:
        out['enabled'] = use_mixed_precision(True)
        out['policy'] = keras.mixed_precision.global_policy().name
        images = lambda size: _data('multiclass', size, 8, seed=1)[0]
        for name, (build, task, size) in _builders(images, every=False).items():
            seed_everything(0); t = time.time()
            model = compile_for(build(), task)
            x, y = _data(task, size)
            hidden = [l.compute_dtype for l in model.layers if isinstance(l, keras.layers.Conv2D)]
            r = _step(model, task, size)
            loss = model.compute_loss(x, y, model(x, training=False))
            cam = gradcam(model, x[:2])
            out['models'][name] = {'output': str(model.output.dtype), 'predict': str(model.predict(x, verbose=0).dtype),
                'logits': model.get_layer('logits').compute_dtype, 'predictions': model.layers[-1].compute_dtype,
                'hidden': sorted(set(hidden)), 'loss_dtype': keras.backend.standardize_dtype(loss.dtype), 'loss': float(loss), 'fit_loss': r['loss'],
                'loss_scale': type(model.optimizer).__name__, 'cam_dtype': str(cam.dtype), 'cam_shape': list(cam.shape),
                'cam_finite': bool(np.isfinite(cam).all()), 'cam_range': [float(cam.min()), float(cam.max())],
                'seconds': round(time.time() - t, 2)}
    finally:
        use_mixed_precision(False)
        out['restored'] = keras.mixed_precision.global_policy().name
    return out


# ---------------------------------------------------------------------------------------------------------------------
# The tests: each runs one worker in a fresh process.

def worker(mode:str)->dict:
    "Run this file as `python test_distribute.py MODE` in a fresh process; its JSON result."
    env = {**os.environ, 'TF_CPP_MIN_LOG_LEVEL': '3', 'CUDA_VISIBLE_DEVICES': '', 'PYTHONPATH': str(ROOT)}
    r = subprocess.run([sys.executable, __file__, mode], cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, f"the {mode!r} worker (python {Path(__file__).name} {mode}) failed:\n{r.stderr[-4000:]}"
    return json.loads(r.stdout.strip().splitlines()[-1])


CHAPTERS = ('07 scratch', '08 transfer', '09 finetune', '10 member scratch', '13 lesions scratch', '13 lesions MobileNetV2')
TASK_HEADS = tuple(f'03a task {t}' for t in ('multiclass', 'sigmoid', 'ordinal', 'regression', 'multilabel'))


def covered(models:dict, extra=TASK_HEADS):
    "Every chapter (and every task's output head) has a builder in `models`."
    missing = [c for c in CHAPTERS + tuple(extra) if not any(n.startswith(c) for n in models)]
    assert not missing, f"no builder checked for {missing}"


@pytest.mark.slow
def test_mirrored_two_cpus_trains_every_builder():
    got = worker('mirrored')
    assert got['devices'] == ['/device:CPU:0', '/device:CPU:1'] and got['replicas'] == 2
    covered(got['models'], TASK_HEADS + ('07 scratch exp1', '07 scratch exp5', '10 member transfer'))
    for name, r in got['models'].items():
        assert r['replicas'] == 2, f"{name}: trained on {r['replicas']} replica(s), not 2"
        assert r['variable'] == 'MirroredVariable', f"{name}: its logits kernel is a {r['variable']}, not mirrored on both devices"
        assert r['loss'] == r['loss'] and abs(r['loss']) < 1e6, f"{name}: loss {r['loss']}"
        assert r['logits_changed'] and r['changed'] >= 2, f"{name}: {r['changed']} of {r['trainable']} weights changed after a step"


@pytest.mark.slow
def test_chapters_build_and_compile_under_one_strategy():
    "As on a machine with several GPUs: get_strategy() a MirroredStrategy over two devices, the chapters' compile_for(build(...))."
    got = worker('chapters')
    covered(got, ())
    errors = {k: v['error'] for k, v in got.items() if v.get('error') and k != 'outside, compiled inside a scope'}
    assert not errors, f"builders that fail to train under MirroredStrategy: {errors}"
    for name, r in got.items():
        if name.startswith(('07', '08', '09', '10', '13', '03a')) or name == 'drbook.train.fit':
            assert r['replicas'] == 2 and not r.get('warnings'), f"{name}: trains on {r['replicas']} device(s), not 2: {r}"
        if name.startswith(('07', '08', '09', '10', '13', '03a')):
            assert r['logits_changed'], f"{name}: the step changed nothing"
    shared = {r['strategy'] for k, r in got.items() if r.get('replicas') == 2}
    assert len(shared) == 1, f"the distributed models use {len(shared)} MirroredStrategy objects, not one (their all-reduces clash)"
    assert got['plain model built outside any scope']['replicas'] == 1 and got['plain model built outside any scope']['warnings']
    assert 'strategy.scope()' in (got['outside, compiled inside a scope']['error'] or ''), got['outside, compiled inside a scope']
    f = got['drbook.train.fit']
    assert len(f['loss']) == 2 and all(l == l for l in f['loss'])
    assert f['files'] == ['history.csv', 'history.json', 'model.keras']


@pytest.mark.slow
def test_mixed_precision_keeps_outputs_losses_and_maps_float32():
    got = worker('mixed')
    assert got['enabled'] and got['policy'] == 'mixed_float16' and got['restored'] == 'float32'
    covered(got['models'])
    for name, r in got['models'].items():
        assert 'float16' in r['hidden'], f"{name}: no convolution computes in float16 ({r['hidden']}): mixed precision is not on"
        assert (r['output'], r['predict'], r['logits'], r['predictions']) == ('float32',) * 4, f"{name}: {r}"
        assert r['loss_dtype'] == 'float32' and r['loss'] == r['loss'] and abs(r['loss']) < 1e6, f"{name}: loss {r['loss']} ({r['loss_dtype']})"
        assert r['fit_loss'] == r['fit_loss'] and abs(r['fit_loss']) < 1e6, f"{name}: the step's loss is {r['fit_loss']}"
        assert r['loss_scale'] == 'LossScaleOptimizer', f"{name}: optimiser {r['loss_scale']} (float16 gradients need loss scaling)"
        size = r['cam_shape'][1]
        assert r['cam_dtype'] == 'float32' and r['cam_finite'] and r['cam_shape'] == [2, size, size], f"{name}: Grad-CAM {r}"
        assert 0 <= r['cam_range'][0] <= r['cam_range'][1] <= 1, f"{name}: Grad-CAM range {r['cam_range']}"


if __name__ == '__main__':
    print(json.dumps({'mirrored': mirrored, 'chapters': chapters, 'mixed': mixed}[sys.argv[1]]()))
