# The raygpt cluster image: Ray's own GPU image (the Ray and Python that constraints.txt pins),
# plus raygpt, its pinned stack and the GPT-2 tokenizer ranks. The KubeRay manifests in
# configs/k8s/ run it; cluster.yaml can too (docker.image).
#
#   docker build -t <registry>/raygpt:0.1.0-ray2.60.0 .
#   docker push <registry>/raygpt:0.1.0-ray2.60.0
#
# rayproject/ray tags are <ray>-py<python>-<cpu|cuXXX|gpu>; -gpu is an alias of the older cu121
# build, so name the CUDA explicitly. The base brings Ray, Python 3.11 in /home/ray/anaconda3,
# the `ray` user (uid 1000, gid 100) and the CUDA 12.8 user-space libraries; the nodes' NVIDIA
# driver must be new enough for CUDA 12.8 and for the CUDA build of the torch wheel below.
FROM rayproject/ray:2.60.0-py311-cu128

# Created as `ray` (the base image's user), so the editable install can write its metadata.
RUN mkdir -p /home/ray/raygpt
WORKDIR /home/ray/raygpt

# Where tokenizer_setup writes the GPT-2 ranks and where every raygpt process looks for them,
# including a copy shipped by `ray job submit` (configs/runtime_env.yaml's py_modules), which
# has no checkout around it. cluster.yaml sets the same variables.
ENV RAYGPT_CACHE_DIR=/home/ray/.cache/raygpt \
    TIKTOKEN_CACHE_DIR=/home/ray/.cache/raygpt/tiktoken \
    PYTHONUNBUFFERED=1

# Ray Serve's high-throughput mode on every node of the image (raygpt.ray_runtime's
# SERVE_FAST_PATH, which a local Ray gets from init_ray): HAProxy takes port 8000 and
# forwards to the ingress replicas' own HTTP servers (ports 30000+, reachable between
# nodes), replicas call each other over gRPC.
ENV RAY_SERVE_ENABLE_HA_PROXY=1 \
    RAY_SERVE_THROUGHPUT_OPTIMIZED=1

# torch first and alone: the largest layer, rebuilt only when constraints.txt changes. PyPI's
# torch==2.13.0 for Linux x86_64 is a CUDA build that brings its own CUDA runtime (nvidia-*
# wheels). To pick another CUDA build, pass its index, e.g.
#   --build-arg TORCH_INDEX_URL=https://download.pytorch.org/whl/cu126
# (pip then prefers 2.13.0+cu126, which still satisfies the torch==2.13.0 pin).
ARG TORCH_INDEX_URL=
COPY --chown=1000:100 constraints.txt ./
RUN pip install --no-cache-dir -c constraints.txt \
        ${TORCH_INDEX_URL:+--extra-index-url "$TORCH_INDEX_URL"} torch

# The project, editable so that `serve_apps.app:build_app`, jobs/ and configs/ all resolve
# from this WORKDIR. ray==2.60.0 is already installed and satisfies the pin, so pip leaves it
# alone and only adds what the [ray] extra and the core need, at the pinned versions.
COPY --chown=1000:100 . .
RUN pip install --no-cache-dir -c constraints.txt -e '.[ray]' \
    && python -m raygpt.tokenizer_setup \
    && python -c "import ray, raygpt.tokenizer, serve_apps.app; \
assert ray.__version__ == '2.60.0', ray.__version__; \
raygpt.tokenizer.get_tokenizer('gpt2')"
