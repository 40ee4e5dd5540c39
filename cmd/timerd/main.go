// Command timerd is a horizontally sharded timer service for Attune's timer
// triggers. See the README and docs/ for its subcommands.
package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"syscall"

	// Slots must not depend on the host having a zone database.
	_ "time/tzdata"
)

func main() {
	// Ctrl-C or SIGTERM shuts down gracefully; a second one exits at once.
	ctx, stop := shutdownContext(context.Background(), os.Exit, os.Interrupt, syscall.SIGTERM)
	defer stop()
	err := newRootCmd().ExecuteContext(ctx)
	if err != nil && !errors.As(err, new(silentError)) {
		fmt.Fprintln(os.Stderr, "timerd:", err)
	}
	os.Exit(exitCode(err))
}

// usageError is a bad flag, argument or setting: exit status 2.
type usageError struct{ err error }

func (e usageError) Error() string { return e.err.Error() }
func (e usageError) Unwrap() error { return e.err }

func usagef(format string, args ...any) error { return usageError{fmt.Errorf(format, args...)} }

// silentError ends a command with an exit status and nothing more said: its
// output said it all (`schedule next --lint` that found something).
type silentError struct{ code int }

func (e silentError) Error() string { return fmt.Sprintf("exit status %d", e.code) }

// exitCode is 0 without an error, 2 for a usage error, a silentError's own, else 1.
func exitCode(err error) int {
	if err == nil {
		return 0
	}
	var ue usageError
	if errors.As(err, &ue) {
		return 2
	}
	var se silentError
	if errors.As(err, &se) {
		return se.code
	}
	return 1
}
