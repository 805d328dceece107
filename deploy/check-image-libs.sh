#!/bin/sh
# Fails unless every binary given links only libraries that gcr.io/distroless/cc-debian12
# provides (glibc's libc and libm, libgcc_s, the loader), and needs no glibc newer than
# Debian 12's 2.36; a statically linked one (deploy/build-proxy.sh) needs nothing and passes.
# Run by deploy/Containerfile's build stage; by hand:
#   sh deploy/check-image-libs.sh target/release/weft-control-plane target/release/weft-proxy
set -eu
status=0
for bin in "$@"; do
    if ldd "$bin" 2>&1 | grep -q 'statically linked\|not a dynamic executable'; then
        echo "$bin: ok (statically linked)"
        continue
    fi
    libs=$(ldd "$bin" | awk '{print $1}')
    for lib in $libs; do
        case "$lib" in
            linux-vdso.so.1|libc.so.6|libm.so.6|libgcc_s.so.1|libdl.so.2|libpthread.so.0|librt.so.1|/lib64/ld-linux-x86-64.so.2|/lib/ld-linux-aarch64.so.1) ;;
            *) echo "$bin: links $lib, which distroless/cc does not have" >&2; status=1 ;;
        esac
    done
    newest=$(objdump -T "$bin" | grep -o 'GLIBC_[0-9.]*' | sort -t. -k1,1 -k2,2n -u | tail -1)
    case "$newest" in
        GLIBC_2.[0-9]|GLIBC_2.[0-2][0-9]|GLIBC_2.3[0-6]|"") ;;
        *) echo "$bin: needs $newest, newer than Debian 12's glibc 2.36" >&2; status=1 ;;
    esac
    echo "$bin: ok (${newest:-no versioned glibc symbols})"
done
exit $status
