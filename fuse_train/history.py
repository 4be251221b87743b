"""Per-epoch training history: ``history.json``, ``history.csv`` and a ``history.png`` plot.

One record per epoch (plain Python numbers): ``epoch`` (1-based), ``train_<component>`` and
``val_<component>`` for each loss component the loss computes (unweighted values, as it returns
them; a metric term of weight 0 is not computed, so it has no column),
``train_loss`` and ``val_loss`` (weighted totals), ``lr_<group>`` for each parameter group,
``encoders_frozen``, ``seconds`` (wall time of the epoch including validation) and ``images_per_s``
(training images per second, all processes together).
"""

from __future__ import annotations

import csv
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from fuse_runtime.atomic import atomic_path, write_json_atomic

JSON_NAME = "history.json"
CSV_NAME = "history.csv"
PLOT_NAME = "history.png"


def save_history(records: list[dict[str, Any]], run_dir: str | Path) -> None:
    """Write the three history files into ``run_dir`` atomically."""
    run_dir = Path(run_dir)
    write_json_atomic(run_dir / JSON_NAME, records)
    columns = _columns(records)
    with atomic_path(run_dir / CSV_NAME) as tmp:
        with tmp.open("w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=columns)
            writer.writeheader()
            writer.writerows(records)
    if records:
        plot_history(records, run_dir / PLOT_NAME)


def component_names(records: Iterable[dict[str, Any]]) -> list[str]:
    """Loss component names present in the records (``train_<name>`` keys other than the total)."""
    names: list[str] = []
    for record in records:
        for key in record:
            if key.startswith("train_") and key != "train_loss" and key[6:] not in names:
                names.append(key[6:])
    return names


def plot_history(records: list[dict[str, Any]], path: str | Path) -> None:
    """Two panels: each training loss component per epoch; training and validation total loss."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    epochs = [record["epoch"] for record in records]
    figure = Figure(figsize=(11, 4.5), layout="constrained")
    FigureCanvasAgg(figure)
    components, totals = figure.subplots(1, 2)
    for name in component_names(records):
        components.plot(epochs, [r.get(f"train_{name}") for r in records], marker="o", label=name)
    components.set(title="training loss components (unweighted)", xlabel="epoch", ylabel="loss")
    components.legend(fontsize="small")
    totals.plot(epochs, [r.get("train_loss") for r in records], marker="o", label="train")
    totals.plot(epochs, [r.get("val_loss") for r in records], marker="s", label="validation")
    totals.set(title="weighted total loss", xlabel="epoch", ylabel="loss")
    totals.legend(fontsize="small")
    for axes in (components, totals):
        axes.grid(alpha=0.3)
        axes.xaxis.get_major_locator().set_params(integer=True)
    with atomic_path(path) as tmp:
        figure.savefig(tmp, dpi=100, format="png")


def _columns(records: list[dict[str, Any]]) -> list[str]:
    columns: list[str] = []
    for record in records:
        columns.extend(key for key in record if key not in columns)
    return columns
