#!/usr/bin/env bash
# Installs, when missing, what building and testing Weft needs beyond the Rust toolchain.
# Idempotent: a second run installs nothing and makes no network request.
set -euo pipefail

# protoc + the well-known .proto includes: our proto crate and etcd-client's build script run protoc.
# etcd-server: the registry's store tests start their own etcd on loopback.
need=()
command -v protoc >/dev/null 2>&1 || need+=(protobuf-compiler)
[ -f /usr/include/google/protobuf/duration.proto ] || need+=(libprotobuf-dev)
command -v etcd >/dev/null 2>&1 || [ -x /usr/bin/etcd ] || need+=(etcd-server)
# etcd-client (etcdctl): a registry test writes an endpoint the way an operator would.
command -v etcdctl >/dev/null 2>&1 || need+=(etcd-client)
# iproute2 + iptables: the transparent interception test makes a network namespace with a
# REDIRECT rule (tests/tests/transparent.rs).
command -v ip >/dev/null 2>&1 || need+=(iproute2)
command -v iptables >/dev/null 2>&1 || need+=(iptables)
# prometheus (with promtool): the dashboards test scrapes a running mesh with a real Prometheus
# and evaluates every panel and alert rule of deploy/ (tests/tests/dashboards.rs).
{ command -v prometheus && command -v promtool; } >/dev/null 2>&1 || need+=(prometheus)

if [ ${#need[@]} -gt 0 ]; then
  sudo=""
  if [ "$(id -u)" -ne 0 ]; then
    command -v sudo >/dev/null 2>&1 || { echo "install-deps: need root (or sudo) to apt-get install ${need[*]}" >&2; exit 1; }
    sudo="sudo"
  fi
  echo "install-deps: apt-get install ${need[*]}"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi

# kubernetes-validate (PyPI) in a venv: the Kubernetes tests check every manifest that
# `weftctl inject` and `weftctl install` write with `--strict`, for 1.29 and the newest
# version the package knows (there is no API server on our machines).
# Override the location with WEFT_VENV; tests find it the same way (tests/src/k8s.rs).
venv="${WEFT_VENV:-$HOME/.cache/weft/venv}"
if [ ! -x "$venv/bin/kubernetes-validate" ]; then
  if ! python3 -c 'import venv, ensurepip' >/dev/null 2>&1; then
    sudo=""; [ "$(id -u)" -ne 0 ] && sudo="sudo"
    echo "install-deps: apt-get install python3-venv"
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends python3-venv python3-pip >/dev/null
  fi
  echo "install-deps: pip install kubernetes-validate into $venv"
  python3 -m venv "$venv"
  "$venv/bin/pip" install -q --disable-pip-version-check 'kubernetes-validate==1.37.0'
fi

# grpcio + opentelemetry-proto (PyPI) in the same venv: the tracing test's OTLP receiver
# (tests/otlp/collector.py) is theirs, not ours.
venv="${WEFT_VENV:-$HOME/.cache/weft/venv}"
if ! "$venv/bin/python" -c 'import grpc, opentelemetry.proto.collector.trace.v1.trace_service_pb2_grpc' >/dev/null 2>&1; then
  echo "install-deps: pip install grpcio opentelemetry-proto into $venv"
  "$venv/bin/pip" install -q --disable-pip-version-check 'grpcio==1.85.3' 'opentelemetry-proto==1.45.2'
fi
