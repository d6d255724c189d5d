"""Tests of drbook.trust: ECE and reliability bins against a direct loop, temperature scaling against a direct
minimisation of the validation NLL, split-conformal coverage on exchangeable synthetic scores within binomial bounds,
the LAC sets against MAPIE's, referral curves, degradations, and clear errors on bad input."""
import numpy as np, pytest
import keras, tensorflow as tf
from scipy.optimize import minimize
from scipy.special import log_softmax
from scipy.stats import binom
from mapie.classification import SplitConformalClassifier
from sklearn.base import BaseEstimator, ClassifierMixin
from drbook import trust as T

def calibrated_scores(n, k=5, seed=0, concentration=0.5):
    "Class probabilities and classes drawn from them: a perfectly calibrated, exchangeable synthetic score."
    rng = np.random.default_rng(seed)
    p = rng.dirichlet(np.ones(k) * concentration, n)
    return p, (rng.random(n)[:, None] > p.cumsum(1)).sum(1).clip(0, k - 1)

def loop_bins(p, y, n_bins, adaptive):
    "Reliability bins the plain way: one eye at a time into its bin."
    conf, pred = [max(r) for r in p], [int(np.argmax(r)) for r in p]
    if adaptive:
        order = sorted(range(len(p)), key=lambda i: conf[i])
        groups = [list(g) for g in np.array_split(order, min(n_bins, len(p)))]
    else:
        groups = [[] for _ in range(n_bins)]
        for i, c in enumerate(conf):
            b = 0
            while not (b / n_bins < c <= (b + 1) / n_bins) and b < n_bins - 1: b += 1
            groups[b].append(i)
    return [(len(g), sum(conf[i] for i in g) / len(g) if g else np.nan, sum(pred[i] == y[i] for i in g) / len(g) if g else np.nan) for g in groups]

@pytest.mark.parametrize('adaptive', [False, True])
@pytest.mark.parametrize('seed', range(5))
def test_ece_and_bins_match_a_loop(seed, adaptive):
    p, y = calibrated_scores(300, seed=seed, concentration=0.3)
    y = np.where(np.random.default_rng(seed + 100).random(300) < 0.3, (y + 1) % 5, y)  # some miscalibration
    ref = loop_bins(p, y, 15, adaptive)
    got = T.reliability_bins(p, y, 15, adaptive)
    assert got['count'].tolist() == [r[0] for r in ref]
    np.testing.assert_allclose(got.confidence, [r[1] for r in ref], atol=1e-9)
    np.testing.assert_allclose(got.accuracy, [r[2] for r in ref], atol=1e-9)
    direct = sum(n / len(y) * abs(acc - conf) for n, conf, acc in ref if n)
    assert abs(T.ece(p, y, 15, adaptive) - direct) < 1e-9

def test_perfectly_calibrated_score_has_ece_near_zero():
    p, y = calibrated_scores(50000, seed=1)
    assert T.ece(p, y) < 0.01 and T.ece(p, y, adaptive=True) < 0.01
    one_hot_right = np.eye(5)[y]  # always sure and always right: exactly 0
    assert T.ece(one_hot_right, y) == 0.0

def test_temperature_matches_direct_minimisation():
    rng = np.random.default_rng(2)
    z = rng.normal(0, 4, (600, 5))
    y = (rng.random(600)[:, None] > T.softmax(z, 3.0).cumsum(1)).sum(1).clip(0, 4)
    direct = minimize(lambda t: -log_softmax(z / t[0], axis=1)[np.arange(600), y].mean(), [1.0], method='Nelder-Mead',
                      bounds=[(0.05, 20)], options={'xatol': 1e-8, 'fatol': 1e-12}).x[0]
    fitted = T.fit_temperature(z, y)
    assert abs(fitted - direct) < 1e-4 * direct
    assert 2.4 < fitted < 3.8  # near the temperature the labels were drawn with

@pytest.mark.parametrize('contiguous', [False, True])
def test_conformal_coverage_within_binomial_bounds(contiguous):
    "One test eye per calibration draw: the hits are Binomial(trials, p) with 1 − α ≤ p ≤ 1 − α + 1/(n + 1)."
    alpha, n_cal, trials = 0.1, 99, 3000
    hits = 0
    for s in range(trials):
        p, y = calibrated_scores(n_cal + 1, seed=s)
        q = T.conformal_threshold(p[:n_cal], y[:n_cal], alpha, contiguous)
        hits += bool(T.prediction_sets(p[n_cal:], q, contiguous)[0, y[n_cal]])
    lo, hi = binom.ppf(0.0005, trials, 1 - alpha), binom.ppf(0.9995, trials, 1 - alpha + 1 / (n_cal + 1))
    assert lo <= hits <= hi, (hits, lo, hi)

class FixedScores(ClassifierMixin, BaseEstimator):
    "A fitted 'classifier' whose inputs are already the class probabilities (a Keras model's outputs)."
    def __init__(self, n_classes=5): self.n_classes = n_classes
    def fit(self, X, y=None): self.classes_ = np.arange(self.n_classes); self.n_features_in_ = self.n_classes; return self
    def predict_proba(self, X): return np.asarray(X, float)
    def predict(self, X): return np.asarray(X).argmax(1)

