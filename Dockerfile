# tapeserve container image.
#   docker build -t tapeserve:cpu .                              # tensorflow-cpu, as pinned in requirements.lock
#   docker build -t tapeserve:gpu --build-arg TF_VARIANT=gpu .   # tensorflow[and-cuda], same version
# One process serves one device; run one container per GPU (see deploy/README.md).

FROM python:3.11-slim AS builder

# cpu: tensorflow-cpu from the lock; gpu: tensorflow[and-cuda] (CUDA and cuDNN as pip wheels) at that version
ARG TF_VARIANT=cpu

ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PATH=/opt/venv/bin:$PATH

WORKDIR /app
RUN python -m venv /opt/venv

# Dependencies first, so that a change to the source reuses this (large) layer.
COPY pyproject.toml requirements.lock deploy/image_requirements.py ./
# the runtime dependencies of pyproject.toml (the client's and the server extra's) at the lock's exact
# versions: no test or lint tools in the image
RUN python image_requirements.py "$TF_VARIANT" requirements.txt constraints.txt \
    && pip install --no-cache-dir -r requirements.txt -c constraints.txt

COPY service ./service
COPY schemas ./schemas
# editable, like `make install`: the package runs from /app, the venv only points at it
RUN pip install --no-cache-dir --no-deps --no-build-isolation -e .


FROM python:3.11-slim

ARG TF_VARIANT=cpu
LABEL org.opencontainers.image.title="tapeserve" \
      org.opencontainers.image.description="TensorFlow's GradientTape as a REST microservice" \
      io.tapeserve.tf-variant="${TF_VARIANT}"

ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    MPLCONFIGDIR=/tmp/matplotlib \
    TAPESERVE_HOST=0.0.0.0 \
    TAPESERVE_PORT=8000 \
    TAPESERVE_MODEL_DIR=/models

RUN groupadd --system --gid 10001 tapeserve \
    && useradd --system --uid 10001 --gid tapeserve --home-dir /home/tapeserve --create-home \
       --shell /usr/sbin/nologin tapeserve

WORKDIR /app
COPY --from=builder /opt/venv /opt/venv
COPY --from=builder /app/service ./service
COPY --from=builder /app/schemas ./schemas
# the example model repository, served by default; compose and Kubernetes mount the operator's over it (read-only)
COPY models/diabetes /models/diabetes

USER 10001:10001
EXPOSE 8000

# Healthy once the worker is warm (/readyz answers 200); slim has no curl, so Python's urllib asks.
HEALTHCHECK --interval=15s --timeout=5s --start-period=120s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:' + os.environ.get('TAPESERVE_PORT', '8000') + '/readyz', timeout=4)"]

ENTRYPOINT ["tapeserve"]
CMD ["serve"]
