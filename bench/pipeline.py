"""Is the input pipeline ever the bottleneck?

Images per second that `drbook.pipeline.make_dataset` delivers from its cache, with augmentation, against the images
per second of a MobileNetV2 (weights=None) training step at the same image size and batch size on the CPU. The
pipeline should deliver at least 3x the training rate, so that the model never waits for data.

Usage: python bench/pipeline.py [--size 128] [--batch 32] [--epochs 3] [--steps 10] [--augment s3] [--images 256]
Uses the synthetic samples (data_samples/) when present, else generated PNG discs in a temporary folder.
"""
import argparse, os, tempfile, time
os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')
from pathlib import Path
import cv2
import numpy as np
import pandas as pd

def generated_table(folder, n, size=512, seed=0):
    "`n` PNG 'fundus' discs with a little texture, grades 0–4 in turn."
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n):
        img = np.zeros((size, size, 3), np.uint8)
        cv2.circle(img, (size // 2, size // 2), size // 2 - 4, tuple(int(c) for c in rng.integers(20, 200, 3)), -1)
        img = cv2.add(img, rng.integers(0, 20, img.shape, dtype=np.uint8))  # noise, so PNG decoding does real work
        path = Path(folder)/f'disc{i:04d}.png'
        cv2.imwrite(str(path), img)
        rows.append({'image_path': str(path), 'image_id': path.stem, 'grade': i % 5})
    return pd.DataFrame(rows)

def load_table(n, folder):
    "The synthetic samples' table (repeated up to `n` rows when smaller), else `n` generated images."
    try:
        from drbook.data import read_samples
        table = read_samples()
        table = table[table['grade'].notna()]
        if len(table) == 0: raise FileNotFoundError('no graded images in the samples')
        reps = int(np.ceil(n / len(table)))
        return pd.concat([table] * reps).iloc[:n].reset_index(drop=True), 'data_samples/'
    except (ImportError, FileNotFoundError) as e:
        print(f'(synthetic samples not available: {e}; generating {n} PNGs)')
        return generated_table(folder, n), 'generated PNGs (512 px)'

def pipeline_rate(table, size, batch, augment, epochs):
    "Images per second over `epochs` passes of the cached, shuffled, augmented dataset (after one warm-up pass)."
    from drbook.pipeline import make_dataset
    ds = make_dataset(table, 'multiclass', size, batch, augment=augment, shuffle=True, cache=True)
    for _ in ds: pass  # warm-up: decodes every file once and fills the cache
    start, n = time.perf_counter(), 0
    for _ in range(epochs):
        for x, _ in ds: n += int(x.shape[0])
    return n / (time.perf_counter() - start)

def training_rate(size, batch, steps):
    "Images per second of MobileNetV2 (random weights) training steps on one fixed batch (after a warm-up step)."
    import keras
    keras.utils.set_random_seed(0)
    inputs = keras.Input((size, size, 3))
    x = keras.layers.Rescaling(1 / 127.5, offset=-1)(inputs)  # MobileNetV2's own input scaling
    outputs = keras.applications.MobileNetV2(input_shape=(size, size, 3), weights=None, classes=5)(x)
    model = keras.Model(inputs, outputs)
    model.compile(optimizer='adam', loss='sparse_categorical_crossentropy')
    rng = np.random.default_rng(0)
    x, y = rng.uniform(0, 255, (batch, size, size, 3)).astype('float32'), rng.integers(0, 5, batch)
    model.train_on_batch(x, y)  # warm-up: traces and compiles the step
    start = time.perf_counter()
    for _ in range(steps): model.train_on_batch(x, y)
    return steps * batch / (time.perf_counter() - start)

def main():
    ap = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    ap.add_argument('--size', type=int, default=128, help='image side in pixels')
    ap.add_argument('--batch', type=int, default=32, help='batch size')
    ap.add_argument('--epochs', type=int, default=3, help='timed passes over the cached dataset')
    ap.add_argument('--steps', type=int, default=10, help='timed training steps')
    ap.add_argument('--augment', default='s3', help="augmentation preset ('s3', 's4', 'flips')")
    ap.add_argument('--images', type=int, default=256, help='images in the dataset')
    args = ap.parse_args()
    import tensorflow as tf
    with tempfile.TemporaryDirectory() as folder:
        table, what = load_table(args.images, folder)
        print(f'{len(table)} images from {what}; {args.size} px, batch {args.batch}, augment {args.augment!r}; '
              f'TensorFlow {tf.__version__} on {os.cpu_count()} CPU core(s)')
        pipe = pipeline_rate(table, args.size, args.batch, args.augment, args.epochs)
    train = training_rate(args.size, args.batch, args.steps)
    ratio = pipe / train
    print(f'{"tf.data pipeline (cache + augmentation)":45s} {pipe:9.1f} images/s')
    print(f'{"MobileNetV2 training step (CPU)":45s} {train:9.1f} images/s')
    print(f'{"ratio pipeline / training":45s} {ratio:9.1f}x  (target >= 3x: {"met" if ratio >= 3 else "NOT met"})')

if __name__ == '__main__':
    main()
