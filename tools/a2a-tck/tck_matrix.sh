#!/usr/bin/env bash
# Run the A2A TCK's categories against one SUT URL, per transport, with a JSON report per run.
#   tck_matrix.sh SUT_URL OUTDIR "jsonrpc rest grpc" [categories...]
# The pytest command is the one run_tck.py builds for `--category C --transports T` (run_tck.py adds
# -m "... or mandatory_jsonrpc" to the mandatory run for jsonrpc), plus --json-report and -rA.
# Environment: TCK_DIR (a work tree of a2aproject/a2a-tck), TCK_PY (python of its venv), and whatever
# the TCK reads (A2A_AUTH_TYPE/A2A_AUTH_TOKEN, TCK_STREAMING_TIMEOUT, REQUESTS_CA_BUNDLE, SSL_CERT_FILE,
# GRPC_DEFAULT_SSL_ROOTS_FILE_PATH).
set -u
SUT_URL=$1; OUT=$2; TRANSPORTS=$3; shift 3
CATS=${*:-mandatory capabilities quality features transport-equivalence}
TCK_DIR=${TCK_DIR:-/tmp/a2a-tck}; TCK_PY=${TCK_PY:-/tmp/tck-venv/bin/python}
mkdir -p "$OUT"; OUT=$(cd "$OUT" && pwd)
cd "$TCK_DIR"
run() {  # category transports name
  local cat=$1 tr=$2 name=$3 path markers
  case $cat in
    mandatory) path=tests/mandatory/; markers="mandatory or mandatory_protocol"
               [[ ",$tr," == *,jsonrpc,* ]] && markers="$markers or mandatory_jsonrpc";;
    capabilities) path=tests/optional/capabilities/; markers="";;
    transport-equivalence) path=tests/optional/multi_transport/; markers="transport_equivalence";;
    quality) path=tests/optional/quality/; markers="";;
    features) path=tests/optional/features/; markers="";;
  esac
  echo "=== $name"
  timeout 900 "$TCK_PY" -m pytest "$path" --sut-url="$SUT_URL" --test-scope=all --tb=short -q -rA -p no:cacheprovider \
    ${markers:+-m "$markers"} --transports "$tr" --json-report --json-report-file="$OUT/$name.json" \
    > "$OUT/$name.log" 2>&1
  tail -1 "$OUT/$name.log"
}
for cat in $CATS; do
  if [ "$cat" = transport-equivalence ]; then
    run "$cat" "$(echo $TRANSPORTS | tr ' ' ,)" "$cat"
  else
    for tr in $TRANSPORTS; do run "$cat" "$tr" "$cat-$tr"; done
  fi
done
