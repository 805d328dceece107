#!/usr/bin/env bash
# Instructions per request of a weft-proxy, counted by callgrind: a repeatable measure of the
# proxy's own (user-space) work, unlike wall-clock runs on a shared machine.
#
#   [MEMBER=loadgen|api-v1] [PROXY_ARGS='...'] bash bench/instructions-per-request.sh [PROXY_BIN] [BIN_DIR]
#
# MEMBER picks the demo member whose proxy is measured: `loadgen` (the default) is a pure client
# proxy (HTTP/1.1 in, mTLS HTTP/2 out), `api-v1` a pure server proxy (mTLS HTTP/2 in, HTTP/1.1
# to its app; it gets about 90 % of the requests). PROXY_ARGS are added to the measured proxy's
# command line (a feature's flags, e.g. `--otlp-endpoint http://127.0.0.1:4317
# --trace-sample-rate 0.01`, to count its cost on against off).
#
# Runs `weftctl demo` (from BIN_DIR, default target/release) at 100 requests per second with
# that member's proxy under valgrind, zeroes the counts
# after a warm-up, counts 10 s of traffic, and prints the instructions per request. The
# profile is left in $WORK/cg.out.1 for `callgrind_annotate --inclusive=yes`. See
# docs/benchmarks.md, "Instructions per request".
set -euo pipefail
member=${MEMBER:-loadgen}
case $member in loadgen|web|api-v1|api-v2) ;; *) echo "MEMBER must be loadgen, web, api-v1 or api-v2" >&2; exit 2;; esac
cd "$(dirname "$0")/.."
bin_dir=$(realpath "${2:-target/release}")
proxy=$(realpath "${1:-$bin_dir/weft-proxy}")
command -v valgrind >/dev/null || { echo "valgrind is needed: apt-get install valgrind" >&2; exit 1; }
for b in "$bin_dir/weftctl" "$bin_dir/weft-control-plane" "$proxy"; do
  [ -x "$b" ] || { echo "$b not found: cargo build --release --bins" >&2; exit 1; }
done

work=$(mktemp -d -t weft-instructions.XXXXXX)
demo_pid=""
cleanup() { [ -n "$demo_pid" ] && kill -INT "$demo_pid" 2>/dev/null && wait "$demo_pid" 2>/dev/null; true; }
trap cleanup EXIT

# A bin dir for the demo whose weft-proxy runs the measured member under callgrind.
ln -s "$bin_dir/weft-control-plane" "$work/weft-control-plane"
cat > "$work/weft-proxy" <<WRAP
#!/bin/bash
if [[ " \$* " == *" --node-id $member "* ]]; then
  exec valgrind --tool=callgrind --callgrind-out-file=$work/cg.out "$proxy" "\$@" ${PROXY_ARGS:-}
fi
exec "$proxy" "\$@"
WRAP
chmod +x "$work/weft-proxy"

"$bin_dir/weftctl" demo --bin-dir "$work" --base-port 0 --rps 100 --failure-rate 0 --duration 120s --no-dashboard \
  -o json > "$work/demo.json" 2> "$work/demo.log" &
demo_pid=$!

# The measured proxy's admin port, from the demo's progress lines.
admin=""
for _ in $(seq 1 600); do
  admin=$(grep -o "weft-proxy for $member as [^ ]*, admin http://[0-9.:]*" "$work/demo.log" | sed 's|.*http://||' || true)
  [ -n "$admin" ] && grep -q "traffic:" "$work/demo.log" && break
  kill -0 "$demo_pid" 2>/dev/null || { cat "$work/demo.log" >&2; exit 1; }
  sleep 0.1
done
[ -n "$admin" ] || { echo "the demo did not start within 60 s" >&2; cat "$work/demo.log" >&2; exit 1; }
pid=$(pgrep -f -- "--node-id $member( |$)" | head -1)
count() { curl -s "http://$admin/metrics" | awk '/^response_total/ {s+=$NF} END {print s+0}'; }

sleep 10   # warm-up: connections made, caches filled
callgrind_control -z "$pid" >/dev/null
c0=$(count)
sleep 10
c1=$(count)
callgrind_control -d "$pid" >/dev/null
total=$(callgrind_annotate "$work/cg.out.1" 2>/dev/null | awk '/PROGRAM TOTALS/ {gsub(",","",$1); print $1}')
# The requests the profile covers: its calls of Metrics::count_response, one per proxied
# request. (The /metrics counter is read a moment after zeroing and before dumping, and the
# proxy answers slowly under valgrind, so it misses a few percent of the requests counted.)
requests=$(callgrind_annotate --tree=caller --inclusive=yes "$work/cg.out.1" 2>/dev/null \
  | grep -E '=> .*Metrics::count_response \(' | grep -o '([0-9,]*x)' | tr -d '(),x' \
  | awk '{ s += $1 } END { print s + 0 }')
how="calls of Metrics::count_response in the profile; the /metrics counter said $((c1 - c0))"
if [ "$requests" -eq 0 ]; then
  requests=$((c1 - c0))
  how="from the /metrics counter: count_response was inlined, so this misses a few percent"
fi
echo "proxy: $proxy ($member)"
echo "requests: $requests ($how)"
echo "instructions: $total"
echo "instructions per request: $((total / requests))"
echo "profile: $work/cg.out.1"
