"""drbook.lesions: labels equal the masks present (synthetic samples and the real IDRiD subset), thresholds fitted on
validation only, outlines drawn only inside the thresholded map and in S4's colours, per-label localisation with known
answers (1.0 for a map equal to its mask, the baseline's value for a uniform map), the referable rule, bad input;
a lesion-only table (IDRiD's segmentation set: 'healthy' never occurs, no grades) and tiny splits reported, not crashing."""
import os
os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')
import warnings
import keras
import numpy as np
import pandas as pd
import pytest
from drbook import core
from drbook.core import LESIONS, MULTILABEL
from drbook.data import read_samples, read_idrid_segmentation
from drbook.tasks import lesion_labels
from drbook.lesions import (LESION_COLOURS, check_lesion_masks, check_splits, combined_map, draw_outlines, fit_thresholds,
                            label_frame, label_localisation, label_maps, label_masks, label_notes,
                            plot_label_counts, referable_from_labels, referable_table)
from drbook.lesion_model import lesion_model, keep_thresholds, train_lesion_model

CODES = list(LESIONS)


@pytest.fixture(scope='module')
def samples():
    return read_samples()


# --- labels from the canonical table ----------------------------------------------------------------------------

def test_labels_equal_masks_present_on_samples(samples):
    labels = label_frame(check_lesion_masks(samples))
    assert (labels[CODES].to_numpy() == samples[[f'mask_{k}' for k in CODES]].notna().to_numpy()).all()
    assert (labels['healthy'] == (samples.grade == 0).astype(int).to_numpy()).all()  # synthetic grade 0: no lesion
    assert list(labels.columns) == list(MULTILABEL)


def test_labels_equal_masks_present_on_idrid(idrid_root):
    t = read_idrid_segmentation(idrid_root)
    assert len(t) == 8
    labels = label_frame(check_lesion_masks(t))
    assert (labels[CODES].to_numpy() == t[[f'mask_{k}' for k in CODES]].notna().to_numpy()).all()
    assert labels['SE'].sum() == 3 and labels['healthy'].sum() == 0  # README: SE masks for IDRiD_03, 55 and 56 only


def test_label_masks_on_idrid_follow_the_labels(idrid_root):
    t = read_idrid_segmentation(idrid_root).iloc[:2]
    masks = label_masks(t, 48, 's4')
    assert masks.shape == (2, 4, 48, 48)
    assert (masks.any((2, 3)) == lesion_labels(t)[:, :4].astype(bool)).all()


def test_bad_label_columns_are_named(samples):
    with pytest.raises(ValueError, match=r"\['has_EX'\]"): check_lesion_masks(samples.drop(columns='has_EX'))
    row = samples.index[samples.has_HE.astype(bool)][0]
    bad = samples.copy(); bad.loc[row, 'mask_HE'] = pd.NA
    with pytest.raises(ValueError, match=f"has_HE is set but there is no mask_HE: {samples.image_id[row]}"): check_lesion_masks(bad)
    with pytest.raises(ValueError, match=r"\['has_SE'\]"): lesion_labels(samples.drop(columns='has_SE'))


def test_empty_mask_is_reported(samples, tmp_path):
    row = samples[samples.has_EX.astype(bool)].iloc[:1].copy()
    empty = tmp_path/'empty.png'
    import cv2
    cv2.imwrite(str(empty), np.zeros((256, 256), np.uint8))
    row['mask_EX'] = str(empty)
    with pytest.warns(UserWarning, match=f"{row.image_id.iloc[0]}: has_EX is set but its mask is empty"):
        masks = label_masks(row, 32)
    assert not masks[0, CODES.index('EX')].any()


# --- thresholds: validation only ----------------------------------------------------------------------------------

def _split(n, rng):
    y = (rng.random((n, 5)) < 0.4).astype(int)
    return y, np.clip(y * 0.5 + rng.random((n, 5)) * 0.6, 0, 1)


