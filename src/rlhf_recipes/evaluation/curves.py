"""`training_curves.png`: every stage's logged curves from its `trainer_state.json`, one column per stage and one
panel per quantity, each on its own axis: the losses, the reward, the KL (on the reward's axis a KL of 0.05 draws as
a flat line at zero). A series of fewer than three points (an evaluation at the end of training) is drawn as
labelled markers, not as a dot lost on a line.
"""

from __future__ import annotations

import json
from pathlib import Path

TRAINING_CURVES = "training_curves.png"
# panel -> (trainer_state key, label) in the order they are looked for; PPO and the online trainers log their own names
PANELS = {
    "loss": (("loss", "train loss"), ("eval_loss", "eval loss")),
    "reward": (("objective/scores", "reward"), ("reward", "reward")),
    "KL": (("objective/kl", "KL to the reference"), ("kl", "KL to the reference")),
}


def stage_series(history: list[dict]) -> dict[str, dict[str, list[tuple[float, float]]]]:
    """panel -> label -> [(step, value)] of one stage's log history (empty panels left out)."""
    panels = {}
    for panel, keys in PANELS.items():
        series = {}
        for key, label in keys:
            points = [(e["step"], e[key]) for e in history if isinstance(e.get(key), int | float) and "step" in e]
            if points and label not in series:
                series[label] = points
        if series:
            panels[panel] = series
    return panels


def _history(lineage: dict) -> list[dict]:
    folder = lineage.get("output_dir") or (lineage.get("chain") or [{}])[-1].get("output_dir")
    state = Path(folder) / "trainer_state.json" if folder else None
    return json.loads(state.read_text()).get("log_history", []) if state and state.is_file() else []


def plot_training_curves(lineages: list[dict], path: Path) -> bool:
    """One column per stage, one panel per quantity it logged; False (nothing written) when no stage logged any."""
    figure = curves_figure(lineages)
    if figure is None:
        return False
    figure.savefig(path, dpi=100)
    return True


def curves_figure(lineages: list[dict]):
    """The matplotlib Figure of `plot_training_curves` (None when no stage logged anything)."""
    stages = [(lineage["stage"], stage_series(_history(lineage))) for lineage in lineages]
    stages = [(name, panels) for name, panels in stages if panels]
    if not stages:
        return None
    from matplotlib.figure import Figure

    rows = max(len(panels) for _, panels in stages)
    figure = Figure(figsize=(4 * len(stages), 2.6 * rows))
    grid = figure.subplots(rows, len(stages), squeeze=False)
    for column, (name, panels) in enumerate(stages):
        for row in range(rows):
            axes = grid[row][column]
            if row >= len(panels):
                axes.set_visible(False)
                continue
            panel, series = list(panels.items())[row]
            for label, points in series.items():
                steps, values = zip(*points, strict=True)
                few = len(points) < 3
                axes.plot(steps, values, marker="o" if few else None, markersize=6, label=label)
                if few:  # a value at the end of training: say it, a lone marker is easy to miss
                    for step, value in points:
                        axes.annotate(f"{value:.3g}", (step, value), textcoords="offset points", xytext=(4, 4))
            axes.set(title=f"{name}: {panel}", xlabel="step")
            axes.legend(fontsize=8)
    figure.tight_layout()
    return figure
