"""``OUT/report.json``: what fuse-run did with every pair, and the totals.

Per pair: the input files, the outputs written, the status (``ok``, ``skipped`` because the outputs
already exist, ``failed``), the error when it failed, slices fused, seconds from the start of its
reading to the end of its writing, the fusion metrics when asked for, and how the MRI was put on the
CT's grid (``alignment``: method same-grid / world / rigid, overlap fraction, registration metric
before and after, the transform file). Totals: pairs by status,
slices, wall time in seconds and the throughput in pairs/s and slices/s.

History: every run writes ``OUT/reports/<run id>.json`` and ``OUT/report.json`` (the latest, same
content); a ``report.json`` that has no copy under ``reports/`` (written by an older fuse) is kept
there before it is replaced, so no run's report is lost. A skipped pair carries the slices and
metrics that the run which made its output recorded, and ``made_by`` names that run.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

from fuse_runtime.atomic import write_json_atomic

Status = Literal["ok", "skipped", "failed"]
REPORT_NAME = "report.json"
HISTORY_DIR = "reports"


@dataclass
class PairResult:
    """The outcome for one pair (or one unpairable input, reported as failed)."""

    name: str
    inputs: list[str]
    outputs: list[str] = field(default_factory=list)
    status: Status = "ok"
    error: str | None = None
    slices: int = 0
    seconds: float = 0.0
    metrics: dict[str, float] | None = None
    alignment: dict[str, Any] | None = None
    note: str | None = None
    made_by: str | None = None


@dataclass
class RunReport:
    """The whole run: engine, settings, per-pair results and totals."""

    engine: str
    provider: str
    settings: dict[str, Any]
    pairs: list[PairResult] = field(default_factory=list)
    wall_seconds: float = 0.0
    notices: list[str] = field(default_factory=list)
    run_id: str = ""

    @property
    def counts(self) -> dict[str, int]:
        counts = {"ok": 0, "skipped": 0, "failed": 0}
        for result in self.pairs:
            counts[result.status] += 1
        return counts

    @property
    def fused_slices(self) -> int:
        return sum(r.slices for r in self.pairs if r.status == "ok")

    def totals(self) -> dict[str, Any]:
        counts = self.counts
        wall = self.wall_seconds
        return {
            "pairs": len(self.pairs),
            "ok": counts["ok"],
            "skipped": counts["skipped"],
            "failures": counts["failed"],
            "slices": self.fused_slices,
            "wall_seconds": round(wall, 4),
            "pairs_per_second": round(counts["ok"] / wall, 4) if wall > 0 else 0.0,
            "slices_per_second": round(self.fused_slices / wall, 4) if wall > 0 else 0.0,
        }

    def to_dict(self) -> dict[str, Any]:
        return {
            "run_id": self.run_id,
            "engine": self.engine,
            "provider": self.provider,
            "settings": self.settings,
            "notices": self.notices,
            "totals": self.totals(),
            "pairs": [asdict(result) for result in self.pairs],
        }

    def summary_line(self) -> str:
        """One line for the end of a run: counts, throughput, where the report is."""
        totals = self.totals()
        return (
            f"fused {totals['ok']} pair(s), {totals['slices']} slice(s) in {totals['wall_seconds']:.2f} s "
            f"({totals['pairs_per_second']:.2f} pairs/s, {totals['slices_per_second']:.1f} slices/s); "
            f"{totals['skipped']} skipped, {totals['failures']} failed"
        )


def write_report(out_dir: str | Path, report: RunReport) -> Path:
    """Write ``out_dir/reports/<run id>.json`` and ``out_dir/report.json`` atomically; return the latter.

    An earlier ``report.json`` without its copy under ``reports/`` is moved there first.
    """
    out_dir = Path(out_dir)
    path, history = out_dir / REPORT_NAME, out_dir / HISTORY_DIR
    data = report.to_dict()
    _keep_previous(path, history)
    if report.run_id:
        write_json_atomic(history / f"{report.run_id}.json", data)
    write_json_atomic(path, data)
    return path


def _keep_previous(path: Path, history: Path) -> None:
    try:
        previous = json.loads(path.read_text())
    except (OSError, ValueError):
        previous = None
    if not path.exists():
        return
    run_id = previous.get("run_id") if isinstance(previous, dict) else None
    if run_id and (history / f"{run_id}.json").exists():
        return
    history.mkdir(parents=True, exist_ok=True)
    name = run_id or f"earlier-{path.stat().st_mtime_ns}"
    os.replace(path, history / f"{name}.json")
