"""drbook.lesions: labels equal the masks present (synthetic samples and the real IDRiD subset), thresholds fitted on
validation only, outlines drawn only inside the thresholded map and in S4's colours, per-label localisation with known
answers (1.0 for a map equal to its mask, the baseline's value for a uniform map), the referable rule, bad input."""
import os
os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')
import warnings
import numpy as np
import pandas as pd
import pytest
from drbook.core import LESIONS, MULTILABEL
from drbook.data import read_samples, read_idrid_segmentation
from drbook.tasks import lesion_labels
from drbook.metrics import load_thresholds
from drbook.lesions import (LESION_COLOURS, check_lesion_masks, combined_map, draw_outlines, fit_thresholds, label_frame,
                            label_localisation, label_maps, label_masks, lesion_model, referable_from_labels,
                            referable_table)

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


def test_thresholds_fitted_on_validation_only(tmp_path):
    rng = np.random.default_rng(0)
    (yv, sv), (yt, st) = _split(60, rng), _split(40, rng)
    t = fit_thresholds({'val': yv, 'test': yt}, {'val': sv, 'test': st}, tmp_path)
    assert np.array_equal(t, fit_thresholds({'val': yv, 'test': 1 - yt}, {'val': sv, 'test': st[::-1]}))
    assert not np.array_equal(t, fit_thresholds({'val': yt}, {'val': st}))  # other data would move them
    saved = load_thresholds(tmp_path)
    assert np.allclose(saved['thresholds'], t) and saved['meta']['fitted_on'] == 'validation'
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
    assert LESION_COLOURS == {'MA': (255, 105, 180), 'HE': (255, 0, 0), 'EX': (255, 255, 0), 'SE': (0, 0, 255)}
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
    with pytest.raises(ValueError, match="expected 'gradcam' or 'guided_gradcam'"): label_maps(model, np.zeros((1, 64, 64, 3)), 'lime')


def test_referable_rule_matches_grades_on_samples(samples):
    assert (referable_from_labels(lesion_labels(samples)) == (samples.grade >= 2).to_numpy()).all()
    t = referable_table([1, 1, 0, 0, 1], {'a': [1, 0, 0, 0, 1]}, n_boot=100)
    assert np.isclose(t.loc['a', 'sensitivity'], 2 / 3) and t.loc['a', 'specificity'] == 1.0
    assert t.loc['a', 'sensitivity_lo'] <= 2 / 3 <= t.loc['a', 'sensitivity_hi']
