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

// `timerd rules backfill` and `timerd rules fire`: an operator's events for one
// rule, sent by its owner (cmd/timerd/node/backfill.go).

func oneRuleID(_ *cobra.Command, args []string) error {
	if len(args) != 1 {
		return usagef("want one rule id, got %d arguments", len(args))
	}
	return nil
}

func newRulesBackfillCmd() *cobra.Command {
	var (
		nf             nodeFlags
		from, to       string
		force, dry, js bool
	)
	cmd := &cobra.Command{
		Use:   "backfill ID --from T1 --to T2",
		Short: "Send a rule's past slots that were never sent (with --force, the others too)",
		Long: `backfill sends the rule's slots from T1 to T2 (both included, both past) that
were never sent: the runs its misfire policy dropped (skip, fire_once, fire_all
past its 100), as the rule's history on its owner records them, and every slot of
a rule that never fired. The rule's owner sends them, each under its slot's own
Idempotency-Key, with "backfill": true in the payload; slots older than the
catch-up threshold (30 s) are paced as catch-up. The other slots at or before the
rule's last slot are skipped: they were sent, or are from before the rule began
(timerd keeps no record of when); --force sends them under their keys (Attune
does not drop a repeated key: a receiver gets a sent slot twice). Slots after the
last slot are the schedule's to fire, never the backfill's. At most ` + fmt.Sprint(node.MaxBackfillSlots) + ` slots
a backfill; --dry-run says what would be sent.

T1 and T2 are RFC 3339 times, "now", or a negative duration from now (-90m),
the last two to the second.`,
		Example: `  timerd rules backfill 4711 --from 2026-12-06T00:00:00Z --to 2026-12-06T06:00:00Z --dry-run
  timerd rules backfill 4711 --from=-2h --to now
  timerd rules backfill 4711 --from=-2h --to=-1h --force --json`,
		Args: oneRuleID,
		RunE: func(cmd *cobra.Command, args []string) error {
			id, err := ruleIDArg(args)
			if err != nil {
				return err
			}
			now := time.Now()
			req := node.BackfillRequest{Force: force, DryRun: dry}
			if req.From, err = parseWhen("--from", from, now); err != nil {
				return err
			}
			if req.To, err = parseWhen("--to", to, now); err != nil {
				return err
			}
			if req.To.Before(req.From) {
				return usagef("--to (%s) is before --from (%s)", req.To.Format(time.RFC3339), req.From.Format(time.RFC3339))
			}
			c, err := nf.client()
			if err != nil {
				return err
			}
			ctx, cancel := context.WithTimeout(cmd.Context(), nf.timeout)
			defer cancel()
			res, raw, err := c.Backfill(ctx, id, req)
			if err != nil {
				return fmt.Errorf("rules backfill: %w", err)
			}
			if js {
				_, err := cmd.OutOrStdout().Write(raw)
				return err
			}
			return printBackfill(cmd.OutOrStdout(), res)
		},
	}
	nf.register(cmd)
	cmd.Flags().StringVar(&from, "from", "", "the range's first time (required)")
	cmd.Flags().StringVar(&to, "to", "", "the range's last time (required)")
	cmd.Flags().BoolVar(&force, "force", false, "send again, under their keys, the slots that were sent already")
	cmd.Flags().BoolVar(&dry, "dry-run", false, "say what would be sent, send nothing")
	cmd.Flags().BoolVar(&js, "json", false, "print the JSON as the node serves it")
	_ = cmd.MarkFlagRequired("from")
	_ = cmd.MarkFlagRequired("to")
	return cmd
}

// parseWhen reads a time flag: RFC 3339, "now", or a negative duration from now
// (to the second: the range prints as it was meant).
func parseWhen(flag, s string, now time.Time) (time.Time, error) {
	now = now.Truncate(time.Second)
	switch {
	case s == "now":
		return now, nil
	case strings.HasPrefix(s, "-"):
		d, err := time.ParseDuration(s)
		if err != nil {
			return time.Time{}, usagef("%s %q: not a duration: %v", flag, truncateSetting(s), err)
		}
		return now.Add(d), nil
	}
	t, err := time.Parse(time.RFC3339Nano, s)
	if err != nil {
		return time.Time{}, usagef("%s %q: want an RFC 3339 time (2026-12-06T00:00:00Z), now, or a negative duration (-2h)",
			flag, truncateSetting(s))
	}
	return t, nil
}

func printBackfill(w io.Writer, r node.BackfillResult) error {
	ts := func(t time.Time) string { return t.UTC().Format(time.RFC3339Nano) }
	by := r.AnsweredBy
	if r.ForwardedBy != "" {
		by += " (forwarded by " + r.ForwardedBy + ")"
	}
	verb := "sent"
	if r.DryRun {
		verb = "would send (dry run: nothing sent)"
	}
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintf(tw, "rule\t%d, backfill from %s to %s\n", r.RuleID, ts(r.From), ts(r.To))
	fmt.Fprintf(tw, "owner\t%s\n", by)
	if wm := r.Watermark; wm != nil {
		fmt.Fprintf(tw, "last slot\t%s, %d fires in all\n", ts(wm.Slot), wm.Count)
	}
	fmt.Fprintf(tw, "slots\t%d in the range\n", r.Slots)
	fmt.Fprintf(tw, "%s\t%d never sent before, %d again (--force)\n", verb, r.Sent, r.Resent)
	if r.FirstSent != nil {
		fmt.Fprintf(tw, "\tslots %s to %s\n", ts(*r.FirstSent), ts(*r.LastSent))
	}
	fmt.Fprintf(tw, "skipped\t%d at or before the last slot: sent, or from before the rule began (--force sends them)\n", r.Skipped)
	fmt.Fprintf(tw, "left\t%d after the last slot, for the schedule to fire\n", r.LeftToSchedule)
	return tw.Flush()
}

func newRulesFireCmd() *cobra.Command {
	var (
		nf nodeFlags
		js bool
	)
	cmd := &cobra.Command{
		Use:   "fire ID",
		Short: "Send one extra event of a rule now",
		Long: `fire makes the rule's owner send one extra event now, with "manual": true in
the payload and an Idempotency-Key of its own, <rule id>:manual:<unix ns>. The
schedule is not changed: its next slot fires as it would have.`,
		Example: `  timerd rules fire 4711 --addr 10.0.0.5:8470`,
		Args:    oneRuleID,
		RunE: func(cmd *cobra.Command, args []string) error {
			id, err := ruleIDArg(args)
			if err != nil {
				return err
			}
			c, err := nf.client()
			if err != nil {
				return err
			}
			ctx, cancel := context.WithTimeout(cmd.Context(), nf.timeout)
			defer cancel()
			res, raw, err := c.FireRule(ctx, id)
			if err != nil {
				return fmt.Errorf("rules fire: %w", err)
			}
			if js {
				_, err := cmd.OutOrStdout().Write(raw)
				return err
			}
			by := res.AnsweredBy
			if res.ForwardedBy != "" {
				by += " (forwarded by " + res.ForwardedBy + ")"
			}
			_, err = fmt.Fprintf(cmd.OutOrStdout(), "rule %d fired by %s at %s, Idempotency-Key %s\n", res.RuleID, by,
				res.FiredAt.UTC().Format(time.RFC3339Nano), res.IdempotencyKey)
			return err
		},
	}
	nf.register(cmd)
	cmd.Flags().BoolVar(&js, "json", false, "print the JSON as the node serves it")
	return cmd
}
