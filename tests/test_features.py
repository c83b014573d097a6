"""Handcrafted features against hand-made images and independent references."""

from __future__ import annotations

import colorsys

import numpy as np
import pandas as pd
import pytest

from pipeline_lib import features

SIZE = 64


def _grid(size: int = SIZE) -> tuple[np.ndarray, np.ndarray]:
    yy, xx = np.mgrid[0:size, 0:size].astype(float)
    return yy, xx


def disc(radius: float, cy: float = 31.5, cx: float = 31.5) -> np.ndarray:
    yy, xx = _grid()
    return (yy - cy) ** 2 + (xx - cx) ** 2 <= radius**2


def ellipse(a: float, b: float, angle_deg: float) -> np.ndarray:
    yy, xx = _grid()
    t = np.deg2rad(angle_deg)
    dx, dy = xx - 31.5, yy - 31.5
    u = dx * np.cos(t) + dy * np.sin(t)
    v = -dx * np.sin(t) + dy * np.cos(t)
    return (u / a) ** 2 + (v / b) ** 2 <= 1


def star(points: int = 6, inner: float = 8.0, outer: float = 24.0) -> np.ndarray:
    yy, xx = _grid()
    r = np.hypot(yy - 31.5, xx - 31.5)
    phi = np.arctan2(yy - 31.5, xx - 31.5)
    # Radius oscillating between inner and outer with the angle: a star with spiky arms.
    edge = inner + (outer - inner) * np.abs(np.cos(points * phi / 2)) ** 3
    return r <= edge


def shapes_of(*masks: np.ndarray) -> dict[str, np.ndarray]:
    return features.shape_features(np.stack(masks))


def _otsu_brute_force(values: np.ndarray, bins: int) -> float:
    """Threshold minimising the within-class variance, by trying every bin edge."""
    best, best_t = np.inf, 0.0
    for k in range(1, bins):
        t = k / bins
        low, high = values[values < t], values[values >= t]
        if len(low) == 0 or len(high) == 0:
            continue
        within = len(low) * low.var() + len(high) * high.var()
        if within < best - 1e-12:
            best, best_t = within, t
    return best_t


def test_otsu_separates_a_bimodal_array_like_brute_force():
    rng = np.random.default_rng(0)
    bins = 64
    low = np.clip(rng.normal(0.25, 0.05, 300), 0, 1)
    high = np.clip(rng.normal(0.7, 0.08, 500), 0, 1)
    values = np.concatenate([low, high])
    values = (
        np.floor(values * bins) + 0.5
    ) / bins  # bin centres, so both methods see the same data

    (threshold,) = features.otsu_threshold(values[None], bins=bins)

    assert low.max() < 0.45 and threshold == pytest.approx(_otsu_brute_force(values, bins))
    assert 0.35 < threshold < 0.6


def test_otsu_is_per_row_and_honours_weights():
    a = np.r_[np.full(50, 0.1), np.full(50, 0.5)]
    b = np.r_[np.full(50, 0.5), np.full(50, 0.9)]
    c = np.r_[np.full(30, 0.1), np.full(40, 0.5), np.full(30, 0.9)]
    weights = np.ones((3, 100))
    weights[2, :30] = 0  # ignore the darkest mode of row c: it becomes like row b

    t = features.otsu_threshold(np.stack([a, b, c]), weights)

    assert 0.1 < t[0] <= 0.5 and 0.5 < t[1] <= 0.9 and 0.5 < t[2] <= 0.9


def test_rgb_to_hsv_matches_colorsys():
    rng = np.random.default_rng(1)
    rgb = rng.random((2, 3, 5, 5)).astype(np.float32)
    rgb[0, :, 0, 0] = 0.4  # grey: hue and saturation 0
    rgb[0, :, 0, 1] = 0.0  # black
    rgb[1, :, 0, 0] = (0.9, 0.2, 0.9)  # magenta: two channels tie for the maximum

    hsv = features.rgb_to_hsv(rgb)

    ref = np.empty_like(hsv)
    for n, i, j in np.ndindex(2, 5, 5):
        ref[n, :, i, j] = colorsys.rgb_to_hsv(*rgb[n, :, i, j])
    np.testing.assert_allclose(hsv, ref, atol=1e-5)


def test_disc_area_and_near_one_irregularity_with_no_asymmetry():
    s = shapes_of(disc(20))
    assert s["area"][0] == pytest.approx(np.pi * 20**2 / SIZE**2, rel=0.03)
    assert s["border_irregularity"][0] == pytest.approx(1.0, abs=0.08)
    assert s["asym_major"][0] < 0.03 and s["asym_minor"][0] < 0.03
    assert s["elongation"][0] < 0.03 and s["centroid_offset"][0] < 0.01


