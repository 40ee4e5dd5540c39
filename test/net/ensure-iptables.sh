#!/usr/bin/env bash
# Makes sure iptables is there for the network partition test
# (test/e2e/partition_test.go; `make test` runs this first). The test cuts a
# node off with iptables rules on loopback, which takes root: for anyone else
# this script does nothing (the test skips itself, saying why). As root, it
# installs Debian's iptables when it is missing, and exits 1 with one line
# saying why when it cannot. Whether the kernel lets iptables work (a
# container without netfilter, or without CAP_NET_ADMIN) is the test's to
# find out: it skips then, with iptables' own error.
set -uo pipefail

LOG=${TMPDIR:-/tmp}/timerd-ensure-iptables.log

fail() {
	echo "ensure-iptables: $*" >&2
	exit 1
}

# Debian puts iptables in /usr/sbin, which a non-login PATH may lack.
export PATH="$PATH:/usr/sbin:/sbin"

if [ "$(id -u)" != 0 ]; then
	echo "ensure-iptables: not root: the partition test (TestPartition) will skip" >&2
	exit 0
fi
if command -v iptables >/dev/null 2>&1; then
	exit 0
fi
command -v apt-get >/dev/null 2>&1 || fail "iptables is not installed and there is no apt-get; install iptables for the partition test"
echo "ensure-iptables: installing iptables (log: $LOG)" >&2
: >"$LOG"
# Refresh the package lists only when apt does not know the package.
if ! apt-cache show iptables >/dev/null 2>&1; then
	apt-get update >>"$LOG" 2>&1 || fail "apt-get update failed (see $LOG)"
fi
DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends iptables >>"$LOG" 2>&1 ||
	fail "apt-get install iptables failed (see $LOG)"
command -v iptables >/dev/null 2>&1 || fail "iptables is still missing after apt-get install (see $LOG)"
echo "ensure-iptables: iptables installed ($(iptables --version 2>/dev/null))" >&2
