"""Tests of drbook.metrics: agreement with scikit-learn on random inputs, bootstrap intervals, fitted thresholds,
their save/load, and clear errors on bad input."""
import json, os, warnings
from pathlib import Path
import numpy as np, pandas as pd, pytest
import sklearn.metrics as skm
import matplotlib
matplotlib.use('Agg')
from hypothesis import given, settings, strategies as st, HealthCheck
from hypothesis.extra import numpy as hnp
from drbook.core import MULTILABEL, REFERABLE_FROM
from drbook import metrics as M
from drbook.metrics import compare_with, paired_bootstrap, qwk

SETTINGS = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
FEWER = settings(SETTINGS, max_examples=30)  # for the slower properties (bootstrap inside)
EYEPACS = np.array([25808, 2443, 5292, 873, 708]) / 35124  # grade shares of EyePACS 2015 (training set)

grades = lambda n: hnp.arrays(np.int64, n, elements=st.integers(0, 4))

@st.composite
def grade_pairs(draw, max_n=150):
    n = draw(st.integers(1, max_n))
    return draw(grades(n)), draw(grades(n))

@st.composite
def grades_and_probs(draw, max_n=150):
    n = draw(st.integers(2, max_n))
    y = draw(grades(n))
    seed = draw(st.integers(0, 2**32 - 1))
    return y, np.random.default_rng(seed).dirichlet(np.ones(5), size=n)

def draw_grades(rng, n): return rng.choice(5, size=n, p=EYEPACS)

# --- agreement with scikit-learn ---------------------------------------------------------------------------------

@SETTINGS
@given(grade_pairs())
def test_accuracy_qwk_confusion_agree_with_sklearn(pair):
    y, p = pair
    assert M.accuracy(y, p) == pytest.approx(skm.accuracy_score(y, p))
    with warnings.catch_warnings():
        warnings.simplefilter('ignore')  # sklearn warns where kappa is undefined; both sides are NaN then
        ref = skm.cohen_kappa_score(y, p, weights='quadratic', labels=list(range(5)))
        np.testing.assert_allclose(M.qwk(y, p), ref, equal_nan=True)
    np.testing.assert_array_equal(M.confusion_matrix(y, p), skm.confusion_matrix(y, p, labels=list(range(5))))
    np.testing.assert_allclose(M.confusion_matrix(y, p, normalize='true'),
                               skm.confusion_matrix(y, p, labels=list(range(5)), normalize='true'))

@SETTINGS
@given(grade_pairs(max_n=80))
def test_qwk_matches_sklearn_default_labels_when_all_grades_present(pair):
    y, p = pair
    y, p = np.r_[y, np.arange(5)], np.r_[p, np.arange(5)]  # every grade present in both
    assert M.qwk(y, p) == pytest.approx(skm.cohen_kappa_score(y, p, weights='quadratic'))

@SETTINGS
@given(grades_and_probs())
def test_per_class_auc_agrees_with_sklearn_or_is_na_with_reason(yp):
    y, probs = yp
    tab = M.per_class_auc(y, probs)
    for k in range(5):
        pos = y == k
        if 0 < pos.sum() < len(y):
            assert tab.loc[k, 'auc'] == pytest.approx(skm.roc_auc_score(pos, probs[:, k]))
            assert tab.loc[k, 'reason'] == ''
        else:
            assert np.isnan(tab.loc[k, 'auc']) and 'AUC undefined' in tab.loc[k, 'reason']
        assert tab.loc[k, 'n_pos'] == pos.sum()

def test_per_class_auc_matches_sklearn_ovr_when_all_grades_present():
    rng = np.random.default_rng(3)
    y = np.r_[np.arange(5), draw_grades(rng, 400)]
    probs = rng.dirichlet(np.ones(5), size=len(y))
    ovr = skm.roc_auc_score(y, probs, multi_class='ovr', average=None)
    np.testing.assert_allclose(M.per_class_auc(y, probs)['auc'].to_numpy(), ovr)

