# MangaAssist Serve image: Ray's GPU image of the Ray and Python versions pyproject.toml pins
# (ray[serve]==2.60.0, Python 3.11), with the project installed. It runs as the image's `ray` user
# (uid 1000, gid 100), never root; the Helm chart enforces the same (runAsNonRoot).
# Models are not baked in: replicas load them at start from the registry volume or from s3://
# (checksums verified). Build from the repository root:  docker build -t mangaassist-serve:0.1.0 .
ARG RAY_VERSION=2.60.0
ARG PYTHON_TAG=py311
FROM rayproject/ray:${RAY_VERSION}-${PYTHON_TAG}-gpu

# ONNX Runtime's CUDA build replaces the CPU build pyproject pins (same API; CUDAExecutionProvider
# for `device: cuda`, CPU otherwise). Its newest published release:
ARG ORT_GPU_VERSION=1.31.1

USER 1000:100
COPY --chown=1000:100 pyproject.toml README.md /tmp/src/
COPY --chown=1000:100 serve /tmp/src/serve
COPY --chown=1000:100 models /tmp/src/models
COPY --chown=1000:100 monitoring /tmp/src/monitoring
# torch resolves to PyPI's CUDA build here (the local CPU wheel is for development machines only).
RUN pip install --no-cache-dir /tmp/src \
 && pip uninstall -y onnxruntime \
 && pip install --no-cache-dir "onnxruntime-gpu==${ORT_GPU_VERSION}" \
 && rm -rf /tmp/src \
 && python -c "import ray, serve.app; assert ray.__version__ == '${RAY_VERSION}', ray.__version__"

ENV MANGAASSIST_HOME=/home/ray/mangaassist \
    MANGAASSIST_MODEL_CACHE=/home/ray/model-cache \
    HF_HUB_OFFLINE=1 \
    DO_NOT_TRACK=1 \
    RAY_SERVE_THROUGHPUT_OPTIMIZED=1 \
    RAY_SERVE_ENABLE_DIRECT_INGRESS=0
WORKDIR /home/ray
