# One image for every genfarm service: api, worker, flower, migrations.
#   docker build -t genfarm:latest .                            # torch with CUDA (GPU workers)
#   docker build --build-arg VARIANT=cpu -t genfarm:cpu .       # CPU-only torch: no CUDA wheels
#   ... --build-arg TORCH_INDEX_URL=https://mirror.example/whl/cpu  # the CPU wheels from a mirror
#                                                               # (empty: pip's configured index)
#   docker run --rm genfarm:cpu genfarm demo                    # the whole farm, embedded, in /data
FROM python:3.11-slim

ARG VARIANT=cuda
ARG TORCH_VERSION=2.13.0
ARG EXTRAS=worker,ops,diffusers
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
# Everything genfarm writes on its own (the embedded database, broker and outputs, cached
# checkpoints) goes under GENFARM_DATA_DIR: /data, owned by the user the image runs as.
ENV PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 GENFARM_DATA_DIR=/data

RUN useradd --create-home --uid 10001 genfarm \
    && mkdir -p /data /models && chown genfarm:genfarm /data
WORKDIR /app
RUN case "$VARIANT" in \
      cpu) pip install ${TORCH_INDEX_URL:+--index-url "$TORCH_INDEX_URL"} "torch==${TORCH_VERSION}" ;; \
      cuda) pip install "torch==${TORCH_VERSION}" ;; \
      *) echo "VARIANT must be cpu or cuda, not $VARIANT" >&2; exit 1 ;; \
    esac
COPY pyproject.toml README.md ./
COPY jobs jobs
COPY workers workers
COPY storage storage
COPY migrations migrations
COPY cli cli
COPY api api
# torch is in place already: the extras add what runs around it, never another torch
RUN pip install ".[${EXTRAS}]" && pip check

USER genfarm
VOLUME ["/data"]
ENTRYPOINT []
CMD ["genfarm", "--help"]
