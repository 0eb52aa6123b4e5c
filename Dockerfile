# syntax=docker/dockerfile:1
# One image for the operator and the workers it starts: both binaries in /usr/local/bin.
#   docker build -t ghcr.io/taxipipeline/taxi:0.1.0 .
# The entrypoint is the operator; the worker StatefulSets the operator builds name
# /usr/local/bin/taxi-worker as their command (operator/src/resources.rs WORKER_BINARY).

FROM rust:1.95-bookworm AS builder
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
# Every workspace member, the test kit and the reference generator too: cargo reads all their
# manifests even to build two crates.
COPY core core
COPY io io
COPY testkit testkit
COPY operator operator
COPY worker worker
COPY docgen docgen
# The registry and target dir are BuildKit caches, so a rebuild recompiles only what changed; the
# binaries are copied out of the cache mount, which is not part of the layer. --strip-debug drops
# the line tables (about 120 MB to 32 MB per binary) and keeps the symbols backtraces print.
RUN --mount=type=cache,target=/usr/local/cargo/registry,sharing=locked \
    --mount=type=cache,target=/usr/local/cargo/git,sharing=locked \
    --mount=type=cache,target=/src/target,sharing=locked \
    cargo build --release --locked -p taxi-operator -p taxi-worker \
    && mkdir -p /out \
    && cp target/release/taxi-operator target/release/taxi-worker /out/ \
    && strip --strip-debug /out/taxi-operator /out/taxi-worker

# glibc, libm and libgcc_s are all the binaries link (ldd); distroless cc has them (Debian 12,
# glibc 2.36, the builder's), and no shell or package manager.
FROM gcr.io/distroless/cc-debian12:nonroot
ARG VERSION=0.1.0
LABEL org.opencontainers.image.title="taxi" \
      org.opencontainers.image.description="TaxiPipeline: the taxi-operator and taxi-worker binaries" \
      org.opencontainers.image.source="https://github.com/taxipipeline/taxipipeline" \
      org.opencontainers.image.url="https://github.com/taxipipeline/taxipipeline" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.version="${VERSION}"
COPY --from=builder /out/taxi-operator /out/taxi-worker /usr/local/bin/
USER 65532:65532
# /healthz, /readyz, /metrics and /status of either binary.
EXPOSE 8080
ENTRYPOINT ["/usr/local/bin/taxi-operator"]
CMD ["run"]
