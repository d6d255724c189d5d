"""drbook.cam_checks: localisation scores against hand-made maps and masks with known answers, masks that follow the
preprocessing crop, the model-randomisation test separating a trained model from its randomised copy, and, on images
with one bright planted lesion a tiny CNN learnt to detect, Grad-CAM pointing at it and deleting it faster than random."""
import os
os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')
import warnings
import cv2
import numpy as np
import pandas as pd
import pytest
import keras
from scipy.stats import spearmanr
from drbook.gradcam import gradcam
from drbook.preprocess import Recipe, preprocess_image
from drbook.cam_checks import (baseline_maps, centre_map, check_maps, class_indices, deletion_insertion, energy_in_mask,
                               explain_maps, lesion_masks, localisation_table, mask_iou, model_randomisation,
                               passes_randomisation, perturbation_curves, pointing_game, randomised_copy,
                               rank_correlation, resize_masks, saliency_order, ssim, weighted_layers)

SIZE = 32  # side of the planted-lesion images


def _peak(shape=(1, 11, 11), at=(5, 5)):
    m = np.zeros(shape, np.float32); m[:, at[0], at[1]] = 1.0
    return m


def _lesion(at, shape=(1, 11, 11)):
    m = np.zeros(shape, bool); m[:, at[0], at[1]] = True
    return m


# --- localisation scores with known answers ---------------------------------------------------------------------

def test_pointing_game_hit_and_miss():
    maps = np.concatenate([_peak(), _peak()])
    masks = np.concatenate([_lesion((5, 5)), _lesion((0, 0))])
    assert pointing_game(maps, masks).tolist() == [1.0, 0.0]


@pytest.mark.parametrize('lesion_at, miss_below', [((5, 8), 3), ((7, 7), 3), ((8, 8), 5)])
def test_pointing_game_tolerance_is_euclidean(lesion_at, miss_below):
    "The peak at (5, 5) misses a lesion at distance d with a tolerance below d and hits it from ceil(d) on."
    maps, masks = _peak(), _lesion(lesion_at)
    assert pointing_game(maps, masks, miss_below - 1)[0] == 0.0
    assert pointing_game(maps, masks, miss_below)[0] == 1.0


def test_pointing_game_ties_share_the_score():
    "A uniform map's maximum is everywhere: it scores the share of the image the lesions cover (the chance level)."
    masks = np.zeros((1, 10, 10), bool); masks[0, :3, :] = True
    assert pointing_game(np.ones((1, 10, 10)), masks)[0] == pytest.approx(0.3)
    two = np.zeros((1, 10, 10), np.float32); two[0, 0, 0] = two[0, 9, 9] = 1.0  # two maxima, one on the lesion
    assert pointing_game(two, masks)[0] == pytest.approx(0.5)


def test_empty_masks_give_nan_and_a_warning():
    masks = np.concatenate([_lesion((5, 5)), np.zeros((1, 11, 11), bool)])
    maps = np.concatenate([_peak(), _peak()])
    for score in (lambda: pointing_game(maps, masks), lambda: energy_in_mask(maps, masks), lambda: mask_iou(maps, masks)):
        with pytest.warns(UserWarning, match='masks: 1 of 2 are empty'):
            out = score()
        assert out[0] == 1.0 and np.isnan(out[1])


def test_energy_in_mask_known_share():
    maps = np.zeros((1, 4, 4), np.float32); maps[0, 0, 0] = 1.0; maps[0, 3, 3] = 0.5; maps[0, 2, 2] = 0.5
    masks = np.zeros((1, 4, 4), bool); masks[0, 0, 0] = True
    assert energy_in_mask(maps, masks)[0] == pytest.approx(0.5)
    assert energy_in_mask(np.ones((1, 4, 4)), masks)[0] == pytest.approx(1 / 16)  # uniform: the area share
    with pytest.warns(UserWarning, match='all zero'):
        assert np.isnan(energy_in_mask(np.zeros((1, 4, 4)), masks)[0])


def test_mask_iou_known_counts():
    maps = np.zeros((1, 4, 4), np.float32); maps[0, 0, :3] = 0.8; maps[0, 1, 0] = 0.3  # 3 pixels ≥ 0.5
    masks = np.zeros((1, 4, 4), bool); masks[0, 0, 1:] = True  # 3 pixels, 2 shared
    assert mask_iou(maps, masks, 0.5)[0] == pytest.approx(2 / 4)
    assert mask_iou(maps, masks, 0.25)[0] == pytest.approx(2 / 5)
    assert mask_iou(maps, masks, 0.9)[0] == 0.0


