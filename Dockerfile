# The gateway as a container image: a release build in a Rust image, copied
# into a slim runtime that runs it as a non-root user.
#
#   docker build -t gateway .
#   docker run --rm -p 8080:8080 gateway            # the baked-in demo config
#   docker run --rm -p 8443:8443 \
#     -v "$PWD/gateway.toml:/etc/gateway/gateway.toml:ro" \
#     -v "$PWD/certs:/etc/gateway/certs:ro" gateway  # your own config and certs
#
# Both base images are build arguments, e.g.
#   docker build --build-arg BASE_IMAGE=gcr.io/distroless/cc-debian12 .
# (a distroless base has no useradd: see the USER line below).
ARG RUST_IMAGE=rust:1-bookworm
ARG BASE_IMAGE=debian:bookworm-slim

# ---------------------------------------------------------------- build
FROM ${RUST_IMAGE} AS build
WORKDIR /src

# Dependencies first, against stub sources: this layer is rebuilt only when
# Cargo.toml or Cargo.lock change, not on every edit of src/.
COPY Cargo.toml Cargo.lock ./
RUN mkdir src \
 && echo 'fn main() {}' > src/main.rs \
 && touch src/lib.rs \
 && cargo build --release --locked \
 && rm -rf src

# The real sources. touch: make sure cargo sees them as newer than the stubs.
COPY src ./src
RUN touch src/main.rs src/lib.rs \
 && cargo build --release --locked --bin gateway \
 && strip target/release/gateway \
 && target/release/gateway --version

# The default config: the repository's example, listening on all interfaces
# and serving the demo site from /srv/static. Fails the build if the
# example's lines change and the substitutions stop matching.
COPY gateway.toml.example ./
RUN sed -e 's|^listen = "127.0.0.1:8080"|listen = "0.0.0.0:8080"|' \
        -e 's|^static = "static"|static = "/srv/static"|' \
        gateway.toml.example > gateway.toml \
 && grep -q '^listen = "0.0.0.0:8080"$' gateway.toml \
 && grep -q '^static = "/srv/static"$' gateway.toml

# ---------------------------------------------------------------- runtime
FROM ${BASE_IMAGE}

# A fixed uid/gid so mounted certificates can be made readable to it
# (chown 10001 or chmod o+r on the host).
# ca-certificates: [tls.acme] reaches the CA's directory (Let's Encrypt)
# with the system roots. /var/lib/gateway: a place for its cache (mount a
# volume there), writable by the gateway's user.
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates \
 && rm -rf /var/lib/apt/lists/* \
 && groupadd --system --gid 10001 gateway \
 && useradd --system --uid 10001 --gid gateway --no-create-home \
      --home-dir /nonexistent --shell /usr/sbin/nologin gateway \
 && install -d -o 10001 -g 10001 -m 0700 /var/lib/gateway

COPY --from=build /src/target/release/gateway /usr/local/bin/gateway
COPY static /srv/static
COPY --from=build /src/gateway.toml /etc/gateway/gateway.toml

# serve, check and healthcheck all read the config from here; relative paths
# in it (certs/..., static dirs) resolve against /etc/gateway.
ENV GATEWAY_CONFIG=/etc/gateway/gateway.toml

# The baked-in config must load, or the image is not built.
RUN ["gateway", "check"]

USER 10001:10001
# 8080: plain HTTP (the default config); 8443: TLS, when a mounted config
# has a [tls] section.
EXPOSE 8080 8443

# SIGTERM: stop accepting, finish requests in flight within shutdown_grace,
# exit 0. The gateway handles it itself, also as PID 1.
STOPSIGNAL SIGTERM

# No curl in the image: the binary probes its own health endpoint, finding
# the listener and path in $GATEWAY_CONFIG.
HEALTHCHECK --interval=30s --timeout=5s --start-period=5s --retries=3 \
  CMD ["gateway", "healthcheck"]

ENTRYPOINT ["gateway"]
CMD ["serve"]
