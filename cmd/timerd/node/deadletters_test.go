package node

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/timerd/timerd/store"
	"github.com/timerd/timerd/test/testkit"
)

// withDeadLetters commits n events of rule 7 to node's store and makes them
// dead letters; it returns their Idempotency-Keys in seq order.
func withDeadLetters(t *testing.T, n *Node, count int) []string {
	t.Helper()
	first, _ := n.store.OutboxLen()
	var recs []store.FireRecord
	var keys []string
	for i := range count {
		slot := time.Date(2026, 1, 1, 0, 0, i, 0, time.UTC)
		key := fmt.Sprintf("7:%d", slot.UnixNano())
		keys = append(keys, key)
		recs = append(recs, store.FireRecord{Watermark: store.Watermark{Slot: slot, Count: uint64(i + 1)},
			Event: store.Event{RuleID: 7, Slot: slot, IdempotencyKey: key, Body: []byte(fmt.Sprintf(`{"n":%d}`, i))}})
	}
	if err := n.store.CommitFires(recs); err != nil {
		t.Fatal(err)
	}
	entries, err := n.store.Outbox(0, first+count)
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range entries[first:] {
		if err := n.store.DeadLetter(e.Seq, "400 Bad Request: no such trigger", 400); err != nil {
			t.Fatal(err)
		}
	}
	return keys
}

func getJSON(t *testing.T, url string, out any) (int, string) {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	raw, _ := io.ReadAll(resp.Body)
	if resp.StatusCode == http.StatusOK && out != nil {
		if err := json.Unmarshal(raw, out); err != nil {
			t.Fatalf("GET %s: %v in %s", url, err, raw)
		}
	}
	return resp.StatusCode, string(raw)
}

