"""How far do the course's lessons show at the sample defaults, on eyes the course never saw?

Draws an independent synthetic cohort with `drbook.synthetic.cached_cohort` (default 100 eyes per grade, 500 eyes,
frame height as data_samples/, a seed of its own; written once into drbook's cache with its lesion masks, then reused)
and checks that it shares no image with the course's sample data (data_samples/ and its 500-eye test cohort: per-image
seeds and SHA-256 of the JPEGs). On it, it scores:

1. chapter 07's sample grader (`drbook.models.quick_grader`: the 'sample' CNN, 'graham', 'flips', batch 16, 12 epochs,
   seed 42, the defaults of chapters 07 and 12a; taken from drbook's model cache, trained there once when missing),
   at each of `--sizes` (64, the course's, and 128):
   - grading: QWK, accuracy and referable-DR AUC (drbook.metrics.evaluate), target QWK >= 0.90 (scratch grader), and
     the same figures on the chapters' own test split (the test cohort) for context;
   - localisation, as chapter 12a computes it: Grad-CAM (drbook.gradcam.METHODS['gradcam'], explaining each eye's true
     grade) on up to 60 cohort eyes of grade >= 2, lesion masks from drbook.cam_checks.lesion_masks, pointing game
     (tolerance 2 px) and energy in the masks against the uniform and centre baselines (drbook.cam_checks). Targets:
     Grad-CAM beats both baselines (Grad-CAM - baseline > 0), pointing game >= 0.8;
   With --extra-train N, the same grader is also trained at --extra-sizes with 5 N more synthetic training eyes
   (seed --extra-seed, drawn into the cache) beside data_samples/: what more data buys toward the target;
2. the models a sample run published (`--run`; default the latest `make reproduce`): chapter 07's, 08's and 09's
   graders by QWK, with the lessons of 08 and 09 as paired differences (transfer against scratch; fine-tuned against
   frozen; target > 0), and chapter 13's lesion model by per-label AUC (target >= 0.95 for HE and EX).

Intervals: 95 % percentile bootstrap, resampling patients (both eyes of a drawn patient together, as the eyes of one
patient are alike), drbook's bootstrap helpers (metrics.resampled_confusions, qwk_of_confusions, rank_auc); a paired
difference uses the same resamples for both models. `reached` judges the point estimate; `interval` says whether the
whole interval lies on the target's side.
The default seed is 2027: data_samples/ was drawn with 2026 and the test cohort with 2028
(drbook.synthetic.SAMPLES, TEST_COHORT); a cohort with either seed would redraw their eyes, so the script refuses it.
About a minute on 2 CPU cores with the graders cached and the run's models in place.

Usage: python bench/lessons.py [--n-per-grade 100] [--seed 2027] [--sizes 64,128] [--n-explain 60] [--n-boot 2000] [--extra-train 200] [--run RUN|none]
"""
import argparse, os, time, warnings
from contextlib import contextmanager
os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')
import numpy as np
import pandas as pd

TOLERANCE_PX, IOU_THRESHOLD = 2, 0.5  # chapter 12a's defaults (tolerance_px, iou_threshold)
QWK_TARGET, POINTING_TARGET = 0.90, 0.80


class Clock:
    "Wall time of each named step, printed as it ends."
    def __init__(self): self.steps, self.t0 = [], time.perf_counter()
    @contextmanager
    def step(self, name):
        print(f'... {name}', flush=True); t = time.perf_counter()
        yield
        dt = time.perf_counter() - t; self.steps.append((name, dt)); print(f'    done in {dt:.1f} s', flush=True)
    def total(self): return time.perf_counter() - self.t0


def cohort_table(n_per_grade, seed):
    "The evaluation cohort's canonical table: drawn once into drbook's cache (images, masks, manifest), then reused."
    from drbook.core import cache_dir
    from drbook.synthetic import SAMPLES, cached_cohort
    table = cached_cohort(n_per_grade, seed, name='lessons')
    return table, cache_dir()/'synthetic'/f"lessons-n{n_per_grade}-s{SAMPLES['size']}-seed{seed}"


def extra_training_table(n_per_grade, seed):
    "A canonical table CSV in the cache: the course's sample data plus an extra synthetic cohort for training (no split of its own)."
    from drbook.core import cache_dir
    from drbook.data import save_table
    from drbook.synthetic import cached_cohort, sample_table
    extra = cached_cohort(n_per_grade, seed, name='extra-train')  # ids extra-train-syn…: none shared with data_samples/
    path = cache_dir()/'bench'/f'sample-plus-extra-n{n_per_grade}-seed{seed}.csv'
    path.parent.mkdir(parents=True, exist_ok=True)
    return save_table(pd.concat([sample_table(), extra], ignore_index=True), path)


