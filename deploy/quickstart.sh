#!/usr/bin/env bash
# The main command (see README): on one machine, create a mesh CA, start the control plane,
# mint a join token, get an X509-SVID for a workload, and show it. Cleans up after itself
# (WEFT_KEEP=1 keeps the work directory). WEFT_PROFILE=debug uses a debug build (the test
# command does, to keep this script working).
set -euo pipefail
cd "$(dirname "$0")/.."

profile=${WEFT_PROFILE:-release}
bash .ci/install-deps.sh
echo "==> building ($profile)"
if [ "$profile" = release ]; then cargo build --quiet --locked --release --bins; else cargo build --quiet --locked --bins; fi
target=${CARGO_TARGET_DIR:-target}/$profile

work=$(mktemp -d -t weft-quickstart.XXXXXX)
cp_pid=""
cleanup() {
  [ -n "$cp_pid" ] && kill "$cp_pid" 2>/dev/null && wait "$cp_pid" 2>/dev/null
  if [ "${WEFT_KEEP:-0}" = 1 ]; then echo "kept $work"; else rm -rf "$work"; fi
}
trap cleanup EXIT

td=quickstart.weft
id=spiffe://$td/ns/default/sa/web

echo "==> weftctl ca init --trust-domain $td --out $work/ca"
"$target/weftctl" ca init --trust-domain "$td" --out "$work/ca"

echo "==> weft-control-plane --ca-dir $work/ca --listen 127.0.0.1:0"
"$target/weft-control-plane" --ca-dir "$work/ca" --listen 127.0.0.1:0 --admin 127.0.0.1:0 2> "$work/control-plane.log" &
cp_pid=$!
addr=""
for _ in $(seq 1 300); do
  addr=$(grep -o 'grpc_addr=[^ ]*' "$work/control-plane.log" | head -1 | cut -d= -f2 || true)
  [ -n "$addr" ] && break
  kill -0 "$cp_pid" 2>/dev/null || { cat "$work/control-plane.log"; echo "control plane exited" >&2; exit 1; }
  sleep 0.1
done
[ -n "$addr" ] || { cat "$work/control-plane.log"; echo "control plane did not start within 30 s" >&2; exit 1; }
admin=$(grep -o 'admin_addr=[^ ]*' "$work/control-plane.log" | head -1 | cut -d= -f2)
echo "    serving on $addr (admin http://$admin/metrics)"

echo "==> weftctl token create --identity $id --ttl 10m"
"$target/weftctl" token create --ca-dir "$work/ca" --identity "$id" --ttl 10m > "$work/web.token"

echo "==> weftctl cert request --identity $id"
"$target/weftctl" cert request --control-plane "$addr" --trust-bundle "$work/ca/ca.crt" \
  --token-file "$work/web.token" --identity "$id" --out "$work/web"

echo "==> weftctl cert inspect $work/web/svid.crt"
"$target/weftctl" cert inspect "$work/web/svid.crt"

export WEFT_CONFIG="$work/weft-config.yaml"
echo "==> weftctl login --control-plane $addr (admin certificate + context file)"
"$target/weftctl" login --control-plane "$addr" --ca-dir "$work/ca"

cat > "$work/reviews.yaml" <<'YAML'
apiVersion: weft.io/v1alpha1
kind: Service
metadata: {namespace: default, name: reviews}
spec:
  ports: [{name: http, port: 9080, protocol: http1}]
---
apiVersion: weft.io/v1alpha1
kind: Service
metadata: {namespace: default, name: reviews-v2}
spec:
  ports: [{name: http, port: 9080, protocol: http1}]
  selector: {app: reviews, version: v2}
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {namespace: default, name: reviews-canary}
spec:
  parentRefs: [{kind: Service, name: reviews, port: 9080}]
  rules:
  - backendRefs:
    - {name: reviews, port: 9080, weight: 90}
    - {name: reviews-v2, port: 9080, weight: 10}
    timeouts: {request: 10s}
    retry: {codes: [503], attempts: 2, backoff: 50ms}
YAML
echo "==> weftctl apply -f reviews.yaml (a 90/10 canary split)"
"$target/weftctl" apply -f "$work/reviews.yaml"
echo "==> weftctl apply again: nothing changes"
"$target/weftctl" apply -f "$work/reviews.yaml"

echo "==> weftctl register two endpoints outside the mesh"
"$target/weftctl" register --service default/reviews --address 10.0.0.11:9080 \
  --identity "spiffe://$td/ns/default/sa/reviews" --labels app=reviews,version=v1
"$target/weftctl" register --service default/reviews --address 10.0.0.12:9080 \
  --identity "spiffe://$td/ns/default/sa/reviews" --labels app=reviews,version=v2 --ttl 10m

echo "==> weftctl get services / routes / endpoints"
"$target/weftctl" get services
"$target/weftctl" get routes
"$target/weftctl" get endpoints

echo "==> a bad weight is refused, naming the field"
sed 's/weight: 10}/weight: -10}/' "$work/reviews.yaml" > "$work/bad.yaml"
if "$target/weftctl" apply -f "$work/bad.yaml" 2> "$work/bad.err"; then
  echo "a negative weight was accepted" >&2; exit 1
fi
cat "$work/bad.err"

echo "==> control plane log"
cat "$work/control-plane.log"
echo "quickstart: OK"
