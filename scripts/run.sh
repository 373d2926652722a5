#!/usr/bin/env bash
# `make run`: a local Time-Stamp Authority, the gateway and the verifier on their embedded
# defaults, in the foreground. Ctrl-C (or SIGTERM) stops them all gracefully; if any one
# exits, the others are stopped too.
set -Eeuo pipefail
cd "$(dirname "$0")/.."
BIN=${BIN:-.venv/bin}
DOMAIN=caisses.example
# The local RFC 3161 TSA (scripts/tsa.py, `openssl ts`) that timestamps every checkpoint of
# the statement log. Loopback only; its CA and key live in var/tsa.
TSA_DIR=var/tsa
TSA_PORT=${SEALPOST_RUN_TSA_PORT:-3180}
TSA_URL="http://127.0.0.1:$TSA_PORT/"
TSA_START_TIMEOUT=20 # seconds: the first start makes the CA and the TSA certificate
# This node's statement log: its own origin and key (never rotated, docs/operations.md).
LOG_KEY=var/log.key
# Named as the gateway names a log it makes itself: after its host name ("local" if none).
HOST=$("$BIN/python" -c 'import socket; print(socket.gethostname())' 2>/dev/null || true)
[[ $HOST =~ ^[A-Za-z0-9][A-Za-z0-9.-]*$ ]] || HOST=local
LOG_ORIGIN="$DOMAIN/statements/$HOST"

# The gateway would initialise the store on first start too; doing it here first means the
# verifier finds the public archive at once and the DNS records are printed up front.
"$BIN/sealpost-keys" init --domain "$DOMAIN" --exist-ok

pids=()
stop() {
    trap - INT TERM EXIT
    for pid in "${pids[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
    wait || true
}
trap stop INT TERM EXIT

# The TSA must be listening before the gateway publishes its first checkpoint: wait for
# its "listening on" line (bounded), and make its CA before the log key registers it.
mkdir -p "$TSA_DIR"
tsa_out="$TSA_DIR/stdout"
: >"$tsa_out"
"$BIN/python" scripts/tsa.py "$TSA_DIR" --port "$TSA_PORT" >"$tsa_out" & pids+=($!)
tsa_pid=$!
for ((i = 0; i < TSA_START_TIMEOUT * 10; i++)); do
    grep -q '^listening on ' "$tsa_out" && break
    if ! kill -0 "$tsa_pid" 2>/dev/null; then
        echo "run.sh: the local TSA did not start (port $TSA_PORT in use? set SEALPOST_RUN_TSA_PORT)" >&2
        exit 1
    fi
    sleep 0.1
done
if ! grep -q '^listening on ' "$tsa_out"; then
    echo "run.sh: the local TSA is not listening after ${TSA_START_TIMEOUT} s" >&2
    exit 1
fi

# Create and register the log key (and the TSA's root) once; later runs change nothing.
"$BIN/sealpost-keys" log-key --origin "$LOG_ORIGIN" --out "$LOG_KEY" \
    --tsa-root "$TSA_DIR/ca.pem" --exist-ok
LOG_DIR=$("$BIN/python" -c 'import sys; from keys import store
print(store.log_directory(sys.argv[1]))' "$LOG_ORIGIN")

SEALPOST_GATEWAY_LOG_KEY="$LOG_KEY" SEALPOST_GATEWAY_LOG_TSA_URL="$TSA_URL" \
    "$BIN/sealpost-gateway" & pids+=($!)
"$BIN/sealpost-verifier" & pids+=($!)

cat <<INFO

Sealpost is running (Ctrl-C stops it):
  relay (loopback, no AUTH)     smtp://127.0.0.1:2525
  submission (STARTTLS + AUTH)  smtp://127.0.0.1:2587
  gateway metrics               http://127.0.0.1:9125/metrics
  verifier (form and API)       http://127.0.0.1:8080/
  key store (private)           $PWD/var/keys
  public archive                $PWD/var/public
  statement log ($LOG_ORIGIN)
                                $PWD/var/public/$LOG_DIR
  log key (private)             $PWD/$LOG_KEY
  time-stamp authority (local)  $TSA_URL (root: $PWD/$TSA_DIR/ca.pem)
  spool                         $PWD/var/spool
  delivered mail (Maildir)      $PWD/var/outbox/new
  DNS records to publish        $BIN/sealpost-keys dns --domain $DOMAIN
  queue                         $BIN/sealpost-gateway queue list

INFO
wait -n