def check_independent(cohort, folder):
    "Refuse a cohort that shares an image with the course's sample data (data_samples/ and its test cohort): a seed or JPEG bytes."
    from drbook.core import samples_dir
    from drbook.data import read_manifest, sha256_file
    from drbook.synthetic import sample_table
    sample = sample_table()
    shared_seeds = set(cohort['seed'].astype(str)) & set(sample['seed'].astype(str))
    sample_hashes = {h for f, h in read_manifest(samples_dir()).items() if f.startswith('images/')}
    shared_bytes = sum(sha256_file(p) in sample_hashes for p in cohort['image_path'])
    if shared_seeds or shared_bytes:
        raise SystemExit(f"the cohort in {folder} shares {len(shared_seeds)} image seeds and {shared_bytes} images with the course's sample data")
    return len(sample)


def grade_counts(grades)->dict: return {int(g): int(n) for g, n in pd.Series(grades).value_counts().sort_index().items()}


def patient_resamples(patients, n_boot, seed):
    "`n_boot` bootstrap resamples of the rows (index arrays), drawn by patient: a drawn patient brings all its eyes."
    codes, uniques = pd.factorize(pd.Series(patients).astype(str))
    rows = [np.flatnonzero(codes == k) for k in range(len(uniques))]
    rng = np.random.default_rng(seed)
    return [np.concatenate([rows[k] for k in rng.integers(0, len(rows), len(rows))]) for _ in range(n_boot)]


def interval(boots):
    "95 % percentile interval of the bootstrap values (NaN resamples, e.g. an AUC without positives, left out)."
    b = np.asarray(boots, float); b = b[np.isfinite(b)]
    return tuple(np.percentile(b, [2.5, 97.5])) if len(b) else (np.nan, np.nan)


def grading_rows(y, scores, patients, what, n_boot, seed):
    "QWK, accuracy and referable-DR AUC of the scores (drbook.metrics.evaluate) with patient-bootstrap intervals."
    from drbook.core import REFERABLE_FROM
    from drbook.metrics import evaluate, qwk_of_confusions, rank_auc, resampled_confusions
    from drbook.tasks import referable_score
    ev = evaluate(y, scores, 'multiclass', n_boot=n_boot, seed=seed)
    yp, ref = np.asarray(ev['y_pred'], int), referable_score(scores, 'multiclass')
    idx = patient_resamples(patients, n_boot, seed)
    cms = np.stack([resampled_confusions(y, yp, i[None])[0] for i in idx])  # one confusion matrix per resample
    boots = {'qwk': qwk_of_confusions(cms), 'accuracy': np.trace(cms, axis1=1, axis2=2) / cms.sum((1, 2)),
             'referable_auc': np.array([rank_auc(y[i] >= REFERABLE_FROM, ref[i]) for i in idx])}
    targets = {'qwk': ('>=', QWK_TARGET)}
    names = {'qwk': 'QWK', 'accuracy': 'accuracy', 'referable_auc': 'referable-DR AUC'}
    return [(f'{names[k]}, {what}', ev[k], interval(boots[k]), targets.get(k)) for k in ('qwk', 'accuracy', 'referable_auc')], ev


