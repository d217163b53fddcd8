# agentmesh — standard verbs. Everything installs into .venv; nothing is installed globally.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
PROTOS := $(wildcard protos/agentmesh/v1/*.proto)
MESH_DIR ?= examples/workflow/.mesh

.PHONY: install proto certs demo test check bench fuzz clean

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

# Coverage-guided fuzzing (atheris/libFuzzer) of the token parser and the bridge's JSON depth check,
# FUZZ_SECONDS per target; corpus and crash inputs go to .mesh/fuzz/.
FUZZ_SECONDS ?= 60
fuzz: $(STAMP)
	@$(BIN)/python -c 'import atheris' 2>/dev/null || $(BIN)/python -m pip install -q atheris >/dev/null 2>&1 || \
	  { echo "make fuzz: atheris cannot be installed on this machine (no wheel for it here and no clang/libFuzzer to build one); the targets are in fuzz/ (try: $(BIN)/python fuzz/fuzz_tokens.py --replay)"; exit 1; }
	$(BIN)/python fuzz/fuzz_tokens.py -max_total_time=$(FUZZ_SECONDS)
	$(BIN)/python fuzz/fuzz_json_depth.py -max_total_time=$(FUZZ_SECONDS)

bench: $(STAMP)
	$(BIN)/python -m pip install -q -e '.[dev,bench]'
	$(BIN)/python -m benchmarks.run $(if $(QUICK),--quick,) $(ARGS)

clean:
	rm -rf $(VENV) .mesh $(MESH_DIR) build dist .pytest_cache .mypy_cache .ruff_cache
	find . -name __pycache__ -type d -prune -exec rm -rf {} +