@pytest.mark.parametrize('call, message', [
    (lambda: pointing_game(np.ones((2, 8, 8)), np.ones((2, 4, 4), bool)), r'masks: shape \(2, 4, 4\) differs from the maps'),
    (lambda: energy_in_mask(np.ones((2, 8, 8)), np.ones((3, 8, 8), bool)), 'masks: shape'),
    (lambda: mask_iou(np.full((1, 4, 4), 1.5), np.ones((1, 4, 4), bool)), r'maps: values must lie in \[0, 1\]'),
    (lambda: pointing_game(np.full((1, 4, 4), -0.2), np.ones((1, 4, 4), bool)), r'maps: values must lie in \[0, 1\]'),
    (lambda: pointing_game(np.full((1, 4, 4), np.nan), np.ones((1, 4, 4), bool)), 'maps: 16 values are NaN'),
    (lambda: pointing_game(np.ones((4, 4)), np.ones((4, 4), bool)), r'maps: expected maps of shape \(n, H, W\)'),
    (lambda: pointing_game(np.ones((1, 4, 4)), np.full((1, 4, 4), 3)), 'masks: expected boolean or 0/1'),
    (lambda: pointing_game(np.ones((1, 4, 4)), np.ones((1, 4, 4), bool), -1), 'tolerance_px'),
    (lambda: mask_iou(np.ones((1, 4, 4)), np.ones((1, 4, 4), bool), 1.5), 'threshold'),
    (lambda: localisation_table({'x': np.ones((1, 4, 4))}, np.zeros((1, 4, 4), bool)), 'masks: every mask is empty'),
])
def test_bad_input_names_the_argument(call, message):
    with warnings.catch_warnings():
        warnings.simplefilter('ignore')
        with pytest.raises(ValueError, match=message):
            call()


def test_localisation_table_puts_baselines_beside_methods():
    masks = np.zeros((3, 9, 9), bool); masks[:, 4, 4] = True; masks[2] = False  # a central lesion; one image without
    perfect = masks.astype(np.float32)
    with pytest.warns(UserWarning, match='1 of 3 are empty'):
        t = localisation_table({'perfect': perfect, 'corner': _peak((3, 9, 9), (0, 0))}, masks)
    assert list(t.index) == ['perfect', 'corner', 'uniform', 'centre']
    assert t['kind'].tolist() == ['method', 'method', 'baseline', 'baseline']
    assert (t['n_images'] == 2).all() and (t['n_empty'] == 1).all()
    assert t.loc['perfect', ['pointing_game', 'energy_in_mask', 'iou']].astype(float).tolist() == [1.0, 1.0, 1.0]
    assert t.loc['corner', 'pointing_game'] == 0.0
    assert t.loc['uniform', 'energy_in_mask'] == pytest.approx(1 / 81)
    assert t.loc['centre', 'pointing_game'] == 1.0  # the centre guess finds a central lesion


def test_baselines():
    c = centre_map((9, 9))
    assert c[4, 4] == 1.0 and c.argmax() == 40 and c[0, 0] < 0.05 and c[0, 4] == c[4, 0] == c[8, 4]
    b = baseline_maps((2, 9, 9))
    assert set(b) == {'uniform', 'centre'} and b['uniform'].shape == b['centre'].shape == (2, 9, 9)


def test_resize_masks_nearest_may_drop_a_speck_any_keeps_it():
    m = np.zeros((64, 64), bool); m[1, 1] = True
    assert not resize_masks([m], 16).any()
    assert resize_masks([m], 16, how='any')[0, 0, 0]
    assert resize_masks([np.ones((5, 7), bool), np.ones((64, 64), bool)], (8, 6)).shape == (2, 8, 6)


def test_lesion_masks_follow_the_crop(tmp_path):
    "A white lesion painted on an off-centre fundus lands where lesion_masks puts its mask after crop + resize."
    img = np.zeros((200, 300, 3), np.uint8)
    cv2.circle(img, (190, 100), 80, (150, 60, 30), -1)  # the field of view, right of centre
    lesion = np.zeros((200, 300), np.uint8); cv2.circle(lesion, (230, 70), 9, 1, -1)
    img[lesion > 0] = 255
    cv2.imwrite(str(tmp_path/'eye.png'), img[..., ::-1]); cv2.imwrite(str(tmp_path/'he.png'), lesion * 255)
    row = {'image_path': str(tmp_path/'eye.png'), 'mask_HE': str(tmp_path/'he.png')}
    recipe = Recipe(('crop', 'resize'), fmt='png')
    seen = preprocess_image(tmp_path/'eye.png', recipe, 64).min(-1) > 200  # the white lesion in the model's image
    mask = lesion_masks(pd.DataFrame([row]), 64, recipe)[0]
    assert (seen & mask).sum() / (seen | mask).sum() > 0.7
    uncropped = lesion_masks(pd.DataFrame([row]), 64)[0]  # without following the crop, the mask is elsewhere
    assert (seen & uncropped).sum() / (seen | uncropped).sum() < 0.3
    with pytest.raises(ValueError, match='unknown lesion types'):
        lesion_masks(pd.DataFrame([row]), 64, recipe, lesions=('XX',))