def localisation_rows(chosen, images, masks, model, n_boot, seed):
    "Pointing game and energy in the masks of Grad-CAM and the baselines, with differences, as chapter 12a computes them."
    from drbook.cam_checks import (baseline_maps, class_indices, energy_in_mask, explain_maps, localisation_table,
                                   pointing_game)
    from drbook.gradcam import METHODS
    cls = class_indices(model, images, chosen.grade.to_numpy(int))  # 12a's default target: each eye's true grade
    maps = {'Grad-CAM': explain_maps(METHODS['gradcam'], model, images, cls)}
    with warnings.catch_warnings():
        warnings.filterwarnings('ignore', '(masks|maps): ')  # empty masks and all-zero maps: counted and printed below
        table = localisation_table(maps, masks, TOLERANCE_PX, IOU_THRESHOLD)
        per = {name: {'pointing game': pointing_game(m, masks, TOLERANCE_PX), 'energy in mask': energy_in_mask(m, masks)}
               for name, m in {**maps, **baseline_maps(images.shape[:3])}.items()}
    has = masks.any((1, 2))
    for name, s in per.items():  # the per-image scores give the chapter's table exactly
        assert np.isclose(np.nanmean(s['pointing game'][has]), float(table.loc[name, 'pointing_game']))
        assert np.isclose(np.nanmean(s['energy in mask'][has]), float(table.loc[name, 'energy_in_mask']))
    idx = patient_resamples(chosen.patient[has], n_boot, seed)
    rows = []
    for metric in ('pointing game', 'energy in mask'):
        v = {name: s[metric][has] for name, s in per.items()}
        boot = lambda a: [np.nanmean(a[i]) for i in idx]
        rows.append((f'{metric}, Grad-CAM', np.nanmean(v['Grad-CAM']), interval(boot(v['Grad-CAM'])),
                     ('>=', POINTING_TARGET) if metric == 'pointing game' else None))
        for base in ('uniform', 'centre'):
            rows.append((f'{metric}, {base} baseline', np.nanmean(v[base]), interval(boot(v[base])), None))
        for base in ('uniform', 'centre'):
            d = v['Grad-CAM'] - v[base]  # paired: the same eyes
            rows.append((f'{metric}, Grad-CAM - {base}', np.nanmean(d), interval(boot(d)), ('>', 0.0)))
    flat = int((maps['Grad-CAM'][has].max((1, 2)) == 0).sum())  # all-zero maps: no energy (NaN), pointing as uniform
    return rows, int(has.sum()), int((~has).sum()), flat, float((class_indices(model, images) == cls).mean())


RUN_COMPARISONS = [  # (label, model, against): the lessons of chapters 08 and 09, as paired QWK differences on the cohort
    ('transfer (08, frozen backbone) - scratch (07)', '08/MobileNetV2_035-s1-adam', '07/sample'),
    ('fine-tuned from block_13 (09) - frozen (09)', '09/block_13', '09/frozen'),
    ('fully unfrozen (09) - frozen (09)', '09/unfrozen', '09/frozen'),
]
RUN_GRADERS = ['07/sample', '07/exp5', '08/MobileNetV2_035-s1-adam', '09/frozen', '09/block_13', '09/unfrozen']
AUC_TARGETS = {'HE': 0.95, 'EX': 0.95}  # chapter 13's lesion model: per-label test AUC


def cohort_scores(trained, cohort, cache):
    "A published model's outputs on the cohort, preprocessed with the model's own recipe and size (cached per pair)."
    from drbook.pipeline import make_dataset
    from drbook.preprocess import preprocess_dataset
    from drbook.train import predict
    recipe, size, task = trained.meta['recipe'], trained.meta['image_size'], trained.meta['task']
    key = (getattr(recipe, 'name', recipe), size)
    if key not in cache and recipe is None: cache[key] = cohort  # a model trained on the photographs only resized (08, 09)
    if key not in cache:
        pre, failures = preprocess_dataset(cohort, recipe, size=size)
        if len(failures): raise SystemExit(f'{len(failures)} cohort images could not be preprocessed:\n{failures}')
        cache[key] = pre
    pre = cache[key]
    return predict(trained.model, make_dataset(pre, task, size, 64, shuffle=False)), pre


def run_rows(run, cohort, n_boot, seed):
    "Chapters 07, 08, 09 and 13's published models of a sample run, scored on the cohort: QWK, paired differences, lesion AUCs."
    from drbook.core import MULTILABEL
    from drbook.metrics import qwk, qwk_of_confusions, rank_auc, resampled_confusions
    from drbook.models import load
    from drbook.registry import read_index
    from drbook.tasks import lesion_labels, scores_to_grades
    index, cache, grades, rows = read_index(run), {}, {}, []
    y = cohort.grade.to_numpy(int)
    idx = patient_resamples(cohort.patient, n_boot, seed)
    qwks = {}
    for name in RUN_GRADERS:
        if name not in index: print(f'    {name}: not published in {run}'); continue
        trained = load(index[name]['folder'])
        scores, pre = cohort_scores(trained, cohort, cache)
        assert (pre.image_id.to_numpy() == cohort.image_id.to_numpy()).all()
        grades[name] = np.asarray(scores_to_grades(scores, trained.meta['task'], cutpoints=trained.meta.get('cutpoints')), int)
        qwks[name] = qwk_of_confusions(np.stack([resampled_confusions(y, grades[name], i[None])[0] for i in idx]))
        rows.append((f'QWK, {name} ({trained.meta["image_size"]} px)', qwk(y, grades[name]), interval(qwks[name]),
                     ('>=', QWK_TARGET) if name == '07/sample' else None))
    for label, a, b in RUN_COMPARISONS:
        if a in qwks and b in qwks:
            rows.append((f'QWK, {label}', qwk(y, grades[a]) - qwk(y, grades[b]), interval(qwks[a] - qwks[b]), ('>', 0.0)))
    if '13/lesions' in index:
        trained = load(index['13/lesions']['folder'])
        scores, _ = cohort_scores(trained, cohort, cache)
        labels = lesion_labels(cohort)
        rows.append((f'#  chapter 13\'s lesion model ({trained.meta["image_size"]} px), per-label AUC on the cohort', None, None, None))
        for j, lab in enumerate(MULTILABEL):
            boots = [rank_auc(labels[i, j] == 1, scores[i, j]) for i in idx]
            rows.append((f'AUC {lab}, lesion model', rank_auc(labels[:, j] == 1, scores[:, j]), interval(boots),
                         ('>=', AUC_TARGETS[lab]) if lab in AUC_TARGETS else None))
    return rows


