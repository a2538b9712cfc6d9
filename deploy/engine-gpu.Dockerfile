# syntax=docker/dockerfile:1
# The GPU engine: the official vLLM image plus loragate's vLLM plugin (adapters/vllm_resolver.py,
# entry point `vllm.general_plugins`), which fetches pushed adapters by digest from the object
# store into the engine's own cache and checks them there. Build from the repository root:
#   docker build -f deploy/engine-gpu.Dockerfile -t loragate/vllm:0.32.0 .
FROM vllm/vllm-openai:v0.32.0
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /opt/loragate
COPY pyproject.toml README.md ./
COPY gateway ./gateway
COPY registry ./registry
COPY adapters ./adapters
# --no-deps: vLLM's own pins stay as they are; the plugin needs only boto3 besides the stdlib.
# The local project is pinned by its own pyproject (hadolint cannot see that).
# hadolint ignore=DL3013
RUN python3 -m pip install --no-deps . \
 && python3 -m pip install boto3==1.44.5 \
 && python3 -c "import adapters.vllm_resolver, boto3"
WORKDIR /
