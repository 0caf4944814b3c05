# One image for every deployable of alliance-risk (training CLI, MLflow server, API later).
FROM python:3.11-slim AS base
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 \
    OMP_NUM_THREADS=1
WORKDIR /app
COPY pyproject.toml README.md ./
COPY features ./features
COPY models ./models
COPY training ./training
COPY service ./service
COPY cli ./cli
RUN pip install . psycopg2-binary \
    && useradd --create-home --uid 10001 app
USER app
ENTRYPOINT ["alliance-risk"]
