# pixelbus/comfyui: the ComfyUI server that the production overlay runs beside each
# comfy-worker (deploy/k8s/overlays/production/gpu-workers.yaml: a native sidecar on the
# pod's GPU, probed on /system_stats, models on a read-only volume).
#
# It needs a CUDA base image and pulls ComfyUI and PyTorch from the network, so it is not
# built on pixelbus' own machines (no GPU, only package registries reachable): the tests
# lint it (hadolint) and check it against the manifests. Build it where both are at hand:
#   docker build -f deploy/images/comfyui.Dockerfile -t pixelbus/comfyui:0.1.0-cuda \
#     --build-arg CUDA_BASE=nvidia/cuda:12.4.1-cudnn-runtime-ubuntu22.04 deploy/images
# Custom nodes: build FROM this image and copy them into /comfyui/custom_nodes.

ARG CUDA_BASE=nvidia/cuda:12.4.1-cudnn-runtime-ubuntu22.04

FROM ${CUDA_BASE} AS build
ARG COMFYUI_VERSION=v0.8.0
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3 python3-venv ca-certificates \
    && rm -rf /var/lib/apt/lists/*
ADD https://github.com/comfyanonymous/ComfyUI/archive/refs/tags/${COMFYUI_VERSION}.tar.gz /tmp/comfyui.tar.gz
RUN mkdir /comfyui \
    && tar -xzf /tmp/comfyui.tar.gz --strip-components=1 -C /comfyui \
    && rm /tmp/comfyui.tar.gz \
    && python3 -m venv /opt/comfyui \
    && /opt/comfyui/bin/pip install --no-cache-dir -r /comfyui/requirements.txt \
    && /opt/comfyui/bin/python -m pip uninstall --yes pip setuptools

FROM ${CUDA_BASE}
ARG COMFYUI_VERSION=v0.8.0
ARG SOURCE=unknown
LABEL org.opencontainers.image.title="pixelbus-comfyui" \
      org.opencontainers.image.description="ComfyUI for pixelbus' comfy-worker (CUDA)" \
      org.opencontainers.image.version="${COMFYUI_VERSION}" \
      org.opencontainers.image.source="${SOURCE}" \
      org.opencontainers.image.licenses="GPL-3.0-only"
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3 ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && groupadd --system --gid 10001 comfyui \
    && useradd --system --uid 10001 --gid comfyui --home-dir /tmp --no-create-home \
        --shell /usr/sbin/nologin comfyui
COPY --from=build /opt/comfyui /opt/comfyui
COPY --from=build /comfyui /comfyui
ENV PATH=/opt/comfyui/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    HOME=/tmp
USER 10001:10001
WORKDIR /comfyui
# what ComfyUI writes, and the models it reads: volumes (the root file system is read-only)
VOLUME ["/tmp", "/comfyui/input", "/comfyui/output", "/comfyui/temp", "/comfyui/user", "/comfyui/models"]
EXPOSE 8188
STOPSIGNAL SIGTERM
ENTRYPOINT ["python", "main.py"]
CMD ["--listen", "127.0.0.1", "--port", "8188"]
