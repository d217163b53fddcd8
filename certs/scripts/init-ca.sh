#!/usr/bin/env bash
# Create the mesh CA (root + issuing intermediate) once per trust domain.
#
#   AGENTMESH_CA_DIR        CA directory            (default: .mesh/ca)
#   AGENTMESH_TRUST_DOMAIN  SPIFFE trust domain     (default: example.org)
#   AGENTMESH               the agentmesh command   (default: agentmesh, or .venv/bin/agentmesh)
#
# Keep the CA directory off agent machines: it holds the signing keys (0600, directory 0700).
# Pass --force to replace an existing CA (every agent must then be onboarded again).
set -euo pipefail
here=$(cd "$(dirname "$0")/../.." && pwd)
if [ -z "${AGENTMESH:-}" ]; then
  if command -v agentmesh >/dev/null 2>&1; then AGENTMESH=agentmesh; else AGENTMESH="$here/.venv/bin/agentmesh"; fi
fi
ca_dir=${AGENTMESH_CA_DIR:-.mesh/ca}
td=${AGENTMESH_TRUST_DOMAIN:-example.org}
if [ -f "$ca_dir/ca.json" ] && [ "${1:-}" != "--force" ]; then
  echo "CA already present in $ca_dir (pass --force to replace it)"
  exit 0
fi
# shellcheck disable=SC2086
exec $AGENTMESH ca init --dir "$ca_dir" --trust-domain "$td" "$@"
