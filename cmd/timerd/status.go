package main

import (
	"context"
	"fmt"
	"io"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/timerd/timerd/cmd/timerd/node"
)

func newStatusCmd() *cobra.Command {
	var (
		nf     nodeFlags
		asJSON bool
	)
	cmd := &cobra.Command{
		Use:   "status",
		Short: "Print a node's view of itself and of the cluster",
		Long: `status reads GET /v1/status of a node (its TIMERD_HTTP_ADDR) and prints it
as a table: the node, its rules, outbox and token, then the cluster members
as that node sees them, with the rules each owns.`,
		Example: `  timerd status --addr 10.0.0.5:8470`,
		Args:    cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			c, err := nf.client()
			if err != nil {
				return err
			}
			ctx, cancel := context.WithTimeout(cmd.Context(), nf.timeout)
			defer cancel()
			st, raw, err := c.Status(ctx)
			if err != nil {
				return fmt.Errorf("status: %w", err)
			}
			if asJSON {
				_, err := cmd.OutOrStdout().Write(raw)
				return err
			}
			return printStatus(cmd.OutOrStdout(), st)
		},
	}
	nf.register(cmd)
	cmd.Flags().BoolVar(&asJSON, "json", false, "print the status JSON as the node serves it")
	return cmd
}

// nodeBaseURL is the URL of a node's HTTP endpoints at addr: host:port, or an
// http(s) URL (with a path prefix, if any).
func nodeBaseURL(addr string) (string, error) {
	a := strings.TrimRight(strings.TrimSpace(addr), "/")
	if a == "" {
		return "", fmt.Errorf("is empty, want host:port")
	}
	if !strings.HasPrefix(a, "http://") && !strings.HasPrefix(a, "https://") {
		if strings.Contains(a, "/") {
			return "", fmt.Errorf("%q is not host:port", truncateSetting(addr))
		}
		a = "http://" + a
	}
	if _, err := checkHTTPURL(a); err != nil {
		return "", fmt.Errorf("%q is not host:port", truncateSetting(addr))
	}
	return a, nil
}

// printStatus writes st as two tables: the node, then the members.
func printStatus(w io.Writer, st node.Status) error {
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	orNone := func(t *time.Time) string {
		if t == nil {
			return "-"
		}
		return t.UTC().Format(time.RFC3339)
	}
	token := "-"
	if st.TokenExpiresAt != nil {
		token = orNone(st.TokenExpiresAt)
		if left := time.Until(*st.TokenExpiresAt); left > 0 {
			token += " (in " + left.Round(time.Second).String() + ")"
		} else {
			token += " (EXPIRED)"
		}
		if st.TokenMasked != "" {
			token += "  " + st.TokenMasked
		}
	}
	rows := [][2]string{
		{"node", st.Node},
		{"version", st.Version},
		{"ready", fmt.Sprint(st.Ready)},
		{"rules known", fmt.Sprint(st.RulesKnown)},
		{"rules owned", fmt.Sprint(st.RulesOwned)},
		{"outbox", fmt.Sprintf("%d (dead letters %d)", st.OutboxDepth, st.DeadLetters)},
		{"next fire", orNone(st.NextFire)},
		{"token expiry", token},
	}
	if len(st.Members) > 0 {
		q := fmt.Sprintf("yes: %d of %d expected members seen, %d needed", st.SeenMembers, st.ExpectedMembers, st.QuorumSize)
		if !st.Quorum {
			q = fmt.Sprintf("NO: %d of %d expected members seen, %d needed: this node fires nothing",
				st.SeenMembers, st.ExpectedMembers, st.QuorumSize)
		}
		rows = append(rows, [2]string{"quorum", q},
			[2]string{"incarnation", fmt.Sprintf("%s, holding %d partitions", st.Incarnation, st.PartitionsHeld)})
	}
	for _, r := range rows {
		fmt.Fprintf(tw, "%s\t%s\n", r[0], r[1])
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	if len(st.Members) == 0 {
		_, err := fmt.Fprintln(w, "\nno cluster: a single node owning every rule")
		return err
	}
	fmt.Fprintln(w)
	fmt.Fprintln(tw, "MEMBER\tADDR\tSTATE\tRULES OWNED")
	for _, m := range st.Members {
		name := m.Name
		if m.Self {
			name += " (self)"
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%d\n", name, m.Addr, m.State, m.RulesOwned)
	}
	return tw.Flush()
}
