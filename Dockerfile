# timerd's image: `make build` in a Go stage, then the static binary alone in a
# distroless stage, run as a non-root user. docs/deploy/image.md tells how to
# build and run it:
#
#   docker build -t timerd \
#     --build-arg VERSION=$(git describe --tags --always --dirty) \
#     --build-arg REVISION=$(git rev-parse HEAD) \
#     --build-arg SOURCE_DATE_EPOCH=$(git log -1 --format=%ct) .

FROM golang:1.26 AS build
WORKDIR /src
# The modules first: a change to the code reuses this layer.
COPY go.mod go.sum ./
RUN go mod download
COPY . .
# .dockerignore leaves .git out of the context, so the version and revision
# come as build arguments; SOURCE_DATE_EPOCH, when given, fixes the build date.
ARG VERSION=devel
ARG REVISION=unknown
ARG SOURCE_DATE_EPOCH
RUN make build VERSION="$VERSION" REVISION="$REVISION" \
 && mkdir -p -m 0700 /out/var/lib/timerd

FROM gcr.io/distroless/static-debian12:nonroot
COPY --from=build /src/bin/timerd /timerd
# The data directory belongs to the user timerd runs as (distroless's
# nonroot), mode 0700 as timerd wants it; a new volume mounted there starts
# with that owner and mode.
COPY --from=build --chown=65532:65532 --chmod=0700 /out/var/lib/timerd /var/lib/timerd
ENV TIMERD_DATA_DIR=/var/lib/timerd
VOLUME ["/var/lib/timerd"]
# The node's HTTP (metrics, health, status) and the cluster's gossip.
EXPOSE 8470/tcp 7946/tcp 7946/udp
USER 65532:65532
ENTRYPOINT ["/timerd"]
CMD ["agent"]
