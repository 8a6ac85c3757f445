"""The HTTP service: FastAPI app (``create_app``), the mounted Optuna dashboard, settings and
the ``tailtune`` command line. Never imports torch."""
