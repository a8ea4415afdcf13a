"""Names of the metrics kept as store marks: written by the tally controller, read by the API's
``/metrics``. Defined once here (the API never imports controllers, so neither may own them)."""

from __future__ import annotations

from typing import Final

DEPLOYMENTS_METRIC: Final[str] = "forge_deployments_total"
TASKS_METRIC: Final[str] = "forge_tasks_total"
DURATION_METRIC: Final[str] = "forge_deploy_duration_seconds"
DURATION_LABEL: Final[str] = "live"  # push (creation) to live