@FEWER
@given(grade_pairs())
def test_sensitivity_specificity_agree_with_sklearn_recall(pair):
    y, p = pair
    tab = M.sensitivity_specificity(y, p, n_boot=50)
    groups = [(k, y == k, p == k) for k in range(5)] + [('referable', y >= REFERABLE_FROM, p >= REFERABLE_FROM)]
    for g, t, q in groups:
        for col, truth, pred in (('sensitivity', t, q), ('specificity', ~t, ~q)):
            if truth.any(): assert tab.loc[g, col] == pytest.approx(skm.recall_score(truth, pred))
            else: assert np.isnan(tab.loc[g, col]) and np.isnan(tab.loc[g, f'{col}_lo'])

@FEWER
@given(st.integers(1, 120), st.integers(0, 2**32 - 1))
def test_multilabel_metrics_agree_with_sklearn(n, seed):
    rng = np.random.default_rng(seed)
    y = (rng.random((n, 5)) < rng.random(5)).astype(int)
    s = rng.random((n, 5)); thr = rng.uniform(0.2, 0.8, 5)
    tab = M.multilabel_metrics(y, s, thr, n_boot=20)
    for j, lab in enumerate(MULTILABEL):
        pred = s[:, j] >= thr[j]
        assert tab.loc[lab, 'accuracy'] == pytest.approx(skm.accuracy_score(y[:, j], pred))
        if 0 < y[:, j].sum() < n:
            assert tab.loc[lab, 'auc'] == pytest.approx(skm.roc_auc_score(y[:, j], s[:, j]))
            assert tab.loc[lab, 'sensitivity'] == pytest.approx(skm.recall_score(y[:, j], pred))
            assert tab.loc[lab, 'specificity'] == pytest.approx(skm.recall_score(1 - y[:, j], ~pred))
        else: assert np.isnan(tab.loc[lab, 'auc']) and tab.loc[lab, 'reason']

# --- scores to grades ----------------------------------------------------------------------------------------------

@SETTINGS
@given(st.integers(1, 100), st.integers(0, 2**32 - 1))
def test_scores_to_grades_per_task(n, seed):
    rng = np.random.default_rng(seed)
    g = rng.integers(0, 5, n)
    probs = rng.dirichlet(np.ones(5), size=n)
    np.testing.assert_array_equal(M.scores_to_grades(probs, 'multiclass'), probs.argmax(1))
    np.testing.assert_array_equal(M.scores_to_grades(probs, 'sigmoid'), probs.argmax(1))
    # ordinal outputs P(grade > k) that are confident and monotone give back the grade
    cum = np.where(g[:, None] > np.arange(4), rng.uniform(0.51, 1, (n, 4)), rng.uniform(0, 0.49, (n, 4)))
    np.testing.assert_array_equal(M.scores_to_grades(cum, 'ordinal'), g)
    x = rng.uniform(-1, 5, n)
    np.testing.assert_array_equal(M.scores_to_grades(x, 'regression'), np.clip(np.floor(x + 0.5), 0, 4))
    np.testing.assert_array_equal(M.scores_to_grades(x[:, None], 'regression'), M.scores_to_grades(x, 'regression'))
    thr = rng.random(5); s = rng.random((n, 5))
    np.testing.assert_array_equal(M.scores_to_grades(s, 'multilabel', thresholds=thr), (s >= thr).astype(int))

def test_ordinal_class_scores_are_probabilities_and_referable_score_is_p_gt_1():
    rng = np.random.default_rng(0)
    s = rng.random((200, 4))  # deliberately not monotone
    cs = M.class_scores(s, 'ordinal')
    assert (cs >= 0).all() and np.allclose(cs.sum(1), 1)
    np.testing.assert_allclose(M.referable_score(s, 'ordinal'), np.minimum.accumulate(s, 1)[:, 1])

# --- bootstrap intervals ---------------------------------------------------------------------------------------------

def noisy_predictions(rng, n, noise=0.7):
    y = draw_grades(rng, n)
    return y, np.clip(np.rint(y + noise * rng.standard_normal(n)), 0, 4).astype(int)

def test_bootstrap_intervals_contain_the_estimate_and_narrow_with_more_data():
    rng = np.random.default_rng(11)
    widths = {}
    for n in (300, 6000):
        y, p = noisy_predictions(rng, n)
        tab = M.sensitivity_specificity(y, p, n_boot=1000, seed=1)
        for col in ('sensitivity', 'specificity'):
            ok = tab[col].notna()
            assert (tab.loc[ok, f'{col}_lo'] <= tab.loc[ok, col]).all() and (tab.loc[ok, col] <= tab.loc[ok, f'{col}_hi']).all()
        widths[n] = (tab.sensitivity_hi - tab.sensitivity_lo).loc['referable'], (tab.specificity_hi - tab.specificity_lo).loc['referable']
    assert widths[6000][0] < widths[300][0] / 2 and widths[6000][1] < widths[300][1] / 2  # about sqrt(20) ≈ 4.5 times narrower

