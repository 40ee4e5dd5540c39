package node

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"

	"github.com/timerd/timerd/scheduler"
	"github.com/timerd/timerd/store"
)

// Bounds of the dead-letter endpoints.
const (
	DefaultDeadLetterPage = 100
	MaxDeadLetterPage     = 1000
	maxRedriveIDs         = 10_000
	maxRedriveBody        = 1 << 20
)

// DeadLetter is one dead letter in GET /v1/dead-letters.
type DeadLetter struct {
	Seq            uint64          `json:"seq"` // its id, for redrive
	RuleID         int64           `json:"rule_id"`
	Slot           time.Time       `json:"slot"`
	IdempotencyKey string          `json:"idempotency_key"`
	Status         int             `json:"status"` // HTTP status, 0 if none
	Reason         string          `json:"reason"`
	At             time.Time       `json:"at"` // when it became a dead letter
	Body           json.RawMessage `json:"body"`
}

// DeadLetterPage is the JSON of GET /v1/dead-letters.
type DeadLetterPage struct {
	DeadLetters []DeadLetter `json:"dead_letters"`
	Total       int          `json:"total"` // dead letters on the node
	// NextAfter is the after= of the next page; absent on the last page.
	NextAfter uint64 `json:"next_after,omitempty"`
}

// RedriveRequest is the optional JSON body of POST /v1/dead-letters/redrive.
type RedriveRequest struct {
	IDs []uint64 `json:"ids"` // none: every dead letter
}

// RedriveResult is the JSON answer of POST /v1/dead-letters/redrive.
type RedriveResult struct {
	Redriven []uint64 `json:"redriven"`
	NotFound []uint64 `json:"not_found,omitempty"`
}

