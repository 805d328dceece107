#!/usr/bin/env bash
# The main command (see README): build Weft and run `weftctl demo`, a whole mesh on this
# machine with a live view (Ctrl-C stops it and everything it started). Arguments go to
# `weftctl demo` (e.g. --duration 30s, --etcd http://127.0.0.1:2379, --base-port 0).
# WEFT_PROFILE=debug uses a debug build (the test command does, to keep this script working).
set -euo pipefail
cd "$(dirname "$0")/.."

profile=${WEFT_PROFILE:-release}
bash .ci/install-deps.sh
echo "==> building ($profile; the first build takes a few minutes)" >&2
if [ "$profile" = release ]; then cargo build --quiet --locked --release --bins; else cargo build --quiet --locked --bins; fi
exec "${CARGO_TARGET_DIR:-target}/$profile/weftctl" demo "$@"
