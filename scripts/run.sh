#!/usr/bin/env bash
# `make run`: a local Time-Stamp Authority, the gateway and the verifier on their embedded
# defaults, in the foreground. Ctrl-C (or SIGTERM) stops them all gracefully; if any one
# exits, the others are stopped too. The banner comes once every port answers.
#
# Everything is kept under var/ of the working directory: the repository, or
# SEALPOST_RUN_DIR. Ports follow the services' own variables (SEALPOST_GATEWAY_RELAY_LISTEN,
# SEALPOST_GATEWAY_SUBMISSION_LISTEN, SEALPOST_GATEWAY_METRICS_LISTEN,
# SEALPOST_VERIFIER_PORT) and SEALPOST_RUN_TSA_PORT for the local TSA.
set -Eeuo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"
BIN=$(cd "${BIN:-.venv/bin}" && pwd)
cd "${SEALPOST_RUN_DIR:-.}"
DOMAIN=caisses.example
# The local RFC 3161 TSA (scripts/tsa.py, `openssl ts`) that timestamps every checkpoint of
# the statement log. Loopback only; its CA and key live in var/tsa.
TSA_DIR=var/tsa
TSA_PORT=${SEALPOST_RUN_TSA_PORT:-3180}
TSA_URL="http://127.0.0.1:$TSA_PORT/"
TSA_START_TIMEOUT=20 # seconds: the first start makes the CA and the TSA certificate
READY_TIMEOUT=60     # seconds for every port to answer (the first start makes the keys)
# Set but empty turns a gateway listener off, as in the gateway's own settings.
RELAY=${SEALPOST_GATEWAY_RELAY_LISTEN-127.0.0.1:2525}
SUBMISSION=${SEALPOST_GATEWAY_SUBMISSION_LISTEN-127.0.0.1:2587}
METRICS=${SEALPOST_GATEWAY_METRICS_LISTEN-127.0.0.1:9125}
VERIFIER="${SEALPOST_VERIFIER_HOST:-127.0.0.1}:${SEALPOST_VERIFIER_PORT:-8080}"
# The trial password of the loopback client on the submission port: made on the first run,
# kept in a 0600 file under var/ (never in the repository); the gateway's config holds only
# its scrypt hash.
TRIAL_USER=loopback
TRIAL_PASSWORD_FILE=var/submission-password
GATEWAY_CONFIG=var/gateway.toml
# This node's statement log: its own origin and key (never rotated, docs/operations.md).
LOG_KEY=var/log.key
# Named as the gateway names a log it makes itself: after its host name ("local" if none).
HOST=$("$BIN/python" -c 'import socket; print(socket.gethostname())' 2>/dev/null || true)
[[ $HOST =~ ^[A-Za-z0-9][A-Za-z0-9.-]*$ ]] || HOST=local
LOG_ORIGIN="$DOMAIN/statements/$HOST"

mkdir -p var
if [[ ! -s $TRIAL_PASSWORD_FILE ]]; then
    (
        umask 077
        "$BIN/python" -c 'import secrets; print(secrets.token_urlsafe(18))' >"$TRIAL_PASSWORD_FILE.tmp"
    )
    mv "$TRIAL_PASSWORD_FILE.tmp" "$TRIAL_PASSWORD_FILE"
fi
chmod 600 "$TRIAL_PASSWORD_FILE"
TRIAL_PASSWORD=$(<"$TRIAL_PASSWORD_FILE")
# The embedded default's loopback client, plus the trial password's hash (fresh salt each run).
(
    umask 077
    "$BIN/python" - "$TRIAL_PASSWORD_FILE" "$TRIAL_USER" "$DOMAIN" >"$GATEWAY_CONFIG.tmp" <<'PY'
import sys
from pathlib import Path

from gateway.settings import hash_password

password_file, user, domain = sys.argv[1:]
password = Path(password_file).read_text(encoding="utf-8").strip()
print(f"""# Written by scripts/run.sh (make run) on every start: the embedded default's loopback
# client, which may also AUTH on the submission port with the trial password kept in
# {password_file}. Only its scrypt hash is here.
[[clients]]
name = "{user}"
networks = ["127.0.0.0/8", "::1/128"]
sender_domains = ["{domain}"]
password_hash = "{hash_password(password)}"
""")
PY
)
mv "$GATEWAY_CONFIG.tmp" "$GATEWAY_CONFIG"

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
"$BIN/python" "$ROOT/scripts/tsa.py" "$TSA_DIR" --port "$TSA_PORT" >"$tsa_out" & pids+=($!)
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
    "$BIN/sealpost-gateway" --config "$GATEWAY_CONFIG" & pids+=($!)
"$BIN/sealpost-verifier" & pids+=($!)

# The banner promises working addresses: wait (bounded) until each port accepts a
# connection; a listener turned off (an empty address) is not waited for.
answers() {
    local host=${1%:*} port=${1##*:}
    host=${host#[}
    host=${host%]}
    (exec 3<>"/dev/tcp/$host/$port") 2>/dev/null
}
waiting=()
for address in "$RELAY" "$SUBMISSION" "$METRICS" "$VERIFIER"; do
    [[ -n $address ]] && waiting+=("$address")
done
for ((i = 0; i < READY_TIMEOUT * 10; i++)); do
    left=()
    for address in "${waiting[@]}"; do answers "$address" || left+=("$address"); done
    [[ ${#left[@]} -eq 0 ]] && break
    for pid in "${pids[@]}"; do
        if ! kill -0 "$pid" 2>/dev/null; then
            echo "run.sh: a service exited before answering on ${left[*]} (see its messages above)" >&2
            exit 1
        fi
    done
    sleep 0.1
done
if [[ ${#left[@]} -gt 0 ]]; then
    echo "run.sh: no answer on ${left[*]} after ${READY_TIMEOUT} s" >&2
    exit 1
fi

cat <<INFO

Sealpost is running (Ctrl-C stops it):
  relay (loopback, no AUTH)     smtp://$RELAY
  submission (STARTTLS + AUTH)  smtp://$SUBMISSION
    trial login                 user $TRIAL_USER, password $TRIAL_PASSWORD
                                (kept in $PWD/$TRIAL_PASSWORD_FILE)
    try it                      swaks --server $SUBMISSION --tls --auth-user $TRIAL_USER \\
                                  --auth-password '$TRIAL_PASSWORD' \\
                                  --from statements@$DOMAIN --to you@example.net
  gateway metrics               http://$METRICS/metrics
  verifier (form and API)       http://$VERIFIER/
  key store (private)           $PWD/var/keys
  public archive                $PWD/var/public
  statement log ($LOG_ORIGIN)
                                $PWD/var/public/$LOG_DIR
  log key (private)             $PWD/$LOG_KEY
  time-stamp authority (local)  $TSA_URL (root: $PWD/$TSA_DIR/ca.pem)
  spool                         $PWD/var/spool
  delivered mail (Maildir)      $PWD/var/outbox/new
  DNS records to publish        $BIN/sealpost-keys dns --domain $DOMAIN
  queue                         $BIN/sealpost-gateway --config $GATEWAY_CONFIG queue list

INFO
wait -n
