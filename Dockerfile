# corral: the process manager (and operator) image.
#
#   docker build -t corral .
#   docker run --rm -p 8000:8000 -p 9000:9000 corral        # built-in worker
#
# Apps copy the binary into their own image and make it the entrypoint:
#   COPY --from=corral /usr/local/bin/corral /usr/local/bin/corral
#   ENTRYPOINT ["corral", "run", "--", "uvicorn", "--fd", "{fd}", "mysite.asgi:application"]

FROM rust:1.95-bookworm AS build
WORKDIR /src
# Dependencies first, so source edits do not rebuild them; vendor/ holds
# the patched h2 that Cargo.toml's [patch.crates-io] builds.
COPY Cargo.toml Cargo.lock ./
COPY vendor ./vendor
RUN mkdir src && echo 'fn main() {}' > src/main.rs && touch src/lib.rs \
    && cargo build --release --locked \
    && rm -rf src
COPY src ./src
RUN touch src/main.rs src/lib.rs \
    && cargo build --release --locked \
    && cp target/release/corral /corral

# glibc, CA certificates, a nonroot user, no shell: all corral needs.
FROM gcr.io/distroless/cc-debian12:nonroot AS runtime
COPY --from=build /corral /usr/local/bin/corral
USER 65532:65532
# Workers' listener, the manager's admin API, the operator's metrics.
EXPOSE 8000 9000 8080
ENTRYPOINT ["corral"]
CMD ["run"]
