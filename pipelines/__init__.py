"""Entry points for schedulers (cron, Airflow, Kubernetes Jobs): each exits 0 on success,
:data:`BAD_INPUT` when retrying cannot help, :data:`UNAVAILABLE` when it may."""

import logging
import os

from anomaly.errors import AnomalyError, os_error_message, worth_retrying

# A scheduler's log is no terminal: MLflow's per-file download bars would fill it.
os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")

BAD_INPUT = 2  # bad data, model or URI: the reason is logged; a retry would fail the same way
UNAVAILABLE = 75  # EX_TEMPFAIL: the MLflow server or the network failing, a promotion holding
# its lock, a full disk; retry later


def stopped(exc: AnomalyError | OSError) -> int:
    """Log why a job stopped, in one line, and return its exit code: an OSError (a missing
    folder, a read-only disk) is bad input, as the CLI has it, unless it is worth retrying."""
    logging.error("%s", os_error_message(exc) if isinstance(exc, OSError) else exc)
    return UNAVAILABLE if worth_retrying(exc) else BAD_INPUT
