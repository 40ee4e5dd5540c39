#!/usr/bin/env bash
# Makes sure a RabbitMQ broker answers AMQP for the tests (`make test` runs it
# first). Order: TIMERD_TEST_MQ_URL set → trust it; something speaks AMQP on
# 127.0.0.1:5672 → done; else install Debian's rabbitmq-server (root only)
# when it is missing, start it detached and wait until it answers.
# It never lets the broker tests skip silently: when it cannot get a broker it
# exits 1 with one line saying why.
set -uo pipefail

HOST=127.0.0.1
PORT=5672
WAIT_SECONDS=${TIMERD_MQ_START_TIMEOUT:-60}
LOG=${TMPDIR:-/tmp}/timerd-ensure-rabbitmq.log

fail() {
	echo "ensure-rabbitmq: $*" >&2
	exit 1
}

# amqp_up: true when the peer answers the AMQP 0-9-1 protocol header with a
# method frame (type 1, connection.start), not merely when the port is open.
amqp_up() {
	timeout 3 bash -c '
		exec 3<>"/dev/tcp/$0/$1" || exit 1
		printf "AMQP\x00\x00\x09\x01" >&3
		b=$(head -c 1 <&3 | od -An -tx1 | tr -d " \n")
		[ "$b" = "01" ]' "$HOST" "$PORT" 2>/dev/null
}

if [ -n "${TIMERD_TEST_MQ_URL:-}" ]; then
	exit 0
fi
if amqp_up; then
	exit 0
fi

# Debian puts the server in /usr/sbin, which a non-login PATH may lack.
export PATH="$PATH:/usr/sbin:/sbin"

if ! command -v rabbitmq-server >/dev/null 2>&1; then
	[ "$(id -u)" = 0 ] || fail "no AMQP broker on $HOST:$PORT and rabbitmq-server is not installed; install it (apt-get install rabbitmq-server), run as root, or set TIMERD_TEST_MQ_URL"
	command -v apt-get >/dev/null 2>&1 || fail "no AMQP broker on $HOST:$PORT, rabbitmq-server is not installed and there is no apt-get; set TIMERD_TEST_MQ_URL"
	echo "ensure-rabbitmq: installing rabbitmq-server (log: $LOG)" >&2
	: >"$LOG"
	# Refresh the package lists only when apt does not know the package.
	if ! apt-cache show rabbitmq-server >/dev/null 2>&1; then
		apt-get update >>"$LOG" 2>&1 || fail "apt-get update failed (see $LOG)"
	fi
	DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends rabbitmq-server >>"$LOG" 2>&1 ||
		fail "apt-get install rabbitmq-server failed (see $LOG)"
	command -v rabbitmq-server >/dev/null 2>&1 || fail "rabbitmq-server is still missing after apt-get install (see $LOG)"
fi

# The package's maintainer script may have started it (invoke-rc.d, where a
# policy allows it); give such a start a moment before starting our own.
started=0
if ! amqp_up; then
	if [ "$(id -u)" != 0 ] && [ "$(id -un)" != rabbitmq ]; then
		fail "no AMQP broker on $HOST:$PORT and only root can start the installed rabbitmq-server (sudo rabbitmq-server -detached), or set TIMERD_TEST_MQ_URL"
	fi
	# -detached returns at once; a node that is already running (but not yet
	# listening) makes it fail with "already running", which is fine: we wait
	# for the port either way.
	if timeout 15 rabbitmqctl -q ping >>"$LOG" 2>&1; then
		# The Erlang node runs but the broker app is stopped (stop_app).
		timeout 30 rabbitmqctl start_app >>"$LOG" 2>&1 || true
	else
		rabbitmq-server -detached >>"$LOG" 2>&1 || true
	fi
	started=1
fi

deadline=$((SECONDS + WAIT_SECONDS))
until amqp_up; do
	if [ "$SECONDS" -ge "$deadline" ]; then
		fail "rabbitmq-server did not answer AMQP on $HOST:$PORT within ${WAIT_SECONDS}s (see $LOG and /var/log/rabbitmq/)"
	fi
	sleep 0.3
done
# The listener opens late in boot; await_startup confirms the apps are up.
if [ "$started" = 1 ] && command -v rabbitmqctl >/dev/null 2>&1; then
	timeout "$WAIT_SECONDS" rabbitmqctl await_startup >>"$LOG" 2>&1 ||
		fail "rabbitmqctl await_startup failed (see $LOG and /var/log/rabbitmq/)"
fi
echo "ensure-rabbitmq: broker ready on $HOST:$PORT" >&2
