package main

import (
	"fmt"
	"time"

	"github.com/spf13/cobra"

	"github.com/timerd/timerd/scheduler"
)

func newScheduleCmd() *cobra.Command {
	schedule := &cobra.Command{Use: "schedule", Short: "Work with timer schedules"}
	var (
		trigger, params, from string
		count                 int
		ruleID                int64
	)
	next := &cobra.Command{
		Use:   "next --trigger REF --params JSON",
		Short: "Print the next slots of a timer trigger, one RFC 3339 UTC time a line",
		Example: `  timerd schedule next --trigger core.crontimer --params '{"expression":"0 30 2 * * *","timezone":"Europe/Berlin"}' --from 2026-03-28T00:00:00Z --count 3
  timerd schedule next --trigger core.intervaltimer --params '{"interval":5,"unit":"minutes"}' --rule-id 42`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if trigger == "" {
				return usagef("--trigger: required")
			}
			start := time.Now()
			if from != "" {
				t, err := time.Parse(time.RFC3339Nano, from)
				if err != nil {
					return usagef("--from: %q is not an RFC 3339 time", from)
				}
				start = t
			}
			slots, err := scheduler.Preview(trigger, []byte(params), ruleID, start, count)
			if err != nil {
				return usageError{err}
			}
			for _, s := range slots {
				fmt.Fprintln(cmd.OutOrStdout(), s.UTC().Format(time.RFC3339Nano))
			}
			return nil
		},
	}
	next.Flags().StringVar(&trigger, "trigger", "", "trigger ref, e.g. core.intervaltimer, core.crontimer, core.datetimetimer, core.timer")
	next.Flags().StringVar(&params, "params", "{}", "trigger parameters as a JSON object")
	next.Flags().StringVar(&from, "from", "", "print slots strictly after this RFC 3339 time (default now)")
	next.Flags().IntVar(&count, "count", 10, "how many slots, 1 to 1000")
	next.Flags().Int64Var(&ruleID, "rule-id", 0, "rule id: sets the phase of interval timers without start_at")
	schedule.AddCommand(next)
	return schedule
}
