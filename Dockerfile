# syntax=docker/dockerfile:1
#
# One image for the three Sealpost commands: sealpost-gateway, sealpost-verifier and
# sealpost-keys (docker-compose.yml picks one per service). This image has NOT been built
# on the machine this repository was written on (it has no container engine); the build
# stage's pip commands were run there by hand in a plain venv (docs/operations.md).
#
#   docker build -t sealpost:local .
#
# Production should pin the base image by digest (python:3.11-slim-bookworm@sha256:...) so
# that a rebuild cannot silently change the interpreter or the OpenSSL under the seals.
ARG PYTHON_IMAGE=python:3.11-slim-bookworm

# ---------------------------------------------------------------------------- build
FROM ${PYTHON_IMAGE} AS build

ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1

# The venv lives at the path the final stage runs it from: its interpreter links (to
# /usr/local/bin/python3.11 of the same base image) stay valid after the copy.
RUN python -m venv /opt/sealpost

WORKDIR /src
COPY requirements.lock pyproject.toml README.md ./
COPY keys/ keys/
COPY gateway/ gateway/
COPY verifier/ verifier/
COPY tlog/ tlog/
COPY orgs/ orgs/

# First the project's own wheel (setuptools runs in pip's isolated build environment, not
# in the venv). Then the wheel and its runtime dependencies, with the lock file as a
# constraint: every package at exactly its locked version, and only what pyproject.toml
# asks for at run time, so the test and lint tools the lock also lists stay out.
# --only-binary: every dependency ships a wheel for CPython 3.11 (amd64 and arm64) except
# dkimpy, which is pure Python published as source only (rfc3161-client, for the statement
# log's RFC 3161 timestamps, is an abi3 wheel; httpx and its dependencies are pure-Python
# wheels); so no compiler is ever needed,
# in either stage. pip has compiled every module to bytecode (the containers run with a
# read-only root file system, so nothing could be cached later); then pip and setuptools
# leave the venv.
RUN /opt/sealpost/bin/pip wheel --no-deps --wheel-dir /tmp/wheels . \
 && /opt/sealpost/bin/pip install --only-binary=:all: --no-binary=dkimpy \
        --constraint requirements.lock /tmp/wheels/sealpost-*.whl \
 && /opt/sealpost/bin/pip uninstall --yes pip setuptools

# ---------------------------------------------------------------------------- runtime
FROM ${PYTHON_IMAGE} AS runtime

# A fixed uid/gid, so that volumes and the compose secret file can be given to it by
# number on the host (chown 10001).
ARG SEALPOST_UID=10001
# The base image's own pip, setuptools and wheel go too: nothing in the final image can
# build or install a package.
RUN python -m pip uninstall --yes --root-user-action=ignore pip setuptools wheel \
 && groupadd --system --gid "${SEALPOST_UID}" sealpost \
 && useradd --system --uid "${SEALPOST_UID}" --gid sealpost --no-create-home \
        --home-dir /var/lib/sealpost --shell /usr/sbin/nologin sealpost \
 && install -d -o sealpost -g sealpost -m 0755 /var/lib/sealpost /var/lib/sealpost/public \
 && install -d -o sealpost -g sealpost -m 0755 /var/lib/sealpost/public/log \
 && install -d -o sealpost -g sealpost -m 0700 /var/lib/sealpost/keys \
        /var/lib/sealpost/log-key /var/lib/sealpost/spool /var/lib/sealpost/tls \
        /var/lib/sealpost/outbox /var/lib/sealpost/orgs
# Named volumes mounted on these directories start as copies of them, so they belong to
# sealpost from the first run and the key stores (signing keys, log key) keep their 0700.
# public/log is the statement log's own volume, mounted inside the public archive's.

COPY --from=build /opt/sealpost /opt/sealpost

ENV PATH=/opt/sealpost/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    SEALPOST_KEYS_STORE=/var/lib/sealpost/keys \
    SEALPOST_KEYS_PUBLIC=/var/lib/sealpost/public \
    SEALPOST_ORGS_REGISTRY=/var/lib/sealpost/orgs/registry.sqlite

WORKDIR /var/lib/sealpost
# Numeric, so that orchestrators can check "runAsNonRoot" without reading /etc/passwd.
USER ${SEALPOST_UID}:${SEALPOST_UID}

# No HEALTHCHECK here: the right probe depends on the command (the verifier's /healthz,
# the gateway's metrics endpoint), so docker-compose.yml sets one per service. Both are
# small `python -c` probes: the image needs no curl.
EXPOSE 2525 2587 8080 9125
# Every compose service names its command; run bare, the image explains itself.
CMD ["sealpost-gateway", "--help"]
