package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/timerd/timerd/cmd/timerd/node"
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
			_, err = fmt.Fprintf(w, "backed up %s (%s) to %s (%s): %s\n", path, store.HumanSize(fi.Size()), out, store.HumanSize(sum.Bytes), sum)
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
			if _, err := fmt.Fprintf(w, "compacted %s: %s → %s%s; %s is %s\n", path, store.HumanSize(res.Before), store.HumanSize(res.After), saved, res.Out, res.Summary); err != nil {
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
	if u, err := url.Parse(strings.TrimSpace(addr)); err == nil && u.User != nil {
		return usagef("--addr: holds a user and password; give host:port or an http(s) URL (the token goes in --token-file)")
	}
	base, err := nodeBaseURL(addr)
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
	start := time.Now()
	var sum store.Summary
	err = node.NewClient(base, tok).Backup(ctx, func(body io.Reader, size int64) error {
		sum, err = store.SaveBackup(body, size, out)
		return err
	})
	if err != nil {
		return err
	}
	_, err = fmt.Fprintf(w, "backed up the store of %s to %s in %s: %s\n", base, out, time.Since(start).Round(time.Millisecond), sum)
	return err
}
