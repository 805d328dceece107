#!/bin/sh
# Builds the production weft-proxy and prints its absolute path: the `sidecar` profile (optimized for
# size, fat LTO) linked statically against glibc (a static-pie executable). Static linking maps
# no libc.so, libm.so or loader and resolves no symbols at start, which takes 1.3 MiB off each
# proxy's idle memory (8.1 → 6.8 MiB; docs/benchmarks.md, "The sidecar build, linked
# statically"). Name resolution still works: glibc 2.34+ has its `files` and `dns` lookups built
# in, which is all a pod uses (/etc/hosts, /etc/resolv.conf); NSS modules that would be loaded
# at run time (LDAP, nss-resolve) are not available to a static binary.
#
#   bash deploy/build-proxy.sh [CARGO BUILD ARGS...]    # e.g. --locked
#
# Needs glibc's static library (Debian: libc6-dev, which the Rust toolchain's C linker needs
# anyway). The flags go through RUSTFLAGS with an explicit --target, so build scripts and
# procedural macros (which must stay dynamic) are built without them.
set -eu
cd "$(dirname "$0")/.."
host=$(rustc -vV | sed -n 's/^host: //p')
RUSTFLAGS="${RUSTFLAGS:-} -C target-feature=+crt-static" \
    cargo build --profile sidecar -p weft-proxy --target "$host" "$@" >&2
dir="${CARGO_TARGET_DIR:-target}"
case "$dir" in /*) ;; *) dir="$(pwd)/$dir" ;; esac
bin="$dir/$host/sidecar/weft-proxy"
if ! ldd "$bin" 2>&1 | grep -q 'statically linked\|not a dynamic executable'; then
    echo "$bin is not statically linked:" >&2
    ldd "$bin" >&2
    exit 1
fi
echo "$bin"
