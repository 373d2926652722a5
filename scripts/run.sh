#!/usr/bin/env bash
# `make run`: Sealpost on its embedded defaults, in the foreground. Ctrl-C stops everything.
set -Eeuo pipefail
cd "$(dirname "$0")/.."
BIN=${BIN:-.venv/bin}
DOMAIN=${SEALPOST_DOMAIN:-caisses.example}

"$BIN/sealpost-keys" init --domain "$DOMAIN" --exist-ok
