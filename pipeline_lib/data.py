"""HAM10000 on disk: locating either layout, validating the metadata, decoding images once.

Two layouts are accepted under one root:

* compact: ``metadata.csv`` and ``images/<image_id>.jpg``;
* official download: ``HAM10000_metadata.csv`` and ``HAM10000_images_part_1/``,
  ``HAM10000_images_part_2/``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from PIL import Image, UnidentifiedImageError
from tqdm import tqdm

DX_CODES = ("akiec", "bcc", "bkl", "df", "mel", "nv", "vasc")
DX_NAMES = {  # the HAM10000 diagnoses, for people reading a prediction
    "akiec": "actinic keratosis / intraepithelial carcinoma",
    "bcc": "basal cell carcinoma",
    "bkl": "benign keratosis",
    "df": "dermatofibroma",
    "mel": "melanoma",
    "nv": "melanocytic nevus",
    "vasc": "vascular lesion",
}
MELANOMA = "mel"
REQUIRED_COLUMNS = ("lesion_id", "image_id", "dx", "dx_type", "age", "sex", "localization")
METADATA_NAMES = ("metadata.csv", "HAM10000_metadata.csv")
IMAGE_DIRS = ("images", "HAM10000_images_part_1", "HAM10000_images_part_2")
DOWNLOAD_HINT = (
    "Download HAM10000 from https://doi.org/10.7910/DVN/DBW86T (Harvard Dataverse) and unpack "
    "it so that the root holds either HAM10000_metadata.csv with HAM10000_images_part_1/ and "
    "HAM10000_images_part_2/ (the official layout), or metadata.csv with images/ (the compact "
    "layout); then set data.root in params.yaml to that folder."
)


class DataError(ValueError):
    """The raw dataset is missing or malformed; the message names the file or value."""


@dataclass(frozen=True)
class RawDataset:
    """The validated metadata and the path of every image."""

    metadata_path: Path
    table: pd.DataFrame  # one row per image, with an ``path`` column


def find_metadata(root: Path) -> Path:
    """Return the metadata CSV under ``root`` in either layout."""
    if not root.is_dir():
        raise DataError(f"HAM10000 root {root} does not exist. {DOWNLOAD_HINT}")
    for name in METADATA_NAMES:
        if (root / name).is_file():
            return root / name
    raise DataError(
        f"no metadata file ({' or '.join(METADATA_NAMES)}) in HAM10000 root {root}. {DOWNLOAD_HINT}"
    )


def index_images(root: Path) -> dict[str, Path]:
    """Map ``image_id`` to its JPEG over every image folder of either layout."""
    paths: dict[str, Path] = {}
    for sub in IMAGE_DIRS:
        folder = root / sub
        if folder.is_dir():
            for p in folder.iterdir():
                if p.suffix.lower() in (".jpg", ".jpeg"):
                    paths[p.stem] = p
    if not paths:
        raise DataError(
            f"no images found under {root} (looked in {', '.join(IMAGE_DIRS)}). {DOWNLOAD_HINT}"
        )
    return paths


def validate_metadata(table: pd.DataFrame, source: Path) -> pd.DataFrame:
    """Check columns, dx codes and uniqueness; add ``label`` (1 = melanoma) and ``dx_index``."""
    missing = [c for c in REQUIRED_COLUMNS if c not in table.columns]
    if missing:
        raise DataError(
            f"{source}: missing column(s) {', '.join(missing)}; expected {', '.join(REQUIRED_COLUMNS)}"
        )
    unknown = sorted(set(table["dx"].astype(str)) - set(DX_CODES))
    if unknown:
        row = table.index[table["dx"].astype(str).isin(unknown)][0]
        raise DataError(
            f"{source}: unknown dx code(s) {unknown} (first at row {row + 2}); "
            f"expected one of {', '.join(DX_CODES)}"
        )
    dup = table["image_id"][table["image_id"].duplicated()]
    if len(dup):
        raise DataError(f"{source}: image_id {dup.iloc[0]} appears more than once")
    for col in ("lesion_id", "image_id"):
        if table[col].isna().any():
            raise DataError(f"{source}: empty {col} at row {int(table[col].isna().idxmax()) + 2}")
    table = table.copy()
    table["age"] = pd.to_numeric(table["age"], errors="coerce")
    table["sex"] = table["sex"].fillna("unknown").astype(str)
    table["localization"] = table["localization"].fillna("unknown").astype(str)
    table["label"] = (table["dx"] == MELANOMA).astype(int)
    table["dx_index"] = table["dx"].map({d: i for i, d in enumerate(DX_CODES)}).astype(int)
    return table


def load_raw(root: str | Path) -> RawDataset:
    """Locate and validate HAM10000 under ``root``; every image must exist."""
    root = Path(root)
    meta_path = find_metadata(root)
    try:
        table = pd.read_csv(meta_path)
    except (pd.errors.ParserError, UnicodeDecodeError) as err:
        raise DataError(f"{meta_path}: not a readable CSV ({err})") from err
    table = validate_metadata(table, meta_path)
    images = index_images(root)
    absent = [i for i in table["image_id"] if i not in images]
    if absent:
        raise DataError(
            f"{len(absent)} image(s) listed in {meta_path} are missing, first: "
            f"{absent[0]}.jpg (looked in {', '.join(str(root / d) for d in IMAGE_DIRS)})"
        )
    table["path"] = [str(images[i]) for i in table["image_id"]]
    return RawDataset(meta_path, table.reset_index(drop=True))


def decode(path: str | Path, size: int) -> np.ndarray:
    """Decode one JPEG to an RGB ``(3, size, size)`` uint8 array (whole image, resized)."""
    try:
        with Image.open(path) as im:
            im.draft("RGB", (size, size))  # lets libjpeg downscale large images while decoding
            im = im.convert("RGB").resize((size, size), Image.BILINEAR, reducing_gap=3.0)
            return np.asarray(im, dtype=np.uint8).transpose(2, 0, 1)
    except (UnidentifiedImageError, OSError, SyntaxError) as err:
        raise DataError(f"cannot decode image {path}: {err}") from err


def decode_all(paths: list[str], size: int, progress: bool = True) -> np.ndarray:
    """Decode every image into one ``(N, 3, size, size)`` uint8 array."""
    out = np.empty((len(paths), 3, size, size), dtype=np.uint8)
    for i, p in enumerate(tqdm(paths, desc="decode", unit="img", disable=not progress)):
        out[i] = decode(p, size)
    return out


PREPARED_COLUMNS = [
    "image_id", "lesion_id", "dx", "dx_index", "label", "dx_type", "age", "sex", "localization",
]  # fmt: skip


@dataclass(frozen=True)
class Prepared:
    """The prepare stage's cache: images row-aligned with the table."""

    images: np.ndarray  # (N, 3, S, S) uint8, memory-mapped
    table: pd.DataFrame


