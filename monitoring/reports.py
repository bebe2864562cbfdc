"""Where monitoring runs put their files, and how many they keep.

    <home>/reports/monitoring/drift/<stamp>-<run8>-<scope>.{json,html}     one drift report per scope per run
    <home>/reports/monitoring/quality/<stamp>-<run8>-<scope>.{json,html}   one quality report per scope with feedback
    <home>/reports/monitoring/runs/<stamp>-<run8>.json                     the run: window, every verdict row, files
    <home>/evidently/                                                      the Evidently workspace (`evidently ui`)

`<stamp>` is the run's UTC start time (`20260131T091500Z`), so names sort by time and retention keeps the newest.
The JSON next to each HTML file is Evidently's `save_json` output (metrics and tests); a snapshot to load back
into Evidently is in the workspace.
"""

from __future__ import annotations

import json
import re
from collections import defaultdict
from datetime import datetime
from pathlib import Path
from typing import Any

REPORT_NAME = re.compile(r"^\d{8}T\d{6}Z-[0-9a-f]{8}")  # <stamp>-<run8>: what report_stem names; nothing else is ours
_UNSAFE = re.compile(r"[^A-Za-z0-9_.-]+")


def monitoring_dir(reports_root: Path) -> Path:
    return reports_root / "monitoring"


def workspace_dir(home_root: Path) -> Path:
    return home_root / "evidently"


def stamp(ts: datetime) -> str:
    return ts.strftime("%Y%m%dT%H%M%SZ")


def report_stem(root: Path, kind: str, run_stamp: str, run_id: str, scope: str | None = None) -> Path:
    """The path (without extension) of one report; the scope is made safe for a file name."""
    name = f"{run_stamp}-{run_id[:8]}" + (f"-{_UNSAFE.sub('_', scope)}" if scope else "")
    return monitoring_dir(root) / kind / name


def write_run_summary(path: Path, summary: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(summary, indent=2, sort_keys=True), encoding="utf-8")
    tmp.replace(path)


def prune(folder: Path, keep: int) -> list[Path]:
    """Delete all but the newest `keep` reports in `folder` (a report is every file sharing one stem). Only files
    named the way reports are (`<stamp>-<run8>...`) count: anything else in the folder is left alone."""
    if not folder.is_dir():
        return []
    groups: dict[str, list[Path]] = defaultdict(list)
    for path in folder.iterdir():
        if path.is_file() and REPORT_NAME.match(path.name):
            groups[path.name.split(".", 1)[0]].append(path)
    removed: list[Path] = []
    for stem in sorted(groups)[: max(0, len(groups) - keep)]:
        for path in groups[stem]:
            path.unlink(missing_ok=True)
            removed.append(path)
    return removed