def test_thresholds_fitted_on_validation_only_and_kept_in_model_json(tmp_path):
    from drbook.models import Trained, save_meta, load_meta
    rng = np.random.default_rng(0)
    (yv, sv), (yt, st) = _split(60, rng), _split(40, rng)
    t = fit_thresholds({'val': yv, 'test': yt}, {'val': sv, 'test': st})
    assert np.array_equal(t, fit_thresholds({'val': yv, 'test': 1 - yt}, {'val': sv, 'test': st[::-1]}))
    assert not np.array_equal(t, fit_thresholds({'val': yt}, {'val': st}))  # other data would move them
    save_meta(tmp_path, 'multilabel', 32, 'graham', config={'builder': 'x'}, key='k1', history={'loss': [1.0]}, trained_on='test')
    kept = keep_thresholds(Trained('lesions', tmp_path, None, load_meta(tmp_path), 'k1'), t)
    back = load_meta(tmp_path)  # one file: model.json holds the thresholds beside everything it held before
    assert np.allclose(back['thresholds'], t) and np.allclose(kept.meta['thresholds'], t) and not (tmp_path/'thresholds.json').exists()
    assert back['key'] == 'k1' and back['history'] == {'loss': [1.0]} and back['extra'] == {'trained_on': 'test'} and back['recipe'].name == 'graham'
    with pytest.raises(ValueError, match="fitted on the 'val' split"): fit_thresholds({'test': yt}, {'test': st})


# --- outlines -----------------------------------------------------------------------------------------------------

def test_outlines_only_inside_the_thresholded_map_and_in_s4_colours():
    rng = np.random.default_rng(1)
    image = np.full((40, 40, 3), 50.0)
    maps = np.zeros((4, 40, 40), np.float32)
    for j in range(4):  # one blob per lesion type, somewhere else each
        r, c = 4 + 9 * j, int(rng.integers(3, 30))
        maps[j, r:r + 6, c:c + 7] = 0.8
    maps[1, 30:, 30:] = 0.2  # below the threshold: not outlined
    drawn = draw_outlines(image, maps, threshold=0.5)
    changed = (drawn != 50).any(-1)
    assert changed.any() and (changed <= (maps >= 0.5).any(0)).all()
    for j, code in enumerate(CODES):  # each blob's outline in its lesion's colour
        on = changed & (maps[j] >= 0.5)
        assert on.any() and {tuple(p) for p in drawn[on]} == {LESION_COLOURS[code]}
    assert LESION_COLOURS is core.LESION_COLOURS  # one colour table for every chapter
    assert (draw_outlines(image, np.zeros_like(maps)) == 50).all()


def test_combined_map_is_normalised_sum_of_predicted():
    maps = np.random.default_rng(2).random((3, 4, 5, 5)).astype(np.float32)
    pred = np.array([[1, 0, 1, 0], [0, 0, 0, 0], [0, 1, 0, 0]])
    c = combined_map(maps, pred)
    s = maps[0, 0] + maps[0, 2]
    assert np.allclose(c[0], s / s.max()) and (c[1] == 0).all() and np.allclose(c[2], maps[2, 1] / maps[2, 1].max())


# --- localisation per label ---------------------------------------------------------------------------------------

def test_localisation_is_one_for_map_equal_to_mask_and_baseline_for_uniform():
    rng = np.random.default_rng(3)
    masks = np.zeros((6, 4, 16, 16), bool)
    for i in range(6):
        for j in range(4):
            if rng.random() < 0.7: r, c = rng.integers(0, 12, 2); masks[i, j, r:r + rng.integers(1, 5), c:c + rng.integers(1, 5)] = True
    masks[0, 3] = False
    t = label_localisation({'equal': masks.astype(np.float32), 'flat': np.ones(masks.shape, np.float32)}, masks, tolerance_px=0)
    for code in CODES:
        if not masks[:, CODES.index(code)].any(): continue
        assert np.allclose(t.loc[(code, 'equal'), ['pointing_game', 'energy_in_mask', 'iou', 'dice']].astype(float), 1.0)
        for k in ('pointing_game', 'energy_in_mask', 'iou', 'dice'):
            assert np.isclose(t.loc[(code, 'flat'), k], t.loc[(code, 'uniform'), k])
        has = masks[:, CODES.index(code)].any((1, 2))
        assert np.isclose(t.loc[(code, 'uniform'), 'energy_in_mask'], masks[has, CODES.index(code)].mean((1, 2)).mean())
        assert t.loc[(code, 'equal'), 'n_images'] == has.sum()


