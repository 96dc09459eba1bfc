"""The HTTP scoring service (FastAPI): see :func:`anomaly.service.app.create_app`."""
