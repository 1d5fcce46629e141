# NeuralStyleTransfer: VGG19 is exported to ONNX at build time; the image serves it with onnxruntime, no torch.
#
#   docker build -t nst .                                  GPU image (the default target), ImageNet weights
#   docker build --target cpu -t nst:cpu .                 CPU-only image for machines without a GPU
#   docker build --build-arg WEIGHTS=caffe -t nst .        caffe | imagenet | random (random: tests, not art)
#   docker run --gpus all -p 50051:50051 nst               stop with `docker stop -t 30` (drain + grace below)
#   docker run --gpus all -p 8080:8080 nst                 the page at http://localhost:8080/, and Connect/gRPC-Web
#   docker run --gpus all -p 50051:50051 -p 8000:8000 nst --device cuda --drain 2 --grace 25 --metrics-port 8000
#                                                          the same, with Prometheus metrics at :8000/metrics
#   docker run --gpus all -p 50051:50051 -e NST_TOKEN nst  every call but health needs this bearer token
#                                                          (or mount a file and add --token-file PATH)
# TLS: mount a certificate and key and add --tls-cert PATH --tls-key PATH. The HEALTHCHECK below is plaintext and
# needs no token (health stays open); with TLS on, override it (--health-cmd "nst health --ca-cert ...") or leave
# TLS to a proxy in front.
#
# Both runtime targets share one python:3.11-slim base. The GPU target gets CUDA 13 and cuDNN 9, which
# onnxruntime-gpu 1.31 is built against, as NVIDIA's pip wheels (onnxruntime-gpu[cuda,cudnn]); nst-server
# loads them with onnxruntime.preload_dlls(). That keeps the image far smaller than a CUDA devel base and the
# Python the same as everywhere else in the project; the host only needs the NVIDIA driver and container toolkit.
#
# Needs BuildKit (Docker 23+, or DOCKER_BUILDKIT=1 on older engines) for the RUN mounts below. There is no
# `# syntax=` line, so nothing is fetched from a registry for the Dockerfile frontend: the engine's built-in one
# reads this file. Optional build inputs, for proxies, mirrors and machines without internet access (README:
# "Building behind a proxy or offline"); none of them ends up in an image layer:
#   --secret id=ca,src=PEM           extra CA certificates pip must trust (a TLS-intercepting proxy's, a mirror's),
#                                    added to the image's own store for the pip steps only
#   --build-arg PIP_INDEX_URL=URL    a package index or mirror instead of PyPI; also PIP_EXTRA_INDEX_URL and
#                                    PIP_FIND_LINKS (URLs). Build args show in `docker history`: no credentials here
#   --build-arg TORCH_INDEX_URL=URL  where torch 2.13.0 comes from (PyTorch's CPU index by default); empty: from the
#                                    indexes above or wheels/
#   wheels/ (in the build context)   every wheel put there is offered to every pip step first, e.g. torch's CPU wheel
#   --build-arg PYTHON_IMAGE=IMAGE   the base: any Debian-family image with Python 3.11 and pip on PATH
#                                    (tests/deploy/docker.sh makes one with debootstrap when no registry is reachable)

ARG PYTHON_IMAGE=python:3.11-slim-bookworm

# ---- build: wheel of this project, then the export (torch lives only in this stage) ----
FROM ${PYTHON_IMAGE} AS export
ARG WEIGHTS=imagenet
ARG POOLING=max
ARG PIP_INDEX_URL
ARG PIP_EXTRA_INDEX_URL
ARG PIP_FIND_LINKS
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 PYTHONDONTWRITEBYTECODE=1
WORKDIR /src
# torch's CPU build: the export runs no GPU code, and PyPI's default torch would add gigabytes of CUDA. Installed
# before any of the project is copied, so that its layer, the largest download, survives every change to the source.
# Every pip step sources deploy/docker/pip-inputs.sh, mounted from the build context for the step: the optional
# inputs above.
RUN --mount=type=secret,id=ca --mount=type=tmpfs,target=/run/pip \
    --mount=type=bind,source=deploy/docker,target=/run/pip-inputs --mount=type=bind,source=wheels,target=/run/wheels \
    . /run/pip-inputs/pip-inputs.sh \
    && if [ -n "${TORCH_INDEX_URL}" ]; then export PIP_INDEX_URL="${TORCH_INDEX_URL}"; fi \
    && pip install torch==2.13.0