def test_bootstrap_is_seeded():
    y, p = noisy_predictions(np.random.default_rng(2), 500)
    a, b = M.sensitivity_specificity(y, p, seed=5), M.sensitivity_specificity(y, p, seed=5)
    pd.testing.assert_frame_equal(a, b)
    c = M.sensitivity_specificity(y, p, seed=6)
    assert not np.allclose(a.sensitivity_lo.dropna(), c.sensitivity_lo.dropna())

def test_multinomial_bootstrap_matches_resampling_eyes():
    "Drawing confusion matrices from a multinomial is the same distribution as resampling eyes with replacement."
    rng = np.random.default_rng(4)
    y, p = noisy_predictions(rng, 800)
    idx = rng.integers(0, len(y), (2000, len(y)))  # 2000 resamples of the eyes themselves
    ref = (y[idx] >= 2); explicit = (ref & (p[idx] >= 2)).sum(1) / ref.sum(1)
    fast = M.rates(M.one_vs_rest(M.bootstrap_confusions(M.confusion_matrix(y, p), 2000, seed=9), np.arange(5) >= 2))[0]
    assert fast.mean() == pytest.approx(explicit.mean(), abs=0.005)
    assert fast.std() == pytest.approx(explicit.std(), rel=0.1)

def test_bootstrap_rejects_empty_matrix():
    with pytest.raises(ValueError, match='empty confusion matrix'): M.bootstrap_confusions(np.zeros((5, 5)))

# --- fitted cut-points and label thresholds ------------------------------------------------------------------------

def shrunk_regressor(rng, n, shrink=0.6, bias=0.0, noise=0.6):
    "A squared-loss regressor's output: the grade pulled towards the mean (and optionally shifted), plus noise."
    y = draw_grades(rng, n)
    return y, 0.5 + shrink * (y + noise * rng.standard_normal(n) - 0.5) + bias

@pytest.mark.parametrize('shrink,bias', [(0.6, 0.0), (0.8, -0.3), (1.0, 0.4)])
def test_fitted_cutpoints_beat_plain_rounding_on_a_biased_or_compressed_regressor(shrink, bias):
    rng = np.random.default_rng(int(10 * shrink + 100 * bias) % 97)
    (yv, xv), (yt, xt) = shrunk_regressor(rng, 2000, shrink, bias), shrunk_regressor(rng, 2000, shrink, bias)
    cut = M.fit_cutpoints(yv, xv)
    assert cut.shape == (4,) and (np.diff(cut) >= 0).all()
    fixed_v, fitted_v = M.qwk(yv, M.scores_to_grades(xv, 'regression')), M.qwk(yv, M.scores_to_grades(xv, 'regression', cut))
    assert fitted_v > fixed_v + 0.01
    # applied unchanged to unseen eyes, the gain holds up
    assert M.qwk(yt, M.scores_to_grades(xt, 'regression', cut)) > M.qwk(yt, M.scores_to_grades(xt, 'regression'))

def test_fitted_cutpoints_never_worse_than_the_start_on_validation():
    rng = np.random.default_rng(5)
    y = draw_grades(rng, 600); x = y + 0.3 * rng.standard_normal(600)  # a well-calibrated regressor
    cut = M.fit_cutpoints(y, x)
    assert M.qwk(y, np.digitize(x, cut)) >= M.qwk(y, np.digitize(x, M.DEFAULT_CUTPOINTS))

def test_share_matched_cutpoints_reproduce_the_grade_shares():
    rng = np.random.default_rng(8)
    y, x = shrunk_regressor(rng, 3000)
    counts = np.bincount(np.digitize(x, M.share_matched_cutpoints(y, x)), minlength=5)
    np.testing.assert_allclose(counts, np.bincount(y, minlength=5), atol=2)