@pytest.mark.parametrize('alpha', [0.05, 0.1, 0.2])
def test_lac_sets_match_mapie(alpha):
    p, y = calibrated_scores(900, seed=int(alpha * 100))
    mapie = SplitConformalClassifier(FixedScores().fit(p), confidence_level=1 - alpha, conformity_score='lac', prefit=True)
    mapie.conformalize(p[:400], y[:400])
    theirs = mapie.predict_set(p[400:])[1][:, :, 0]
    ours = T.prediction_sets(p[400:], T.conformal_threshold(p[:400], y[:400], alpha))
    theirs_top = theirs | np.eye(5, dtype=bool)[p[400:].argmax(1)]  # drbook always keeps the predicted grade
    assert (ours == theirs_top).mean() > 0.999  # equal up to a tie at q̂'s floating-point edge

def test_contiguous_sets_are_runs_of_grades():
    p, y = calibrated_scores(500, seed=4)
    s = T.prediction_sets(p, T.conformal_threshold(p[:250], y[:250], 0.1, contiguous=True), contiguous=True).astype(int)
    assert ((np.diff(s, axis=1) == 1).sum(1) <= 1).all() and ((np.diff(s, axis=1) == -1).sum(1) <= 1).all()

def test_referral_by_an_uninformative_score_is_like_random():
    rng = np.random.default_rng(5)
    y = rng.integers(0, 5, 600); p_ref = np.clip((y >= 2) * 0.4 + rng.random(600) * 0.6, 0, 1)
    g = T.referral_gain(y, p_ref, rng.random(600), n_boot=200, seed=0)
    assert g['lo'] < 0 < g['hi']  # noise as uncertainty: no gain that excludes zero

def test_bad_input_names_the_argument():
    p, y = calibrated_scores(50)
    with pytest.raises(ValueError, match='probs: row 0 has values outside'): T.ece(p * 3 - 1, y)
    with pytest.raises(ValueError, match='probs_val: row 0 sums to'): T.conformal_threshold(p * 0.5, y)
    for bad in (0, 1, 1.5, -0.1, True, '0.1'):
        with pytest.raises(ValueError, match='alpha must be a number strictly between 0 and 1'): T.conformal_threshold(p, y, bad)
    with pytest.raises(ValueError, match='y_val holds one class only'): T.fit_temperature(np.log(p), np.zeros(50, int))
    with pytest.raises(ValueError, match='y must be whole numbers'): T.ece(p, y + 5)
    x = keras.Input((4,)); h = keras.layers.Dense(4)(x)
    plain = keras.Model(x, keras.layers.Activation('softmax', name='predictions')(keras.layers.Dense(3, name='logits')(h)), name='plain')
    ds = tf.data.Dataset.from_tensor_slices(np.ones((2, 4), 'float32')).batch(2)
    with pytest.raises(ValueError, match="model 'plain' has no Dropout layer: MC-dropout needs one"): T.mc_dropout_logits(plain, ds)
    with pytest.raises(ValueError, match="kind='fog'"): T.degrade(np.zeros((8, 8, 3), np.uint8), 'fog', 1)

def test_degradations_are_seeded_and_grow_with_severity():
    img = (np.random.default_rng(0).random((256, 256, 3)) * 255).astype(np.uint8)
    for kind in T.DEGRADATIONS:
        outs = [T.degrade(img, kind, s, seed=3) for s in (1, 2, 3)]
        assert all(o.shape == img.shape and o.dtype == np.uint8 for o in outs)
        assert np.array_equal(outs[0], T.degrade(img, kind, 1, seed=3))
        diffs = [np.abs(o.astype(float) - img).mean() for o in outs]
        assert diffs[0] < diffs[1] < diffs[2], (kind, diffs)


def test_a_calibrated_copy_leaves_the_grader_untouched(tmp_path):
    from drbook.models import Trained, load, load_meta, save_meta
    from drbook.train import save_model
    inp = keras.Input((8, 8, 3)); model = keras.Model(inp, keras.layers.Dense(5)(keras.layers.Flatten()(inp)))
    src = tmp_path/'grader'; save_meta(src, 'multiclass', 8, '', config={'builder': 'toy'}, key='k1'); save_model(model, src/'model.keras')
    before = (src/'model.json').read_bytes()
    doc = T.calibration_doc(1.5, 0.8, 0.1, n_val=20)
    cal = T.save_calibrated(Trained('grader', src, model, load_meta(src), 'k1'), doc, root=tmp_path/'models')
    assert (src/'model.json').read_bytes() == before and T.read_calibration(load_meta(src)) is None
    again = load(cal.folder)
    assert T.read_calibration(again.meta) == doc and again.meta['config']['calibrated_from'] == 'k1' and again.key != 'k1'
    x = np.random.default_rng(0).random((2, 8, 8, 3)).astype('float32')
    np.testing.assert_array_equal(again.model.predict(x, verbose=0), model.predict(x, verbose=0))
    # the same calibration of the same model lands in the same folder; another calibration in another
    assert T.save_calibrated(Trained('grader', src, model, load_meta(src), 'k1'), doc, root=tmp_path/'models').folder == cal.folder
    other = T.save_calibrated(Trained('grader', src, model, load_meta(src), 'k1'), T.calibration_doc(2.0, 0.8, 0.1), root=tmp_path/'models')
    assert other.folder != cal.folder
