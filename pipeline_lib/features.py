"""Handcrafted dermoscopy features (colour, lesion shape, texture) and the metadata encoder.

Everything works on whole batches of images at once: the uint8 cache is downscaled, an Otsu
lesion mask is computed per image, and every feature is a masked reduction over pixels. The
ABCD-rule cues of dermatology are the model: Asymmetry, Border irregularity, Colour, and
Diameter (here the lesion's area fraction, as the field of view differs between images).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage
from sklearn.compose import ColumnTransformer
from sklearn.impute import SimpleImputer
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import OneHotEncoder, StandardScaler

METADATA_NUMERIC = ("age",)
METADATA_CATEGORICAL = ("sex", "localization")
METADATA_COLUMNS = METADATA_NUMERIC + METADATA_CATEGORICAL

_CHANNELS = ("r", "g", "b")
_QUANTILES = (0.1, 0.5, 0.9)
SHAPE_NAMES = (
    "area", "border_irregularity", "asym_major", "asym_minor", "elongation", "centroid_offset",
)  # fmt: skip
FEATURE_NAMES: tuple[str, ...] = (
    *(f"{c}_{s}" for c in _CHANNELS for s in ("mean", "std", "p10", "p50", "p90")),
    "hue_cos", "hue_sin", "sat_mean", "sat_std", "val_mean", "val_std",
    *SHAPE_NAMES,
    *(f"{c}_in" for c in _CHANNELS), *(f"{c}_out" for c in _CHANNELS),
    *(f"{c}_in_std" for c in _CHANNELS),
    "sat_in", "val_in", "val_contrast", "blue_gray_in",
    "grad_in", "grad_out", "grad_in_std", "grad_border", "local_std_in", "local_std_out",
)  # fmt: skip

# Connectivity within each image only: axis 0 is the batch and must never join two images.
_CROSS = np.zeros((3, 3, 3), dtype=bool)
_CROSS[1] = ndimage.generate_binary_structure(2, 1)
_EPS = 1e-6


def downscale(images: np.ndarray, size: int) -> np.ndarray:
    """Area-average ``(N, 3, H, W)`` uint8 images to ``(N, 3, size, size)`` float32 in [0, 1]."""
    x = torch.from_numpy(np.array(images, dtype=np.uint8)).float().div_(255.0)  # a writable copy
    if x.shape[-1] != size or x.shape[-2] != size:
        x = F.interpolate(x, size=(size, size), mode="area")
    return x.numpy()


def rgb_to_hsv(rgb: np.ndarray) -> np.ndarray:
    """Convert ``(N, 3, H, W)`` RGB in [0, 1] to HSV in [0, 1] (hue as a fraction of a turn)."""
    r, g, b = rgb[:, 0], rgb[:, 1], rgb[:, 2]
    v = rgb.max(axis=1)
    c = v - rgb.min(axis=1)
    s = c / np.maximum(v, _EPS)
    cs = np.maximum(c, _EPS)  # grey pixels (c == 0) get hue 0 from the red branch below
    h = np.where(v == r, (g - b) / cs, np.where(v == g, (b - r) / cs + 2, (r - g) / cs + 4))
    return np.stack([(h / 6) % 1, s, v], axis=1).astype(np.float32)


def otsu_threshold(
    values: np.ndarray, weights: np.ndarray | None = None, bins: int = 256
) -> np.ndarray:
    """Otsu's threshold of each row of ``values`` (in [0, 1]), maximising between-class variance.

    Args:
        values: ``(N, ...)``; every leading index is one image.
        weights: optional 0/1 weights of the same shape: pixels that take part in the histogram.
        bins: histogram resolution.

    Returns:
        ``(N,)`` thresholds; a value belongs to the upper class when it is ``> threshold``.
    """
    n = values.shape[0]
    flat = values.reshape(n, -1)
    w = np.ones_like(flat) if weights is None else weights.reshape(n, -1).astype(flat.dtype)
    idx = np.clip((flat * bins).astype(np.int64), 0, bins - 1)
    # One bincount for the whole batch: image i uses bins [i * bins, (i + 1) * bins).
    hist = np.bincount((idx + np.arange(n)[:, None] * bins).ravel(), w.ravel(), n * bins)
    p = hist.reshape(n, bins) / np.maximum(hist.reshape(n, bins).sum(1, keepdims=True), _EPS)
    centres = (np.arange(bins) + 0.5) / bins
    w0 = np.cumsum(p, axis=1)
    mu = np.cumsum(p * centres, axis=1)
    between = (mu[:, -1:] * w0 - mu) ** 2 / np.maximum(w0 * (1.0 - w0), _EPS)
    return (np.argmax(between, axis=1) + 1) / bins  # upper edge of the last lower-class bin


def central_disc(size: int, radius: float = 0.5) -> np.ndarray:
    """A centred disc of ``radius`` image sizes; dermoscope vignetting lies outside 0.5."""
    yy, xx = np.mgrid[0:size, 0:size] + 0.5
    return (yy - size / 2) ** 2 + (xx - size / 2) ** 2 <= (radius * size) ** 2


def lesion_masks(rgb: np.ndarray) -> np.ndarray:
    """Boolean ``(N, S, S)`` masks of the darker lesion in ``(N, 3, S, S)`` RGB images.

    The blue channel separates pigment from skin best; a grey closing first erases hairs
    (thin dark lines). The threshold comes from the central part of the image only, and the
    dark region kept is the one covering most of that central part, so that a dark vignette
    ring at the edge of the dermoscope's field is neither the threshold's nor the mask's.
    """
    size = rgb.shape[-1]
    hair = max(3, size // 13) | 1  # wider than a hair at this scale, narrower than a lesion
    blue = ndimage.grey_closing(rgb[:, 2], size=(1, hair, hair))
    blue = ndimage.gaussian_filter(blue, sigma=(0, 1, 1))
    core = central_disc(size, 0.4)
    thr = otsu_threshold(blue, np.broadcast_to(core, blue.shape))
    mask = (blue <= thr[:, None, None]) & central_disc(size)
    mask = ndimage.binary_opening(mask, structure=_CROSS)
    # Pad the batch axis so the first and last images are not on the array's border.
    mask = ndimage.binary_fill_holes(np.pad(mask, ((1, 1), (0, 0), (0, 0))), structure=_CROSS)
    return main_component(mask[1:-1], core)


def main_component(mask: np.ndarray, core: np.ndarray) -> np.ndarray:
    """Keep, in each ``(N, S, S)`` boolean mask, the 4-connected region with most pixels in ``core``.

    Args:
        mask: the candidate regions of every image.
        core: ``(S, S)`` boolean; an image with no region overlapping it keeps an empty mask.
    """
    labels, count = ndimage.label(mask, structure=_CROSS)
    if count == 0:
        return mask
    overlap = np.bincount(labels.ravel(), np.broadcast_to(core, mask.shape).ravel(), count + 1)
    owner = np.zeros(count + 1, dtype=np.int64)
    owner[labels.ravel()] = np.repeat(np.arange(len(mask)), core.size)
    order = np.lexsort((overlap[1:], owner[1:])) + 1  # labels by image, then by overlap
    last = np.r_[owner[order][1:] != owner[order][:-1], True]  # each image's best label
    best = np.zeros(len(mask), dtype=np.int64)  # label 0 (background) for images with no region
    best[owner[order][last]] = np.where(overlap[order][last] > 0, order[last], 0)
    return (labels == best[:, None, None]) & mask


def shape_features(mask: np.ndarray) -> dict[str, np.ndarray]:
    """Area, border irregularity, asymmetry and elongation of ``(N, S, S)`` boolean masks.

    Returns:
        ``area`` (fraction of the image), ``border_irregularity`` (perimeter^2 / (4 pi area),
        1 for a disc), ``asym_major`` / ``asym_minor`` (fraction of the mask not covered by its
        mirror image about the major / minor principal axis through the centroid),
        ``elongation`` (1 - minor/major axis) and ``centroid_offset`` (distance of the centroid
        from the image centre, in image sizes). All are 0 for an empty mask.
    """
    n, size = mask.shape[0], mask.shape[-1]
    m = mask.astype(np.float32)
    area = m.sum(axis=(1, 2))
    a = np.maximum(area, 1.0)
    # Crack length (mask/background pixel edges) times pi/4 is an unbiased perimeter estimate
    # over random orientations; for any digitally convex shape it equals its bounding box's.
    padded = np.pad(m, ((0, 0), (1, 1), (1, 1)))
    cracks = np.abs(np.diff(padded, axis=1)).sum((1, 2)) + np.abs(np.diff(padded, axis=2)).sum(
        (1, 2)
    )
    perimeter = np.pi / 4 * cracks
    irregularity = perimeter**2 / (4 * np.pi * a)

    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    cy = (m * yy).sum((1, 2)) / a
    cx = (m * xx).sum((1, 2)) / a
    dy = yy - cy[:, None, None]
    dx = xx - cx[:, None, None]
    mxx = (m * dx * dx).sum((1, 2)) / a
    myy = (m * dy * dy).sum((1, 2)) / a
    mxy = (m * dx * dy).sum((1, 2)) / a
    theta = 0.5 * np.arctan2(2 * mxy, mxx - myy)  # direction of the major axis
    ux, uy = np.cos(theta)[:, None, None], np.sin(theta)[:, None, None]
    along = dx * ux + dy * uy
    spread = np.sqrt(((mxx - myy) / 2) ** 2 + mxy**2)
    major, minor = (mxx + myy) / 2 + spread, np.maximum((mxx + myy) / 2 - spread, 0.0)

    offsets = (np.arange(n, dtype=np.int32) * size * size)[:, None, None]

    def mirrored_overlap(sign: float) -> np.ndarray:
        # Reflection about the major axis maps d to 2(d.u)u - d; about the minor axis, to
        # d - 2(d.u)u. A reflection is its own inverse, so sampling at it mirrors the mask.
        rx = cx[:, None, None] + sign * (2 * along * ux - dx)
        ry = cy[:, None, None] + sign * (2 * along * uy - dy)
        ix, iy = np.rint(rx).astype(np.int32), np.rint(ry).astype(np.int32)
        inside = (ix >= 0) & (ix < size) & (iy >= 0) & (iy < size)
        flat = offsets + np.clip(iy, 0, size - 1) * size + np.clip(ix, 0, size - 1)
        mirrored = np.take(mask.ravel(), flat) & inside
        return (mask & ~mirrored).sum((1, 2)) / a

    empty = area == 0
    centre = (size - 1) / 2
    out = {
        "area": area / (size * size),
        "border_irregularity": irregularity,
        "asym_major": mirrored_overlap(1.0),
        "asym_minor": mirrored_overlap(-1.0),
        "elongation": 1.0 - np.sqrt(minor / np.maximum(major, _EPS)),
        "centroid_offset": np.hypot(cx - centre, cy - centre) / size,
    }
    return {k: np.where(empty, 0.0, v).astype(np.float32) for k, v in out.items()}


def _masked_mean(x: np.ndarray, m: np.ndarray) -> np.ndarray:
    """Mean of ``x`` (``(N, ..., S, S)``) over the pixels of ``m`` (``(N, S, S)``); 0 if empty."""
    m = m.reshape(m.shape[0], *([1] * (x.ndim - 3)), *m.shape[1:])
    return (x * m).sum((-2, -1)) / np.maximum(m.sum((-2, -1)), 1.0)


def _masked_std(x: np.ndarray, m: np.ndarray) -> np.ndarray:
    mean = _masked_mean(x, m)
    return np.sqrt(np.maximum(_masked_mean(x * x, m) - mean**2, 0.0))


def _batch_features(rgb: np.ndarray) -> np.ndarray:
    """Every feature of :data:`FEATURE_NAMES` for one batch of float RGB images."""
    n = rgb.shape[0]
    hsv = rgb_to_hsv(rgb)
    flat = rgb.reshape(n, 3, -1)
    quant = np.quantile(flat, _QUANTILES, axis=-1)  # (3 quantiles, N, 3 channels)
    colour = np.stack([flat.mean(-1), flat.std(-1), quant[0], quant[1], quant[2]], axis=-1).reshape(
        n, -1
    )  # channel-major, matching FEATURE_NAMES
    hue = 2 * np.pi * hsv[:, 0].reshape(n, -1)
    sat, val = hsv[:, 1].reshape(n, -1), hsv[:, 2].reshape(n, -1)
    global_hsv = np.stack(
        [
            np.cos(hue).mean(-1),
            np.sin(hue).mean(-1),
            sat.mean(-1),
            sat.std(-1),
            val.mean(-1),
            val.std(-1),
        ],
        axis=-1,
    )

    mask = lesion_masks(rgb)
    outside = ~mask & central_disc(rgb.shape[-1])  # skin, without the vignette corners
    shape = shape_features(mask)

    # Blue-grey structures (regression, blue-white veil): bluish hue with some saturation.
    h = hsv[:, 0]
    blue_gray = ((h > 0.5) & (h < 0.75) & (hsv[:, 1] > 0.08)).astype(np.float32)
    val_in, val_out = _masked_mean(hsv[:, 2], mask), _masked_mean(hsv[:, 2], outside)

    grey = rgb.mean(axis=1)
    gy, gx = np.gradient(grey, axis=(1, 2))
    grad = np.hypot(gx, gy)
    border = mask & ~ndimage.binary_erosion(mask, structure=_CROSS)
    local_mean = ndimage.uniform_filter(grey, size=(1, 5, 5))
    local_std = np.sqrt(
        np.maximum(ndimage.uniform_filter(grey * grey, size=(1, 5, 5)) - local_mean**2, 0.0)
    )
    lesion = np.stack(
        [
            *_masked_mean(rgb, mask).T,
            *_masked_mean(rgb, outside).T,
            *_masked_std(rgb, mask).T,
            _masked_mean(hsv[:, 1], mask),
            val_in,
            val_out - val_in,
            _masked_mean(blue_gray, mask),
            _masked_mean(grad, mask),
            _masked_mean(grad, outside),
            _masked_std(grad, mask),
            _masked_mean(grad, border),
            _masked_mean(local_std, mask),
            _masked_mean(local_std, outside),
        ],
        axis=-1,
    )
    shapes = np.stack([shape[k] for k in SHAPE_NAMES], axis=-1)
    return np.concatenate([colour, global_hsv, shapes, lesion], axis=1).astype(np.float32)


def image_features(images: np.ndarray, size: int, batch_size: int = 128) -> np.ndarray:
    """Handcrafted features of every image, in batches so memory stays bounded.

    Args:
        images: ``(N, 3, H, W)`` uint8 (a memory map is fine).
        size: the side the images are downscaled to first.
        batch_size: images processed at once.

    Returns:
        ``(N, len(FEATURE_NAMES))`` float32, finite.
    """
    out = np.empty((len(images), len(FEATURE_NAMES)), dtype=np.float32)
    for start in range(0, len(images), batch_size):
        rgb = downscale(images[start : start + batch_size], size)
        out[start : start + len(rgb)] = _batch_features(rgb)
    return out


def metadata_transformer() -> ColumnTransformer:
    """Age (median-imputed, standardised), sex and body site (one-hot, unseen values ignored)."""
    return ColumnTransformer(
        [
            (
                "age",
                make_pipeline(SimpleImputer(strategy="median"), StandardScaler()),
                list(METADATA_NUMERIC),
            ),
            (
                "categories",
                OneHotEncoder(handle_unknown="ignore", sparse_output=False),
                list(METADATA_CATEGORICAL),
            ),
        ]
    )


def full_transformer() -> ColumnTransformer:
    """Metadata as in :func:`metadata_transformer` plus standardised image features."""
    meta = metadata_transformer()
    return ColumnTransformer([*meta.transformers, ("image", StandardScaler(), list(FEATURE_NAMES))])
