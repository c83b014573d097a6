import os
import sys
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
# Under pytest-xdist (`make test`: -n auto) each worker gets its share of the CPUs, so the
# workers' OpenMP pools (and the stage processes they start, which inherit the variable) do
# not oversubscribe the cores. Set before anything imports torch.
_WORKERS = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
if _WORKERS > 1:
    os.environ.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // _WORKERS)))
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


def pytest_collection_modifyitems(config, items):
    """Files with slow tests first: with --dist loadfile the longest file starts at once and
    the others fill the remaining workers, instead of the end-to-end file starting last."""
    slow_files = {item.path for item in items if item.get_closest_marker("slow")}
    items.sort(key=lambda item: item.path not in slow_files)  # stable: file order kept
