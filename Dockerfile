# leukolab: one Dockerfile, two images that differ only in their PyTorch build.
#
#   web image    (TORCH_VARIANT=cpu):  web server, migrations, CLI and the `score` workers.
#                PyTorch comes from the PyTorch CPU index, so the image carries no CUDA libraries
#                (about 1 GB instead of about 6 GB). The web process does not import torch, but the
#                package depends on it and the score workers run inference with it.
#   worker image (TORCH_VARIANT=cuda): the GPU `train` worker. PyTorch comes from PyPI, whose Linux
#                x86_64 wheels are CUDA builds that bundle the CUDA runtime; the host needs only the
#                NVIDIA driver and the NVIDIA container toolkit.
#
#   docker build -t leukolab-web .
#   docker build -t leukolab-worker --build-arg TORCH_VARIANT=cuda .
#
# Layers run from the slowest-changing to the fastest: the OS user, then the dependencies read from
# pyproject.toml alone, then PyTorch, then the code. Editing code rebuilds only the last layer.

ARG PYTHON_IMAGE=python:3.11-slim-bookworm
ARG TORCH_VARIANT=cpu

FROM ${PYTHON_IMAGE} AS base
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:$PATH
RUN groupadd --system --gid 10001 leukolab \
 && useradd --system --uid 10001 --gid leukolab --home-dir /home/leukolab --create-home \
            --shell /usr/sbin/nologin leukolab \
 && python -m venv /opt/venv \
 && pip install --upgrade pip "setuptools>=77" wheel

# Dependencies come from pyproject.toml alone, so they stay cached until the dependency list changes.
# torch and torchvision are split off here and installed by the variant stages below.
FROM base AS deps
# Set PIP_INDEX_URL (a build argument) to build through a local PyPI mirror.
ARG PIP_INDEX_URL
WORKDIR /build
COPY pyproject.toml ./
RUN python -c "import re, tomllib; \
deps = tomllib.load(open('pyproject.toml', 'rb'))['project']['dependencies']; \
name = lambda d: re.split(r'[\s\[=<>!~;@]', d, maxsplit=1)[0].lower(); \
torch = [d for d in deps if name(d) in ('torch', 'torchvision')]; \
open('requirements.txt', 'w').write('\n'.join(d for d in deps if d not in torch) + '\n'); \
open('torch.txt', 'w').write('\n'.join(torch) + '\n')" \
 && pip install -r requirements.txt

FROM deps AS torch-cpu
ARG TORCH_CPU_INDEX_URL=https://download.pytorch.org/whl/cpu
RUN pip install --index-url "$TORCH_CPU_INDEX_URL" -r torch.txt \
 && python -c "import torch; assert torch.version.cuda is None, torch.version.cuda; print('torch', torch.__version__)"

FROM deps AS torch-cuda
# Empty: the CUDA build from PyPI. For an older NVIDIA driver pick a PyTorch index with an older CUDA,
# e.g. https://download.pytorch.org/whl/cu126 (see docs/deploy.md, "Requirements").
ARG TORCH_CUDA_INDEX_URL=
RUN pip install ${TORCH_CUDA_INDEX_URL:+--index-url "$TORCH_CUDA_INDEX_URL"} -r torch.txt \
 && python -c "import torch; assert torch.version.cuda, 'not a CUDA build'; print('torch', torch.__version__, 'cuda', torch.version.cuda)"

FROM torch-${TORCH_VARIANT} AS app
ARG TORCH_VARIANT
LABEL org.opencontainers.image.title="leukolab" \
      org.opencontainers.image.description="Active labelling of white blood cell images" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.leukolab.torch-variant="${TORCH_VARIANT}"
# The code lives in /app and is installed in editable mode: app/db.py finds alembic.ini and
# migrations/ next to the packages, and the templates and static files are read from there too.
# It stays owned by root, so the running process cannot modify it.
WORKDIR /app
COPY . /app
RUN pip install --no-deps --no-build-isolation --editable /app \
 && mkdir -p /data/artefacts /app/var \
 && chown leukolab:leukolab /data /data/artefacts /app/var
ENV LEUKOLAB_ARTEFACT_DIR=/data/artefacts \
    MPLCONFIGDIR=/tmp/matplotlib \
    NVIDIA_DRIVER_CAPABILITIES=compute,utility
USER leukolab
EXPOSE 8000
CMD ["leukolab", "serve", "--host", "0.0.0.0", "--port", "8000"]
