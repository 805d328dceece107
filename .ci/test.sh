#!/usr/bin/env bash
# The one test command (see README): installs what the tests need, then runs formatting,
# lints, every test, and a smoke run of the benchmark programs so they cannot rot.
# Works on a fresh Debian bookworm machine with only the Rust toolchain, as root.
set -euo pipefail
cd "$(dirname "$0")/.."

step() { printf '\n==> %s\n' "$*"; }

step "install test dependencies (idempotent)"
bash .ci/install-deps.sh

for comp in rustfmt clippy; do
  if ! cargo "${comp/rustfmt/fmt}" --version >/dev/null 2>&1; then
    rustup component add "$comp"
  fi
done

step "cargo fmt --check"
cargo fmt --all -- --check

step "one tonic, prost, hyper, rustls in the dependency graph"
dups=$(cargo tree --workspace --locked -d -e normal | grep -E '^(tonic|prost|hyper|rustls|h2|tokio-rustls) v' || true)
if [ -n "$dups" ]; then echo "duplicate core crates:"; echo "$dups"; exit 1; fi

step "cargo clippy -D warnings"
cargo clippy --workspace --all-targets --locked -- -D warnings

step "tests"
if cargo nextest --version >/dev/null 2>&1; then
  cargo nextest run --workspace --locked --no-fail-fast
else
  echo "(cargo-nextest not installed: using cargo test)"
  cargo test --workspace --locked --no-fail-fast
fi
cargo test --workspace --locked --doc

step "benchmark smoke run (numbers from a debug build mean nothing; see docs/benchmarks.md)"
cargo test --quiet --locked -p weft-bench --benches  # criterion benches, each run once
cargo run --quiet --locked -p weft-bench -- csr-sign --duration 1s
cargo run --quiet --locked -p weft-bench -- certify --duration 1s --clients 2
cargo build --quiet --locked -p weft-control-plane && cargo run --quiet --locked -p weft-bench -- discovery --proxies 50 --services 10 --changes 2
# The one benchmark command (proxy pairs incl. the HAProxy and nginx mTLS pairs, discovery,
# csr-sign) drives the real binaries, nginx, haproxy, wrk and oha (it installs what is missing:
# apt-get nginx haproxy wrk, and cargo install oha once, which takes minutes); debug binaries here.
cargo build --quiet --locked --bins && cargo run --quiet --locked -p weft-bench -- all --quick --bin-dir "${CARGO_TARGET_DIR:-target}/debug"

step "the README's main command, for 5 s (debug build)"
WEFT_PROFILE=debug bash deploy/demo.sh --duration 5s --base-port 0

step "the operator's walkthrough (debug build)"
WEFT_PROFILE=debug bash deploy/quickstart.sh
