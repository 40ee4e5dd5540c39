package node

import (
	"errors"
	"net"
)

// closers releases what New took, last taken first: New pushes each part as it
// opens it, and runs the stack if a later part fails; otherwise Close (or the
// end of Run) does.
type closers []func() error

func (c *closers) push(close func() error) { *c = append(*c, close) }

// close runs the stack in reverse and joins the errors. It empties it: a
// second call releases nothing twice.
func (c *closers) close() error {
	var errs []error
	for i := len(*c) - 1; i >= 0; i-- {
		errs = append(errs, (*c)[i]())
	}
	*c = nil
	return errors.Join(errs...)
}

// closeListener closes ln, which the HTTP server's Shutdown may have closed
// already.
func closeListener(ln net.Listener) func() error {
	return func() error {
		if err := ln.Close(); err != nil && !errors.Is(err, net.ErrClosed) {
			return err
		}
		return nil
	}
}

// ErrClosed is Run's error on a node already closed (or run).
var ErrClosed = errors.New("node: closed")

// Close releases what New took (the HTTP port, the gossip port and the store)
// when Run was never called; Run releases them itself when it returns. Close
// is idempotent and safe after Run has returned, but not while Run runs:
// stop Run by cancelling its context. A node cannot run after Close.
func (n *Node) Close() error {
	n.closeOnce.Do(func() {
		n.closed.Store(true)
		n.closeErr = n.closers.close()
	})
	return n.closeErr
}
