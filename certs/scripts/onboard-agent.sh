#!/usr/bin/env bash
# Onboard one agent: issue its X509-SVID (spiffe://<trust-domain>/agent/NAME) from the mesh CA.
#
#   usage: onboard-agent.sh NAME [extra 'agentmesh cert issue' flags, e.g. --ttl 24h --dns name.svc]
#
#   AGENTMESH_CA_DIR   CA directory                                  (default: .mesh/ca)
#   AGENTMESH_OUT_DIR  where identities go; writes OUT/NAME/{cert,key,bundle}.pem (default: .mesh/identities)
#   AGENTMESH          the agentmesh command                         (default: agentmesh, or .venv/bin/agentmesh)
#
# Ship OUT/NAME to the agent (e.g. as a Kubernetes Secret); key.pem is 0600 and never leaves it.
set -euo pipefail
if [ $# -lt 1 ]; then
  echo "usage: $0 NAME [--ttl 24h] [--dns HOST ...]" >&2
  exit 2
fi
here=$(cd "$(dirname "$0")/../.." && pwd)
if [ -z "${AGENTMESH:-}" ]; then
  if command -v agentmesh >/dev/null 2>&1; then AGENTMESH=agentmesh; else AGENTMESH="$here/.venv/bin/agentmesh"; fi
fi
name=$1; shift
ca_dir=${AGENTMESH_CA_DIR:-.mesh/ca}
out_dir=${AGENTMESH_OUT_DIR:-.mesh/identities}
# shellcheck disable=SC2086
exec $AGENTMESH cert issue "$name" --ca "$ca_dir" --out "$out_dir/$name" "$@"
