"""prepare: validate HAM10000 and decode every image once into a uint8 cache."""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

from pipeline_lib import artifacts, config, data


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", required=True, help="cache folder (images.npy, table.csv)")
    parser.add_argument("--metrics", required=True)
    parser.add_argument("--params", default="params.yaml")
    args = parser.parse_args()
    root = config.load("data", args.params).root
    params = config.load("prepare", args.params)

    start = time.perf_counter()
    raw = data.load_raw(root)
    images = data.decode_all(raw.table["path"].tolist(), params.image_size)
    out = Path(args.out)
    with artifacts.atomic_path(out / "images.npy") as tmp, open(tmp, "wb") as f:
        np.save(f, images)
    artifacts.write_csv(out / "table.csv", raw.table[data.PREPARED_COLUMNS])
    seconds = time.perf_counter() - start
    artifacts.write_json(
        args.metrics,
        {
            "images": len(raw.table),
            "lesions": int(raw.table["lesion_id"].nunique()),
            "melanoma_images": int(raw.table["label"].sum()),
            "dx_counts": raw.table["dx"].value_counts().sort_index().to_dict(),
            "image_size": params.image_size,
            "cache_mb": round(images.nbytes / 1e6, 1),
            "seconds": round(seconds, 1),
        },
    )
    print(
        f"prepare: {len(images)} images from {raw.metadata_path} -> {out}/images.npy "
        f"({images.nbytes / 1e6:.0f} MB, {images.shape[-1]} px) in {seconds:.1f}s"
    )


if __name__ == "__main__":
    main()
