#!/usr/bin/env python
"""Speed of `drbook.preprocess.preprocess_dataset` on full-size fundus photographs.

Images per second of preprocess_dataset (crop + CLAHE + resize to 512, into a fresh cache folder) against
  - a naive sequential implementation of S3's steps (full-size `cv2.imread` → grey → threshold →
    `boundingRect` → square crop → CLAHE → resize → write), and
  - the decode-only limit: just decoding the same files at the reduced scale preprocess_dataset uses, spread
    over the same number of processes (the same joblib/loky helper, `imap_chunked`).
It prints a table and both ratios (targets on a 2-core machine: ≥ 4× the naive loop, ≥ 60 % of the limit).

On a shared machine the wall-clock rates move with other people's work, so the methods are measured in
interleaved rounds and the ratios are the medians of the per-round ratios. The CPU time each method spends
(this process and its workers) is printed too: it hardly depends on the load, and on an idle machine
images/second ≈ processes / CPU-seconds-per-image for the parallel methods.

The photographs are the real IDRiD subset (../shared/datasets/idrid_mini, 4288×2848 JPEGs) or, when it is
absent, synthetic photographs of the same size written to a temporary folder.

    python bench/preprocess.py [--images DIR] [--workers N] [--repeats R] [--size 512]
"""
import argparse, os, resource, shutil, statistics, sys, tempfile, time
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
from joblib.externals.loky import get_reusable_executor
from PIL import Image

from drbook.core import default_workers, imap_chunked
from drbook.preprocess import Recipe, decode_factor, preprocess_dataset

ROOT = Path(__file__).resolve().parent.parent
IDRID = Path(os.environ.get('DRBOOK_IDRID_MINI', ROOT.parent/'shared'/'datasets'/'idrid_mini'))
FLAGS = {1: cv2.IMREAD_COLOR, 2: cv2.IMREAD_REDUCED_COLOR_2, 4: cv2.IMREAD_REDUCED_COLOR_4, 8: cv2.IMREAD_REDUCED_COLOR_8}
RECIPES = {  # what is timed: S3's order (CLAHE before the resize) and S4's (resize, then CLAHE at 512)
    'crop → CLAHE → resize (s3)': Recipe(('crop', ('clahe', {'clip_limit': 2.0, 'tile_grid': (5, 5)}), 'resize'), 's3'),
    'crop → resize → CLAHE (s4 order)': Recipe(('crop', 'resize', ('clahe', {'clip_limit': 2.0, 'tile_grid': (5, 5)})), 's4-order'),
}


def naive_s3(src, dst, size):
    "S3's steps as a plain loop does them, at full resolution."
    img = cv2.imread(src)  # full-size decode (4288×2848)
    grey = cv2.cvtColor(img, cv2.COLOR_BGR2GRAY)
    _, mask = cv2.threshold(grey, 10, 255, cv2.THRESH_BINARY)
    x, y, w, h = cv2.boundingRect(mask)
    side = max(w, h)
    x0, y0 = x + w // 2 - side // 2, y + h // 2 - side // 2
    square = np.zeros((side, side, 3), np.uint8)  # black where the square runs past the frame
    sx0, sy0, sx1, sy1 = max(x0, 0), max(y0, 0), min(x0 + side, img.shape[1]), min(y0 + side, img.shape[0])
    square[sy0 - y0:sy1 - y0, sx0 - x0:sx1 - x0] = img[sy0:sy1, sx0:sx1]
    l, a, b = cv2.split(cv2.cvtColor(square, cv2.COLOR_BGR2LAB))
    square = cv2.cvtColor(cv2.merge([cv2.createCLAHE(2.0, (5, 5)).apply(l), a, b]), cv2.COLOR_LAB2BGR)
    cv2.imwrite(dst, cv2.resize(square, (size, size), interpolation=cv2.INTER_AREA), [cv2.IMWRITE_JPEG_QUALITY, 95])


def decode_only(job):
    "Decode one file at the given reduction, nothing else."
    path, factor = job
    return cv2.imdecode(np.fromfile(path, np.uint8), FLAGS[factor] | cv2.IMREAD_IGNORE_ORIENTATION).shape


def synthetic_photos(folder, n=16):
    "n synthetic 4288×2848 JPEG photographs (drbook.synthetic drawn at half size, enlarged, with sensor noise)."
    from drbook.synthetic import make_fundus
    rng = np.random.default_rng(0)
    paths = []
    for i in range(n):
        img = cv2.resize(make_fundus(seed=i, grade=i % 5, size=1424)[0], (2848, 2848), interpolation=cv2.INTER_CUBIC)
        img = np.clip(img + rng.normal(0, 2, img.shape) * (img.max(2, keepdims=True) > 8), 0, 255).astype(np.uint8)
        frame = np.zeros((2848, 4288, 3), np.uint8); frame[:, 720:720 + 2848] = img
        p = Path(folder)/f'synthetic_{i:02d}.jpg'
        cv2.imwrite(str(p), cv2.cvtColor(frame, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, 90]); paths.append(str(p))
    return paths


