#!/usr/bin/env bash
# The Python packages the lent GPU machines lack for bench/gpu_train.sh (their image has
# torch 2.11 and sentence-transformers 6.0.1 but not `datasets`, which SparseEncoderTrainer
# needs; sentence-transformers 6.2 is the reference): wheels for their Python 3.12, fetched
# here from PyPI into .whl/ (git-ignored through .git/info/exclude), ~1.6 MB. Then:
#   device run, carry [target/release/sparq, .whl]: bench/gpu_train.sh
# which installs them into /tmp/site before it starts.
set -euo pipefail
cd "$(dirname "$0")/.."
mkdir -p .git/info .whl
grep -qx '/.whl/' .git/info/exclude 2>/dev/null || echo '/.whl/' >> .git/info/exclude
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 \
  --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 \
  --platform manylinux2014_x86_64 -d .whl \
  datasets==5.2.0 dill==0.4.1 multiprocess==0.70.19 sentence-transformers==6.2.0
ls .whl
