#!/usr/bin/env python
"""Pretrain the 'drbook-synthetic' backbone: a MobileNetV2 (alpha 0.35) trained from random weights on a source task
that is not the chapters' -- which lesion types (MA, HE, EX, SE, NV) an image shows -- on synthetic fundus images drawn
by drbook.synthetic with another seed and stronger camera effects than data_samples/.

    .venv/bin/python tools/pretrain_backbone.py            # writes pretrained/ (weights, MANIFEST.sha256, metrics JSON)
    .venv/bin/python tools/pretrain_backbone.py --out /tmp/p2   # a second copy elsewhere, to compare its metrics

Seeded; about 15 minutes on two CPU cores. The JSON beside the weights records every setting, the time taken and the
source-task metrics on held-out images (per-label AUC and accuracy). A rerun gives metrics within the tolerance
recorded there (CPU TensorFlow is not bit-exact across runs, so the file itself may differ)."""
from __future__ import annotations
import argparse, hashlib, json, os, platform, sys, tempfile, time
from dataclasses import asdict
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from drbook.synthetic import Realism, make_fundus, sample_patient  # noqa: E402

LABELS = ('MA', 'HE', 'EX', 'SE', 'NV')  # the source task: is each lesion type present?
REALISM = Realism(illumination=0.5, vignette=0.6, blur=1.4, noise=7.0, jitter=0.14, jpeg_quality=(50, 85))  # data_samples: Realism()
TOLERANCE = {'mean_auc': 0.03, 'mean_accuracy': 0.03}  # a rerun's source-task metrics lie this close to the recorded ones


def draw(job):
    "One synthetic photograph (JPEG-compressed as a camera would) resized with padding to `size`, and its labels."
    import cv2
    seed, grade, frame, size = job
    rng = np.random.default_rng([seed, 7])
    eye = 'left' if rng.uniform() < 0.5 else 'right'
    image, masks, scene = make_fundus(seed, grade, frame, eye, sample_patient(rng), REALISM)
    ok, buf = cv2.imencode('.jpg', image[..., ::-1], [cv2.IMWRITE_JPEG_QUALITY, scene['camera']['jpeg_quality']])
    image = cv2.imdecode(buf, cv2.IMREAD_COLOR)[..., ::-1]
    h, w = image.shape[:2]; s = size / max(h, w)  # keep the aspect ratio and pad black, as drbook.pipeline.load_image
    small = cv2.resize(image, (round(w * s), round(h * s)), interpolation=cv2.INTER_AREA)
    out = np.zeros((size, size, 3), np.uint8); y0, x0 = (size - small.shape[0]) // 2, (size - small.shape[1]) // 2
    out[y0:y0 + small.shape[0], x0:x0 + small.shape[1]] = small
    return out, np.array([masks[t].any() for t in LABELS], np.float32)


