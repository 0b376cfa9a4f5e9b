"""What the long benchmarks (partition_quality, lr_recipe) record about each run: JSON lines on
stdout and appended to a results file as they finish (a benchmark cut short keeps its rows),
and the code each row ran."""
from __future__ import annotations

import hashlib
import json
import os
import subprocess

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def emit(record: dict, out) -> None:
    """One JSON line on stdout, and in ``out`` (an open file, or None) at once."""
    line = json.dumps(record, sort_keys=True)
    print(line, flush=True)
    if out is not None:
        out.write(line + "\n")
        out.flush()


def git_state() -> dict:
    """The commit the runs use; whether tracked files differ from it, and a digest of that
    difference (rows with equal digests ran the same code; others may edit the tree meanwhile)."""

    def git(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=REPO, capture_output=True, text=True).stdout

    diff = git("diff", "HEAD")
    return {"commit": git("rev-parse", "--short=12", "HEAD").strip(), "dirty": bool(diff),
            "diff_sha": hashlib.sha1(diff.encode()).hexdigest()[:12] if diff else None}