def load_prepared(directory: str | Path) -> Prepared:
    """Load ``images.npy`` (memory-mapped) and ``table.csv`` written by the prepare stage."""
    directory = Path(directory)
    for name in ("images.npy", "table.csv"):
        if not (directory / name).is_file():
            raise DataError(f"{directory / name} missing: run `dvc repro prepare` first")
    images = np.load(directory / "images.npy", mmap_mode="r")
    table = pd.read_csv(directory / "table.csv")
    if len(table) != len(images):
        raise DataError(f"{directory}: table has {len(table)} rows but {len(images)} images")
    return Prepared(images, table)


def select(prepared: Prepared, split_table: pd.DataFrame) -> Prepared:
    """The rows of ``prepared`` listed in a split file (by its ``row`` column), in memory."""
    rows = split_table["row"].to_numpy()
    return Prepared(np.ascontiguousarray(prepared.images[rows]), prepared.table.iloc[rows])


def read_split(split_dir: str | Path, name: str) -> pd.DataFrame:
    """The table of one split (``train``, ``val`` or ``test``) written by the split stage."""
    path = Path(split_dir) / f"{name}.csv"
    if not path.is_file():
        raise DataError(f"split file {path} missing: run `dvc repro split` first")
    return pd.read_csv(path)


def load_split(prepared: str | Path, split_dir: str | Path, name: str) -> Prepared:
    """One split (``train``, ``val`` or ``test``) of the prepared cache, in memory."""
    return select(load_prepared(prepared), read_split(split_dir, name))


MELANOMA_INDEX = DX_CODES.index(MELANOMA)


def melanoma_probability(logits, task: str, temperature: float = 1.0) -> np.ndarray:
    """Melanoma probability from logits: sigmoid for ``binary``, softmax p(mel) for ``dx``.

    ``temperature`` divides the logits first (1 = uncalibrated).
    """
    if task == "binary":
        z = torch.as_tensor(np.asarray(logits), dtype=torch.float64) / temperature
        return torch.sigmoid(z).numpy()
    return dx_probabilities(logits, temperature)[:, MELANOMA_INDEX]


def dx_probabilities(logits, temperature: float = 1.0) -> np.ndarray:
    """``(N, 7)`` probabilities of the dx classes (:data:`DX_CODES` order) from dx logits."""
    z = torch.as_tensor(np.asarray(logits), dtype=torch.float64) / temperature
    return torch.softmax(z, dim=-1).numpy()


def top_classes(probabilities: np.ndarray, k: int = 3) -> list[dict]:
    """The ``k`` most likely diagnoses of one image's dx probabilities, most likely first."""
    order = np.argsort(-np.asarray(probabilities), kind="stable")[:k]
    return [
        {"dx": DX_CODES[i], "name": DX_NAMES[DX_CODES[i]], "probability": float(probabilities[i])}
        for i in order
    ]
