package main

import (
	"fmt"
	"time"

	"github.com/spf13/cobra"

	"github.com/timerd/timerd/scheduler"
)

// errLintFindings is the exit of `schedule next --lint` that found something: the
// findings are its output, so nothing more is said.
var errLintFindings = silentError{code: 1}

func newScheduleCmd() *cobra.Command {
	schedule := &cobra.Command{Use: "schedule", Short: "Work with timer schedules"}
	var (
		trigger, params, from string
		count                 int
		ruleID                int64
		lint                  bool
	)
	next := &cobra.Command{
		Use:   "next --trigger REF --params JSON",
		Short: "Print the next slots of a timer trigger, one RFC 3339 UTC time a line",
		Long: `Print the next slots of a timer trigger, one RFC 3339 UTC time a line, and on standard error
a warning for each thing about the schedule its author likely did not mean: the days of the
coming year on which a clock change makes it fire more or fewer times than on other days, a
schedule that never fires again, a cron that fires every second of the minute it names.
With --lint only those are printed, on standard output, and the exit status is 1 if there is any.`,
		Example: `  timerd schedule next --trigger core.crontimer --params '{"expression":"0 30 2 * * *","timezone":"Europe/Berlin"}' --from 2026-03-28T00:00:00Z --count 3
  timerd schedule next --trigger core.intervaltimer --params '{"interval":5,"unit":"minutes"}' --rule-id 42
  timerd schedule next --lint --trigger core.crontimer --params '{"expression":"0 30 2 * * *","timezone":"Europe/Berlin","dst_gap":"skip"}'`,
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
			t, err := scheduler.Parse(trigger, []byte(params), ruleID)
			if err != nil {
				return usageError{err}
			}
			findings := scheduler.Lint(t, start)
			if lint {
				for _, f := range findings {
					fmt.Fprintf(cmd.OutOrStdout(), "%s: %s\n", f.Kind, f.Message)
				}
				if len(findings) > 0 {
					return errLintFindings
				}
				fmt.Fprintln(cmd.OutOrStdout(), "no findings")
				return nil
			}
			slots, err := scheduler.Preview(trigger, []byte(params), ruleID, start, count)
			if err != nil {
				return usageError{err}
			}
			for _, s := range slots {
				fmt.Fprintln(cmd.OutOrStdout(), s.UTC().Format(time.RFC3339Nano))
			}
			for _, f := range findings {
				fmt.Fprintf(cmd.ErrOrStderr(), "warning: %s: %s\n", f.Kind, f.Message)
			}
			return nil
		},
	}
	next.Flags().StringVar(&trigger, "trigger", "", "trigger ref, e.g. core.intervaltimer, core.crontimer, core.datetimetimer, core.timer")
	next.Flags().StringVar(&params, "params", "{}", "trigger parameters as a JSON object")
	next.Flags().StringVar(&from, "from", "", "print slots strictly after this RFC 3339 time (default now)")
	next.Flags().IntVar(&count, "count", 10, "how many slots, 1 to 1000")
	next.Flags().Int64Var(&ruleID, "rule-id", 0, "rule id: sets the phase of interval timers without start_at")
	next.Flags().BoolVar(&lint, "lint", false, "print only what the schedule likely does not mean (clock changes, never fires again, every second); exit 1 if anything")
	schedule.AddCommand(next)
	return schedule
}