def cpu_seconds():
    "CPU time of this process and of its finished children (the worker processes, once joined)."
    c = resource.getrusage(resource.RUSAGE_CHILDREN)
    return time.process_time() + c.ru_utime + c.ru_stime


def stop_workers():
    "Join joblib's loky workers, which outlive a call (to be reused by the next), so that their CPU time is counted."
    get_reusable_executor().shutdown(wait=True)


def timed(fn):
    "(wall seconds, CPU seconds) of fn(); the worker processes it started are stopped after the clock, as every round starts them afresh."
    t, c = time.perf_counter(), cpu_seconds(); fn(); wall = time.perf_counter() - t
    stop_workers()
    return wall, cpu_seconds() - c


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    ap.add_argument('--images', default=None, help='folder of JPEG photographs (default: the IDRiD subset, else synthetic)')
    ap.add_argument('--workers', type=int, default=default_workers(), help='processes for preprocess_dataset and the limit')
    ap.add_argument('--repeats', type=int, default=5, help='rounds of the fast methods; medians are reported')
    ap.add_argument('--naive-repeats', type=int, default=1, help='rounds of the (slow) naive loop')
    ap.add_argument('--size', type=int, default=512, help='output side')
    args = ap.parse_args(argv)
    tmp = Path(tempfile.mkdtemp(prefix='drbook-bench-'))
    try:
        folder = Path(args.images) if args.images else IDRID if IDRID.is_dir() else None
        if folder is not None: paths, what = sorted(str(p) for p in folder.rglob('*.jpg')), str(folder)
        else:
            (tmp/'photos').mkdir(); paths, what = synthetic_photos(tmp/'photos'), 'synthetic photographs (IDRiD subset absent)'
        sizes = {Image.open(p).size for p in paths}
        for p in paths: Path(p).read_bytes()  # into the page cache: disk speed is not what is measured
        n = len(paths)
        factors = [decode_factor(*Image.open(p).size, args.size) for p in paths]
        print(f'{n} JPEGs from {what}; sizes {sorted(sizes)}; decode reduction 1/{max(factors)} for {args.size} px')
        print(f'{args.workers} worker processes; os.cpu_count() = {os.cpu_count()}; load average before: '
              f'{", ".join(f"{x:.2f}" for x in os.getloadavg())}')
        naive_name, limit_name = 'naive S3 loop (1 process, full decode)', f'decode only, reduced scale ({args.workers} processes)'
        ours = {k: f'preprocess_dataset {k}' for k in RECIPES}
        runs = {naive_name: [], limit_name: [], **{v: [] for v in ours.values()}}  # [(wall s, CPU s)] per round
        for r in range(args.naive_repeats):
            out = tmp/f'naive{r}'; out.mkdir()
            runs[naive_name].append(timed(lambda: [naive_s3(p, str(out/Path(p).name), args.size) for p in paths]))
        jobs = list(zip(paths, factors))
        for r in range(args.repeats):  # rounds interleave the fast methods, so that a busy moment hits them alike
            runs[limit_name].append(timed(lambda: list(imap_chunked(decode_only, jobs, args.workers, progress=False))))
            for k, recipe in RECIPES.items():
                table = pd.DataFrame({'image_path': paths})
                def run():
                    prep, failures = preprocess_dataset(table, recipe, args.size, cache_dir=tmp/f'cache{r}-{recipe.name}',
                                                        workers=args.workers, progress=False)
                    assert failures.empty and prep.attrs['preprocess']['processed'] == n, (failures, prep.attrs)
                runs[ours[k]].append(timed(run))
            print(f'  round {r + 1}/{args.repeats} done', file=sys.stderr)
        med = lambda xs: statistics.median(xs)
        print(f'\n{"method":52s} {"images/s":>9s} {"CPU ms/image":>13s}   wall seconds per round')
        for k, v in runs.items():
            print(f'{k:52s} {n / med([w for w, _ in v]):9.1f} {1000 * med([c for _, c in v]) / n:13.1f}   '
                  + ' '.join(f'{w:.2f}' for w, _ in v))
        naive_wall, naive_cpu = med([w for w, _ in runs[naive_name]]), med([c for _, c in runs[naive_name]])
        print()
        for k, name in ours.items():
            vs_naive = naive_wall / med([w for w, _ in runs[name]])
            vs_limit = med([lw / w for (lw, _), (w, _) in zip(runs[limit_name], runs[name])])  # per-round ratios
            cpu_limit = med([lc / c for (_, lc), (_, c) in zip(runs[limit_name], runs[name])])
            cpu_naive = naive_cpu / med([c for _, c in runs[name]])
            print(f'{k:34s}: {vs_naive:5.1f}× the naive loop (target ≥ 4×; {cpu_naive:.1f}× less CPU time); '
                  f'{vs_limit:4.0%} of the decode-only limit (target ≥ 60 %; by CPU time {cpu_limit:4.0%})')
        print(f'load average after: {", ".join(f"{x:.2f}" for x in os.getloadavg())}')
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == '__main__':
    main()
