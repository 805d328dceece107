#!/usr/bin/env bash
# Runs every fuzz target in fuzz/ (coverage-guided, libFuzzer through cargo-fuzz) for at least
# FUZZ_RUNS executions each, with a per-input timeout and a memory limit, and reports per
# target: executions, crashes, hangs, out-of-memory, peak RSS, duration. Exits 1 if any target
# crashed, hung or ran out of memory (its input is in fuzz/artifacts/<target>/). docs/fuzzing.md.
#
#   bash bench/fuzz.sh                      # every target, 1,000,000 runs each
#   FUZZ_TARGETS="csr token" bash bench/fuzz.sh
#   FUZZ_TIME=3600 FUZZ_RUNS=-1 bash bench/fuzz.sh  # an hour per target instead (-1: no cap)
#
# Environment (defaults): FUZZ_RUNS (1000000), FUZZ_TIME (0: no time cap, seconds per target),
# FUZZ_TIMEOUT (5: seconds one input may take before it counts as a hang), FUZZ_RSS_MB (1024:
# libFuzzer's -rss_limit_mb), FUZZ_MAX_LEN (0: libFuzzer's guess from the corpus),
# WEFT_FUZZ_TARGET_DIR (fuzz/target), FUZZ_EXTRA (more libFuzzer flags).
# Needs a nightly toolchain and cargo-fuzz: `rustup toolchain install nightly` and
# `cargo install cargo-fuzz --locked`.
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
runs=${FUZZ_RUNS:-1000000}
time_cap=${FUZZ_TIME:-0}
timeout=${FUZZ_TIMEOUT:-5}
rss=${FUZZ_RSS_MB:-1024}
max_len=${FUZZ_MAX_LEN:-0}
target_dir=${WEFT_FUZZ_TARGET_DIR:-$root/fuzz/target}
triple=$(cargo +nightly -vV | sed -n 's/^host: //p')
bin_dir=$target_dir/$triple/release

if ! cargo +nightly fuzz --version >/dev/null 2>&1; then
	echo "fuzz.sh: needs a nightly toolchain and cargo-fuzz:" >&2
	echo "  rustup toolchain install nightly && cargo install cargo-fuzz --locked" >&2
	exit 2
fi
all_targets=$(cargo +nightly fuzz list --fuzz-dir fuzz)
targets=${FUZZ_TARGETS:-$all_targets}

# -s none: our code is `forbid(unsafe_code)`; what we look for is panics (debug assertions and
# overflow checks on: -a), hangs and memory growth, which need no sanitizer. ASan would halve
# the executions per second and instrument none of the C in aws-lc anyway.
echo "== build ($(cargo +nightly -V), $(cargo +nightly fuzz --version))"
cargo +nightly fuzz build -s none -a --fuzz-dir fuzz --target-dir "$target_dir"

results=$root/fuzz/results
mkdir -p "$results"
summary=$results/summary.tsv
printf 'target\texecutions\texec/s\tcrashes\thangs\tooms\tpeak_rss_mb\tseconds\n' >"$summary"
failed=0
for t in $targets; do
	seeds=$root/fuzz/seeds/$t corpus=$root/fuzz/corpus/$t artifacts=$root/fuzz/artifacts/$t
	rm -rf "$seeds"
	mkdir -p "$corpus" "$artifacts"
	WEFT_FUZZ_SEEDS=$seeds "$bin_dir/$t" 2>/dev/null
	log=$results/$t.log
	echo "== $t: $(find "$seeds" -type f | wc -l) seeds, $(find "$corpus" -type f | wc -l) in the corpus"
	start=$(date +%s)
	set +e
	# shellcheck disable=SC2086
	"$bin_dir/$t" "$corpus" "$seeds" -runs="$runs" -max_total_time="$time_cap" \
		-timeout="$timeout" -rss_limit_mb="$rss" -max_len="$max_len" \
		-print_final_stats=1 -artifact_prefix="$artifacts/" ${FUZZ_EXTRA:-} >"$log" 2>&1
	rc=$?
	set -e
	secs=$(($(date +%s) - start))
	execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -1)
	peak=$(sed -n 's/^stat::peak_rss_mb: *//p' "$log" | tail -1)
	if [ -z "$execs" ]; then # stopped before the final stats: the last status line says how far
		execs=$(grep -o '^#[0-9]*' "$log" | tail -1 | tr -d '#')
		peak=$(grep -o 'rss: [0-9]*Mb' "$log" | tail -1 | tr -dc 0-9)
	fi
	crashes=0 hangs=0 ooms=0
	grep -q 'ERROR: libFuzzer: timeout' "$log" && hangs=1
	grep -q 'ERROR: libFuzzer: out-of-memory' "$log" && ooms=1
	if [ "$rc" -ne 0 ] && [ "$hangs" -eq 0 ] && [ "$ooms" -eq 0 ]; then crashes=1; fi
	rate=$((${execs:-0} / (secs > 0 ? secs : 1)))
	printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$t" "${execs:-0}" "$rate" "$crashes" "$hangs" "$ooms" \
		"${peak:-?}" "$secs" >>"$summary"
	echo "   executions ${execs:-0} ($rate/s), crashes $crashes, hangs $hangs, out-of-memory $ooms, peak RSS ${peak:-?} MB, ${secs}s"
	if [ $((crashes + hangs + ooms)) -ne 0 ]; then
		failed=1
		grep -E 'panicked at|ERROR: libFuzzer|Test unit written to' "$log" | head -5 | sed 's/^/   /'
	fi
done

echo
echo "| target | executions | exec/s | crashes | hangs | OOM | peak RSS (MB) | seconds |"
echo "|---|---:|---:|---:|---:|---:|---:|---:|"
tail -n +2 "$summary" | while IFS=$'\t' read -r t e r c h o p s; do
	echo "| \`$t\` | $e | $r | $c | $h | $o | $p | $s |"
done
echo
echo "logs: fuzz/results/<target>.log; failing inputs: fuzz/artifacts/<target>/"
exit "$failed"
