package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/timerd/timerd/auth"
	"github.com/timerd/timerd/cmd/timerd/node"
	"github.com/timerd/timerd/scheduler"
	"github.com/timerd/timerd/store"
)

// nodeStoreFile is the node's store in its data dir (node.New opens it there).
const nodeStoreFile = "node.db"

func newStoreCmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "store",
		Short: "Back up or compact a node's store (node.db)",
		Long: `store backs up a node's bbolt store, of a stopped node (--data-dir) or of a
running one through its HTTP port (--addr), and compacts the store of a
stopped node. Procedures: docs/operations.md, "Backup, restore and compaction".`,
		Args: cobra.NoArgs,
	}
	cmd.AddCommand(newStoreBackupCmd(), newStoreCompactCmd())
	return cmd
}

// storeLockWait is how long the offline commands wait for the store's lock
// before saying a node holds it.
const storeLockWait = time.Second

// offlineStorePath is DIR/node.db of --data-dir.
func offlineStorePath(dataDir string) (string, error) {
	if dataDir == "" {
		return "", usagef("--data-dir: required: the data directory of a stopped node (its TIMERD_DATA_DIR)")
	}
	path := filepath.Join(dataDir, nodeStoreFile)
	if _, err := os.Stat(path); err != nil {
		if errors.Is(err, os.ErrNotExist) {
			return "", usagef("--data-dir %s: no %s there: not the data directory of a node", dataDir, nodeStoreFile)
		}
		return "", usagef("--data-dir: %w", err)
	}
	return path, nil
}

// explainLocked adds what to do when a running node holds the store.
func explainLocked(err error) error {
	if errors.Is(err, store.ErrLocked) {
		return fmt.Errorf("%w: is a node running on this data dir? Stop it first, or back up a running node with --addr", err)
	}
	return err
}

func newStoreBackupCmd() *cobra.Command {
	var (
		dataDir, addr, out, tokenFile string
		timeout                       time.Duration
	)
	cmd := &cobra.Command{
		Use:   "backup (--data-dir DIR | --addr HOST:PORT) --out FILE",
		Short: "Copy a node's store to a file: of a stopped node, or of a running one over HTTP",
		Long: `backup writes a consistent copy of a node's store to --out, which must not
exist yet. With --data-dir, the node must be stopped (the store is opened
read-only; a running node's lock is refused). With --addr, a running node
streams a snapshot from GET /v1/backup (behind its TIMERD_HTTP_TOKEN_FILE
token). Either way the copy is written beside --out, checked (every page
read, bbolt's consistency check) and only then given its name.

To restore: stop the node, replace DIR/node.db with the copy, start it.`,
		Example: `  timerd store backup --data-dir /var/lib/timerd --out /backup/node-$(date +%F).db
  timerd store backup --addr 10.0.0.5:8470 --token-file /etc/timerd/http.token --out node.db.backup`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if out == "" {
				return usagef("--out: required: the file to write the backup to")
			}
			if (dataDir == "") == (addr == "") {
				return usagef("give one of --data-dir (a stopped node) and --addr (a running node)")
			}
			w := cmd.OutOrStdout()
			if addr != "" {
				return backupOnline(cmd.Context(), w, addr, tokenFile, out, timeout)
			}
			path, err := offlineStorePath(dataDir)
			if err != nil {
				return err
			}
			fi, err := os.Stat(path)
			if err != nil {
				return err
			}
			sum, err := store.Backup(path, out, store.MaintenanceOptions{Timeout: storeLockWait})
			if err != nil {
				return explainLocked(err)
			}
			_, err = fmt.Fprintf(w, "backed up %s (%s) to %s (%s): %s\n", path, humanSize(fi.Size()), out, humanSize(sum.Bytes), sum)
			return err
		},
	}
	cmd.Flags().StringVar(&dataDir, "data-dir", "", "data directory of a stopped node (holds node.db)")
	cmd.Flags().StringVar(&addr, "addr", "", "HTTP address of a running node (its TIMERD_HTTP_ADDR), host:port or an http(s) URL")
	cmd.Flags().StringVar(&out, "out", "", "file to write the backup to; must not exist")
	cmd.Flags().StringVar(&tokenFile, "token-file", os.Getenv("TIMERD_HTTP_TOKEN_FILE"), "with --addr: file of the bearer token the node's TIMERD_HTTP_TOKEN_FILE names (env TIMERD_HTTP_TOKEN_FILE)")
	cmd.Flags().DurationVar(&timeout, "timeout", 30*time.Minute, "with --addr: give up after this long")
	return cmd
}