def test_localisation_refuses_masks_of_another_shape():
    with pytest.raises(ValueError, match='masks: expected shape'):
        label_localisation({'m': np.zeros((2, 4, 8, 8))}, np.zeros((2, 3, 8, 8), bool))


# --- model, maps, referable rule ----------------------------------------------------------------------------------

def test_lesion_model_and_label_maps():
    model = lesion_model('scratch', 64)
    assert model.output.shape[1:] == (5,) and model.layers[-2].name == 'logits'
    maps = label_maps(model, np.random.default_rng(4).uniform(0, 255, (2, 64, 64, 3)).astype(np.float32), 'guided_gradcam')
    assert maps.shape == (2, 4, 64, 64) and maps.min() >= 0 and maps.max() <= 1
    with pytest.raises(ValueError, match=r"method='lime': expected one of \['gradcam'"): label_maps(model, np.zeros((1, 64, 64, 3)), 'lime')

def test_label_maps_explain_the_layer_asked_for():
    from drbook.gradcam import gradcam
    model = lesion_model('scratch', 64)
    x = np.random.default_rng(5).uniform(0, 255, (2, 64, 64, 3)).astype(np.float32)
    convs = [l.name for l in model.layers if isinstance(l, keras.layers.Conv2D)]
    early = label_maps(model, x, 'gradcam', layer=convs[0])  # S4's choice is a layer by name ('head_conv_2' on ResNet50)
    np.testing.assert_allclose(early[:, 1], gradcam(model, x, 1, layer=convs[0]), atol=1e-6)
    assert not np.allclose(early, label_maps(model, x, 'gradcam'))
    with pytest.raises(ValueError): label_maps(model, x, 'gradcam', layer='no_such_layer')


def test_referable_rule_matches_grades_on_samples(samples):
    assert (referable_from_labels(lesion_labels(samples)) == (samples.grade >= 2).to_numpy()).all()
    t = referable_table([1, 1, 0, 0, 1], {'a': [1, 0, 0, 0, 1]}, n_boot=100)
    assert np.isclose(t.loc['a', 'sensitivity'], 2 / 3) and t.loc['a', 'specificity'] == 1.0
    assert t.loc['a', 'sensitivity_lo'] <= 2 / 3 <= t.loc['a', 'sensitivity_hi']


# --- a lesion-only table: IDRiD's segmentation set ('healthy' never occurs, no grades), tiny splits ------------------

@pytest.fixture(scope='module')
def idrid_lesions(idrid_root):
    return read_idrid_segmentation(idrid_root)


def test_idrid_lesion_table_has_no_healthy_and_no_grades_and_says_so(idrid_lesions):
    import matplotlib; matplotlib.use('Agg'); import matplotlib.pyplot as plt
    labels = label_frame(check_lesion_masks(idrid_lesions))
    assert idrid_lesions.grade.isna().all() and labels['healthy'].sum() == 0
    notes = label_notes(labels, 'table')
    assert "'healthy' never occurs in the 8 table images: no positive example (its sensitivity and AUC cannot be measured there)" in notes
    assert not any(n.startswith("'SE'") for n in notes)  # SE is on 3 of the 8: both classes, nothing to note
    ax = plot_label_counts(labels)  # the zero count is drawn, not refused
    assert [t.get_text() for t in ax.texts] == ['8', '8', '8', '3', '0 (none)']
    plt.close(ax.figure)


def test_pos_weight_of_a_label_that_never_occurs_is_neutral(idrid_lesions):
    from drbook.splits import label_pos_weights
    from drbook.tasks import loss_for
    with pytest.warns(UserWarning, match=r"\['healthy'\] never occur in the 8 rows: positive weight 1.0"):
        w = label_pos_weights(idrid_lesions)
    assert w['healthy'] == 1.0 and w['SE'] == pytest.approx(8 / (5 * 3)) and w['MA'] == pytest.approx(8 / (5 * 8))
    with pytest.warns(UserWarning): assert label_pos_weights(idrid_lesions, 'neg_pos') == pytest.approx({'MA': 0.0, 'HE': 0.0, 'EX': 0.0, 'SE': 5 / 3, 'healthy': 1.0})
    with pytest.raises(ValueError, match=r"\['healthy'\] never occur"): label_pos_weights(idrid_lesions, absent=None)
    y = lesion_labels(idrid_lesions).astype('float32')  # the weighted loss stays finite on these labels
    assert np.isfinite(float(loss_for('multilabel', w)(y, np.full_like(y, 0.3))))


