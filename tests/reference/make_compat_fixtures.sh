#!/usr/bin/env bash
# Writes tests/fixtures/compat/: what an earlier sparq left on disk, for tests/compat.rs to
# check that a newer binary still resumes, exports and inspects it.
#   tests/reference/make_compat_fixtures.sh PATH/TO/OLD/sparq
# Needs the S3 test server (scripts/s3-test-server.sh start) and .venv. The encode output reads
# an S3 input: S3 URLs and ETags (MD5 for one PUT) are the same on any machine, where local
# absolute paths are not. The checkpoint uses a micro model (vocabulary 1,024, 1 layer) so it
# stays small; paths in it are relative to the repository root, where the tests run.
set -euo pipefail
cd "$(dirname "$0")/../.."
OLD=$(realpath "$1")
F=tests/fixtures/compat
PY=.venv/bin/python
rm -rf "$F" && mkdir -p "$F"
$PY - <<'PY'
import json, os, shutil
import pyarrow as pa, pyarrow.parquet as pq
import torch
from transformers import BertConfig, BertForMaskedLM
F = "tests/fixtures/compat"
# The corpus: 40 rows in one file, row groups of 10.
ids = list(range(40))
texts = [f"passage {i}: the river and the mountain, whisky and bread, number {i}" for i in ids]
pq.write_table(pa.table({"id": pa.array(ids, pa.int64()), "text": texts}), f"{F}/corpus.parquet", row_group_size=10)
# The micro model: the bundled tokenizer cut to its first 1,024 ids (words beyond are [UNK]).
m = f"{F}/bert-micro"
os.makedirs(m)
tok = json.load(open("models/splade-bert-tiny-nq/tokenizer.json"))
tok["model"]["vocab"] = {k: v for k, v in tok["model"]["vocab"].items() if v < 1024}
json.dump(tok, open(f"{m}/tokenizer.json", "w"))
for f in ["tokenizer_config.json", "sentence_bert_config.json", "config_sentence_transformers.json", "modules.json"]:
    shutil.copy(f"models/splade-bert-tiny-nq/{f}", m)
shutil.copytree("models/splade-bert-tiny-nq/1_SpladePooling", f"{m}/1_SpladePooling")
torch.manual_seed(5)
cfg = BertConfig(vocab_size=1024, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                 intermediate_size=32, max_position_embeddings=64)
BertForMaskedLM(cfg).save_pretrained(m, safe_serialization=True)
for f in os.listdir(m):
    if f == "generation_config.json":
        os.remove(f"{m}/{f}")
# Pairs for training: 64 rows.
pq.write_table(pa.table({"anchor": [f"question {i} river" for i in range(64)],
                         "positive": [f"answer {i} mountain bread" for i in range(64)]}), f"{F}/pairs.parquet")
PY
# An encode output from S3, interrupted: 2 of its 4 parts kept, no manifest, no _SUCCESS.
eval "$(scripts/s3-test-server.sh start)"
export AWS_ACCESS_KEY_ID=testkey AWS_SECRET_ACCESS_KEY=testsecret AWS_ENDPOINT_URL=$SPARQ_TEST_S3_ENDPOINT
export AWS_ALLOW_HTTP=true AWS_REGION=us-east-1
curl -sf --aws-sigv4 aws:amz:us-east-1:s3 --user testkey:testsecret -T "$F/corpus.parquet" \
  "$SPARQ_TEST_S3_ENDPOINT/sparq-test/compat/corpus/corpus.parquet"
"$OLD" encode --input s3://sparq-test/compat/corpus --output "$F/output" --shard-rows 10 \
  --keep-columns text --threads 1 > /dev/null
rm "$F/output/_SUCCESS" "$F/output/_manifest.json" "$F"/output/part-00000-0000000000[23]0.parquet
rmdir "$F/output/_attempts" 2>/dev/null || true
# A training run stopped after its checkpoint at step 2 (of 4); the uninterrupted run's final
# weights are kept to compare a resumed run with.
"$OLD" train --model "$F/bert-micro" --train-data "$F/pairs.parquet" --output "$F/uninterrupted" \
  --max-steps 4 --save-steps 2 --batch-size 8 --learning-rate 1e-3 --threads 1 > /dev/null
mkdir -p "$F/train"
cp -r "$F/uninterrupted/checkpoint-2" "$F/train/"
mv "$F/uninterrupted/model.safetensors" "$F/final-weights.safetensors"
rm -rf "$F/uninterrupted"
"$OLD" --version > "$F/VERSION"
git -C . rev-parse --short HEAD >> "$F/VERSION"
du -sh "$F"
