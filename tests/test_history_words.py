"""The product speaks of itself only: no tracked text tells how it was built.

A development session, an issue number or a note kept outside the repository means nothing to
a reader of the code or the docs; the measured fact belongs in the text itself or in docs/.
"""

import re
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SUFFIXES = {".md", ".py", ".yaml", ".yml", ".toml", ".txt", ".html"}
NAMES = {".ci/run", "Makefile"}
HISTORY = re.compile(
    r"\bsessions? [0-9]+|\bissues? #?[0-9]+|shared/(FACTS|STYLE)|course review", re.IGNORECASE
)


def tracked_text_files() -> list[str]:
    try:
        listed = subprocess.run(
            ["git", "ls-files", "-z"], cwd=REPO, capture_output=True, check=True, text=True
        ).stdout
    except (OSError, subprocess.CalledProcessError) as err:
        pytest.skip(f"not a git checkout: {err}")
    own = Path(__file__).resolve().relative_to(REPO).as_posix()
    return [
        name
        for name in listed.split("\0")
        if name
        and name != own
        and (Path(name).suffix in SUFFIXES or name in NAMES or Path(name).name == "Makefile")
    ]


def offending_lines(text: str) -> list[tuple[int, str]]:
    return [(n, line) for n, line in enumerate(text.splitlines(), 1) if HISTORY.search(line)]


def test_pattern_catches_history_words_only():
    flagged = (
        "as measured in session 7",
        "Sessions 8-11",
        "see issue #12",
        "Issue 4",
        "shared/FACTS.md",
    )
    for text in (*flagged, "after the course review"):
        assert offending_lines(text), text
    for text in ("ort.InferenceSession(path)", "session.run(None, x)", "an issue with 7 images"):
        assert not offending_lines(text), text


def test_no_tracked_file_tells_its_history():
    found = []
    for name in tracked_text_files():
        path = REPO / name
        if not path.is_file():  # deleted in the working tree, not yet in git
            continue
        text = path.read_text(encoding="utf-8", errors="replace")
        found += [f"{name}:{n}: {line.strip()}" for n, line in offending_lines(text)]
    assert not found, "history words (say the fact instead):\n" + "\n".join(found)