def test_thresholds_and_table_i_of_a_label_that_never_occurs(idrid_lesions, capsys):
    from drbook.metrics import multilabel_metrics
    y = lesion_labels(idrid_lesions)
    scores = np.random.default_rng(5).random(y.shape)
    t = fit_thresholds({'val': y[:4]}, {'val': scores[:4]})
    assert t[MULTILABEL.index('healthy')] == 0.5  # the documented default: no cut to choose
    assert "note: label 'healthy': no validation eyes positive; threshold left at 0.5" in capsys.readouterr().out
    tab = multilabel_metrics(y[4:], scores[4:], t, n_boot=20)
    assert tab.loc['healthy', ['sensitivity', 'auc']].isna().all() and tab.loc['healthy', 'specificity'] >= 0
    assert tab.loc['healthy', 'reason'] == "no eye has label 'healthy': sensitivity and AUC undefined"
    assert tab.loc['MA', 'reason'] == "every eye has label 'MA': specificity and AUC undefined"
    assert tab.loc['SE', 'reason'] == '' and not np.isnan(tab.loc['SE', 'auc'])  # SE: 2 of IDRiD's 4 test images


def test_tiny_splits_work_or_say_how_many_images_are_needed(idrid_lesions):
    from drbook.splits import prepare_splits
    own, _ = prepare_splits(idrid_lesions, '', seed=42)  # by default IDRiD's own test images are the test split
    assert sorted(own['test'].image_id) == sorted(idrid_lesions.image_id[idrid_lesions.split == 'test'])
    splits, _ = prepare_splits(idrid_lesions, '', seed=42, own_split=False)  # 8 images at 70/15/15: 6/1/1 still runs
    assert {k: len(v) for k, v in check_splits(splits).items()} == {'train': 6, 'val': 1, 'test': 1}
    few, _ = prepare_splits(idrid_lesions.iloc[:4], '', seed=42, own_split=False)
    with pytest.raises(ValueError, match=r"the test split is empty .* at least 5 images with the 70/15/15 split"): check_splits(few)
    with pytest.raises(ValueError, match='at least 7 images with the 80/10/10 split'):
        check_splits(dict(zip(('train', 'val', 'test'), [idrid_lesions.iloc[:1], idrid_lesions.iloc[:0], idrid_lesions.iloc[:0]])), (0.8, 0.1, 0.1))


@pytest.mark.slow
def test_lesion_model_trains_on_idrid_without_healthy(idrid_lesions, tmp_path, monkeypatch):
    "The chapter's training path on the real lesion-only table: preprocessing, splits, inverse-frequency weights, a finite loss."
    from drbook.splits import prepare_splits
    from drbook.splits import label_pos_weights
    monkeypatch.setenv('DRBOOK_CACHE', str(tmp_path))  # the model cache of this test only
    splits, failures = prepare_splits(idrid_lesions, 'graham', 48, seed=42)
    assert not len(failures)
    check_splits(splits)
    with pytest.warns(UserWarning, match='healthy'): pw = label_pos_weights(splits['train'])
    settings = dict(image_size=48, recipe='graham', augment='', batch_size=4, epochs=1, pos_weight=pw, seed=42)
    [trained] = train_lesion_model(splits, **settings)
    assert not trained.reused and np.isfinite(trained.history['loss']).all() and np.isfinite(trained.history['val_loss']).all()
    assert trained.folder.parent == tmp_path/'models' and trained.meta['config']['pos_weight']['healthy'] == 1.0
    again = train_lesion_model(splits, **settings)[-1]  # the same settings: the same keyed folder, not trained again
    assert again.reused and again.folder == trained.folder
    assert train_lesion_model(splits, **{**settings, 'learning_rate': 3e-3})[-1].folder != trained.folder
