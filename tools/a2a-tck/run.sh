#!/usr/bin/env bash
# The A2A TCK against the TCK's SUT (tck_sut.py) behind the agentmesh bridge. See README.md.
#
#   tools/a2a-tck/run.sh [transports] [categories...]
#     transports: space-separated, default "jsonrpc rest grpc" (what the mesh card advertises)
#     categories: default "mandatory capabilities quality features transport-equivalence"
#   env: TCK_DIR (a2a-tck work tree, made from TCK_MIRROR if absent), TCK_PY (python of a venv with the
#        TCK installed, made at /tmp/tck-venv if absent), OUT (results, default ./results/mesh),
#        KEEP_MESH=1 (leave the mesh running), AGENTMESH (the CLI, default /work/main/.venv/bin/agentmesh)
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
cd "$HERE"
AGENTMESH=${AGENTMESH:-/work/main/.venv/bin/agentmesh}
TCK_MIRROR=${TCK_MIRROR:-/work/.mirror/a2aproject+a2a-tck/repo}
export TCK_DIR=${TCK_DIR:-/tmp/a2a-tck}
export TCK_PY=${TCK_PY:-/tmp/tck-venv/bin/python}
OUT=${OUT:-$HERE/results/mesh}
TRANSPORTS=${1:-jsonrpc rest grpc}; shift || true
PORT=8460; AGENT=tck
BASE=https://localhost:$PORT/v1/agents/$AGENT
CA=.mesh/ca; IDS=.mesh/identities; BUNDLE=$CA/bundle.pem

# 0. the TCK and its venv
if [ ! -d "$TCK_DIR/tests" ]; then mkdir -p "$TCK_DIR"; git -C "$TCK_MIRROR" archive HEAD | tar -x -C "$TCK_DIR"; fi
if [ ! -x "$TCK_PY" ]; then python3 -m venv "$(dirname "$(dirname "$TCK_PY")")"; "$TCK_PY" -m pip install -q -e "$TCK_DIR"; fi

# 1. CA and identities (once)
if [ ! -f "$BUNDLE" ]; then
  "$AGENTMESH" ca init --dir "$CA" --trust-domain example.org
  for m in control "$AGENT"; do "$AGENTMESH" cert issue "$m" --ca "$CA" --out "$IDS/$m"; done
  "$AGENTMESH" cert issue bridge --ca "$CA" --out "$IDS/bridge" --dns localhost
fi

# 2. the mesh (control plane, the agent, the bridge), from this directory so that `tck_sut` imports
MESH_PID=
if ! curl -s -o /dev/null --cacert "$BUNDLE" "https://localhost:$PORT/healthz"; then
  PYTHONPATH="$HERE${PYTHONPATH:+:$PYTHONPATH}" "$AGENTMESH" up mesh.yaml > .mesh/up.log 2>&1 &
  MESH_PID=$!
  echo "$MESH_PID" > .mesh/up.pid
fi
stop() { if [ -n "$MESH_PID" ] && [ -z "${KEEP_MESH:-}" ]; then kill "$MESH_PID" 2>/dev/null || true; wait "$MESH_PID" 2>/dev/null || true; fi; }
trap stop EXIT

# 3. wait for the card and the JSON-RPC endpoint
for i in $(seq 60); do
  code=$(curl -s -o /dev/null -w '%{http_code}' --cacert "$BUNDLE" "$BASE/.well-known/agent-card.json" || true)
  [ "$code" = 200 ] && break; sleep 1
done
[ "$code" = 200 ] || { echo "no agent card at $BASE (HTTP $code); see .mesh/up.log"; exit 1; }

# 4. a client token, sent by the TCK on every request (with A2A-Version: 1.0, which the TCK's main
#    branch does not send and a2a-sdk 1.3.0 requires: without it the SDK assumes 0.3 and refuses)
TOKEN=$("$AGENTMESH" token issue --ca "$CA" --sub tck@example.org --role client --ttl 2h)
export A2A_AUTH_HEADERS="{\"Authorization\":\"Bearer $TOKEN\",\"A2A-Version\":\"1.0\"}"
# trust the mesh CA: requests (card), httpx (JSON-RPC client), gRPC (secure channels); the TCK's REST
# client does not verify certificates at all
export REQUESTS_CA_BUNDLE=$HERE/$BUNDLE SSL_CERT_FILE=$HERE/$BUNDLE GRPC_DEFAULT_SSL_ROOTS_FILE_PATH=$HERE/$BUNDLE

mkdir -p "$OUT"; curl -s --cacert "$BUNDLE" "$BASE/.well-known/agent-card.json" > "$OUT/agent-card.json"
"$HERE/tck_matrix.sh" "$BASE" "$OUT" "$TRANSPORTS" "$@"
"$TCK_PY" "$HERE/summarize.py" "$OUT"