def test_lesion_masks_of_the_samples_are_unions():
    from drbook.data import read_samples, read_mask
    t = read_samples()
    row = t[(t.has_MA == True) & (t.has_HE == True)].iloc[:1]  # noqa: E712 (nullable booleans)
    union = lesion_masks(row, 256, '')[0]
    ma = resize_masks([read_mask(row.mask_MA.iloc[0])], 256)[0]
    he = resize_masks([read_mask(row.mask_HE.iloc[0])], 256)[0]
    assert (union >= ma).all() and (union >= he).all() and union.sum() > max(ma.sum(), he.sum())
    only_ma = lesion_masks(row, 256, '', lesions=('MA',))[0]
    assert (only_ma == ma).all()


def test_rank_correlation_and_ssim():
    rng = np.random.default_rng(0)
    a, b = rng.random((4, 8, 8)), rng.random((4, 8, 8))
    b[0] = np.round(a[0], 1)  # ties
    ref = [spearmanr(x.ravel(), y.ravel())[0] for x, y in zip(a, b)]
    assert rank_correlation(a, b) == pytest.approx(ref, abs=1e-9)
    assert rank_correlation(a, np.zeros_like(a)).tolist() == [0.0] * 4
    assert ssim(a, a) == pytest.approx([1.0] * 4, abs=1e-6) and (ssim(a[1:], b[1:]) < 0.5).all()


# --- models ---------------------------------------------------------------------------------------------------------

def _tiny(nested=False, seed=0):
    "A tiny two-class CNN ending in 'logits' + Activation (drbook's convention); optionally with a nested feature model."
    keras.utils.set_random_seed(seed)
    inp = keras.Input((SIZE, SIZE, 3))
    feats = keras.Sequential([keras.layers.Rescaling(1 / 255),
                              keras.layers.Conv2D(8, 3, padding='same', activation='relu', name='conv1'),
                              keras.layers.Conv2D(16, 3, padding='same', activation='relu', name='conv2')], name='features')
    h = feats(inp) if nested else feats.layers[2](feats.layers[1](feats.layers[0](inp)))
    h = keras.layers.GlobalMaxPooling2D()(h)
    z = keras.layers.Dense(2, name='logits')(h)
    return keras.Model(inp, keras.layers.Activation('softmax', name='predictions')(z))


def _planted(n, seed):
    "Dark noisy images; every second one has one bright disc (radius 2) at a random place: (images, labels, masks)."
    rng = np.random.default_rng(seed)
    x = np.clip(rng.normal(70, 12, (n, SIZE, SIZE, 3)), 0, 255).astype(np.float32)
    y, masks = np.arange(n) % 2, np.zeros((n, SIZE, SIZE), np.uint8)
    for i in np.flatnonzero(y):
        cx, cy = rng.integers(5, SIZE - 5, 2)
        cv2.circle(masks[i], (int(cx), int(cy)), 2, 1, -1)
        x[i][masks[i] > 0] = 230
    return x, y, masks > 0


@pytest.fixture(scope='module')
def detector():
    "A tiny CNN trained for a few seconds to tell images with a planted lesion from those without; positive test images."
    x, y, _ = _planted(512, 0)
    model = _tiny()
    model.compile(keras.optimizers.Adam(1e-2), 'sparse_categorical_crossentropy', metrics=['accuracy'])
    model.fit(x, y, epochs=8, batch_size=32, verbose=0)
    xt, yt, mt = _planted(64, 1)
    assert model.evaluate(xt, yt, verbose=0)[1] > 0.95, 'the tiny detector did not learn the planted lesion'
    return model, xt[yt == 1], mt[yt == 1]


