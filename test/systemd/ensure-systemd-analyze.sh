#!/usr/bin/env bash
# Makes sure systemd-analyze is there for the test of the systemd unit
# (test/e2e/systemd_test.go runs `systemd-analyze verify` and `security` on
# docs/deploy/systemd/timerd.service; `make test` runs this first). It needs no
# running systemd: Debian's systemd package brings the tool. As root it installs
# the package when the tool is missing; otherwise, or when that fails, it exits 1
# with one line saying why: the test fails rather than skip.
set -uo pipefail

LOG=${TMPDIR:-/tmp}/timerd-ensure-systemd-analyze.log

fail() {
	echo "ensure-systemd-analyze: $*" >&2
	exit 1
}

if command -v systemd-analyze >/dev/null 2>&1; then
	exit 0
fi
[ "$(id -u)" = 0 ] || fail "systemd-analyze is not installed and this is not root: install Debian's systemd package"
command -v apt-get >/dev/null 2>&1 || fail "systemd-analyze is not installed and there is no apt-get; install systemd"
echo "ensure-systemd-analyze: installing systemd (log: $LOG)" >&2
: >"$LOG"
# Refresh the package lists only when apt does not know the package.
if ! apt-cache show systemd >/dev/null 2>&1; then
	apt-get update >>"$LOG" 2>&1 || fail "apt-get update failed (see $LOG)"
fi
DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends systemd >>"$LOG" 2>&1 ||
	fail "apt-get install systemd failed (see $LOG)"
command -v systemd-analyze >/dev/null 2>&1 || fail "systemd-analyze is still missing after apt-get install systemd (see $LOG)"
echo "ensure-systemd-analyze: $(systemd-analyze --version | head -1)" >&2