def test_rotated_ellipse_is_symmetric_about_its_principal_axes():
    # Axes found wrongly (e.g. the image axes) would leave most of a 30-degree ellipse uncovered.
    s = shapes_of(ellipse(24, 10, 30))
    assert s["asym_major"][0] < 0.05 and s["asym_minor"][0] < 0.05
    assert s["elongation"][0] == pytest.approx(1 - 10 / 24, abs=0.03)


def test_half_disc_is_asymmetric_about_one_axis_only():
    yy, _ = _grid()
    half = disc(22) & (yy <= 31.5)
    s = shapes_of(half)
    # The major axis runs along the flat edge, 4r/(3 pi) from it; mirrored about it, 18.5% of
    # a continuous half-disc falls outside itself (numerical integration at 4000^2 points).
    assert s["asym_major"][0] == pytest.approx(0.185, abs=0.02)
    assert s["asym_minor"][0] < 0.03


def test_ellipse_with_a_bump_is_more_asymmetric_than_the_ellipse():
    plain = ellipse(22, 12, 0)
    bumped = plain | disc(7, cy=31.5 - 12, cx=31.5 + 10)
    s = shapes_of(plain, bumped)
    assert s["asym_major"][1] + s["asym_minor"][1] > s["asym_major"][0] + s["asym_minor"][0] + 0.1


def test_star_border_is_more_irregular_than_a_disc():
    s = shapes_of(disc(16), star())
    assert s["border_irregularity"][1] > 1.5 * s["border_irregularity"][0]


def test_empty_mask_gives_zero_shape_features():
    s = shapes_of(np.zeros((SIZE, SIZE), bool))
    assert all(v[0] == 0 for v in s.values())


def _skin_with_lesion(lesion: np.ndarray, vignette: bool, hair: bool) -> np.ndarray:
    """A float RGB image: pinkish skin, a brown lesion, optionally black corners and a hair."""
    rgb = np.empty((3, SIZE, SIZE), dtype=np.float32)
    rgb[:] = np.array([0.85, 0.65, 0.6])[:, None, None]
    rgb[:, lesion] = np.array([0.45, 0.3, 0.2])[:, None]
    if vignette:
        rgb[:, ~disc(34)] = 0.05
    if hair:
        rgb[:, 10:54, 40] = 0.1
    return rgb


def test_lesion_mask_finds_the_lesion_despite_vignette_and_hair():
    lesions = [disc(12, cy=28, cx=34), ellipse(20, 9, 60)]
    rgb = np.stack(
        [_skin_with_lesion(lesions[0], True, True), _skin_with_lesion(lesions[1], False, True)]
    )

    masks = features.lesion_masks(rgb)

    for mask, truth in zip(masks, lesions, strict=True):
        iou = (mask & truth).sum() / (mask | truth).sum()
        assert iou > 0.85


def test_main_component_keeps_the_central_region_of_each_image():
    core = features.central_disc(SIZE, 0.4)
    centre, corner = disc(6), disc(12, cy=5, cx=5)  # the corner blob is larger but off-centre
    masks = np.stack([centre | corner, corner & ~core, np.zeros((SIZE, SIZE), bool)])

    kept = features.main_component(masks, core)

    assert (kept[0] == centre).all()
    assert not kept[1].any() and not kept[2].any()


def test_image_features_shape_and_finite_even_for_blank_images():
    rng = np.random.default_rng(2)
    images = rng.integers(0, 256, (5, 3, 48, 48), dtype=np.uint8)
    images[3] = 128  # uniform: no lesion contrast at all
    images[4] = 0

    x = features.image_features(images, size=32, batch_size=2)

    assert x.shape == (5, len(features.FEATURE_NAMES)) and x.dtype == np.float32
    assert np.isfinite(x).all()
    # Batching must not change the result.
    np.testing.assert_allclose(x, features.image_features(images, size=32, batch_size=5))


def test_image_features_see_a_darker_larger_lesion():
    small = _skin_with_lesion(disc(8), False, False)
    large = _skin_with_lesion(disc(20), False, False)
    images = (np.stack([small, large]) * 255).astype(np.uint8)

    x = pd.DataFrame(features.image_features(images, SIZE), columns=features.FEATURE_NAMES)

    assert x["area"][1] == pytest.approx(np.pi * 400 / SIZE**2, rel=0.1)
    assert x["area"][1] > 4 * x["area"][0]
    assert (x["val_contrast"] > 0.2).all()  # the lesion is darker than the skin around it


def test_metadata_transformer_imputes_age_and_ignores_unseen_sites():
    train = pd.DataFrame(
        {
            "age": [30.0, 50.0, np.nan],
            "sex": ["male", "female", "male"],
            "localization": ["back", "face", "back"],
        }
    )
    new = pd.DataFrame({"age": [np.nan], "sex": ["unknown"], "localization": ["scalp"]})

    enc = features.metadata_transformer().fit(train)
    out = enc.transform(new)

    # age column (median 40 -> 0 after scaling), then 2 sex + 2 site one-hot columns, all zero.
    np.testing.assert_allclose(out, [[0.0, 0, 0, 0, 0]])
