# syntax=docker/dockerfile:1
# sluice: one image, two binaries. The dispatcher is the entrypoint; Jobs run /usr/local/bin/runner.
# make test replays the build stage without Docker (scripts/image-check.sh), so keep its steps
# to WORKDIR, COPY and plain-shell RUN with relative paths; the check rejects anything else.

FROM rust:1.95-slim-bookworm AS build
WORKDIR /src

# Dependencies first, against stub sources, so this layer is reused until a manifest or
# Cargo.lock changes. Cargo loads every workspace member's manifest and finds every target it
# declares even when building two packages, so all members (tests and bench too) are here, and
# each declared target gets a stub: bench's binary and runner's criterion bench.
COPY Cargo.toml Cargo.lock rustfmt.toml ./
COPY contract/Cargo.toml contract/
COPY dispatcher/Cargo.toml dispatcher/
COPY runner/Cargo.toml runner/
COPY tests/Cargo.toml tests/
COPY bench/Cargo.toml bench/
RUN for crate in contract dispatcher runner tests; do mkdir -p "$crate/src" && touch "$crate/src/lib.rs"; done \
 && mkdir -p bench/src runner/benches \
 && echo 'fn main() {}' > dispatcher/src/main.rs \
 && echo 'fn main() {}' > runner/src/main.rs \
 && echo 'fn main() {}' > bench/src/main.rs \
 && touch runner/benches/kernels.rs \
 && cargo build --release --locked -p sluice-dispatcher -p sluice-runner

COPY contract contract
COPY dispatcher dispatcher
COPY runner runner
# Newer mtimes than the stub build, so cargo rebuilds the workspace crates only. Only tests/
# enables sluice-runner's test-kernels feature and it is not built here, so this runner has no
# crash/panic/sleep kernels (the check greps the binary for them).
RUN touch contract/src/lib.rs dispatcher/src/lib.rs dispatcher/src/main.rs runner/src/lib.rs runner/src/main.rs \
 && cargo build --release --locked -p sluice-dispatcher -p sluice-runner

FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /src/target/release/dispatcher /usr/local/bin/dispatcher
COPY --from=build /src/target/release/runner /usr/local/bin/runner
# distroless's nonroot user, numeric so Pod Security can verify runAsNonRoot.
USER 65532:65532
EXPOSE 9090
ENTRYPOINT ["/usr/local/bin/dispatcher"]
CMD ["serve"]
