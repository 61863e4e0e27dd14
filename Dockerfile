# syntax=docker/dockerfile:1
# sparq image: the binary, the libtorch it links (from the PyPI torch wheel, CUDA libraries
# included), the bundled model, the examples and the job specs. One image for coordinator,
# workers and clients (`docker run sparq:latest worker ...`); CPU and CUDA alike.
#   docker build -t sparq:latest .
# GPU hosts need the NVIDIA container toolkit and a driver for CUDA 13 (torch 2.11.0+cu130).

FROM rust:1-bookworm AS builder
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3-venv \
    && rm -rf /var/lib/apt/lists/*
# torch-sys finds libtorch through this venv's python (LIBTORCH_USE_PYTORCH) and build.rs bakes
# the path of torch/lib into the binary as its RUNPATH: the runtime stage keeps /opt/venv.
ENV VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:$PATH \
    LIBTORCH_USE_PYTORCH=1
RUN python3 -m venv /opt/venv \
    && /opt/venv/bin/pip install --no-cache-dir --disable-pip-version-check torch==2.11.0
WORKDIR /src
COPY . .
# The cache mounts keep crates and incremental artefacts between builds; target/ is a mount, so
# the binary is copied out in the same step.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked \
    && install -m 0755 target/release/sparq /usr/local/bin/sparq

FROM debian:bookworm-slim
# ca-certificates: S3 over https; curl: the healthchecks (docker-compose.yml, jobs/serve-k8s.yaml);
# openssl: the coordinator's certificate made at the first start (docker-compose.yml tls-init).
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates curl openssl \
    && rm -rf /var/lib/apt/lists/*
# The whole venv, not only torch/lib: libtorch_cuda.so loads the nvidia-* wheels' libraries
# through relative rpaths into site-packages. No python is needed at run time.
COPY --from=builder /opt/venv /opt/venv
COPY --from=builder /usr/local/bin/sparq /usr/local/bin/sparq
# /data holds the coordinator's state; a fresh named volume or PVC takes its owner from here.
RUN useradd --system --uid 10001 --home-dir /opt/sparq sparq \
    && mkdir -p /data && chown sparq:sparq /data
WORKDIR /opt/sparq
COPY models ./models
COPY examples ./examples
COPY jobs ./jobs
COPY configs ./configs
# The bundled model wherever the container's working directory is (the binary is not beside it).
ENV SPARQ_MODEL=/opt/sparq/models/splade-bert-tiny-nq
USER 10001
ENTRYPOINT ["sparq"]
CMD ["--help"]
