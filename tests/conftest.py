import os
import sys
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).parent))

from synthetic import make_dataset  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
REAL_DATA = REPO.parent / "shared" / "data" / "ham10000"


@pytest.fixture(scope="session", autouse=True)
def teacher_memo(tmp_path_factory):
    """Stages run by the tests memoize their teachers in a temporary file, not the user's cache."""
    path = tmp_path_factory.mktemp("memo") / "teacher-outputs.sqlite"
    before = os.environ.get("MELANOMA_KD_TEACHER_CACHE")
    os.environ["MELANOMA_KD_TEACHER_CACHE"] = str(path)
    yield path
    if before is None:
        del os.environ["MELANOMA_KD_TEACHER_CACHE"]
    else:
        os.environ["MELANOMA_KD_TEACHER_CACHE"] = before


@pytest.fixture(scope="session")
def synthetic_root(tmp_path_factory) -> Path:
    """A synthetic HAM10000 in the compact layout (read-only for tests)."""
    root = tmp_path_factory.mktemp("ham_synth")
    make_dataset(root, n_lesions=60, images_per_lesion=2)
    return root


@pytest.fixture(scope="session")
def prepared(synthetic_root):
    """The synthetic dataset decoded at 32 px, as the prepare stage would cache it."""
    from pipeline_lib import data

    raw = data.load_raw(synthetic_root)
    images = data.decode_all(raw.table["path"].tolist(), 32, progress=False)
    return data.Prepared(images, raw.table[data.PREPARED_COLUMNS])