def test_label_thresholds_maximise_youden_j_on_validation():
    rng = np.random.default_rng(6)
    y = (rng.random((1500, 5)) < [.4, .3, .3, .15, .4]).astype(int)
    s = 1 / (1 + np.exp(-(2 * (y - 0.5) * [0.8, 1.4, 1.1, 0.9, 1.3] + np.array([-1, .5, -.5, -1.5, 0]) + rng.standard_normal(y.shape))))
    thr = M.fit_label_thresholds(y, s)
    for j in range(5):
        fpr, tpr, _ = skm.roc_curve(y[:, j], s[:, j])
        se, sp = M.rates(skm.confusion_matrix(y[:, j], s[:, j] >= thr[j], labels=[0, 1]))
        assert se + sp - 1 == pytest.approx((tpr - fpr).max())
        se5, sp5 = M.rates(skm.confusion_matrix(y[:, j], s[:, j] >= 0.5, labels=[0, 1]))
        assert se + sp >= se5 + sp5

def test_label_threshold_for_a_one_class_label_stays_at_half_with_a_warning():
    rng = np.random.default_rng(7)
    y = (rng.random((50, 5)) < 0.5).astype(int); y[:, 2] = 0
    with pytest.warns(UserWarning, match="label 'EX': no validation eyes positive"):
        thr = M.fit_label_thresholds(y, rng.random((50, 5)))
    assert thr[2] == 0.5

# --- bad input -------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize('call,message', [
    (lambda: M.accuracy([0, 1, 2], [0, 1]), 'length mismatch: y_true has 3 eyes but y_pred has 2'),
    (lambda: M.qwk([0, 1, 2, 3], [0, 1, 2]), 'length mismatch'),
    (lambda: M.qwk([0, 1, 5, 7], [0, 1, 2, 3]), r'y_true\[2\] = 5 is outside the ICDR grades 0–4'),
    (lambda: M.confusion_matrix([0, 1, 2], [0, -1, 2]), r'y_pred\[1\] = -1 is outside'),
    (lambda: M.accuracy([0, 1.5], [0, 1]), r'y_true\[1\] = 1.5 is not a whole grade'),
    (lambda: M.accuracy(pd.Series([0, None, 1], dtype='Int64'), [0, 1, 1]), r'y_true\[1\] = nan is missing'),
    (lambda: M.accuracy(['0', 'x'], [0, 1]), r"y_true\[1\] = 'x' is not a number"),
    (lambda: M.accuracy(np.eye(5), np.arange(5)), 'one-hot'),
    (lambda: M.per_class_auc([0, 1], np.full((2, 5), np.nan)), r'scores\[0, 0\] is nan'),
    (lambda: M.per_class_auc([0, 1, 2], np.r_[np.full((2, 5), .2), [[.1, .1, np.inf, .1, .1]]]), r'scores\[2, 2\] is inf'),
    (lambda: M.per_class_auc([0, 1], np.full((2, 4), .25)), r"scores for task 'multiclass' must have shape \(n, 5\); got \(2, 4\)"),
    (lambda: M.per_class_auc([0, 1, 2], np.full((2, 5), .2)), 'y_true has 3 eyes but scores has 2'),
    (lambda: M.evaluate([0, 1], np.full((2, 5), .2), 'ordinal'), r"must have shape \(n, 4\)"),
    (lambda: M.evaluate([0, 1], np.zeros((2, 3)), 'regression'), r"must have shape \(n\); got \(2, 3\)"),
    (lambda: M.evaluate([0, 1], [0.1, 1.2], 'softmax'), "unknown task 'softmax'"),
    (lambda: M.evaluate([0, 1], [0.1, 1.2], 'regression', thresholds=[.5] * 5), "thresholds apply to task 'multilabel'"),
    (lambda: M.scores_to_grades(np.eye(5), 'multiclass', cutpoints=M.DEFAULT_CUTPOINTS), "cutpoints apply to task 'regression'"),
    (lambda: M.scores_to_grades([1.0, 2.0], 'regression', cutpoints=[1, 2]), 'cutpoints must be 4 numbers'),
    (lambda: M.scores_to_grades([1.0, np.nan], 'regression'), r'scores\[1\] is nan'),
    (lambda: M.fit_cutpoints([0, 1, 2], [0.1, np.nan, 2.0]), r'continuous_val\[1\] is nan'),
    (lambda: M.fit_cutpoints([0, 1, 9], [0.1, 1.0, 2.0]), r'y_val\[2\] = 9 is outside'),
    (lambda: M.multilabel_metrics([[1, 0, 2, 0, 0]], [[.5] * 5]), r"y_true\[0, 2\] \(eye 0, label 'EX'\) = 2 is not 0 or 1"),
    (lambda: M.multilabel_metrics(np.zeros((2, 5)), np.zeros((3, 5))), 'y_true has 2 eyes but scores has 3'),
    (lambda: M.fit_label_thresholds(np.zeros((3, 5)), np.zeros((3, 4))), r"must have shape \(n, 5\)"),
    (lambda: M.results_table([{'qwk': 0.5}]), "results row 0 has no 'model' entry"),
    (lambda: M.history_frame({'loss': [1, 2], 'val_loss': [1]}), 'different numbers of epochs'),
])
def test_bad_input_raises_a_clear_error(call, message):
    with pytest.raises(ValueError, match=message): call()