func postRedrive(t *testing.T, url, body string) (int, RedriveResult, string) {
	t.Helper()
	resp, err := http.Post(url, "application/json", strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	raw, _ := io.ReadAll(resp.Body)
	var res RedriveResult
	if resp.StatusCode == http.StatusOK {
		if err := json.Unmarshal(raw, &res); err != nil {
			t.Fatalf("POST %s: %v in %s", url, err, raw)
		}
	}
	return resp.StatusCode, res, string(raw)
}

// Pages of GET /v1/dead-letters list every dead letter once, in order, and
// the last page has no next_after.
func TestDeadLettersEndpointPages(t *testing.T) {
	n := newIdleNode(t)
	keys := withDeadLetters(t, n, 7)
	srv := httptest.NewServer(n.handler())
	defer srv.Close()

	var got []DeadLetter
	after, pages := uint64(0), 0
	for {
		var page DeadLetterPage
		url := fmt.Sprintf("%s/v1/dead-letters?after=%d&limit=3", srv.URL, after)
		if code, body := getJSON(t, url, &page); code != http.StatusOK {
			t.Fatalf("GET %s = %d %s, want 200", url, code, body)
		}
		pages++
		if page.Total != 7 {
			t.Errorf("page %d total = %d, want 7", pages, page.Total)
		}
		got = append(got, page.DeadLetters...)
		if page.NextAfter == 0 {
			break
		}
		if len(page.DeadLetters) != 3 || page.NextAfter != page.DeadLetters[2].Seq {
			t.Fatalf("page %d: %d items, next_after %d; want 3 and the last seq", pages, len(page.DeadLetters), page.NextAfter)
		}
		after = page.NextAfter
	}
	if pages != 3 || len(got) != 7 {
		t.Fatalf("%d pages, %d dead letters; want 3 and 7", pages, len(got))
	}
	for i, dl := range got {
		if dl.IdempotencyKey != keys[i] || dl.RuleID != 7 || dl.Status != 400 || string(dl.Body) != fmt.Sprintf(`{"n":%d}`, i) {
			t.Errorf("dead letter %d = %+v, want key %s, rule 7, status 400, body {\"n\":%d}", i, dl, keys[i], i)
		}
	}
	var all DeadLetterPage
	if code, _ := getJSON(t, srv.URL+"/v1/dead-letters", &all); code != 200 || len(all.DeadLetters) != 7 || all.NextAfter != 0 {
		t.Errorf("GET without params = %d, %d items, next_after %d; want 200, 7, none", code, len(all.DeadLetters), all.NextAfter)
	}
}

// A hostile parameter is a 400 naming it, and the node keeps serving.
func TestDeadLettersEndpointBadParams(t *testing.T) {
	n := newIdleNode(t)
	withDeadLetters(t, n, 2)
	srv := httptest.NewServer(n.handler())
	defer srv.Close()
	tests := []struct{ query, wantMsg string }{
		{"after=-1", "after:"},
		{"after=abc", "after:"},
		{"after=18446744073709551616", "after:"},
		{"after=", "after:"},
		{"limit=0", "limit:"},
		{"limit=1001", "limit:"},
		{"limit=-5", "limit:"},
		{"limit=1e3", "limit:"},
		{"limit=99999999999999999999999", "limit:"},
		{"limit=%00", "limit:"},
		{"limit=1&limit=2", "limit: given 2 times"},
		{"offset=3", `"offset": unknown parameter`},
		{"after=18446744073709551615", ""}, // the largest seq: an empty page
	}
	for _, tc := range tests {
		var page DeadLetterPage
		code, body := getJSON(t, srv.URL+"/v1/dead-letters?"+tc.query, &page)
		if tc.wantMsg == "" {
			if code != http.StatusOK || len(page.DeadLetters) != 0 {
				t.Errorf("GET ?%s = %d, %d items; want 200 and none", tc.query, code, len(page.DeadLetters))
			}
			continue
		}
		if code != http.StatusBadRequest || !strings.Contains(body, tc.wantMsg) {
			t.Errorf("GET ?%s = %d %q, want 400 holding %q", tc.query, code, body, tc.wantMsg)
		}
	}
	if code, _ := getJSON(t, srv.URL+"/v1/dead-letters", nil); code != http.StatusOK {
		t.Errorf("GET after the hostile params = %d, want 200", code)
	}
}

// Redrive moves the named dead letters (or all) back to the outbox with their
// keys; unknown ids are reported; a bad request moves nothing.
func TestRedriveEndpoint(t *testing.T) {
	n := newIdleNode(t)
	keys := withDeadLetters(t, n, 4)
	srv := httptest.NewServer(n.handler())
	defer srv.Close()
	url := srv.URL + "/v1/dead-letters/redrive"
	dls, _ := n.store.DeadLetters(0, 10)

	for _, bad := range []struct{ query, body string }{
		{"", `{"ids":"x"}`},
		{"", `{"ids":[0]}`},
		{"", `{"ids":[-1]}`},
		{"", `{"all":true}`},
		{"", `{"ids":[1]}{"ids":[2]}`},
		{"", `[`},
		{"", `{"ids":[` + strings.Repeat("1,", 600_000) + `1]}`},
		{"?id=abc", ""},
		{"?id=0", ""},
		{"?id=1,,2", ""},
		{"?all=1", ""},
	} {
		code, _, body := postRedrive(t, url+bad.query, bad.body)
		if code != http.StatusBadRequest {
			t.Errorf("POST redrive%s %.40q = %d %q, want 400", bad.query, bad.body, code, body)
		}
	}
	if c, _ := n.store.DeadLetterCount(); c != 4 {
		t.Fatalf("%d dead letters after bad requests, want 4 (nothing moved)", c)
	}

	code, res, body := postRedrive(t, url, fmt.Sprintf(`{"ids":[%d, 99]}`, dls[0].Seq))
	if code != http.StatusOK || len(res.Redriven) != 1 || res.Redriven[0] != dls[0].Seq || len(res.NotFound) != 1 || res.NotFound[0] != 99 {
		t.Fatalf("redrive [%d, 99] = %d %s, want it redriven and 99 not found", dls[0].Seq, code, body)
	}
	code, res, body = postRedrive(t, fmt.Sprintf("%s?id=%d,%d", url, dls[1].Seq, dls[2].Seq), "")
	if code != http.StatusOK || len(res.Redriven) != 2 {
		t.Fatalf("redrive ?id=%d,%d = %d %s, want both", dls[1].Seq, dls[2].Seq, code, body)
	}
	code, res, body = postRedrive(t, url, "")
	if code != http.StatusOK || len(res.Redriven) != 1 || res.Redriven[0] != dls[3].Seq {
		t.Fatalf("redrive all = %d %s, want the last one", code, body)
	}
	out, _ := n.store.Outbox(0, 10)
	if len(out) != 4 {
		t.Fatalf("outbox holds %d entries after redriving all, want 4", len(out))
	}
	for i, e := range out {
		if e.Event.IdempotencyKey != keys[i] || string(e.Event.Body) != fmt.Sprintf(`{"n":%d}`, i) {
			t.Errorf("outbox entry %d = key %s body %s, want %s {\"n\":%d}", i, e.Event.IdempotencyKey, e.Event.Body, keys[i], i)
		}
	}
	if c, _ := n.store.DeadLetterCount(); c != 0 {
		t.Errorf("%d dead letters left, want 0", c)
	}
}

// Dead letters past the retention are deleted and counted; younger ones stay.
func TestExpireDeadLetters(t *testing.T) {
	n := newIdleNode(t)
	n.cfg.DeadLetterRetention = time.Second
	withDeadLetters(t, n, 2)
	time.Sleep(1100 * time.Millisecond)
	withDeadLetters(t, n, 1)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- n.expireDeadLetters(ctx) }()
	testkit.Eventually(t, 5*time.Second, "old dead letters expired", func() bool {
		return testutil.ToFloat64(n.metrics.deadLettersExpired) == 2
	})
	cancel()
	if err := <-done; err != nil {
		t.Errorf("expireDeadLetters = %v, want nil", err)
	}
	if c, _ := n.store.DeadLetterCount(); c != 1 {
		t.Errorf("%d dead letters left, want the young one", c)
	}
}