def test_gradcam_points_at_the_planted_lesion(detector):
    model, x, masks = detector
    maps = gradcam(model, x, 1)
    assert np.nanmean(pointing_game(maps, masks, tolerance_px=1)) >= 0.9
    t = localisation_table({'Grad-CAM': maps}, masks, tolerance_px=1)
    assert t.loc['Grad-CAM', 'energy_in_mask'] > 2 * t.loc['uniform', 'energy_in_mask']
    assert t.loc['Grad-CAM', 'pointing_game'] > t.loc['centre', 'pointing_game'] + 0.5


def test_randomisation_separates_trained_from_random(detector):
    model, x, _ = detector
    table, maps = model_randomisation(model, x, gradcam, 1, seed=0)
    assert table['layer'].tolist() == ['(trained)', 'logits', 'conv2', 'conv1']
    assert maps.shape == (4, *x.shape[:3])
    assert table['spearman'].iloc[0] == 1.0 and table['spearman'].iloc[-1] < 0.3
    assert passes_randomisation(table)


def test_a_method_blind_to_the_model_fails_randomisation(detector):
    model, x, _ = detector
    def brightness(model, images, class_index): return images.mean(-1) / 255
    table, _ = model_randomisation(model, x, brightness, 1, seed=0)
    assert table['spearman'].tolist() == pytest.approx([1.0] * 4)
    assert not passes_randomisation(table)


def test_randomised_copy_leaves_the_model_alone():
    for nested in (False, True):
        model = _tiny(nested)
        before = [w.copy() for w in model.get_weights()]
        names = [l.name for l in weighted_layers(model)]
        assert names == ['conv1', 'conv2', 'logits']
        copy = randomised_copy(model, 1, seed=3)
        for a, b in zip(before, model.get_weights()): np.testing.assert_array_equal(a, b)
        mine = {l.name: l for l in weighted_layers(copy)}
        assert not np.allclose(mine['logits'].get_weights()[0], model.get_layer('logits').get_weights()[0])
        np.testing.assert_array_equal(mine['conv2'].get_weights()[0], before[names.index('conv2') * 2])
        again = {l.name: l for l in weighted_layers(randomised_copy(model, 3, seed=3))}
        assert not np.allclose(again['conv1'].get_weights()[0], before[0])
        np.testing.assert_array_equal(again['logits'].get_weights()[0],
                                      {l.name: l for l in weighted_layers(randomised_copy(model, 3, seed=3))}['logits'].get_weights()[0])
    with pytest.raises(ValueError, match='steps'):
        randomised_copy(model, 4)


def test_deletion_of_a_good_map_beats_random(detector):
    model, x, masks = detector
    c = deletion_insertion(model, x, gradcam, 1, steps=8, seed=0)
    aucs = c.aucs()
    assert aucs['deletion_auc'] < aucs['deletion_random_auc'] - 0.2
    assert aucs['insertion_auc'] > aucs['insertion_random_auc'] + 0.1
    assert c.deletion.shape == (len(x), 9) and c.fractions.tolist() == pytest.approx(np.linspace(0, 1, 9).tolist())
    # the lesion mask itself, as a map, is at least as good as Grad-CAM at deletion
    assert deletion_insertion(model, x, masks.astype(np.float32), 1, steps=8).aucs()['deletion_auc'] < aucs['deletion_random_auc']


def test_perturbation_curves_end_points(detector):
    model, x, _ = detector
    order = saliency_order(gradcam(model, x[:4], 1))
    d = perturbation_curves(model, x[:4], order, np.ones(4, int), 'deletion', steps=4, batch_size=7)
    i = perturbation_curves(model, x[:4], order, np.ones(4, int), 'insertion', steps=4)
    assert d[:, 0] == pytest.approx(i[:, -1], abs=1e-5) and d[:, -1] == pytest.approx(i[:, 0], abs=1e-5)
    with pytest.raises(ValueError, match='order: expected shape'):
        perturbation_curves(model, x[:4], order[:, :10], np.ones(4, int))


def test_class_and_map_checks(detector):
    model, x, _ = detector
    assert class_indices(model, x[:3]).tolist() == [1, 1, 1]
    with pytest.raises(ValueError, match=r'class_index=2 is out of range'):
        class_indices(model, x[:3], 2)
    with pytest.raises(ValueError, match=r'expected \(3, 32, 32\)'):
        explain_maps(lambda m, im, c: np.ones((3, 8, 8)), model, x[:3], [1, 1, 1])
    with pytest.raises(ValueError, match=r'values must lie in \[0, 1\]'):
        explain_maps(lambda m, im, c: np.full((3, 32, 32), 2.0), model, x[:3], [1, 1, 1])
    assert check_maps(np.ones((1, 2, 2)) * (1 + 1e-7)).max() == 1.0
