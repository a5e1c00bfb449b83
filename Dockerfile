# One image for every genfarm service: api, worker, flower, migrations.
# GPU workers: the default torch wheel from PyPI carries CUDA. For a CPU-only image:
#   docker build --build-arg TORCH_INDEX=https://download.pytorch.org/whl/cpu .
FROM python:3.11-slim

ARG TORCH_VERSION=2.13.0
ARG TORCH_INDEX=https://pypi.org/simple
ENV PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1

RUN useradd --create-home --uid 10001 genfarm
WORKDIR /app
RUN pip install --index-url "$TORCH_INDEX" "torch==${TORCH_VERSION}"
COPY pyproject.toml README.md ./
COPY jobs jobs
COPY workers workers
COPY storage storage
COPY migrations migrations
COPY cli cli
COPY api api
RUN pip install ".[worker,ops]"

USER genfarm
ENTRYPOINT []
CMD ["genfarm", "--help"]