def test_inputs_are_not_modified():
    y, s = np.array([0, 1, 2, 3, 4, 0]), np.random.default_rng(0).dirichlet(np.ones(5), 6)
    y0, s0 = y.copy(), s.copy()
    M.evaluate(y, s, 'multiclass', n_boot=20)
    np.testing.assert_array_equal(y, y0); np.testing.assert_array_equal(s, s0)

# --- evaluate, results_table, absent classes ---------------------------------------------------------------------

def test_absent_grade_gives_na_auc_with_reason_not_a_crash():
    rng = np.random.default_rng(1)
    y = rng.choice([0, 1, 2, 4], size=200)  # no severe eyes
    ev = M.evaluate(y, rng.dirichlet(np.ones(5), 200), 'multiclass', n_boot=50)
    assert np.isnan(ev['auc_3']) and not np.isnan(ev['auc_2'])
    assert any('no eyes of grade 3' in n for n in ev['notes'])
    assert np.isnan(ev['per_grade'].loc[3, 'sensitivity']) and not np.isnan(ev['per_grade'].loc[3, 'specificity'])

@pytest.mark.parametrize('task', ['multiclass', 'sigmoid', 'ordinal', 'regression'])
def test_evaluate_every_grading_task(task):
    rng = np.random.default_rng(2)
    y = draw_grades(rng, 500); latent = y + 0.5 * rng.standard_normal(500)
    if task == 'ordinal': s = 1 / (1 + np.exp(-(latent[:, None] - np.arange(4) - 0.5) * 4))
    elif task == 'regression': s = latent
    else: s = np.exp(-(np.arange(5) - latent[:, None]) ** 2); s = s / s.sum(1, keepdims=True) if task == 'multiclass' else s
    ev = M.evaluate(y, s, task, n_boot=100)
    pred = M.scores_to_grades(s, task)
    assert ev['qwk'] == pytest.approx(skm.cohen_kappa_score(y, pred, weights='quadratic', labels=list(range(5))))
    assert ev['accuracy'] == pytest.approx(skm.accuracy_score(y, pred))
    assert ev['referable_sensitivity'] == pytest.approx(skm.recall_score(y >= 2, pred >= 2))
    assert ev['referable_auc'] > 0.9 and ev['qwk'] > 0.7

def test_majority_class_baseline_accuracy_flatters_but_qwk_and_referable_sensitivity_do_not():
    y = draw_grades(np.random.default_rng(0), 3000)
    ev = M.evaluate(y, np.tile(np.eye(5)[0], (3000, 1)), 'multiclass', n_boot=100)
    assert ev['accuracy'] == pytest.approx((y == 0).mean()) and ev['accuracy'] > 0.7
    assert ev['qwk'] == 0.0 and ev['referable_sensitivity'] == 0.0 and ev['referable_specificity'] == 1.0

def test_results_table_one_row_per_experiment_scalars_only():
    rng = np.random.default_rng(3)
    y = draw_grades(rng, 300)
    a = M.evaluate(y, rng.dirichlet(np.ones(5), 300), 'multiclass', n_boot=50)
    b = M.evaluate(y, y + 0.4 * rng.standard_normal(300), 'regression', n_boot=50)
    tab = M.results_table({'random': a, 'regressor': b})
    assert list(tab.index) == ['random', 'regressor'] and tab.index.name == 'model'
    assert list(tab.columns[:7]) == ['accuracy', 'qwk', 'auc_0', 'auc_1', 'auc_2', 'auc_3', 'auc_4']
    assert not {'confusion', 'y_pred', 'per_grade', 'auc_table', 'notes'} & set(tab.columns)
    assert tab.loc['regressor', 'qwk'] == pytest.approx(b['qwk'])
    same = M.results_table([{'model': 'random', **a}, {'model': 'regressor', **b}])
    pd.testing.assert_frame_equal(tab, same)

