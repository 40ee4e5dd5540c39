# timerd — build, test and benchmark targets. `make test` is what CI runs.
GO        ?= go
PKGS      ?= ./...
# -count=1: the end-to-end tests build and run the binary, which go test's cache
# does not see, so a cached pass could hide a broken build. -parallel 4: the
# end-to-end tests that mostly wait (t.Parallel: one agent, or a few nodes with no
# slot timing to keep) run four at a time, after the cluster tests, which run alone.
TESTFLAGS ?= -race -count=1 -timeout 14m -parallel 4
# golangci-lint, pinned: built once from the module proxy into a cache outside the
# checkout (about 2 minutes on 2 cores the first time, nothing after), so a fresh
# clone on the same machine, as CI's, finds it built.
GOLANGCI_LINT_VERSION ?= v2.15.0
TOOLS_DIR ?= $(or $(XDG_CACHE_HOME),$(HOME)/.cache)/timerd-tools
GOLANGCI_LINT := $(TOOLS_DIR)/golangci-lint-$(GOLANGCI_LINT_VERSION)

.PHONY: all build test e2e-race mq net prometheus systemd vet lint lint-fix bench bench-peers bench-node bench-catchup bench-intake bench-members bench-pernode bench-reconcile load soak cluster-soak sim scale clean

all: build

# The release build, which the Dockerfile runs too: a static binary (no cgo, so no
# libc; cmd/timerd embeds the time zone data), with paths trimmed and the version,
# revision and build date of github.com/prometheus/common/version set. VERSION=v1.2.3
# overrides the tag; with SOURCE_DATE_EPOCH set the date is that one and the build is
# reproducible. test/build runs this target and checks what it made.
VERSION     ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo devel)
REVISION    ?= $(shell git rev-parse HEAD 2>/dev/null || echo unknown)
BUILD_DATE  ?= $(shell date -u $(if $(SOURCE_DATE_EPOCH),-d @$(SOURCE_DATE_EPOCH)) +%Y-%m-%dT%H:%M:%SZ)
VERSION_PKG := github.com/prometheus/common/version
BUILD_FLAGS  = -trimpath -ldflags "-X $(VERSION_PKG).Version=$(VERSION) -X $(VERSION_PKG).Revision=$(REVISION) -X $(VERSION_PKG).BuildDate=$(BUILD_DATE)"
BUILD_OUT   ?= bin/timerd

build:
	@[ -n "$(BUILD_DATE)" ] || { echo "make build: no build date: SOURCE_DATE_EPOCH=$(SOURCE_DATE_EPOCH) is not seconds since 1970" >&2; exit 2; }
	CGO_ENABLED=0 $(GO) build $(BUILD_FLAGS) -o $(BUILD_OUT) ./cmd/timerd

vet:
	$(GO) vet $(PKGS)
	@unformatted=$$(gofmt -l $$(git ls-files '*.go' 2>/dev/null || find . -name '*.go')); \
	if [ -n "$$unformatted" ]; then echo "gofmt needed:"; echo "$$unformatted"; exit 1; fi

# The checks of .golangci.yml (docs/contributing.md lists them); `make lint-fix`
# applies the fixes the linters know (formatting, imports).
lint: $(GOLANGCI_LINT)
	$(GOLANGCI_LINT) run ./...

lint-fix: $(GOLANGCI_LINT)
	$(GOLANGCI_LINT) run --fix ./...

$(GOLANGCI_LINT):
	@mkdir -p $(TOOLS_DIR)
	GOBIN=$(TOOLS_DIR)/build $(GO) install github.com/golangci/golangci-lint/v2/cmd/golangci-lint@$(GOLANGCI_LINT_VERSION)
	mv $(TOOLS_DIR)/build/golangci-lint $@

# Every test, with the race detector. End-to-end tests build and start real
# timerd processes. `mq` first makes sure a RabbitMQ broker answers on
# 127.0.0.1:5672 (or TIMERD_TEST_MQ_URL is set), starting or installing one;
# `net` installs iptables for the partition test when run as root (else it skips);
# `prometheus` installs prometheus and promtool for the monitoring mixin's tests.
# The simulation (test/sim) runs apart, without the race detector: it is one
# goroutine, and under -race its 1,000 runs take minutes instead of one. It runs
# beside the other packages from the start (its output comes at the end): its
# minute of CPU falls while the packages build and the unit tests run, before the
# end-to-end tests (test/e2e, near the end of the list, after building timerd)
# start, instead of adding a minute after them.
test: vet lint mq net prometheus systemd
	@simlog=$$(mktemp); \
	$(GO) test -count=1 -timeout 10m ./test/sim >$$simlog 2>&1 & sim=$$!; \
	$(GO) test $(TESTFLAGS) $$($(GO) list $(PKGS) | grep -v '/test/sim$$'); st=$$?; \
	wait $$sim || st=1; cat $$simlog; rm -f $$simlog; exit $$st

