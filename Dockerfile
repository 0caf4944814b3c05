# One image for every deployable of alliance-risk (training CLI, MLflow server, API, and the
# compose stack's one-shot init and trainer steps).
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
# The volume mount points exist owned by `app`: Docker copies a mount point's owner into a
# named volume it creates empty. docker-compose.yml's init-volumes step also chowns them, for
# volumes created before this image (or by another tool).
RUN pip install /wheels/*.whl psycopg2-binary && rm -rf /wheels \
    && useradd --create-home --uid 10001 app \
    && mkdir -p /mlartifacts /audit /keys /data \
    && chown app:app /mlartifacts /audit /keys
# COPY then RUN chmod: COPY's own mode option needs BuildKit, which the classic builder of
# Debian's docker-compose 1.29 lacks.
COPY scripts/compose-init.sh scripts/compose-train.sh scripts/healthcheck.py /usr/local/bin/
RUN chmod 0755 /usr/local/bin/compose-init.sh /usr/local/bin/compose-train.sh \
    /usr/local/bin/healthcheck.py
USER app
ENTRYPOINT ["alliance-risk"]
