#!/usr/bin/env bash
# `make run`: gateway + verifier on their embedded defaults, in the foreground.
# Ctrl-C (or SIGTERM) stops both gracefully; if either one exits, the other is stopped too.
set -Eeuo pipefail
cd "$(dirname "$0")/.."
BIN=${BIN:-.venv/bin}
DOMAIN=caisses.example

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
  spool                         $PWD/var/spool
  delivered mail (Maildir)      $PWD/var/outbox/new
  DNS records to publish        $BIN/sealpost-keys dns --domain $DOMAIN
  queue                         $BIN/sealpost-gateway queue list

INFO
wait -n
