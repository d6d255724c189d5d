"""Does the course's training succeed on every seed, or only on the one the chapters use?

Trains, at the sample defaults and on the course's sample data (data_samples/ for training and validation, the
500-eye test cohort as the test split), for each of five or more seeds:

- chapter 13's lesion model (`drbook.lesion_model.train_lesion_model`: the sample CNN with S4's convolutional head,
  96 px, 'graham', flips, 20 epochs, Adam 3e-3, S4's inverse-frequency positive weights), scored on the test cohort:
  per-label ROC AUC (MA, HE, EX, SE, healthy). A run counts as **collapsed** when any label's test AUC is below
  `--collapse-auc` (0.6: a collapsed run in the issue that started this scored 0.10 for *healthy*);
- chapter 07's sample grader (`drbook.models.quick_grader`: 64 px, 12 epochs), scored by test QWK; collapsed when the
  QWK is below `--collapse-qwk` (0.3).

`seed` is the chapters' one seed: it sets the split of data_samples/ into training and validation, the initial
weights and the augmentation, as when a student changes `seed` in the chapter. Models are keyed and kept in drbook's
model cache, so a second run of this script reuses them (the table says which were trained).
About 40 s per seed on 2 CPU cores when nothing is cached.

Usage: python bench/seeds.py [--seeds 42,1,2,3,4] [--collapse-auc 0.6] [--collapse-qwk 0.3]
"""
import argparse, os, time, warnings
os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')
import numpy as np
import pandas as pd


def lesion_run(seed, image_size=96, recipe='graham'):
    "Chapter 13's lesion model at its defaults trained with `seed`: (per-label test AUC, trained or reused, seconds)."
    from drbook.core import MULTILABEL
    from drbook.lesion_model import train_lesion_model
    from drbook.metrics import multilabel_metrics
    from drbook.pipeline import make_dataset
    from drbook.splits import label_pos_weights, load_graded, prepare_splits
    from drbook.tasks import lesion_labels
    from drbook.train import predict
    t = time.perf_counter()
    splits, _ = prepare_splits(load_graded(''), recipe, image_size, seed=seed)
    with warnings.catch_warnings():
        warnings.simplefilter('ignore')  # a label absent from training is named by the chapter; here it only costs its AUC
        pos_weight = label_pos_weights(splits['train'])
    trained = train_lesion_model(splits, image_size=image_size, recipe=recipe, pos_weight=pos_weight, seed=seed)[-1]
    test = splits['test']
    scores = predict(trained.model, make_dataset(test, 'multilabel', image_size, 64, shuffle=False))
    table = multilabel_metrics(lesion_labels(test), scores, n_boot=0, seed=seed)
    auc = dict(zip(MULTILABEL, table['auc'].astype(float)))
    return auc, trained.reused, time.perf_counter() - t


def grader_run(seed):
    "Chapter 07's sample grader (quick_grader) trained with `seed`: (test QWK, accuracy, trained or reused, seconds)."
    from drbook.metrics import evaluate
    from drbook.models import quick_grader
    from drbook.pipeline import make_dataset
    from drbook.train import predict
    t = time.perf_counter()
    trained, splits = quick_grader(seed=seed, verbose=0)
    test = splits['test']
    scores = predict(trained.model, make_dataset(test, 'multiclass', trained.meta['image_size'], 64, shuffle=False))
    ev = evaluate(test.grade.to_numpy(int), scores, 'multiclass', n_boot=0, seed=seed)
    return ev['qwk'], ev['accuracy'], trained.reused, time.perf_counter() - t


def main():
    ap = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    ap.add_argument('--seeds', default='42,1,2,3,4', help='comma-separated seeds (42: the chapters\' default)')
    ap.add_argument('--collapse-auc', type=float, default=0.6, help='a lesion run with a label below this test AUC collapsed')
    ap.add_argument('--collapse-qwk', type=float, default=0.3, help='a grader run below this test QWK collapsed')
    ap.add_argument('--skip-grader', action='store_true', help='only the lesion model')
    args = ap.parse_args()
    seeds = [int(s) for s in args.seeds.split(',') if s.strip()]
    import tensorflow as tf
    from drbook.core import MULTILABEL
    print(f'TensorFlow {tf.__version__} on {os.cpu_count()} CPU core(s); seeds {seeds}', flush=True)
    rows = []
    for seed in seeds:
        auc, reused, dt = lesion_run(seed)
        row = {'seed': seed, **{f'AUC {k}': v for k, v in auc.items()}, 'lesions': 'reused' if reused else 'trained',
               'lesion s': round(dt, 1)}
        row['lesion collapsed'] = bool(min(auc.values()) < args.collapse_auc)
        if not args.skip_grader:
            qwk, acc, g_reused, g_dt = grader_run(seed)
            row.update({'grader QWK': qwk, 'grader accuracy': acc, 'grader': 'reused' if g_reused else 'trained',
                        'grader s': round(g_dt, 1), 'grader collapsed': bool(qwk < args.collapse_qwk)})
        rows.append(row)
        print(f"seed {seed}: " + ', '.join(f'{k} {v:.3f}' for k, v in auc.items())
              + ('' if args.skip_grader else f"; grader QWK {row['grader QWK']:.3f}") + f' ({dt:.0f} s)', flush=True)
    df = pd.DataFrame(rows).set_index('seed')
    with pd.option_context('display.width', 200, 'display.max_columns', 30, 'display.float_format', '{:.3f}'.format):
        print('\n', df, sep='')
    aucs = df[[f'AUC {k}' for k in MULTILABEL]]
    print(f"\nlesion model: {int(df['lesion collapsed'].sum())} of {len(df)} seeds collapsed (a label's test AUC < {args.collapse_auc}); "
          f"lowest AUC per label: {aucs.min().round(3).to_dict()}")
    if not args.skip_grader:
        print(f"grader: {int(df['grader collapsed'].sum())} of {len(df)} seeds collapsed (test QWK < {args.collapse_qwk}); "
              f"QWK min {df['grader QWK'].min():.3f}, mean {df['grader QWK'].mean():.3f}, max {df['grader QWK'].max():.3f}")
    return int(df['lesion collapsed'].any() or (not args.skip_grader and df['grader collapsed'].any()))


if __name__ == '__main__':
    raise SystemExit(main())