COPY pyproject.toml README.md ./
COPY protos protos
COPY server server
COPY client client
COPY export export
# DL3013 (pin versions in pip) is ignored here alone: ".[export]" is this source tree, whose pyproject.toml pins
# what matters (torch==2.13.0, installed above); there is no version of it to pin.
# hadolint ignore=DL3013
RUN --mount=type=secret,id=ca --mount=type=tmpfs,target=/run/pip \
    --mount=type=bind,source=deploy/docker,target=/run/pip-inputs --mount=type=bind,source=wheels,target=/run/wheels \
    . /run/pip-inputs/pip-inputs.sh \
    && pip install ".[export]" \
    && pip wheel --no-deps --wheel-dir /dist .
# Downloads the published weights with their hash check; the export checks its own parity with PyTorch.
RUN nst-export --weights "${WEIGHTS}" --pooling "${POOLING}" --out /models/vgg19

# ---- what both runtime targets share ----
FROM ${PYTHON_IMAGE} AS runtime
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1
RUN useradd --system --uid 10001 --user-group --no-create-home --shell /usr/sbin/nologin nst
COPY --from=export /dist /dist
COPY --from=export /models /models
# 50051: gRPC. 8080: the same service over Connect (JSON, binary) and gRPC-Web, and the page at /.
EXPOSE 50051 8080
# The gRPC health service, asked by the bundled client: exit 0 only while SERVING.
HEALTHCHECK --interval=15s --timeout=5s --start-period=60s --retries=3 \
    CMD ["nst", "health", "--server", "127.0.0.1:50051", "--timeout", "3"]
# Exec form: nst-server is PID 1 and gets SIGTERM from `docker stop` (NOT_SERVING, drain, grace, exit 0).
ENTRYPOINT ["nst-server", "--model", "/models/vgg19", "--host", "0.0.0.0", "--port", "50051", "--http-port", "8080", "--metrics-host", "0.0.0.0"]
CMD ["--drain", "2", "--grace", "25"]

# ---- CPU-only image ----
FROM runtime AS cpu
ARG PIP_INDEX_URL
ARG PIP_EXTRA_INDEX_URL
ARG PIP_FIND_LINKS
RUN --mount=type=secret,id=ca --mount=type=tmpfs,target=/run/pip \
    --mount=type=bind,source=deploy/docker,target=/run/pip-inputs --mount=type=bind,source=wheels,target=/run/wheels \
    . /run/pip-inputs/pip-inputs.sh \
    && pip install "$(ls /dist/*.whl)[server]" && rm -rf /dist
USER 10001

# ---- GPU image (default) ----
FROM runtime AS gpu
# The onnxruntime-gpu release is written in one place, deploy/docker/onnxruntime-gpu.version (mounted below), which
# `bash bench/gpu.sh --wheelhouse DIR` installs too; tests/export/test_onnxruntime_floor.py loads the exported graphs
# with it and checks that pyproject.toml's gpu extra allows it.
ARG PIP_INDEX_URL
ARG PIP_EXTRA_INDEX_URL
ARG PIP_FIND_LINKS
RUN --mount=type=secret,id=ca --mount=type=tmpfs,target=/run/pip \
    --mount=type=bind,source=deploy/docker,target=/run/pip-inputs --mount=type=bind,source=wheels,target=/run/wheels \
    . /run/pip-inputs/pip-inputs.sh \
    && pip install "$(ls /dist/*.whl)[gpu]" "onnxruntime-gpu[cuda,cudnn]==$(cat /run/pip-inputs/onnxruntime-gpu.version)" && rm -rf /dist
USER 10001
# Fail at start-up rather than run slowly on the CPU when the container was started without a GPU.
CMD ["--device", "cuda", "--drain", "2", "--grace", "25"]
