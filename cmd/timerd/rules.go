package main

import (
	"context"
	"fmt"
	"io"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/timerd/timerd/cmd/timerd/node"
)

// newRulesCmd is `timerd rules`: operations on one rule, through any node's HTTP
// endpoints. Each subcommand is a newRules…Cmd added here.
func newRulesCmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "rules",
		Short: "Work on one rule through any node: describe it, backfill it, fire it now",
		Long: `rules works on one rule through the HTTP endpoints of any node of the
cluster (its TIMERD_HTTP_ADDR): the node asked finds the rule's owner by its
ring and forwards the request to it.`,
		Args: cobra.NoArgs,
	}
	cmd.AddCommand(newRulesDescribeCmd(), newRulesBackfillCmd(), newRulesFireCmd())
	return cmd
}

// ruleIDArg is the rule id of a subcommand's one argument.
func ruleIDArg(args []string) (int64, error) {
	id, err := strconv.ParseInt(args[0], 10, 64)
	if err != nil || id < 1 {
		return 0, usagef("rule id %q: want a whole number ≥ 1", truncateSetting(args[0]))
	}
	return id, nil
}

func newRulesDescribeCmd() *cobra.Command {
	var (
		nf     nodeFlags
		asJSON bool
		here   bool
	)
	cmd := &cobra.Command{
		Use:   "describe ID",
		Short: "Print a rule's owner, schedule, watermark, next slots, lateness and dead letters",
		Long: `describe reads GET /v1/rules/ID of a node. Any node answers: the rule's owner
by its current ring says what it fires (the schedule as parsed, the last slot
fired and the fire count, the next 10 slots, the lateness of its last fires and
the rule's dead letters); another node forwards the request to the owner, or,
when the owner does not answer, prints what it knows itself and where to ask.`,
		Example: `  timerd rules describe 4711 --addr 10.0.0.5:8470
  timerd rules describe 4711 --json | jq .next`,
		Args: oneRuleID,
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
			describe := c.DescribeRule
			if here {
				describe = c.DescribeRuleHere
			}
			d, raw, err := describe(ctx, id)
			if err != nil {
				return fmt.Errorf("rules describe: %w", err)
			}
			if asJSON {
				_, err := cmd.OutOrStdout().Write(raw)
				return err
			}
			return printRule(cmd.OutOrStdout(), d, time.Now())
		},
	}
	nf.register(cmd)
	cmd.Flags().BoolVar(&asJSON, "json", false, "print the JSON as the node serves it")
	cmd.Flags().BoolVar(&here, "here", false, "what the node asked knows itself, without asking the owner (a previous owner's missed-fire log and history)")
	return cmd
}

