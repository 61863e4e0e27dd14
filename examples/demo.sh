#!/usr/bin/env bash
# The bundled demo: encodes the sample corpus (examples/corpus, 2 parquet files) with the
# bundled model and two worker processes, then shows what was written.
set -euo pipefail
cd "$(dirname "$0")/.."
SPARQ=target/release/sparq
OUT=target/demo/vectors

echo "== sparq encode: examples/corpus -> $OUT (model models/splade-bert-tiny-nq, 2 CPU workers)"
$SPARQ encode --input examples/corpus --output "$OUT" --workers 2 --shard-rows 16 --keep-columns text --overwrite
echo
echo "== files written"
ls -l "$OUT"
echo
python3 - "$OUT" <<'PY'
import json, sys
m = json.load(open(sys.argv[1] + "/_manifest.json"))
print(f"== manifest: {m['rows']} rows in {len(m['files'])} parts, complete={m['complete']}")
PY
echo
echo "== a query, encoded with the query prompt (top weights):"
echo '"how much alcohol is in scotch whisky?"' | $SPARQ encode-text --query --tokens | python3 -c '
import json, sys
v = json.loads(sys.stdin.read())
top = sorted(zip(v["values"], v["tokens"]), reverse=True)[:10]
print("  " + ", ".join(f"{t} {w:.2f}" for w, t in top))'
