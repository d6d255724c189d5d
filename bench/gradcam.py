"""Is batched Grad-CAM faster than the usual ways, and does it give the same maps?

On one model (MobileNetV2, weights=None, BatchNorm calibrated on the images, 5-grade head; Grad-CAM on its last
conv output `out_relu`) and 32 images, times `drbook.gradcam.gradcam` (one forward and backward pass per batch,
compiled once) against (a) keras.io's Grad-CAM example run in a per-image loop: `drbook.gradcam.keras_io_gradcam`,
drbook's one reference Grad-CAM (also used by the tests and chapter 12), on keras.io's `grad_model` (the feature maps
and the `logits` layer's output: keras.io's "remove last layer's softmax")
and (b) tf-keras-vis's `Gradcam` (with `ReplaceToLinear`, as its README does), when it can be imported (install it
for the benchmark only: `pip install tf-keras-vis`). Each is run once to warm up, then `--rounds` times; the median
is reported. The maps are compared after the same normalisation: each method's low-resolution map upsampled
bilinearly to the image (tf.image.resize) and divided by its maximum (all-zero maps stay zeros).

Targets: >= 5x the per-image loop, >= 1.5x tf-keras-vis, maps equal within 1e-4.

Usage: python bench/gradcam.py [--size 128] [--images 32] [--rounds 5]
"""
import argparse, os, statistics, time
os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')
import numpy as np
import tensorflow as tf
import keras
from drbook.transfer import build_model, calibrate_batchnorm
from drbook.gradcam import gradcam, keras_io_gradcam

def same_normalisation(maps, size):
    "Low-resolution maps (n, h, w) → upsampled bilinearly to `size`, divided by their maximum (NaN from 0/0 → 0)."
    up = tf.image.resize(np.nan_to_num(np.asarray(maps, np.float32))[..., None], size)[..., 0]
    return tf.math.divide_no_nan(up, tf.reduce_max(up, axis=(1, 2), keepdims=True)).numpy()

def timed(fn, rounds):
    fn()  # warm-up (tracing, graph building)
    times = []
    for _ in range(rounds):
        t = time.perf_counter(); fn(); times.append(time.perf_counter() - t)
    return statistics.median(times)

def main(size=128, n=32, rounds=5, seed=0):
    keras.utils.set_random_seed(seed)
    rng = np.random.default_rng(seed)
    images = rng.uniform(0, 255, (n, size, size, 3)).astype('float32')
    model = calibrate_batchnorm(build_model('MobileNetV2', 'multiclass', size, weights=None), images)
    layer = 'out_relu'
    grad_model = keras.Model(model.inputs, [model.get_layer(layer).output, model.get_layer('logits').output])  # keras.io's, without the softmax
    classes = model.predict(images, verbose=0).argmax(1)
    print(f"MobileNetV2 at {size} px, {n} images, Grad-CAM on {layer!r}, median of {rounds} rounds after a warm-up")

    ours = lambda: gradcam(model, images, classes, layer)
    loop = lambda: keras_io_gradcam(grad_model, images, classes)
    t_ours, t_loop = timed(ours, rounds), timed(loop, rounds)
    maps = ours()
    rows = [('drbook gradcam (batched)', t_ours, None),
            ("keras.io per-image loop", t_loop, np.abs(same_normalisation(loop(), (size, size)) - maps).max())]
    try:
        from tf_keras_vis.gradcam import Gradcam
        from tf_keras_vis.utils.model_modifiers import ReplaceToLinear
        from tf_keras_vis.utils.scores import CategoricalScore
    except Exception as e:  # not installed, or broken with this TensorFlow
        print(f"tf-keras-vis skipped: cannot import it ({type(e).__name__}: {e}); pip install tf-keras-vis to compare")
    else:
        vis = Gradcam(model, model_modifier=ReplaceToLinear(), clone=True)
        score = CategoricalScore(list(map(int, classes)))
        t_vis = timed(lambda: vis(score, images, penultimate_layer=layer, seek_penultimate_conv_layer=False), rounds)
        raw = vis(score, images, penultimate_layer=layer, seek_penultimate_conv_layer=False, expand_cam=False, normalize_cam=False)
        rows.append(('tf-keras-vis Gradcam', t_vis, np.abs(same_normalisation(raw, (size, size)) - maps).max()))
    print(f"{'method':28s} {'seconds':>8s} {'ms/image':>9s} {'drbook is':>10s} {'max |diff|':>11s}")
    for name, t, diff in rows:
        print(f"{name:28s} {t:8.3f} {1000 * t / n:9.1f} {t / t_ours:9.1f}x {'' if diff is None else f'{diff:11.2e}'}")
    return rows

if __name__ == '__main__':
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('--size', type=int, default=128); p.add_argument('--images', type=int, default=32)
    p.add_argument('--rounds', type=int, default=5); p.add_argument('--seed', type=int, default=0)
    a = p.parse_args()
    main(a.size, a.images, a.rounds, a.seed)