mq:
	@bash test/mq/ensure-rabbitmq.sh

net:
	@bash test/net/ensure-iptables.sh

# promtool and prometheus (Debian's package) for docs/monitoring's checks: promtool
# check and test rules, and a real Prometheus in test/e2e.
prometheus:
	@bash test/monitoring/ensure-prometheus.sh

# systemd-analyze, for the test of docs/deploy/systemd/timerd.service.
systemd:
	@bash test/systemd/ensure-systemd-analyze.sh

# Micro-benchmarks of the engine, the store, delivery and the cluster layer (not part of `make test`).
bench:
	$(GO) test -run '^$$' -bench . -benchmem ./scheduler ./store ./ingest/... ./cluster

# timerd's engine side by side with a goroutine+Ticker per rule, robfig/cron and gocron.
bench-peers:
	$(GO) run ./test/bench/peers

# One timerd agent against a null Attune: events/s received, CPU per event, RSS and
# lateness (test/bench/node; ARGS="-rules 100000 -delay 20ms -baseline REV" and the like).
bench-node:
	$(GO) run ./test/bench/node $(ARGS)

# Paced catch-up (issue 14): 5,000 rules of 1 s with fire_all, the agent down for 2 minutes;
# on-time lateness while its 500,000-event backlog drains at TIMERD_CATCHUP_RATE
# (ARGS="-baseline main" runs the same with main's timerd beside it).
bench-catchup:
	$(GO) run ./test/bench/node -rules 5000 -every 1s -misfire fire_all -down 2m -window 5m $(ARGS)

# Rule changes at scale (issue 15): 10,000 creates through timerd api with 1, 3 and 10 agents on RabbitMQ
# (test/bench/intake; ARGS="-baseline REV -bare" and the like).
bench-intake: mq
	$(GO) run ./test/bench/intake $(ARGS)

# 100 cluster members in one process on loopback sockets (issue 15): ring convergence after a
# join, a crash and a leave, partitions moved, gossip bytes per member (ARGS="-n 50 -profile wan").
bench-members:
	$(GO) run ./test/bench/members $(ARGS)

# Real agents at 3, 5 and 10 nodes under one total load: gossip bytes/s, CPU, RSS and store per
# node (issue 15); ARGS="-baseline REV" runs that revision's timerd side by side.
bench-pernode:
	$(GO) run ./test/bench/pernode $(ARGS)

# One periodic reconcile round (issue 15, point 4): timerd api with 200,000 rules, one agent at a
# time behind a counting proxy, at 100 and at 1,000 rules a page (ARGS="-rules 1000000 -keep DIR").
bench-reconcile:
	$(GO) run ./test/bench/reconcile $(ARGS)

# 50,000 interval rules of 10 s (5,000 fires/s) through timerd dev for a minute.
load:
	$(GO) run ./test/load

# The scale run (issue 15): timerd api with 1,000,000 rules loaded in bulk, 10 agents, an 11th,
# a rolling restart and a crash (test/scale; ARGS="-rules 100000" and the like). Long: not in make test.
scale:
	$(GO) run ./test/scale $(ARGS)

# The token soak with the issue's figures: a 2-minute sensor token for 10 minutes
# (make test runs the same test with a 10 s token for 50 s).
soak: mq
	TIMERD_SOAK_TOKEN_TTL=2m TIMERD_SOAK_DURATION=10m $(GO) test -race -count=1 -timeout 20m \
		-run TestDevSensorTokenRefreshesWhileDelivering -v ./test/e2e

# The cluster end-to-end tests (make test runs them once, at the issue's sizes) three
# times over, with their figures; TIMERD_CLUSTER_RULES and the like change the sizes.
cluster-soak: mq
	$(GO) test -race -count=3 -timeout 30m -run '^TestCluster' -v ./test/e2e

# The end-to-end tests with race-built timerd processes (make test runs them with the
# binary as it ships; the race detector covers the same code in the packages' tests).
# Slower and, on two busy cores, load-bound in its timing checks.
e2e-race: mq net prometheus systemd
	TIMERD_E2E_RACE=1 $(GO) test -race -count=1 -timeout 30m -parallel 4 ./test/e2e

# The deterministic simulation of the fire-once protocol (docs/protocol.md): 1,500
# seeds of each of its 10 scenarios, 15,000 runs (make test runs 100 of each). A failing
# seed prints the command that replays it.
sim:
	$(GO) test -count=1 -timeout 60m -run 'TestSim' ./test/sim -sim.seeds 1500 -v

clean:
	rm -rf bin
