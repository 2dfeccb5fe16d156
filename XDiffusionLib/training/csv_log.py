"""Append-only CSV logs of a training run (loss, validation), which a resumed run cuts back to the
step it resumes from, so no step is ever logged twice."""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Sequence

from ..io.atomic import atomic_file


def append_row(path: Path, header: Sequence[str], row: Sequence) -> None:
    """Append ``row`` to the CSV at ``path``, writing ``header`` first when the file is new."""
    new = not path.exists()
    with open(path, "a", newline="") as handle:
        writer = csv.writer(handle)
        if new:
            writer.writerow(header)
        writer.writerow(row)


def truncate_after(path: Path, step: int) -> None:
    """Drop the rows logged after ``step`` (first column; a resumed run logs them again), in one step."""
    if not path.exists():
        return
    with open(path, newline="") as handle:
        rows = list(csv.reader(handle))
    if not rows:
        return
    header, body = rows[0], rows[1:]
    kept = [r for r in body if r and int(r[0]) <= step]
    if len(kept) == len(body):
        return
    with atomic_file(path) as tmp, open(tmp, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        writer.writerows(kept)
