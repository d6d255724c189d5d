"""drbook.train on small in-memory datasets: heads, losses, fit with checkpoints, resume after interruption, TTA, save/load."""
import json, os
os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')
import numpy as np
import pytest
import keras
import tensorflow as tf
from drbook.core import MULTILABEL, seed_everything
from drbook.tasks import TASKS, output_layer
from drbook import train

SIZE = 12
TASK = 'multiclass'  # the task of the toy runs unless a test says otherwise

def encode(grades, task):
    "Targets for `task` in the encodings drbook's pipeline uses (toy lesion j present when grade > j)."
    g = np.asarray(grades)
    if task == 'multiclass': return g.astype('int32')
    if task == 'sigmoid': return np.eye(5, dtype='float32')[g]
    if task == 'ordinal': return (g[:, None] > np.arange(4)).astype('float32')
    if task == 'regression': return g[:, None].astype('float32')
    return np.c_[g[:, None] > np.arange(4), g == 0].astype('float32')

def toy(n, task='multiclass', seed=0, batch_size=16):
    "Noisy images whose red channel grows with the grade, batched with their `task` targets; and the grades."
    rng = np.random.default_rng(seed)
    grades = rng.integers(0, 5, n)
    x = rng.uniform(0, 100, (n, SIZE, SIZE, 3)).astype('float32')
    x[..., 0] += 35 * grades[:, None, None]
    return tf.data.Dataset.from_tensor_slices((x, encode(grades, task))).batch(batch_size), grades

