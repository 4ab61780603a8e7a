# syntax=docker/dockerfile:1
# Build:  docker build -t proxy .
# Run:    docker run --rm -p 8899:8899 proxy            (listens on 0.0.0.0:8899 in the container)
#         docker run --rm -p 8899:8899 proxy --hostname 0.0.0.0 --num-workers 2 --log-level e

FROM rust:1-slim-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --locked \
 && strip target/release/proxy \
 && cp target/release/proxy /proxy

FROM debian:bookworm-slim
RUN useradd --system --no-create-home --home-dir /nonexistent --shell /usr/sbin/nologin proxy
COPY --from=build /proxy /usr/local/bin/proxy
USER proxy
EXPOSE 8899
ENTRYPOINT ["/usr/local/bin/proxy"]
CMD ["--hostname", "0.0.0.0"]