def dataset(n, seed, frame, size, processes):
    "`n` images (grades 0-4 in turn, so every lesion type is common) and their labels, drawn in parallel."
    from joblib import Parallel, delayed
    seeds = np.random.default_rng(seed).integers(2 ** 31, size=n)
    out = Parallel(n_jobs=processes, batch_size=32)(delayed(draw)((int(s), i % 5, frame, size)) for i, s in enumerate(seeds))
    return np.stack([o[0] for o in out]), np.stack([o[1] for o in out])


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    ap.add_argument('--out', default=str(ROOT/'pretrained'), help='folder for the weights, MANIFEST.sha256 and the metrics JSON')
    ap.add_argument('--seed', type=int, default=7, help='seed of the images, the split and the weights (data_samples/ uses 2026)')
    ap.add_argument('--n-train', type=int, default=6000); ap.add_argument('--n-val', type=int, default=1000)
    ap.add_argument('--frame', type=int, default=256, help='frame height the images are drawn at')
    ap.add_argument('--image-size', type=int, default=112, help='input size of the backbone during pretraining')
    ap.add_argument('--epochs', type=int, default=15); ap.add_argument('--batch-size', type=int, default=32)
    ap.add_argument('--learning-rate', type=float, default=2e-3, help='peak of the cosine-decayed Adam learning rate')
    ap.add_argument('--processes', type=int, default=2)
    a = ap.parse_args(argv)
    t0 = time.time()
    import keras, tensorflow as tf
    from drbook.transfer import PRETRAINED, build_model, backbone_arrays, feature_model
    spec = PRETRAINED['drbook-synthetic']
    keras.utils.set_random_seed(a.seed)
    x_train, y_train = dataset(a.n_train, a.seed, a.frame, a.image_size, a.processes)
    x_val, y_val = dataset(a.n_val, a.seed + 1, a.frame, a.image_size, a.processes)
    t_data = time.time() - t0
    print(f'{len(x_train)} + {len(x_val)} images in {t_data:.0f} s; label shares {dict(zip(LABELS, y_train.mean(0).round(2)))}', flush=True)

    features = feature_model(build_model(spec.backbone, 'multilabel', a.image_size, weights=None, trainable=True))
    pooled = keras.layers.GlobalAveragePooling2D(name='pretrain_gap')(features.output)
    model = keras.Model(features.input, keras.layers.Dense(len(LABELS), activation='sigmoid', name='lesions')(pooled))
    for layer in model.layers:  # Keras's MobileNetV2 uses momentum 0.999: its moving averages would lag far behind ~1000 steps
        if isinstance(layer, keras.layers.BatchNormalization): layer.momentum = 0.99
    steps = int(np.ceil(len(x_train) / a.batch_size)) * a.epochs
    model.compile(keras.optimizers.Adam(keras.optimizers.schedules.CosineDecay(a.learning_rate, steps)), 'binary_crossentropy',
                  metrics=[keras.metrics.BinaryAccuracy(name='accuracy'), keras.metrics.AUC(name='auc', multi_label=True)])
    flip = lambda x, y: (tf.image.random_flip_up_down(tf.image.random_flip_left_right(x, seed=a.seed), seed=a.seed), y)
    train = (tf.data.Dataset.from_tensor_slices((x_train, y_train)).shuffle(len(x_train), seed=a.seed)
             .map(lambda x, y: (tf.cast(x, tf.float32), y)).map(flip).batch(a.batch_size).prefetch(tf.data.AUTOTUNE))
    val = tf.data.Dataset.from_tensor_slices((x_val.astype('float32'), y_val)).batch(64)
    history = model.fit(train, validation_data=val, epochs=a.epochs, verbose=2)

    from sklearn.metrics import roc_auc_score
    p = model.predict(val, verbose=0)
    aucs = {t: round(float(roc_auc_score(y_val[:, i], p[:, i])), 4) for i, t in enumerate(LABELS)}
    accs = {t: round(float(((p[:, i] > 0.5) == y_val[:, i]).mean()), 4) for i, t in enumerate(LABELS)}
    metrics = {'auc': aucs, 'accuracy': accs, 'mean_auc': round(float(np.mean(list(aucs.values()))), 4),
               'mean_accuracy': round(float(np.mean(list(accs.values()))), 4),
               'val_loss': round(float(history.history['val_loss'][-1]), 4), 'label_share_val': dict(zip(LABELS, y_val.mean(0).round(3).tolist()))}
    print(json.dumps(metrics), flush=True)

    out = Path(a.out); out.mkdir(parents=True, exist_ok=True)
    weights = out/spec.file
    with tempfile.NamedTemporaryFile(dir=out, suffix='.npz', delete=False) as f: np.savez(f, **backbone_arrays(model))
    os.replace(f.name, weights); weights.chmod(0o644)
    sha = hashlib.sha256(weights.read_bytes()).hexdigest()
    (out/'MANIFEST.sha256').write_text(f'{sha}  {weights.name}\n')
    record = {'weights': 'drbook-synthetic', 'file': weights.name, 'sha256': sha, 'backbone': spec.backbone, 'about': spec.about,
              'script': 'tools/pretrain_backbone.py', 'settings': {**vars(a), 'out': None, 'labels': LABELS, 'realism': asdict(REALISM),
                                                                   'optimizer': 'adam, cosine decay', 'augment': 'flips',
                                                                   'batchnorm_momentum': 0.99},
              'source_task_metrics': metrics, 'tolerance': TOLERANCE, 'seconds': round(time.time() - t0), 'data_seconds': round(t_data),
              'versions': {'python': platform.python_version(), 'tensorflow': tf.__version__, 'keras': keras.__version__, 'numpy': np.__version__}}
    (out/weights.name.replace('.npz', '.json')).write_text(json.dumps(record, indent=1) + '\n')
    print(f'wrote {weights} ({weights.stat().st_size / 1e6:.1f} MB, sha256 {sha[:16]}) in {time.time() - t0:.0f} s')


if __name__ == '__main__': main()
