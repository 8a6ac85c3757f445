# Two images from one tree:
#   docker build --target api -t tailtune-api .      # FastAPI + dashboard, no torch
#   docker build --target worker -t tailtune-worker . # CUDA torch (PyPI's Linux wheels bundle CUDA)
FROM python:3.11-slim AS source
WORKDIR /app
ENV PIP_NO_CACHE_DIR=1 PYTHONUNBUFFERED=1
COPY pyproject.toml README.md ./
COPY search_spaces ./search_spaces
COPY service ./service
COPY worker ./worker

FROM source AS api
RUN pip install ".[service]"
EXPOSE 8000
ENV TAILTUNE_HOST=0.0.0.0 TAILTUNE_ARTIFACTS_DIR=/artifacts
HEALTHCHECK --interval=10s --timeout=3s CMD python -c "import urllib.request as u; u.urlopen('http://127.0.0.1:8000/readyz')"
CMD ["tailtune", "serve"]

FROM source AS worker
RUN pip install ".[worker]"
ENV TAILTUNE_ARTIFACTS_DIR=/artifacts TAILTUNE_DATA_ROOT=/data
CMD ["tailtune", "worker", "--device", "auto"]
