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
