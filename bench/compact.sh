#!/usr/bin/env bash
# Bytes per document against retrieval quality for sparq's compact-output settings (#28):
# each setting is a real `sparq encode` of a BEIR corpus.jsonl, its parts' bytes summed, and
# `sparq eval --corpus-vectors` on that output for nDCG@10 (queries encoded as usual, f32).
# Byte counts and metrics do not depend on load; no timings are taken.
#   bench/compact.sh BEIR_DIR [SETTING ...]
# A SETTING is the encode flags, quoted, e.g. "--weight-type u8 --prune mass:0.9"; "" is
# the default. Prints one markdown row per setting, ratios against the first. BASE_SPARQ, if
# set, is the binary for the first setting (e.g. an earlier release, for "today's default").
set -euo pipefail
cd "$(dirname "$0")/.."
BEIR=$1; shift
SPARQ=${SPARQ:-target/release/sparq}
PY=${PY:-.venv/bin/python}
bin=${BASE_SPARQ:-$SPARQ}
WORK=${WORK:-target/compact-bench/$(basename "$(dirname "$BEIR")")-$(basename "$BEIR")}
mkdir -p "$WORK"
[ $# -gt 0 ] || set -- ""
echo "| setting | bytes/doc | vs default | entries/doc | nDCG@10 | vs default |"
echo "|---|---|---|---|---|---|"
base_bytes=""; base_ndcg=""
for setting in "$@"; do
  name=$(printf '%s' "${setting:-default}" | tr -c 'A-Za-z0-9.:-' '_')
  [ "$bin" = "$SPARQ" ] || name="base-$name"
  out=$WORK/$name
  # shellcheck disable=SC2086
  [ -f "$out/_SUCCESS" ] || "$bin" encode --input "$BEIR/corpus.jsonl" --id-column _id \
    --output "$out" --overwrite $setting >"$WORK/$name.log" 2>&1
  docs=$("$PY" -c 'import json,sys; print(json.load(open(sys.argv[1]))["rows"])' "$out/_manifest.json")
  bytes=$(find "$out" -maxdepth 1 -name 'part-*.parquet' -printf '%s\n' | awk '{s+=$1} END {print s}')
  entries=$("$PY" - "$out" <<'PY'
import glob, sys
import pyarrow.compute as pc, pyarrow.parquet as pq
n = rows = 0
for p in glob.glob(sys.argv[1] + "/part-*.parquet"):
    col = pq.read_table(p, columns=["sparse"]).column("sparse")
    n += sum(pc.sum(pc.list_value_length(c)).as_py() or 0 for c in col.chunks)
    rows += len(col)
print(f"{n / rows:.1f}")
PY
)
  ndcg=$("$bin" eval --beir "$BEIR" --corpus-vectors "$out" 2>/dev/null \
    | "$PY" -c 'import json,sys; print("%.4f" % json.load(sys.stdin)["dot_ndcg@10"])')
  per_doc=$(awk -v b="$bytes" -v d="$docs" 'BEGIN {printf "%.1f", b/d}')
  if [ -z "$base_bytes" ]; then base_bytes=$per_doc; base_ndcg=$ndcg; fi
  bin=$SPARQ
  dbytes=$(awk -v a="$per_doc" -v b="$base_bytes" 'BEGIN {printf "%+.1f%%", 100*(a/b-1)}')
  dndcg=$(awk -v a="$ndcg" -v b="$base_ndcg" 'BEGIN {printf "%+.2f%%", 100*(a/b-1)}')
  echo "| \`${setting:-(default)}\` | $per_doc | $dbytes | $entries | $ndcg | $dndcg |"
done
