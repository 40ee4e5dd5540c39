package main

import (
	"context"
	"syscall"
	"testing"
	"time"
)

// The first signal cancels the context (a graceful shutdown); a second one
// exits at once with 128 + its number; after stop, none does anything.
func TestShutdownContextSecondSignalExits(t *testing.T) {
	exited := make(chan int, 1)
	ctx, stop := shutdownContext(context.Background(), func(code int) { exited <- code }, syscall.SIGUSR2)
	defer stop()

	if err := syscall.Kill(syscall.Getpid(), syscall.SIGUSR2); err != nil {
		t.Fatal(err)
	}
	select {
	case <-ctx.Done():
	case <-time.After(5 * time.Second):
		t.Fatal("the first SIGUSR2 did not cancel the context within 5s")
	}
	select {
	case code := <-exited:
		t.Fatalf("the first signal exited with %d: it should only start the shutdown", code)
	case <-time.After(100 * time.Millisecond):
	}

	if err := syscall.Kill(syscall.Getpid(), syscall.SIGUSR2); err != nil {
		t.Fatal(err)
	}
	select {
	case code := <-exited:
		if want := 128 + int(syscall.SIGUSR2); code != want {
			t.Errorf("the second signal exited with %d, want %d", code, want)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("the second SIGUSR2 did not exit within 5s")
	}
}

// stop before any signal ends the watch: the context is cancelled, nothing exits.
func TestShutdownContextStop(t *testing.T) {
	exited := make(chan int, 1)
	ctx, stop := shutdownContext(context.Background(), func(code int) { exited <- code }, syscall.SIGUSR2)
	stop()
	if ctx.Err() == nil {
		t.Error("stop left the context running")
	}
	select {
	case code := <-exited:
		t.Errorf("stop exited with %d", code)
	case <-time.After(50 * time.Millisecond):
	}
}
