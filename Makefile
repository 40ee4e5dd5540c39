# timerd — build, test and benchmark targets. `make test` is what CI runs.
GO        ?= go
PKGS      ?= ./...
TESTFLAGS ?= -race -timeout 14m

.PHONY: all build test vet bench bench-peers load fuzz clean

all: build

build:
	$(GO) build -o bin/timerd ./cmd/timerd

vet:
	$(GO) vet $(PKGS)
	@unformatted=$$(gofmt -l $$(git ls-files '*.go' 2>/dev/null || find . -name '*.go')); \
	if [ -n "$$unformatted" ]; then echo "gofmt needed:"; echo "$$unformatted"; exit 1; fi

# Every test, with the race detector. End-to-end tests build and start real
# timerd processes.
test: vet
	$(GO) test $(TESTFLAGS) $(PKGS)

# Micro-benchmarks of the engine, the store and delivery (not part of `make test`).
bench:
	$(GO) test -run '^$$' -bench . -benchmem ./scheduler ./store ./ingest/...

# timerd's engine side by side with a goroutine+Ticker per rule, robfig/cron and gocron.
bench-peers:
	$(GO) run ./test/bench/peers

# 50,000 interval rules of 10 s (5,000 fires/s) through timerd dev for a minute.
load:
	$(GO) run ./test/load

clean:
	rm -rf bin
