# Multi-stage build of the EXAI Queue binaries: exai-daemon, exai-worker, exai-call and exai-sim.
# The runtime image runs as an unprivileged user and holds only the binaries and CA certificates.
# It carries no provider setting: docker-compose.yml passes .env and, per profile, the providers.
#
# Kept minimal on purpose: the image is not built in CI or by the tests (the base images cannot
# be pulled on the build machines); tests/tests/compose.rs checks this file's shape and
# `docker-compose config` checks docker-compose.yml.

FROM rust:1.95-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --locked -p exai-daemon -p exai-worker -p exai-tests \
      --bin exai-daemon --bin exai-call --bin exai-worker --bin exai-sim \
 && mkdir -p /out \
 && cp target/release/exai-daemon target/release/exai-call target/release/exai-worker \
       target/release/exai-sim /out/

FROM debian:bookworm-slim AS runtime
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates \
 && rm -rf /var/lib/apt/lists/* \
 && groupadd --system --gid 10001 exai \
 && useradd --system --uid 10001 --gid exai --home-dir /var/lib/exai --create-home exai \
 && mkdir -p /var/lib/exai/staging /var/lib/exai/uploads \
 && chown -R exai:exai /var/lib/exai
COPY --from=build /out/ /usr/local/bin/
USER exai:exai
WORKDIR /var/lib/exai
ENV EXAI_STAGING_DIR=/var/lib/exai/staging \
    EXAI_UPLOAD_ROOTS=/var/lib/exai/uploads \
    EXAI_LOG_FORMAT=json
EXPOSE 8079
CMD ["exai-daemon"]
