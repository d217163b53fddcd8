# agentmesh: one image for the control plane, the agents and the bridge (deploy/k8s/).
#   docker build -t registry.example.org/agentmesh:0.1.0 .
# Your own agents: FROM this image, COPY your package, and name it in agents.<name>.app (PYTHONPATH=/app).
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONPATH=/app

WORKDIR /app
# the package (its generated stubs are committed) and the example agents the manifests run
COPY pyproject.toml README.md ./
COPY agentmesh ./agentmesh
COPY examples ./examples
RUN pip install ".[fast]" \
    && groupadd --system --gid 10001 agentmesh \
    && useradd --system --uid 10001 --gid agentmesh --home-dir /nonexistent --no-create-home \
               --shell /usr/sbin/nologin agentmesh

# numeric, so that kubelet can verify runAsNonRoot without reading /etc/passwd
USER 10001:10001
ENTRYPOINT ["agentmesh"]
CMD ["--help"]
