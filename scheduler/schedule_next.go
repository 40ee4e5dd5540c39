package scheduler

import (
	"fmt"
	"time"
)

// MaxPreview is the most slots Preview returns at once.
const MaxPreview = 1000

// Preview parses a trigger and returns its next count slots strictly after
// from (fewer if the schedule ends). It backs `timerd schedule next`.
func Preview(triggerRef string, params []byte, ruleID int64, from time.Time, count int) ([]time.Time, error) {
	if count < 1 || count > MaxPreview {
		return nil, fmt.Errorf("count: must be 1 to %d, got %d", MaxPreview, count)
	}
	t, err := Parse(triggerRef, params, ruleID)
	if err != nil {
		return nil, err
	}
	slots := make([]time.Time, 0, min(count, 64))
	for s, ok := t.Next(from); ok && len(slots) < count; s, ok = t.Next(s) {
		slots = append(slots, s)
	}
	return slots, nil
}