def verdict(value, ci, target):
    "(reached, interval) for a target ('>=' or '>', x): the point estimate, and where the interval lies."
    if target is None: return '', ''
    op, x = target
    ok = (lambda v: v >= x) if op == '>=' else (lambda v: v > x)
    lo, hi = ci
    where = 'above' if ok(lo) else 'below' if not ok(hi) else 'straddles'
    return ('yes' if ok(value) else 'no'), where


def print_table(rows):
    print(f"\n{'figure':58s} {'value':>7s}  {'95 % interval':>18s}  {'target':>7s}  {'reached':>7s}  {'interval':>9s}")
    for name, value, ci, target in rows:
        if name.startswith('#'): print(name[1:]); continue
        reached, where = verdict(value, ci, target)
        t = '' if target is None else f'{target[0]} {target[1]:g}'
        print(f'{name:58s} {value:7.4f}  [{ci[0]:7.4f}, {ci[1]:7.4f}]  {t:>7s}  {reached:>7s}  {where:>9s}')


def main():
    ap = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    ap.add_argument('--n-per-grade', type=int, default=100, help='cohort eyes per ICDR grade')
    ap.add_argument('--seed', type=int, default=2027, help="the cohort's seed (not data_samples/' 2026 nor the test cohort's 2028)")
    ap.add_argument('--sizes', default='64,128', help="image sizes of the quick grader, comma-separated (64: the course's)")
    ap.add_argument('--n-explain', type=int, default=60, help='cohort eyes of grade >= 2 whose Grad-CAM maps are scored')
    ap.add_argument('--n-boot', type=int, default=2000, help='bootstrap resamples')
    ap.add_argument('--boot-seed', type=int, default=0, help='seed of the bootstrap and of the choice of eyes to explain')
    ap.add_argument('--extra-train', type=int, default=0, help='eyes per grade of an extra synthetic training cohort (seed '
                    '--extra-seed) added to data_samples/ for a second grader at each of --extra-sizes: what more data buys')
    ap.add_argument('--extra-seed', type=int, default=2029, help="the extra training cohort's seed")
    ap.add_argument('--extra-sizes', default='128', help='image sizes of the graders trained with the extra cohort')
    ap.add_argument('--run', default='', help="a sample run folder whose published models (07, 08, 09, 13) are scored; "
                                             "default: the latest run of profile 'sample' that published chapter 13's model; 'none': skip")
    args = ap.parse_args()
    sizes = [int(s) for s in args.sizes.split(',') if s.strip()]
    from drbook.synthetic import SAMPLES, TEST_COHORT
    if args.seed in (SAMPLES['seed'], TEST_COHORT['seed']):  # same per-image seeds: the cohort would redraw the course's eyes
        ap.error(f"--seed {args.seed} is the seed of the course's own data (data_samples/ {SAMPLES['seed']}, "
                 f"test cohort {TEST_COHORT['seed']}): the cohort would redraw those eyes")
    clock = Clock()
    import tensorflow as tf
    from drbook.cam_checks import lesion_masks
    from drbook.models import quick_grader
    from drbook.pipeline import make_dataset
    from drbook.preprocess import preprocess_dataset
    from drbook.train import predict
    print(f'TensorFlow {tf.__version__} on {os.cpu_count()} CPU core(s)')

    with clock.step(f'cohort: {5 * args.n_per_grade} synthetic eyes, seed {args.seed}'):
        cohort, folder = cohort_table(args.n_per_grade, args.seed)
        n_sample = check_independent(cohort, folder)
        print(f'    {len(cohort)} eyes of {cohort.patient.nunique()} patients, grades '
              f"{grade_counts(cohort.grade)}; no image in common with the {n_sample} of the course's sample data")

    graders = [(size, '', '') for size in sizes]
    if args.extra_train:
        if args.extra_seed in (args.seed, SAMPLES['seed'], TEST_COHORT['seed']):
            ap.error(f'--extra-seed {args.extra_seed} is the seed of the cohort, data_samples/ or the test cohort')
        with clock.step(f'extra training cohort: {5 * args.extra_train} synthetic eyes, seed {args.extra_seed}'):
            combined = extra_training_table(args.extra_train, args.extra_seed)
        graders += [(int(s), str(combined), f' + {5 * args.extra_train} extra training eyes')
                    for s in args.extra_sizes.split(',') if s.strip()]
    rows, notes = [], []
    for size, table_csv, extra in graders:
        with clock.step(f'grader at {size} px{extra}: quick_grader (trained once, then reused from the model cache)'):
            trained, splits = quick_grader(table_csv, image_size=size, verbose=2)
            model, recipe = trained.model, trained.meta['recipe']
            print(f"    {'reused' if trained.reused else 'trained'}: {trained.folder}")
        with clock.step(f'{size} px: preprocess ({recipe.name}) and grade the cohort, bootstrap'):
            pre, failures = preprocess_dataset(cohort, recipe, size=size)
            if len(failures): raise SystemExit(f'{len(failures)} cohort images could not be preprocessed:\n{failures}')
            scores = predict(model, make_dataset(pre, 'multiclass', size, 64, shuffle=False))
            y = pre.grade.to_numpy(int)
            grade_rows, ev = grading_rows(y, scores, pre.patient, f'cohort ({len(y)} eyes)', args.n_boot, args.boot_seed)
            test = splits['test']
            test_scores = predict(model, make_dataset(test, 'multiclass', size, 64, shuffle=False))
            test_rows, _ = grading_rows(test.grade.to_numpy(int), test_scores, test.patient,
                                        f"ch. 07 test split ({len(test)} eyes)", args.n_boot, args.boot_seed)
        with clock.step(f'{size} px: Grad-CAM localisation on cohort eyes of grade >= 2'):
            chosen = pre[pre.grade >= 2]
            chosen = chosen.sample(min(args.n_explain, len(chosen)), random_state=args.boot_seed).sort_values('grade').reset_index(drop=True)
            images = np.concatenate([x.numpy() for x, _ in make_dataset(chosen, 'multiclass', size, 64, shuffle=False)])
            masks = lesion_masks(chosen, images.shape[1:3], recipe)
            loc_rows, n_has, n_empty, n_flat, agree = localisation_rows(chosen, images, masks, model, args.n_boot, args.boot_seed)
        rows += [(f"#--- quick grader at {size} px{extra} ({trained.folder.name}; {trained.meta['recipe'].name}, "
                  f"{len(trained.history.get('loss', []))} epochs, {len(splits['train'])} training eyes)", None, None, None),
                 *grade_rows, *test_rows,
                 (f'#  Grad-CAM on {n_has} cohort eyes of grade >= 2 (grades '
                  f'{grade_counts(chosen.grade[masks.any((1, 2))])}), tolerance {TOLERANCE_PX} px'
                  + (f'; {n_empty} left out: no lesion pixel at {size} px' if n_empty else '')
                  + (f'; {n_flat} Grad-CAM maps all zero' if n_flat else ''), None, None, None),
                 *loc_rows]
        notes.append(f'{size} px{extra}: the grader predicts the true grade for {agree:.0%} of the explained eyes; '
                     f'referable sensitivity {ev["referable_sensitivity"]:.3f}, specificity {ev["referable_specificity"]:.3f} on the cohort')

    if args.run != 'none':
        from drbook.registry import find_run
        run = find_run('13', 'sample') if not args.run else args.run
        if run is None: print("no run of profile 'sample' has published chapter 13's model: `make reproduce` first (or --run none)")
        else:
            with clock.step(f"the published models of run {run}: chapters 07, 08, 09 and 13 on the cohort"):
                rows += [(f'#--- the models of sample run {os.path.basename(str(run))} on the cohort '
                          f'({len(cohort)} eyes; 95 % patient-bootstrap intervals)', None, None, None),
                         *run_rows(run, cohort, args.n_boot, args.boot_seed)]

    print_table(rows)
    print()
    for n in notes: print(n)
    print(f'intervals: 95 % percentile bootstrap over patients, {args.n_boot} resamples; '
          f"'interval': where the whole interval lies against the target")
    print('\nwall time per step:')
    for name, dt in clock.steps: print(f'  {dt:7.1f} s  {name}')
    print(f'  {clock.total():7.1f} s  total')


if __name__ == '__main__':
    main()
