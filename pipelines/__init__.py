"""Entry points for schedulers (cron, Airflow, Kubernetes Jobs): each exits 0 on success,
2 when retrying cannot help, 75 when it may (:func:`anomaly.errors.exit_code`)."""

import logging
import os

from anomaly.errors import AnomalyError, exit_code, one_line

# A scheduler's log is no terminal: MLflow's per-file download bars would fill it.
os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")


def stopped(exc: AnomalyError | OSError) -> int:
    """Log why a job stopped, in one line, and return its exit code, as the CLI does."""
    logging.error("%s", one_line(exc))
    return exit_code(exc)