// printRule writes d for people: the rule and where it runs, its schedule, then
// its next slots, last fires and dead letters as tables.
func printRule(w io.Writer, d node.RuleDescription, now time.Time) error {
	ts := func(t time.Time) string { return t.UTC().Format(time.RFC3339Nano) }
	rel := func(t time.Time) string {
		switch dt := t.Sub(now).Round(time.Second); {
		case dt == 0:
			return "now"
		case dt > 0:
			return "in " + dt.String()
		default:
			return (-dt).String() + " ago"
		}
	}
	owner := d.Owner
	if owner == "" {
		owner = "- (the node has no view of the cluster yet)"
	}
	if d.OwnerHTTPAddr != "" {
		owner += " at " + d.OwnerHTTPAddr
	}
	if d.Partition != nil {
		owner += fmt.Sprintf(", partition %d", *d.Partition)
	}
	answered := d.AnsweredBy
	if d.ForwardedBy != "" {
		answered += " (forwarded by " + d.ForwardedBy + ")"
	}
	rows := [][2]string{{"rule", strconv.FormatInt(d.RuleID, 10)}, {"owner", owner}, {"answered by", answered}}
	if d.OwnerUnreachable != "" {
		ask := "the owner"
		if d.OwnerHTTPAddr != "" {
			ask = fmt.Sprintf("timerd rules describe %d --addr %s", d.RuleID, d.OwnerHTTPAddr)
		}
		rows = append(rows, [2]string{"OWNER UNREACHABLE", d.OwnerUnreachable},
			[2]string{"", "below is what " + d.AnsweredBy + " knows itself; ask " + ask})
	}
	rows = append(rows, [2]string{"state", ruleState(d.State)})
	if s := d.Schedule; s != nil {
		rows = append(rows, [2]string{"schedule", scheduleLine(s)},
			[2]string{"misfire", s.Misfire + ", grace " + s.MisfireGrace})
		if s.Jitter != "" {
			rows = append(rows, [2]string{"jitter", "up to " + s.Jitter + " after each slot"})
		}
	}
	switch wm := d.Watermark; {
	case wm == nil:
		rows = append(rows, [2]string{"last slot", "-"})
	case wm.Count == 0:
		rows = append(rows, [2]string{"last slot", "none fired yet (slots after " + ts(wm.Slot) + ")"})
	default:
		rows = append(rows, [2]string{"last slot", fmt.Sprintf("%s (%s), %d fires in all", ts(wm.Slot), rel(wm.Slot), wm.Count)})
	}
	if d.LastFiredAt != nil {
		rows = append(rows, [2]string{"last fired", ts(*d.LastFiredAt)})
	}
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	for _, r := range rows {
		fmt.Fprintf(tw, "%s\t%s\n", r[0], r[1])
	}
	if err := tw.Flush(); err != nil {
		return err
	}

	fmt.Fprintln(w)
	if len(d.Next) == 0 {
		fmt.Fprintln(w, "no coming slots")
	} else {
		fmt.Fprintln(tw, "NEXT SLOT\tFIRES AT\t")
		for _, s := range d.Next {
			fmt.Fprintf(tw, "%s\t%s\t(%s)\n", ts(s.Slot), ts(s.FiresAt), rel(s.FiresAt))
		}
		if err := tw.Flush(); err != nil {
			return err
		}
	}

	fmt.Fprintln(w)
	if len(d.Lateness) == 0 {
		fmt.Fprintf(w, "no recent fires recorded on %s (it keeps the lateness of the rules it fired lately, since its start)\n", d.AnsweredBy)
	} else {
		fmt.Fprintln(tw, "FIRED SLOT\tFIRED AT\tLATE\t")
		for _, f := range d.Lateness {
			note := ""
			if f.CatchUp {
				note = "catch-up"
			}
			fmt.Fprintf(tw, "%s\t%s\t%s\t%s\n", ts(f.Slot), ts(f.FiredAt), f.Late, note)
		}
		if err := tw.Flush(); err != nil {
			return err
		}
	}

	fmt.Fprintln(w)
	if len(d.Missed) == 0 {
		fmt.Fprintf(w, "no missed fires recorded on %s\n", d.AnsweredBy)
	} else {
		fmt.Fprintln(tw, "MISSED FROM\tTO\tSLOTS\tREASON\tDETECTED\tDETAIL")
		for _, m := range d.Missed {
			count := strconv.FormatUint(m.Count, 10)
			if m.Estimated {
				count = "~" + count
			}
			from, to := "-", "-" // an invalid schedule's slots are not known
			if !m.From.IsZero() {
				from, to = ts(m.From), ts(m.To)
			}
			fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\n", from, to, count, m.Reason, m.DetectedAt.Format(time.RFC3339), m.Detail)
		}
		if err := tw.Flush(); err != nil {
			return err
		}
	}

	if len(d.Operations) > 0 {
		fmt.Fprintln(w)
		fmt.Fprintln(tw, "OPERATION\tFROM\tTO\tEVENTS\tAT\tDETAIL")
		for _, o := range d.Operations {
			fmt.Fprintf(tw, "%s\t%s\t%s\t%d\t%s\t%s\n", o.Kind, ts(o.From), ts(o.To), o.Count, o.At.Format(time.RFC3339), o.Detail)
		}
		if err := tw.Flush(); err != nil {
			return err
		}
	}

	fmt.Fprintln(w)
	if d.DeadLettersTotal == 0 {
		_, err := fmt.Fprintf(w, "no dead letters on %s\n", d.AnsweredBy)
		return err
	}
	fmt.Fprintln(tw, "DEAD LETTER\tSLOT\tSTATUS\tAT\tREASON")
	for _, dl := range d.DeadLetters {
		fmt.Fprintf(tw, "%d\t%s\t%d\t%s\t%s\n", dl.Seq, ts(dl.Slot), dl.Status, dl.At.UTC().Format(time.RFC3339), dl.Reason)
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	_, err := fmt.Fprintf(w, "%d shown, %d of this rule on %s (timerd dead-letters list|redrive --addr ...)\n",
		len(d.DeadLetters), d.DeadLettersTotal, d.AnsweredBy)
	return err
}

func ruleState(s node.RuleState) string {
	var parts []string
	switch {
	case s.Known:
		parts = append(parts, "enabled")
	case s.RemovedAt != nil:
		parts = append(parts, "removed (disabled or deleted) at "+s.RemovedAt.UTC().Format(time.RFC3339))
	default:
		parts = append(parts, "not in the store")
	}
	if s.Invalid != "" {
		parts = append(parts, "INVALID, not firing: "+s.Invalid)
	}
	if s.Firing {
		parts = append(parts, "firing here")
	} else {
		parts = append(parts, "not firing here")
	}
	if s.Done {
		parts = append(parts, "done (no slot left)")
	}
	return strings.Join(parts, "; ")
}

func scheduleLine(s *node.RuleSchedule) string {
	var b strings.Builder
	b.WriteString(s.Kind)
	switch {
	case s.Expression != "":
		fmt.Fprintf(&b, " %q in %s, dst gap %s, dst overlap %s", s.Expression, s.Timezone, s.DSTGap, s.DSTOverlap)
	case s.Interval != "":
		b.WriteString(" every " + s.Interval)
		if s.Anchor != nil {
			b.WriteString(" from " + s.Anchor.UTC().Format(time.RFC3339Nano))
		}
	case s.FireAt != nil:
		b.WriteString(" at " + s.FireAt.UTC().Format(time.RFC3339Nano))
	}
	return b.String() + " (" + s.TriggerRef + ")"
}
