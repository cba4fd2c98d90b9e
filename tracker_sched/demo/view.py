"""The demo's runs table as MLflow's UI should first show it: the metric columns that matter.

MLflow 3's runs table shows no metric columns by default (only Source, Models and
Dataset), and its column list is alphabetical. The UI reads a *shared view* from the
experiment tag ``mlflow.sharedViewState.<key>`` (JSON of the page's search facets and
UI state, what its "Share" button writes) when the URL carries ``?viewStateShareKey=<key>``.
The demo writes one such view and prints its URL, so the runs open with the accuracies,
the fit's headline numbers and the advisor's prediction as columns, the sweep's
params beside them, newest runs first. Without the key in the URL the UI is unchanged.
"""

from __future__ import annotations

import json

VIEW_KEY = "tracker-sched"
VIEW_TAG = f"mlflow.sharedViewState.{VIEW_KEY}"  # mlflow/server/js constants
#: The columns, in order (``type.`name``` as the UI's makeCanonicalSortKey writes them).
COLUMNS: dict[str, tuple[str, ...]] = {
    "metrics": ("val_acc", "test_acc", "fit.val_rmse", "fit.val_rmse_last",
                "tracker_sched.predicted_final"),
    "params": ("schedule", "peak_lr", "seed", "arm"),
    "attributes": ("Models",),
}


def column_key(kind: str, name: str) -> str:
    """A runs-table column as the UI names it: ``metrics.`val_acc```."""
    return f"{kind}.`{name}`"


def runs_view() -> str:
    """The shared view's JSON: the selected columns, the metrics in :data:`COLUMNS`'s order
    (the table would sort them by name: ``fit.*`` before ``val_acc``), newest runs first."""
    columns = [column_key(kind, name) for kind, names in COLUMNS.items() for name in names]
    return json.dumps({"selectedColumns": columns,
                       "columnOrder": [column_key("metrics", m) for m in COLUMNS["metrics"]],
                       "orderByKey": "attributes.start_time", "orderByAsc": False})


def runs_url(experiment_id: str, host: str = "127.0.0.1", port: int = 5000) -> str:
    """The address of the experiment's training runs in ``mlflow ui``, in the demo's view."""
    return (f"http://{host}:{port}/#/experiments/{experiment_id}/runs"
            f"?viewStateShareKey={VIEW_KEY}")


__all__ = ["COLUMNS", "VIEW_KEY", "VIEW_TAG", "column_key", "runs_url", "runs_view"]
