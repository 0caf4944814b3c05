# One image for every deployable of alliance-risk (training CLI, MLflow server, API).
# The project is pure Python (its dependencies come as wheels): the wheel is built in its own
# stage only so that the sources and build tools stay out of the image that runs.
FROM python:3.11-slim AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY features ./features
COPY models ./models
COPY training ./training
COPY service ./service
COPY cli ./cli
RUN pip wheel --no-cache-dir --no-deps --wheel-dir /wheels .

FROM python:3.11-slim AS base
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 \
    OMP_NUM_THREADS=1
WORKDIR /app
COPY --from=build /wheels /wheels
RUN pip install /wheels/*.whl psycopg2-binary && rm -rf /wheels \
    && useradd --create-home --uid 10001 app
USER app
ENTRYPOINT ["alliance-risk"]
