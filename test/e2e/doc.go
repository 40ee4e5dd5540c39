// Package e2e holds end-to-end tests that build the timerd binary and run it
// as real processes: started, killed with SIGKILL, restarted on the same data.
package e2e
