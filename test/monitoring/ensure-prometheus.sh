#!/usr/bin/env bash
# Makes sure `prometheus` and `promtool` are installed for the tests of the
# monitoring mixin (test/monitoring, cmd/timerd/node, test/e2e's
# TestMonitoringNodeDownAlert; `make test` runs this first, as `make prometheus`).
# Both are missing → install Debian's prometheus package (root only) and stop the
# service its maintainer script may have started on :9090: the tests run their own
# Prometheus on a port of their own and want nothing else listening. It never lets
# those tests skip: when it cannot install them it exits 1 with one line saying why.
set -uo pipefail

LOG=${TMPDIR:-/tmp}/timerd-ensure-prometheus.log

fail() {
	echo "ensure-prometheus: $*" >&2
	exit 1
}

if command -v prometheus >/dev/null 2>&1 && command -v promtool >/dev/null 2>&1; then
	exit 0
fi
[ "$(id -u)" = 0 ] || fail "prometheus or promtool is not installed; install Debian's prometheus package (apt-get install prometheus) or run as root"
command -v apt-get >/dev/null 2>&1 || fail "prometheus or promtool is not installed and there is no apt-get; install Prometheus 2.x so that both are on PATH"

echo "ensure-prometheus: installing prometheus (log: $LOG)" >&2
: >"$LOG"
# Refresh the package lists only when apt does not know the package.
if ! apt-cache show prometheus >/dev/null 2>&1; then
	apt-get update >>"$LOG" 2>&1 || fail "apt-get update failed (see $LOG)"
fi
# --no-install-recommends: not prometheus-node-exporter, another service.
DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends prometheus >>"$LOG" 2>&1 ||
	fail "apt-get install prometheus failed (see $LOG)"
command -v prometheus >/dev/null 2>&1 && command -v promtool >/dev/null 2>&1 ||
	fail "prometheus or promtool is still missing after apt-get install (see $LOG)"

# Where the init system let the package start its service (no policy-rc.d
# forbidding it), stop it and keep it from starting at boot: it would scrape
# itself on :9090 for nothing. Through the service manager only, never by name.
if command -v systemctl >/dev/null 2>&1 && [ -d /run/systemd/system ]; then
	systemctl disable --now prometheus.service >>"$LOG" 2>&1 || true
elif [ -x /etc/init.d/prometheus ]; then
	/etc/init.d/prometheus stop >>"$LOG" 2>&1 || true
	update-rc.d prometheus disable >>"$LOG" 2>&1 || true
fi
echo "ensure-prometheus: installed $(prometheus --version 2>&1 | head -n 1)" >&2
