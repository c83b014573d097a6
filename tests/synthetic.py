"""A synthetic HAM10000 drawn at test time, in either on-disk layout.

Skin-toned images with a lesion; melanomas are darker, larger and asymmetric, so there is a
real signal to learn. Each lesion has several images (jittered position and size) so that the
lesion-grouped split is exercised.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

from pipeline_lib.data import DX_CODES

SITES = ("back", "face", "trunk", "lower extremity", "upper extremity", "scalp")


def draw_image(
    rng: np.random.Generator, melanoma: bool, width: int = 80, height: int = 60
) -> np.ndarray:
    """One RGB uint8 image of skin with a lesion."""
    yy, xx = np.mgrid[0:height, 0:width].astype(float)
    skin = np.array([200, 160, 140]) + rng.normal(0, 8, 3)
    img = np.ones((height, width, 3)) * skin + rng.normal(0, 4, (height, width, 3))
    cx, cy = width / 2 + rng.normal(0, 4), height / 2 + rng.normal(0, 3)
    radius = (0.30 if melanoma else 0.17) * height * rng.uniform(0.85, 1.15)
    angle = np.arctan2(yy - cy, xx - cx)
    # Melanomas get an irregular, asymmetric border (a lobe on one side).
    wobble = 1 + (
        0.35 * np.cos(angle - rng.uniform(0, 6.28)) + 0.15 * np.cos(5 * angle)
        if melanoma
        else 0.04 * np.cos(3 * angle)
    )
    inside = np.hypot(xx - cx, yy - cy) < radius * wobble
    colour = np.array([70, 40, 35]) if melanoma else np.array([140, 95, 75])
    colour = colour + rng.normal(0, 10, 3)
    img[inside] = colour + rng.normal(0, 6, (inside.sum(), 3))
    return np.clip(img, 0, 255).astype(np.uint8)


def make_dataset(
    root: Path,
    n_lesions: int = 40,
    images_per_lesion: int = 2,
    melanoma_share: float = 0.3,
    layout: str = "compact",
    seed: int = 0,
) -> pd.DataFrame:
    """Write metadata and JPEGs under ``root``; return the metadata table.

    Args:
        layout: ``compact`` (metadata.csv + images/) or ``official``
            (HAM10000_metadata.csv + HAM10000_images_part_1/ and _part_2/).
    """
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    others = [d for d in DX_CODES if d != "mel"]
    rows = []
    for lesion in range(n_lesions):
        melanoma = rng.random() < melanoma_share
        dx = "mel" if melanoma else others[lesion % len(others)]
        age = float(rng.integers(20, 85)) + (10 if melanoma else 0)
        sex = ["male", "female"][lesion % 2]
        site = SITES[lesion % len(SITES)]
        for k in range(images_per_lesion):
            rows.append(
                {
                    "lesion_id": f"HAM_{lesion:07d}",
                    "image_id": f"ISIC_{lesion * images_per_lesion + k:07d}",
                    "dx": dx,
                    "dx_type": "histo",
                    "age": age,
                    "sex": sex,
                    "localization": site,
                }
            )
    table = pd.DataFrame(rows)
    if layout == "compact":
        meta, folders = root / "metadata.csv", [root / "images"]
    else:
        meta = root / "HAM10000_metadata.csv"
        folders = [root / "HAM10000_images_part_1", root / "HAM10000_images_part_2"]
    for f in folders:
        f.mkdir(exist_ok=True)
    for i, row in table.iterrows():
        img = draw_image(rng, row["dx"] == "mel")
        Image.fromarray(img).save(folders[i % len(folders)] / f"{row['image_id']}.jpg", quality=90)
    table.to_csv(meta, index=False)
    return table


SHAPES = [(80, 60), (120, 40), (50, 90), (200, 150)]  # width x height: several aspect ratios


def write_set(root: Path, n: int = 24, seed: int = 0) -> tuple[Path, Path]:
    """PNG and BMP files of several sizes in two sub-folders, labelled by dx code, named by stem."""
    rng = np.random.default_rng(seed)
    others = [c for c in DX_CODES if c != "mel"]
    rows = []
    for i in range(n):
        melanoma = i % 3 == 0
        width, height = SHAPES[i % len(SHAPES)]
        image = Image.fromarray(draw_image(rng, melanoma, width, height))
        sub, suffix = ("png", ".png") if i % 2 else ("bmp", ".BMP")
        (root / "images" / sub).mkdir(parents=True, exist_ok=True)
        image.save(root / "images" / sub / f"case{i:03d}{suffix}")
        rows.append({"image": f"case{i:03d}", "dx": "mel" if melanoma else others[i % 6]})
    pd.DataFrame(rows).to_csv(root / "labels.csv", index=False)
    return root / "images", root / "labels.csv"