// handleDeadLetters serves GET /v1/dead-letters?after=<seq>&limit=<n>.
func (n *Node) handleDeadLetters(w http.ResponseWriter, r *http.Request) {
	after, limit, err := pageParams(r.URL.Query())
	if err != nil {
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	dls, err := n.store.DeadLetters(after, limit+1)
	if err != nil {
		n.log.Error("read dead letters", "err", err)
		http.Error(w, "read dead letters: store error (see the node's log)", http.StatusInternalServerError)
		return
	}
	page := DeadLetterPage{DeadLetters: make([]DeadLetter, 0, min(len(dls), limit))}
	page.Total, _ = n.store.DeadLetterCount()
	if len(dls) > limit {
		dls = dls[:limit]
		page.NextAfter = dls[len(dls)-1].Seq
	}
	for _, dl := range dls {
		page.DeadLetters = append(page.DeadLetters, deadLetterJSON(dl))
	}
	writeJSON(w, http.StatusOK, page)
}

func deadLetterJSON(dl store.DeadLetter) DeadLetter {
	body := json.RawMessage(dl.Event.Body)
	if !json.Valid(body) { // events are JSON; anything else is shown as a string
		body, _ = json.Marshal(string(dl.Event.Body))
	}
	return DeadLetter{Seq: dl.Seq, RuleID: dl.Event.RuleID, Slot: dl.Event.Slot.UTC(), IdempotencyKey: dl.Event.IdempotencyKey,
		Status: dl.Status, Reason: dl.Reason, At: dl.At.UTC(), Body: body}
}

// pageParams reads after (default 0) and limit (default DefaultDeadLetterPage).
func pageParams(q url.Values) (after uint64, limit int, err error) {
	limit = DefaultDeadLetterPage
	for name, vals := range q {
		if len(vals) != 1 {
			return 0, 0, fmt.Errorf("%s: given %d times, want at most once", name, len(vals))
		}
		v := vals[0]
		switch name {
		case "after":
			if after, err = strconv.ParseUint(v, 10, 64); err != nil {
				return 0, 0, fmt.Errorf("after: %q is not a dead letter seq (a whole number ≥ 0)", scheduler.Truncate(v, 40))
			}
		case "limit":
			n, err := strconv.Atoi(v)
			if err != nil || n < 1 || n > MaxDeadLetterPage {
				return 0, 0, fmt.Errorf("limit: %q is not a whole number in 1..%d", scheduler.Truncate(v, 40), MaxDeadLetterPage)
			}
			limit = n
		default:
			return 0, 0, fmt.Errorf("%q: unknown parameter, want after or limit", scheduler.Truncate(name, 40))
		}
	}
	return after, limit, nil
}

// handleRedrive serves POST /v1/dead-letters/redrive: the ids of a JSON body
// {"ids":[…]} or of ?id=…&id=…, none for every dead letter. They go back to
// the outbox with their Idempotency-Key and body, and delivery is woken.
func (n *Node) handleRedrive(w http.ResponseWriter, r *http.Request) {
	ids, err := redriveIDs(r)
	if err != nil {
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	moved, err := n.store.RedriveDeadLetters(ids...)
	if err != nil {
		n.log.Error("redrive dead letters", "err", err)
		http.Error(w, "redrive dead letters: store error (see the node's log)", http.StatusInternalServerError)
		return
	}
	n.delivery.Notify()
	res := RedriveResult{Redriven: moved}
	if res.Redriven == nil {
		res.Redriven = []uint64{}
	}
	found := make(map[uint64]bool, len(moved))
	for _, seq := range moved {
		found[seq] = true
	}
	for _, id := range ids {
		if !found[id] {
			found[id] = true // listed once
			res.NotFound = append(res.NotFound, id)
		}
	}
	n.log.Info("dead letters redriven to the outbox", "redriven", len(moved), "not_found", len(res.NotFound))
	writeJSON(w, http.StatusOK, res)
}

func redriveIDs(r *http.Request) ([]uint64, error) {
	var ids []uint64
	for name, vals := range r.URL.Query() {
		if name != "id" {
			return nil, fmt.Errorf("%q: unknown parameter, want id", scheduler.Truncate(name, 40))
		}
		for _, v := range vals {
			for part := range strings.SplitSeq(v, ",") {
				id, err := strconv.ParseUint(strings.TrimSpace(part), 10, 64)
				if err != nil || id == 0 {
					return nil, fmt.Errorf("id: %q is not a dead letter seq (a whole number ≥ 1)", scheduler.Truncate(part, 40))
				}
				ids = append(ids, id)
			}
		}
	}
	body, err := io.ReadAll(io.LimitReader(r.Body, maxRedriveBody+1))
	if err != nil {
		return nil, fmt.Errorf("read body: %w", err)
	}
	if len(body) > maxRedriveBody {
		return nil, fmt.Errorf("body: larger than %d bytes", maxRedriveBody)
	}
	if len(strings.TrimSpace(string(body))) > 0 {
		var req RedriveRequest
		dec := json.NewDecoder(strings.NewReader(string(body)))
		dec.DisallowUnknownFields()
		if err := dec.Decode(&req); err != nil {
			return nil, errors.New(`body: not {"ids": [seq, …]} (whole numbers ≥ 1)`)
		}
		if dec.More() {
			return nil, errors.New("body: more than one JSON value")
		}
		for _, id := range req.IDs {
			if id == 0 {
				return nil, errors.New("ids: 0 is not a dead letter seq")
			}
		}
		ids = append(ids, req.IDs...)
	}
	if len(ids) > maxRedriveIDs {
		return nil, fmt.Errorf("ids: %d given, at most %d at once", len(ids), maxRedriveIDs)
	}
	return ids, nil
}

func writeJSON(w http.ResponseWriter, code int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	_ = json.NewEncoder(w).Encode(v) // not indented: each event body stays on one line
}

// expireDeadLetters deletes, now and periodically, the dead letters older
// than the retention, until ctx is done.
func (n *Node) expireDeadLetters(ctx context.Context) error {
	retention := n.cfg.DeadLetterRetention
	every := min(max(retention/10, time.Second), time.Hour)
	t := time.NewTicker(every)
	defer t.Stop()
	for {
		deleted, err := n.store.DeleteDeadLettersBefore(n.cfg.Now().Add(-retention))
		switch {
		case err != nil:
			n.log.Error("expire dead letters", "err", err)
		case deleted > 0:
			n.metrics.deadLettersExpired.Add(float64(deleted))
			n.log.Info("dead letters past their retention deleted", "deleted", deleted, "retention", retention.String())
		}
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
		}
	}
}
