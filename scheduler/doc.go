// Package scheduler owns timer specs parsed from (trigger_ref, trigger_params),
// slot arithmetic for interval, cron (with time zones and DST) and datetime
// timers, the misfire policy, and the min-heap engine that pops due slots and
// hands them, grouped, to a commit function.
//
// It knows nothing of the network, bbolt or Attune.
package scheduler