def tiny(task='multiclass'):
    inputs = keras.Input((SIZE, SIZE, 3))
    x = keras.layers.Rescaling(1/255)(inputs)
    x = keras.layers.Conv2D(8, 3, activation='elu')(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    return keras.Model(inputs, output_layer(x, task))

class Interrupt(keras.callbacks.Callback):
    "Raise at the start of epoch `at` (0-based), or in its second batch when `mid_epoch`."
    def __init__(self, at, mid_epoch=False): super().__init__(); self.at, self.mid, self.epoch = at, mid_epoch, None
    def on_epoch_begin(self, epoch, logs=None):
        self.epoch = epoch
        if epoch == self.at and not self.mid: raise KeyboardInterrupt('killed')
    def on_train_batch_end(self, batch, logs=None):
        if self.epoch == self.at and self.mid and batch == 1: raise KeyboardInterrupt('killed mid-epoch')

class Recorder(keras.callbacks.Callback):
    "The epochs this run trained, and the weights it started its first epoch with."
    def __init__(self): super().__init__(); self.epochs, self.start_weights = [], None
    def on_epoch_begin(self, epoch, logs=None):
        if not self.epochs: self.start_weights = self.model.get_weights()
        self.epochs.append(epoch)

@pytest.fixture(autouse=True)
def _float32():
    keras.mixed_precision.set_global_policy('float32')
    yield
    keras.mixed_precision.set_global_policy('float32')


def test_output_layer_stays_float32_under_mixed_precision():
    assert train.use_mixed_precision(True) is True
    m = tiny('multiclass')
    assert m.get_layer('predictions').compute_dtype == 'float32' and m.layers[2].compute_dtype == 'float16'
    assert m(np.zeros((1, SIZE, SIZE, 3), 'float32')).dtype == 'float32'
    assert train.use_mixed_precision(False) is False
    assert keras.mixed_precision.global_policy().name == 'float32'


def test_pos_weight_as_list_or_dict():
    w = {'MA': 2.0, 'HE': 1.0, 'EX': 3.0, 'SE': 4.0, 'healthy': 0.5}
    assert train.compile_for(tiny('multilabel'), 'multilabel', pos_weight=w).loss.pos_weight == [2, 1, 3, 4, 0.5]
    assert train.compile_for(tiny('ordinal'), 'ordinal', pos_weight={0: 1, 1: 2, 2: 3, 3: 4}).loss.pos_weight == [1, 2, 3, 4]
    assert train.compile_for(tiny('sigmoid'), 'sigmoid', pos_weight=[1, 2, 3, 4, 5]).loss.pos_weight == [1, 2, 3, 4, 5]
    with pytest.raises(ValueError, match=r"no weight for \['healthy'\]"):
        train.compile_for(tiny('multilabel'), 'multilabel', pos_weight={k: 1 for k in MULTILABEL[:-1]})


@pytest.mark.parametrize('task,loss,expected', [('multiclass', None, 'SparseCategoricalCrossentropy'),
    ('sigmoid', None, 'BinaryCrossentropy'), ('ordinal', None, 'BinaryCrossentropy'),
    ('regression', None, 'MeanSquaredError'), ('regression', 'huber', 'Huber'), ('regression', 'smooth_l1', 'Huber'),
    ('multilabel', None, 'WeightedBinaryCrossentropy')])
def test_compile_for_chooses_the_loss(task, loss, expected):
    m = train.compile_for(tiny(task), task, loss=loss)
    assert type(m.loss).__name__ == expected


def test_compile_for_optimisers_and_errors():
    assert isinstance(train.compile_for(tiny(), 'multiclass', optimizer='adam', learning_rate=1e-4).optimizer, keras.optimizers.Adam)
    sgd = train.compile_for(tiny(), 'multiclass', optimizer='sgd', learning_rate=0.01, momentum=0.8).optimizer
    assert isinstance(sgd, keras.optimizers.SGD) and sgd.momentum == 0.8
    assert float(sgd.learning_rate) == pytest.approx(0.01)
    own = keras.optimizers.RMSprop(0.002)
    assert train.compile_for(tiny(), 'multiclass', optimizer=own).optimizer is own
    with pytest.raises(ValueError, match='unknown optimizer'): train.compile_for(tiny(), 'multiclass', optimizer='adagrad-ish')
    with pytest.raises(ValueError, match='class_weight'): train.compile_for(tiny(), 'multiclass', pos_weight=[1] * 5)
    with pytest.raises(ValueError, match='3 weights'): train.compile_for(tiny('multilabel'), 'multilabel', pos_weight=[1] * 3)
    with pytest.raises(ValueError, match="'mae'"): train.compile_for(tiny('regression'), 'regression', loss='mae')


@pytest.mark.parametrize('task', [t for t in TASKS if t != 'multilabel'])
def test_class_weights_follow_the_grade_in_every_encoding(task):
    ds, grades = toy(30, task, seed=3, batch_size=30)
    cw = {0: 0.1, 1: 1.0, 2: 2.0, 3: 3.0, 4: 4.0}
    w = next(iter(train._with_class_weight(ds, cw, task)))[2].numpy()
    np.testing.assert_allclose(w, [cw[g] for g in grades])


def test_class_weighted_loss_is_the_weighted_sum_of_per_image_losses_over_the_batch():
    "S1's class-weighted loss as fit trains it: each image's cross entropy times its grade's weight, summed, over the batch size."
    ds, grades = toy(30, TASK, seed=4, batch_size=30)
    cw = {0: 0.5, 1: 1.0, 2: 2.0, 3: 3.0, 4: 0.25}
    model = train.compile_for(tiny(TASK), TASK)
    x, y = next(iter(ds))
    p = np.clip(model.predict(x, verbose=0), 1e-7, 1 - 1e-7)
    per_image = -np.log(p[np.arange(len(grades)), grades])
    w = np.array([cw[g] for g in grades])
    loss = model.evaluate(train._with_class_weight(ds, cw, TASK), verbose=0, return_dict=True)['loss']
    np.testing.assert_allclose(loss, (w * per_image).sum() / len(grades), rtol=1e-5)
    assert not np.isclose(loss, per_image.mean(), rtol=1e-3)  # the weights change it


def test_class_weight_refused_for_lesion_labels():
    with pytest.raises(ValueError, match='pos_weight'): train._with_class_weight(toy(8, 'multilabel')[0], [1] * 5, 'multilabel')


def test_fit_learns_saves_and_reloads(tmp_path):
    seed_everything(0)
    tr, va = toy(320)[0], toy(80, seed=1)[0]
    m = train.compile_for(tiny(), 'multiclass', learning_rate=3e-2)
    h = train.fit(m, tr, va, tmp_path, task=TASK, epochs=6, verbose=0)
    assert sorted(p.name for p in tmp_path.iterdir()) == ['history.csv', 'history.json', 'model.keras']
    assert len(h['loss']) == 6 and {'accuracy', 'val_loss', 'val_accuracy'} <= set(h)
    assert json.loads((tmp_path/'history.json').read_text()) == h
    assert max(h['val_accuracy']) > 0.5  # chance is 0.2
    # the returned model is the best epoch's, identical to the saved file
    best = int(np.argmin(h['val_loss']))
    assert m.evaluate(va, verbose=0, return_dict=True)['loss'] == pytest.approx(h['val_loss'][best], rel=1e-4)
    np.testing.assert_allclose(train.load_model(tmp_path/'model.keras').predict(va, verbose=0),
                               m.predict(va, verbose=0), atol=1e-5)


@pytest.mark.parametrize('mid_epoch', [False, True])
def test_interrupted_fit_resumes_at_next_epoch(tmp_path, mid_epoch):
    seed_everything(0)
    tr, va = toy(96)[0], toy(32, seed=1)[0]
    k, epochs = 2, 5
    first = train.compile_for(tiny(), 'multiclass', learning_rate=1e-2)
    with pytest.raises(KeyboardInterrupt):
        train.fit(first, tr, va, tmp_path, task=TASK, epochs=epochs, patience=10, verbose=0, callbacks=[Interrupt(k, mid_epoch)],
                  checkpoint_every=0)
    # after epoch k (1-based) the resume folder holds that epoch's model, and only it (killed mid-epoch: the weights moved on since)
    assert [p.name for p in (tmp_path/'resume').iterdir()] == [f'epoch_{k:04d}.keras']
    saved = train.load_model(tmp_path/'resume'/f'epoch_{k:04d}.keras')
    if not mid_epoch:
        for a, b in zip(saved.get_weights(), first.get_weights()): np.testing.assert_array_equal(a, b)

    second, rec = train.compile_for(tiny(), 'multiclass', learning_rate=1e-2), Recorder()
    h = train.fit(second, tr, va, tmp_path, task=TASK, epochs=epochs, patience=10, verbose=0, callbacks=[rec])
    assert rec.epochs == list(range(k, epochs))  # 0-based: starts at epoch k+1
    for a, b in zip(rec.start_weights, saved.get_weights()): np.testing.assert_array_equal(a, b)
    assert len(h['loss']) == epochs and not any(np.isnan(h['loss']))
    assert not (tmp_path/'resume').exists()
    assert json.loads((tmp_path/'history.json').read_text()) == h


def test_patience_zero_trains_exactly_the_epochs_asked_for(tmp_path):
    "S1's 15 epochs: with patience=0 no early stopping, so a validation loss that never improves still runs every epoch."
    tr, va = toy(32)[0], toy(16, seed=1)[0]
    h = train.fit(train.compile_for(tiny(), 'multiclass', optimizer='sgd', learning_rate=0.0), tr, va, tmp_path, task=TASK, epochs=6,
                  patience=0, verbose=0)
    assert len(h['loss']) == 6


def test_early_stopping_counts_epochs_before_an_interruption(tmp_path):
    # with a zero learning rate the validation loss never improves: stop after `patience` epochs past the first
    tr, va = toy(32)[0], toy(16, seed=1)[0]
    patience = 3
    h = train.fit(train.compile_for(tiny(), 'multiclass', optimizer='sgd', learning_rate=0.0), tr, va, tmp_path/'a', task=TASK, epochs=20,
                  patience=patience, verbose=0)
    assert len(h['loss']) == patience + 1
    # the same run killed after 2 epochs stops at the same epoch once resumed
    m = train.compile_for(tiny(), 'multiclass', optimizer='sgd', learning_rate=0.0)
    with pytest.raises(KeyboardInterrupt):
        train.fit(m, tr, va, tmp_path/'b', task=TASK, epochs=20, patience=patience, verbose=0, callbacks=[Interrupt(2)], checkpoint_every=0)
    h = train.fit(train.compile_for(tiny(), 'multiclass', optimizer='sgd', learning_rate=0.0), tr, va, tmp_path/'b', task=TASK, epochs=20,
                  patience=patience, verbose=0)
    assert len(h['loss']) == patience + 1


def test_resumed_checkpoint_keeps_the_earlier_best(tmp_path):
    seed_everything(0)
    tr, va = toy(96)[0], toy(32, seed=1)[0]
    m = train.compile_for(tiny(), 'multiclass', learning_rate=1e-2)
    with pytest.raises(KeyboardInterrupt):
        train.fit(m, tr, va, tmp_path, task=TASK, epochs=4, verbose=0, callbacks=[Interrupt(2)], checkpoint_every=0)
    best_before = train.load_model(tmp_path/'model.keras').evaluate(va, verbose=0, return_dict=True)['loss']
    # resume with a learning rate so large that every later epoch is worse: the earlier best must stay
    m2 = train.compile_for(tiny(), 'multiclass', optimizer='sgd', learning_rate=50.0)
    h = train.fit(m2, tr, va, tmp_path, task=TASK, epochs=4, verbose=0)
    assert min(h['val_loss'][2:]) > min(h['val_loss'][:2])
    final = train.load_model(tmp_path/'model.keras').evaluate(va, verbose=0, return_dict=True)['loss']
    assert final == pytest.approx(best_before, rel=1e-5)


def test_fresh_fit_in_a_finished_run_folder_starts_over(tmp_path):
    tr, va = toy(32)[0], toy(16, seed=1)[0]
    train.fit(train.compile_for(tiny(), 'multiclass'), tr, va, tmp_path, task=TASK, epochs=3, verbose=0)
    m, rec = train.compile_for(tiny(), 'multiclass'), Recorder()
    h = train.fit(m, tr, va, tmp_path, task=TASK, epochs=2, verbose=0, callbacks=[rec])
    assert rec.epochs == [0, 1] and len(h['loss']) == 2


def test_fit_needs_validation_data_to_monitor_it(tmp_path):
    with pytest.raises(ValueError, match='validation data'):
        train.fit(train.compile_for(tiny(), 'multiclass'), toy(8)[0], None, tmp_path, task=TASK, epochs=1)


def test_fit_with_reduce_lr_logs_the_learning_rate(tmp_path):
    tr, va = toy(32)[0], toy(16, seed=1)[0]
    h = train.fit(train.compile_for(tiny(), 'multiclass', optimizer='sgd', learning_rate=0.0), tr, va, tmp_path, task=TASK, epochs=3,
                  patience=3, reduce_lr=True, verbose=0)
    assert 'learning_rate' in h and len(h['learning_rate']) == 3


@pytest.mark.parametrize('task', list(TASKS))
def test_every_task_trains_and_predicts(tmp_path, task):
    seed_everything(0)
    tr, va = toy(64, task)[0], toy(32, task, seed=1)[0]
    y = encode(np.arange(10) % 5, 'multilabel')
    pos_weight = dict(zip(MULTILABEL, (len(y) - y.sum(0)) / y.sum(0))) if task == 'multilabel' else None
    m = train.compile_for(tiny(task), task, learning_rate=1e-2, pos_weight=pos_weight)
    h = train.fit(m, tr, va, tmp_path, task=task, epochs=2, verbose=0, class_weight=None if task == 'multilabel' else [1, 2, 1, 2, 1])
    assert len(h['val_loss']) == 2 and np.isfinite(h['val_loss']).all()
    out = train.predict(m, va)
    assert out.shape == ((32,) if task == 'regression' else (32, m.output.shape[-1]))
    reloaded = train.load_model(tmp_path/'model.keras')  # safe_mode=True with drbook's registered loss and metrics
    np.testing.assert_allclose(train.predict(reloaded, va), out, atol=1e-5)
    assert reloaded.evaluate(va, verbose=0, return_dict=True).keys() == m.evaluate(va, verbose=0, return_dict=True).keys()


def test_predict_tta_averages_the_four_flips():
    seed_everything(0)
    va, _ = toy(20, seed=2, batch_size=8)
    m = tiny()
    x = np.concatenate([b for b, _ in va])
    flips = [x, x[:, :, ::-1], x[:, ::-1], x[:, ::-1, ::-1]]
    np.testing.assert_allclose(train.predict(m, va, tta=True), np.mean([m.predict(f, verbose=0) for f in flips], 0), atol=1e-6)
    np.testing.assert_allclose(train.predict(m, va), m.predict(x, verbose=0), atol=1e-6)
    # images alone (no targets) are accepted too
    np.testing.assert_allclose(train.predict(m, tf.data.Dataset.from_tensor_slices(x).batch(8)), m.predict(x, verbose=0), atol=1e-6)


def test_tta_is_exact_for_a_flip_invariant_model():
    inputs = keras.Input((SIZE, SIZE, 3))
    m = keras.Model(inputs, output_layer(keras.layers.GlobalAveragePooling2D()(inputs), 'multiclass'))
    va, _ = toy(16, seed=4)
    np.testing.assert_allclose(train.predict(m, va, tta=True), train.predict(m, va), atol=1e-6)


def test_save_model_is_atomic_and_load_is_safe(tmp_path):
    m = train.compile_for(tiny('multilabel'), 'multilabel', pos_weight=[1, 2, 3, 4, 5])
    p = train.save_model(m, tmp_path/'sub'/'m.keras')
    assert p.exists() and os.listdir(tmp_path/'sub') == ['m.keras']
    assert train.load_model(p).loss.pos_weight == [1, 2, 3, 4, 5]
    with pytest.raises(ValueError, match='.keras'): train.save_model(m, tmp_path/'m.h5')
    with pytest.raises(FileNotFoundError, match='no model at'): train.load_model(tmp_path/'nope.keras')
    # a model with arbitrary Python code inside is refused by safe_mode
    inputs = keras.Input((2,))
    lam = keras.Model(inputs, keras.layers.Lambda(lambda t: t * 2)(inputs))
    train.save_model(lam, tmp_path/'lam.keras')
    with pytest.raises(ValueError, match='(?i)unsafe|safe_mode'): train.load_model(tmp_path/'lam.keras')
