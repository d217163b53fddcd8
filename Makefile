# agentmesh — standard verbs. Everything installs into .venv; nothing is installed globally.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
PROTOS := $(wildcard protos/agentmesh/v1/*.proto)
MESH_DIR ?= examples/workflow/.mesh

.PHONY: install proto certs demo test check bench clean

install: $(STAMP)

$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "agentmesh needs Python >= 3.11")'
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[dev]'
	@touch $(STAMP)

# Regenerates the committed protobuf/gRPC modules (and their .pyi stubs) from protos/.
proto: $(STAMP)
	$(BIN)/python -m agentmesh.protogen protos .

# A CA and identities for the example mesh (examples/workflow/mesh.yaml), in $(MESH_DIR);
# then: .venv/bin/agentmesh up examples/workflow/mesh.yaml
certs: $(STAMP)
	AGENTMESH_CA_DIR=$(MESH_DIR)/ca AGENTMESH=$(BIN)/agentmesh certs/scripts/init-ca.sh
	for a in ingestor summarizer validator control; do \
	  AGENTMESH_CA_DIR=$(MESH_DIR)/ca AGENTMESH=$(BIN)/agentmesh AGENTMESH_OUT_DIR=$(MESH_DIR)/identities \
	    certs/scripts/onboard-agent.sh $$a; done
	AGENTMESH_CA_DIR=$(MESH_DIR)/ca AGENTMESH=$(BIN)/agentmesh AGENTMESH_OUT_DIR=$(MESH_DIR)/identities \
	  certs/scripts/onboard-agent.sh bridge --dns localhost

demo: $(STAMP)
	$(BIN)/python -m examples.demo

test: $(STAMP)
	$(BIN)/python -m pytest -q

check: $(STAMP)
	$(BIN)/ruff check agentmesh tests examples benchmarks
	$(BIN)/mypy agentmesh

bench: $(STAMP)
	$(BIN)/python -m pip install -q -e '.[dev,bench]'
	$(BIN)/python -m benchmarks.run $(if $(QUICK),--quick,)

clean:
	rm -rf $(VENV) .mesh $(MESH_DIR) build dist .pytest_cache .mypy_cache .ruff_cache
	find . -name __pycache__ -type d -prune -exec rm -rf {} +
