package node

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/timerd/timerd/auth"
	"github.com/timerd/timerd/scheduler"
)

// backupIdle is how long a backup client may stop reading before the node
// cuts it off: the snapshot's read transaction is open while it streams,
// and a commit that must grow the store's mapping waits for it.
const backupIdle = 30 * time.Second

// backupHandler serves GET /v1/backup: the node's store as a consistent
// snapshot (bbolt's Tx.WriteTo in one read transaction) while the node runs,
// with its Content-Length, so the client can tell a whole copy from a cut
// one. One backup at a time; another gets 429. `timerd store backup --addr`
// is its client.
func (n *Node) backupHandler() http.HandlerFunc {
	busy := make(chan struct{}, 1)
	return func(w http.ResponseWriter, r *http.Request) {
		select {
		case busy <- struct{}{}:
			defer func() { <-busy }()
		default:
			w.Header().Set("Retry-After", "10")
			http.Error(w, "a backup of this node is already under way", http.StatusTooManyRequests)
			return
		}
		h := w.Header()
		h.Set("Content-Type", "application/octet-stream")
		h.Set("Cache-Control", "no-store")
		if r.Method == http.MethodHead {
			return
		}
		start := time.Now()
		dw := &deadlineWriter{w: w, rc: http.NewResponseController(w)}
		written, err := n.store.WriteBackup(dw, func(size int64) {
			h.Set("Content-Length", strconv.FormatInt(size, 10))
			h.Set("Content-Disposition", `attachment; filename="node.db"`)
		})
		if err != nil {
			n.log.Error("backup failed", "bytes", written, "err", err, "remote", r.RemoteAddr)
			if written == 0 {
				h.Del("Content-Length")
				h.Del("Content-Disposition")
				http.Error(w, "backup failed: "+err.Error(), http.StatusInternalServerError)
				return
			}
			// The status is sent: cut the connection so the client sees a
			// short body, not a whole one.
			panic(http.ErrAbortHandler)
		}
		n.log.Info("backup served", "bytes", written, "took", time.Since(start).Round(time.Millisecond).String(), "remote", r.RemoteAddr)
	}
}

// deadlineWriter moves the connection's write deadline backupIdle ahead of
// each write: the server's WriteTimeout (30 s for the whole response) would
// cut a large backup, and no deadline at all would let a stalled client hold
// the read transaction for ever.
type deadlineWriter struct {
	w  io.Writer
	rc *http.ResponseController
}

func (d *deadlineWriter) Write(p []byte) (int, error) {
	_ = d.rc.SetWriteDeadline(time.Now().Add(backupIdle)) // not every writer has one (tests' recorders)
	return d.w.Write(p)
}

// Backup reads GET /v1/backup and hands its body, the node's store as a
// consistent snapshot, to save with its length (the Content-Length; save
// must check that it read that many bytes: a node stopping or cutting off
// a slow reader ends the body early). An answer other than 200 is a
// *StatusError; one without a length is refused, as a cut copy could not
// be told from a whole one. Unlike the other calls the body is not read
// into memory: a store may be gigabytes.
func (c *Client) Backup(ctx context.Context, save func(body io.Reader, size int64) error) error {
	u := c.base + "/v1/backup"
	resp, err := c.send(ctx, http.MethodGet, u, nil)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	switch {
	case auth.IsRedirect(resp):
		return fmt.Errorf("GET %s: %s", u, auth.RedirectNote(resp))
	case resp.StatusCode != http.StatusOK:
		msg, _ := io.ReadAll(io.LimitReader(resp.Body, 1024))
		return &StatusError{Method: http.MethodGet, URL: u, Code: resp.StatusCode,
			Message: scheduler.Truncate(strings.TrimSpace(string(msg)), 200)}
	case resp.ContentLength <= 0:
		return fmt.Errorf("GET %s: no Content-Length: cannot tell a whole store from a cut one (is this a timerd node?)", u)
	}
	if err := save(resp.Body, resp.ContentLength); err != nil {
		return fmt.Errorf("GET %s: %w", u, err)
	}
	return nil
}
