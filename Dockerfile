# syntax=docker/dockerfile:1
# Multi-stage build of chat-relay: a cached dependency layer, a release build,
# and a small distroless runtime running as a non-root user, with no shell.

FROM rust:1.95-bookworm AS build
WORKDIR /src
# Dependencies first, against placeholder sources: this layer is reused until
# Cargo.toml or Cargo.lock change.
COPY Cargo.toml Cargo.lock ./
RUN mkdir src && echo 'fn main() {}' > src/main.rs && touch src/lib.rs \
    && cargo build --release --locked \
    && rm -rf src target/release/deps/chat_relay* target/release/chat-relay*
# The real sources (sql/ is embedded into the binary at compile time).
COPY src ./src
COPY sql ./sql
RUN cargo build --release --locked --bin chat-relay \
    && strip target/release/chat-relay

FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /src/target/release/chat-relay /usr/local/bin/chat-relay
# distroless nonroot: uid and gid 65532 (numeric, so runAsNonRoot can verify it)
USER 65532:65532
EXPOSE 4000
ENV CHAT_RELAY_LISTEN=0.0.0.0:4000 \
    CHAT_RELAY_LOG_FORMAT=json
ENTRYPOINT ["/usr/local/bin/chat-relay"]
CMD ["serve"]