def test_evaluate_multilabel():
    rng = np.random.default_rng(4)
    y = (rng.random((400, 5)) < 0.4).astype(int); s = np.clip(y * 0.6 + 0.5 * rng.random((400, 5)), 0, 1)
    ev = M.evaluate(y, s, 'multilabel', thresholds=[0.5] * 5, n_boot=50)
    assert ev['auc_MA'] == pytest.approx(skm.roc_auc_score(y[:, 0], s[:, 0]))
    assert ev['exact_match'] == pytest.approx(((s >= 0.5).astype(int) == y).all(1).mean())

# --- plots and training histories ------------------------------------------------------------------------------------

class FakeHistory:
    "What keras.Model.fit returns, as far as history_frame cares."
    def __init__(self, h): self.history = h

def test_history_frame_from_history_dict_and_csvlogger_file(tmp_path):
    h = {'loss': [1.0, 0.7, 0.5], 'accuracy': [.5, .6, .7], 'val_loss': [1.1, .9, .95], 'val_accuracy': [.45, .55, .5]}
    a = M.history_frame(FakeHistory(h))
    assert list(a.index) == [1, 2, 3] and list(a.columns) == list(h)
    pd.DataFrame({'epoch': [0, 1, 2], **h}).to_csv(tmp_path / 'log.csv', index=False)
    pd.testing.assert_frame_equal(M.history_frame(tmp_path / 'log.csv'), a)
    with pytest.raises(FileNotFoundError, match='no training history'): M.history_frame(tmp_path / 'missing.csv')
    with pytest.raises(ValueError, match='empty'): M.history_frame({})
    fig = M.plot_history(h)
    assert [ax.get_title() for ax in fig.axes] == ['loss', 'accuracy']
    assert [l.get_label() for l in fig.axes[0].get_lines()] == ['train', 'validation']
    with pytest.raises(ValueError, match=r"metrics \['auc'\] not in the history"): M.plot_history(h, metrics=['auc'])

def test_plots_draw_what_they_say():
    rng = np.random.default_rng(5)
    y = rng.choice([0, 1, 2, 4], size=300); s = rng.dirichlet(np.ones(5), 300)
    fig = M.plot_confusion(y, s.argmax(1), title='t')
    assert len(fig.axes) == 2
    ax = M.plot_roc(y, s, 'multiclass')
    texts = [t.get_text() for t in ax.get_legend().get_texts()]
    assert len(texts) == 6 and any('3 Severe NPDR: AUC undefined' == t for t in texts)
    ax = M.plot_roc((rng.random((300, 5)) < .3).astype(int), rng.random((300, 5)), 'multilabel')
    assert len(ax.get_legend().get_texts()) == 5

def test_paired_bootstrap():
    y = np.repeat(np.arange(5), 30)
    noisy = np.clip(y + np.random.default_rng(0).integers(-1, 2, len(y)), 0, 4)
    r = paired_bootstrap(y, y, noisy, n_boot=300, seed=0)
    assert r['diff'] == pytest.approx(1 - qwk(y, noisy)) and 0 < r['diff_lo'] <= r['diff'] <= r['diff_hi']
    assert paired_bootstrap(y, noisy, noisy, n_boot=50) == {'diff': 0.0, 'diff_lo': 0.0, 'diff_hi': 0.0}
    # paired: the same resample for both, so a prediction one eye apart moves the difference by little
    one_off = noisy.copy(); one_off[0] = y[0]
    r1 = paired_bootstrap(y, one_off, noisy, n_boot=300)
    assert r1['diff_lo'] >= 0 and r1['diff_hi'] < 0.02
    c = compare_with(y, {'perfect': y, 'noisy': noisy}, 'noisy', n_boot=200)
    assert c.loc['perfect', 'verdict'] == 'better' and c.loc['noisy', 'verdict'] == 'no clear difference'