func newStoreCompactCmd() *cobra.Command {
	var (
		dataDir, out string
		keepBackup   bool
	)
	cmd := &cobra.Command{
		Use:   "compact --data-dir DIR [--out FILE] [--keep-backup]",
		Short: "Rewrite a stopped node's store without its free pages",
		Long: `compact rewrites DIR/node.db of a stopped node with full pages and no free
ones (bbolt's compaction): a store that held many more rules, or a long outage's
outbox, shrinks to what it holds now. The compacted copy is written beside the
store, checked, and renamed over it (the directory synced): a crash leaves the
old file or the new one. --keep-backup keeps the original as node.db.bak;
--out writes the copy there instead and leaves node.db alone. The store is
held under its lock throughout, so a node started meanwhile fails to open it
rather than write to the file being replaced.`,
		Example: `  timerd store compact --data-dir /var/lib/timerd --keep-backup`,
		Args:    cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			path, err := offlineStorePath(dataDir)
			if err != nil {
				return err
			}
			if keepBackup && out != "" {
				return usagef("--keep-backup: only without --out (node.db is left alone with --out)")
			}
			res, err := store.Compact(path, out, keepBackup, store.MaintenanceOptions{Timeout: storeLockWait})
			if err != nil {
				return explainLocked(err)
			}
			w := cmd.OutOrStdout()
			saved := ""
			if res.Before > 0 {
				saved = fmt.Sprintf(", %.0f%% smaller", 100*float64(res.Before-res.After)/float64(res.Before))
			}
			if _, err := fmt.Fprintf(w, "compacted %s: %s → %s%s; %s is %s\n", path, humanSize(res.Before), humanSize(res.After), saved, res.Out, res.Summary); err != nil {
				return err
			}
			if res.Backup != "" {
				_, err = fmt.Fprintf(w, "the original is kept as %s\n", res.Backup)
			}
			return err
		},
	}
	cmd.Flags().StringVar(&dataDir, "data-dir", "", "data directory of a stopped node (holds node.db)")
	cmd.Flags().StringVar(&out, "out", "", "write the compacted store to this file (must not exist) and leave node.db as it is")
	cmd.Flags().BoolVar(&keepBackup, "keep-backup", false, "keep the original store as node.db.bak (replacing an older one)")
	return cmd
}

// backupOnline saves GET /v1/backup of the node at addr to out.
func backupOnline(ctx context.Context, w io.Writer, addr, tokenFile, out string, timeout time.Duration) error {
	if timeout <= 0 {
		return usagef("--timeout: %s is not positive", timeout)
	}
	u, err := backupURL(addr)
	if err != nil {
		return usagef("--addr: %w", err)
	}
	var tok string
	if tokenFile != "" {
		if tok, err = node.ReadHTTPToken(tokenFile); err != nil {
			return usagef("--token-file: %w", err)
		}
	}
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u, nil)
	if err != nil {
		return usagef("--addr: %w", err)
	}
	if tok != "" {
		req.Header.Set("Authorization", "Bearer "+tok)
	}
	start := time.Now()
	resp, err := backupClient.Do(req)
	if err != nil {
		return fmt.Errorf("GET %s: %w", u, unwrapURLError(err))
	}
	defer resp.Body.Close()
	switch {
	case auth.IsRedirect(resp):
		return fmt.Errorf("GET %s: %s", u, auth.RedirectNote(resp))
	case resp.StatusCode != http.StatusOK:
		msg, _ := io.ReadAll(io.LimitReader(resp.Body, 1024))
		return fmt.Errorf("GET %s: status %d: %s", u, resp.StatusCode, scheduler.Truncate(strings.TrimSpace(string(msg)), 200))
	case resp.ContentLength <= 0:
		return fmt.Errorf("GET %s: no Content-Length: cannot tell a whole store from a cut one (is this a timerd node?)", u)
	}
	sum, err := store.SaveBackup(resp.Body, resp.ContentLength, out)
	if err != nil {
		return fmt.Errorf("GET %s: %w", u, err)
	}
	_, err = fmt.Fprintf(w, "backed up the store of %s to %s in %s: %s\n", u, out, time.Since(start).Round(time.Millisecond), sum)
	return err
}

// backupClient never follows a redirect (it would take the token along);
// the request's context bounds it.
var backupClient = auth.NoRedirects(nil)

// backupURL is the URL of GET /v1/backup of the node at addr: host:port, or
// an http(s) URL with an optional path prefix. It says what is wrong with
// addr without echoing a password it might hold.
func backupURL(addr string) (string, error) {
	a := strings.TrimRight(strings.TrimSpace(addr), "/")
	if a == "" {
		return "", errors.New("is empty, want host:port")
	}
	if !strings.Contains(a, "://") {
		a = "http://" + a
	}
	u, err := url.Parse(a)
	switch {
	case err != nil, u.Host == "", u.Scheme != "http" && u.Scheme != "https":
		return "", errors.New("is not host:port or an http(s) URL")
	case u.User != nil, u.RawQuery != "", u.Fragment != "":
		return "", errors.New("holds a user, query or fragment; give host:port or an http(s) URL (the token goes in --token-file)")
	}
	return u.String() + "/v1/backup", nil
}

// unwrapURLError drops the *url.Error wrapper, whose text repeats the URL.
func unwrapURLError(err error) error {
	var ue *url.Error
	if errors.As(err, &ue) {
		return ue.Err
	}
	return err
}

// humanSize is n bytes in B, KiB, MiB or GiB.
func humanSize(n int64) string {
	const unit = 1024
	switch {
	case n < unit:
		return fmt.Sprintf("%d B", n)
	case n < unit*unit:
		return fmt.Sprintf("%.1f KiB", float64(n)/unit)
	case n < unit*unit*unit:
		return fmt.Sprintf("%.1f MiB", float64(n)/(unit*unit))
	}
	return fmt.Sprintf("%.1f GiB", float64(n)/(unit*unit*unit))
}
