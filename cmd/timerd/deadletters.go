package main

import (
	"context"
	"fmt"
	"io"
	"os"
	"slices"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/timerd/timerd/cmd/timerd/node"
)

// nodeFlags are the flags of commands that talk to a node's HTTP endpoints.
type nodeFlags struct {
	addr      string
	timeout   time.Duration
	tokenFile string
}

func (f *nodeFlags) register(cmd *cobra.Command) {
	cmd.Flags().StringVar(&f.addr, "addr", envOr("TIMERD_STATUS_ADDR", "127.0.0.1:8470"), "the node's HTTP address, host:port or an http(s) URL (env TIMERD_STATUS_ADDR)")
	cmd.Flags().DurationVar(&f.timeout, "timeout", 5*time.Second, "give up after this long")
	cmd.Flags().StringVar(&f.tokenFile, "token-file", os.Getenv("TIMERD_HTTP_TOKEN_FILE"), "file of the bearer token the node's TIMERD_HTTP_TOKEN_FILE names (env TIMERD_HTTP_TOKEN_FILE)")
}

// client checks the flags and returns a client of the node they name, with
// the bearer token of --token-file if given.
func (f *nodeFlags) client() (*node.Client, error) {
	if f.timeout <= 0 {
		return nil, usagef("--timeout: %s is not positive", f.timeout)
	}
	base, err := nodeBaseURL(f.addr)
	if err != nil {
		return nil, usagef("--addr: %w", err)
	}
	var tok string
	if f.tokenFile != "" {
		if tok, err = node.ReadHTTPToken(f.tokenFile); err != nil {
			return nil, usagef("--token-file: %w", err)
		}
	}
	return node.NewClient(base, tok), nil
}

func newDeadLettersCmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "dead-letters",
		Short: "List a node's dead letters, or send them to the events API again",
		Long: `dead-letters reads and redrives the events a node's events API refused for
good (docs/operations.md, "Dead letters"), through the node's HTTP endpoints
(its TIMERD_HTTP_ADDR).`,
		Args: cobra.NoArgs,
	}
	cmd.AddCommand(newDeadLettersListCmd(), newDeadLettersRedriveCmd())
	return cmd
}

func newDeadLettersListCmd() *cobra.Command {
	var (
		nf     nodeFlags
		after  uint64
		limit  int
		asJSON bool
	)
	cmd := &cobra.Command{
		Use:   "list",
		Short: "List a node's dead letters, oldest first",
		Long: `list reads GET /v1/dead-letters of a node and prints one dead letter a line:
its id (for redrive), rule, slot, HTTP status, when it was refused and why.
It shows --limit of them after --after; the last line says how to see more.`,
		Example: `  timerd dead-letters list --addr 10.0.0.5:8470
  timerd dead-letters list --after 120 --limit 500 --json`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if limit < 1 || limit > node.MaxDeadLetterPage {
				return usagef("--limit: %d is not in 1..%d", limit, node.MaxDeadLetterPage)
			}
			c, err := nf.client()
			if err != nil {
				return err
			}
			ctx, cancel := context.WithTimeout(cmd.Context(), nf.timeout)
			defer cancel()
			page, raw, err := c.DeadLetters(ctx, after, limit)
			if err != nil {
				return fmt.Errorf("dead-letters list: %w", err)
			}
			if asJSON {
				_, err := cmd.OutOrStdout().Write(raw)
				return err
			}
			return printDeadLetters(cmd.OutOrStdout(), page)
		},
	}
	nf.register(cmd)
	cmd.Flags().Uint64Var(&after, "after", 0, "list the dead letters after this id")
	cmd.Flags().IntVar(&limit, "limit", node.DefaultDeadLetterPage, fmt.Sprintf("list at most this many (1..%d)", node.MaxDeadLetterPage))
	cmd.Flags().BoolVar(&asJSON, "json", false, "print the JSON as the node serves it")
	return cmd
}

func printDeadLetters(w io.Writer, page node.DeadLetterPage) error {
	if len(page.DeadLetters) == 0 {
		_, err := fmt.Fprintf(w, "no dead letters here (%d on the node)\n", page.Total)
		return err
	}
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "ID\tRULE\tSLOT\tSTATUS\tAT\tREASON")
	for _, dl := range page.DeadLetters {
		fmt.Fprintf(tw, "%d\t%d\t%s\t%d\t%s\t%s\n", dl.Seq, dl.RuleID, dl.Slot.UTC().Format(time.RFC3339Nano),
			dl.Status, dl.At.UTC().Format(time.RFC3339), dl.Reason)
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	msg := fmt.Sprintf("%d shown, %d on the node", len(page.DeadLetters), page.Total)
	if page.NextAfter != 0 {
		msg += fmt.Sprintf("; more with --after %d", page.NextAfter)
	}
	_, err := fmt.Fprintln(w, msg)
	return err
}

func newDeadLettersRedriveCmd() *cobra.Command {
	var (
		nf  nodeFlags
		ids []uint
		all bool
	)
	cmd := &cobra.Command{
		Use:   "redrive",
		Short: "Send dead letters to the events API again",
		Long: `redrive moves dead letters back into a node's outbox (POST
/v1/dead-letters/redrive): the node posts them again with the same
Idempotency-Key and body, so a receiver that took one already drops the
repeat. Name them with --id (repeatable, or comma-separated), or take every
one with --all.`,
		Example: `  timerd dead-letters redrive --id 12 --id 13
  timerd dead-letters redrive --all --addr 10.0.0.5:8470`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			switch {
			case len(ids) == 0 && !all:
				return usagef("name the dead letters with --id, or take every one with --all")
			case len(ids) > 0 && all:
				return usagef("--id and --all: give one of them")
			case slices.Contains(ids, 0):
				return usagef("--id: 0 is not a dead letter id")
			}
			c, err := nf.client()
			if err != nil {
				return err
			}
			var redrive []uint64 // nil: every one
			if !all {
				for _, id := range ids {
					redrive = append(redrive, uint64(id))
				}
			}
			ctx, cancel := context.WithTimeout(cmd.Context(), nf.timeout)
			defer cancel()
			res, err := c.Redrive(ctx, redrive)
			if err != nil {
				return fmt.Errorf("dead-letters redrive: %w", err)
			}
			fmt.Fprintf(cmd.OutOrStdout(), "redriven: %d%s\n", len(res.Redriven), idList(res.Redriven))
			if len(res.NotFound) > 0 {
				return fmt.Errorf("dead-letters redrive: no dead letter with id%s", idList(res.NotFound))
			}
			return nil
		},
	}
	nf.register(cmd)
	cmd.Flags().UintSliceVar(&ids, "id", nil, "a dead letter's id (from list); repeat it or separate with commas")
	cmd.Flags().BoolVar(&all, "all", false, "redrive every dead letter of the node")
	return cmd
}

// idList is " (1, 2, 3)", or " (1, 2, … 40 more)" for a long list.
func idList(ids []uint64) string {
	if len(ids) == 0 {
		return ""
	}
	const shown = 20
	parts := make([]string, 0, min(len(ids), shown)+1)
	for i, id := range ids {
		if i == shown {
			parts = append(parts, fmt.Sprintf("… %d more", len(ids)-shown))
			break
		}
		parts = append(parts, strconv.FormatUint(id, 10))
	}
	return " (" + strings.Join(parts, ", ") + ")"
}
