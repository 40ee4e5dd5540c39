package main

import (
	"context"
	"fmt"
	"strconv"
	"strings"
	"time"
)

// feed reads the API's events as they are stored, oldest first. Event ids
// run without gaps (the run keeps them all), so page n of 1,000 is stable.
type feed struct {
	apiURL, token string
	all           []event
}

type apiEvent struct {
	ID                int64  `json:"id"`
	TriggerInstanceID string `json:"trigger_instance_id"`
	IdempotencyKey    string `json:"idempotency_key"`
	Created           string `json:"created"`
	Payload           struct {
		ScheduledAt string `json:"scheduled_at"`
		FiredAt     string `json:"fired_at"`
	} `json:"payload"`
}

const feedPage = 1000

// poll reads the events stored since the last poll and returns them.
func (f *feed) poll(ctx context.Context) ([]event, error) {
	start := len(f.all)
	for {
		page := len(f.all)/feedPage + 1
		skip := len(f.all) % feedPage
		var body struct {
			Items      []apiEvent `json:"items"`
			Pagination struct {
				HasNext bool `json:"has_next"`
			} `json:"pagination"`
		}
		url := fmt.Sprintf("%s/api/v1/events?page=%d&page_size=%d", f.apiURL, page, feedPage)
		if err := getJSON(ctx, url, f.token, &body); err != nil {
			return nil, err
		}
		if skip > len(body.Items) {
			return nil, fmt.Errorf("events page %d has %d items, %d were read before: events were deleted", page, len(body.Items), skip)
		}
		for _, e := range body.Items[skip:] {
			ev, err := e.decode()
			if err != nil {
				return nil, err
			}
			f.all = append(f.all, ev)
		}
		if !body.Pagination.HasNext {
			return f.all[start:], nil
		}
	}
}

func (e apiEvent) decode() (event, error) {
	id, err := strconv.ParseInt(strings.TrimPrefix(e.TriggerInstanceID, "rule_"), 10, 64)
	if err != nil {
		return event{}, fmt.Errorf("event %d: trigger_instance_id %q is not rule_<id>", e.ID, e.TriggerInstanceID)
	}
	ev := event{ID: e.ID, Rule: id, Key: e.IdempotencyKey}
	for _, t := range []struct {
		name, v string
		to      *time.Time
	}{{"scheduled_at", e.Payload.ScheduledAt, &ev.Slot}, {"fired_at", e.Payload.FiredAt, &ev.Fired}, {"created", e.Created, &ev.Created}} {
		if *t.to, err = time.Parse(time.RFC3339Nano, t.v); err != nil {
			return event{}, fmt.Errorf("event %d: %s %q: %w", e.ID, t.name, t.v, err)
		}
	}
	return ev, nil
}
