# syntax=docker/dockerfile:1
#
# rabbitwatch container image.
#
#   docker build -t rabbitwatch .
#   docker run --rm -v "$PWD/rabbitwatch.yaml:/etc/rabbitwatch/rabbitwatch.yaml:ro" -p 9488:9488 rabbitwatch
#
# The daemon reads $RABBITWATCH_CONFIG (/etc/rabbitwatch/rabbitwatch.yaml) and keeps its state in
# /var/lib/rabbitwatch (mount a volume there). See deploy/docker-compose.yml for a complete stack.

############################ build ############################
FROM rust:1-bookworm AS builder
WORKDIR /src
COPY . .
# The cache mounts keep the cargo registry and the target directory between builds (BuildKit);
# the binary is copied out of the cached target directory so the next stage can see it.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/usr/local/cargo/git \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked \
 && install -D -m 0755 target/release/rabbitwatch /out/rabbitwatch

############################ runtime ############################
FROM debian:bookworm-slim

RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates \
 && rm -rf /var/lib/apt/lists/* \
 && groupadd --gid 10001 rabbitwatch \
 && useradd --uid 10001 --gid 10001 --no-create-home --home-dir /var/lib/rabbitwatch \
        --shell /usr/sbin/nologin rabbitwatch \
 && install -d -o rabbitwatch -g rabbitwatch -m 0750 /var/lib/rabbitwatch \
 && install -d -m 0755 /etc/rabbitwatch

COPY --from=builder /out/rabbitwatch /usr/local/bin/rabbitwatch

ENV RABBITWATCH_CONFIG=/etc/rabbitwatch/rabbitwatch.yaml
WORKDIR /var/lib/rabbitwatch
USER 10001:10001
EXPOSE 9488

HEALTHCHECK --interval=30s --timeout=5s --start-period=30s --retries=3 \
    CMD ["rabbitwatch", "healthcheck", "--url", "http://127.0.0.1:9488/healthz"]

ENTRYPOINT ["rabbitwatch"]
CMD ["run"]
