#!/bin/sh
# The image's entrypoint, also what deploy/local.sh runs: `anomaly serve` configured from the
# environment. Any other command (python -m pipelines.retrain ..., anomaly train ..., bash)
# runs as it is; arguments that start with '-' are added to `anomaly serve`'s.
#
#   ANOMALY_MODEL_URI        model directory or MLflow URI (required), e.g. models:/NAME@champion
#   ANOMALY_HOST             address to listen on (0.0.0.0)
#   ANOMALY_PORT             port (8000)
#   ANOMALY_WORKERS          uvicorn worker processes (2); metrics are summed over them
#   ANOMALY_RELOAD_INTERVAL  seconds between registry polls of an alias URI (30; 0: never)
#   ANOMALY_LOG_LEVEL        uvicorn's log level (info)
# The other ANOMALY_* settings and MLFLOW_TRACKING_URI are read by the service itself.
set -eu

if [ "$#" -gt 0 ] && [ "${1#-}" = "$1" ]; then
    exec "$@"
fi
if [ -z "${ANOMALY_MODEL_URI:-}" ]; then
    echo "error: set ANOMALY_MODEL_URI to a model directory or an MLflow URI" \
        "(models:/NAME@champion)" >&2
    exit 2
fi
exec anomaly serve \
    --model "$ANOMALY_MODEL_URI" \
    --host "${ANOMALY_HOST:-0.0.0.0}" \
    --port "${ANOMALY_PORT:-8000}" \
    --workers "${ANOMALY_WORKERS:-2}" \
    --reload-interval "${ANOMALY_RELOAD_INTERVAL:-30}" \
    --log-level "${ANOMALY_LOG_LEVEL:-info}" \
    "$@"
