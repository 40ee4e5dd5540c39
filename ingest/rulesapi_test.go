package ingest

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"reflect"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/timerd/timerd/ingest/attune"
)

// The listing's times reach EnabledRules' result.
func TestEnabledRulesVersions(t *testing.T) {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Write([]byte(`{"data":[
			{"id":1,"ref":"a","trigger_ref":"core.intervaltimer","trigger_params":{"interval":5},"enabled":true,
			 "created":"2026-01-01T00:00:00Z","updated":"2026-01-02T00:00:00Z"},
			{"id":2,"ref":"b","trigger_ref":"core.intervaltimer","trigger_params":{"interval":5},"created_at":"2026-01-03T00:00:00Z"}
		],"pagination":{"has_next":false}}`))
	}))
	defer srv.Close()
	l, err := (&RulesClient{APIURL: srv.URL}).EnabledRules(context.Background(), "core.intervaltimer")
	if err != nil {
		t.Fatal(err)
	}
	rules := l.Rules
	want := map[int64]time.Time{1: time.Date(2026, 1, 2, 0, 0, 0, 0, time.UTC), 2: time.Date(2026, 1, 3, 0, 0, 0, 0, time.UTC)}
	if len(rules) != 2 {
		t.Fatalf("EnabledRules = %d rules, want 2", len(rules))
	}
	for _, r := range rules {
		if !r.Version().Equal(want[r.ID]) {
			t.Errorf("rule %d: Version() = %v, want %v", r.ID, r.Version(), want[r.ID])
		}
	}
}

// pagedAPI is a rules listing of n enabled interval rules (ids 1..n) that
// pages as a given server does: maxSize is the most it serves a page;
// attune makes it page as Attune's own server does (it serves at most
// maxSize, but answers the page_size asked and counts offset and has_next
// by it); refuse answers 400 to a page_size above maxSize. It records the
// page_size of every request and the bytes it sent.
type pagedAPI struct {
	srv     *httptest.Server
	mu      sync.Mutex
	sizes   []int
	bytes   int64
	n       int
	maxSize int
	attune  bool
	refuse  bool
	// sayPageSize, when set, is the page_size the answer gives.
	sayPageSize int
}

func newPagedAPI(t *testing.T, n, maxSize int) *pagedAPI {
	t.Helper()
	a := &pagedAPI{n: n, maxSize: maxSize}
	a.srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		q := r.URL.Query()
		page, _ := strconv.Atoi(q.Get("page"))
		size, _ := strconv.Atoi(q.Get("page_size"))
		a.mu.Lock()
		defer a.mu.Unlock()
		a.sizes = append(a.sizes, size)
		if size > a.maxSize && a.refuse {
			w.WriteHeader(http.StatusBadRequest)
			fmt.Fprintf(w, `{"error":"page_size: %q is not an integer in 1..%d"}`, q.Get("page_size"), a.maxSize)
			return
		}
		limit, said := min(size, a.maxSize), min(size, a.maxSize)
		if a.attune {
			said = size // Attune answers the size asked, whatever it served
		}
		if a.sayPageSize > 0 {
			said = a.sayPageSize
		}
		offset := (page - 1) * size
		if !a.attune {
			offset = (page - 1) * said
		}
		var items []string
		for id := offset + 1; id <= min(offset+limit, a.n); id++ {
			items = append(items, fmt.Sprintf(`{"id":%d,"ref":"r%d","trigger_ref":"core.intervaltimer","trigger_params":{"interval":60},"enabled":true}`, id, id))
		}
		pages := (a.n + said - 1) / said
		body := fmt.Sprintf(`{"items":[%s],"pagination":{"page":%d,"page_size":%d,"total_items":%d,"total_pages":%d,"has_next":%t}}`,
			strings.Join(items, ","), page, said, a.n, pages, page < pages)
		a.bytes += int64(len(body))
		w.Write([]byte(body))
	}))
	t.Cleanup(a.srv.Close)
	return a
}

func (a *pagedAPI) asked() (sizes []int, bytes int64) {
	a.mu.Lock()
	defer a.mu.Unlock()
	sizes, bytes = a.sizes, a.bytes
	a.sizes, a.bytes = nil, 0
	return sizes, bytes
}

// checkListing fails unless l is every rule 1..n, in order, proved complete.
func checkListing(t *testing.T, what string, l Listing, n int) {
	t.Helper()
	if l.Incomplete != "" || len(l.Rules) != n {
		t.Fatalf("%s: EnabledRules = %d rules, incomplete %q; want all %d, complete", what, len(l.Rules), l.Incomplete, n)
	}
	for i, r := range l.Rules {
		if r.ID != int64(i+1) {
			t.Fatalf("%s: rule %d is id %d, want %d", what, i, r.ID, i+1)
		}
	}
}

// A server that serves the size asked is read 1,000 rules a page, and the
// listing says what it cost.
func TestEnabledRulesLargePages(t *testing.T) {
	a := newPagedAPI(t, 2500, 1000)
	l, err := (&RulesClient{APIURL: a.srv.URL}).EnabledRules(context.Background(), "core.intervaltimer")
	if err != nil {
		t.Fatal(err)
	}
	checkListing(t, "pages of 1,000", l, 2500)
	sizes, bytes := a.asked()
	if !slices.Equal(sizes, []int{1000, 1000, 1000}) {
		t.Errorf("page sizes asked = %v, want [1000 1000 1000]", sizes)
	}
	if l.Requests != 3 || l.Bytes != bytes || l.PageSize != 1000 || l.FellBack != "" {
		t.Errorf("listing cost = %d requests, %d bytes, page size %d, fell back %q; want 3, %d (what the server sent), 1000, none",
			l.Requests, l.Bytes, l.PageSize, l.FellBack, bytes)
	}
}

// Servers that serve smaller pages than asked, each in its own way: the
// client starts again at 100 a page, reads every rule once, proves the
// listing complete, and asks 100 from then on.
func TestEnabledRulesFallsBackToSmallerPages(t *testing.T) {
	for _, tc := range []struct {
		name  string
		n     int
		setup func(*pagedAPI)
	}{
		// Attune: 100 served, 1,000 said, offsets by 1,000: has_next on page 1.
		{"attune caps silently", 2500, func(a *pagedAPI) { a.attune, a.maxSize = true, 100 }},
		// Fewer rules than the size asked: has_next false, total_items gives it away.
		{"attune caps, one page by its count", 150, func(a *pagedAPI) { a.attune, a.maxSize = true, 100 }},
		{"answer says a smaller page_size", 2500, func(a *pagedAPI) { a.maxSize = 500 }},
		{"400 to a large page_size", 2500, func(a *pagedAPI) { a.maxSize, a.refuse = 100, true }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			a := newPagedAPI(t, tc.n, 0)
			tc.setup(a)
			c := &RulesClient{APIURL: a.srv.URL}
			l, err := c.EnabledRules(context.Background(), "core.intervaltimer")
			if err != nil {
				t.Fatal(err)
			}
			checkListing(t, "first listing", l, tc.n)
			sizes, _ := a.asked()
			pages := (tc.n + 99) / 100
			if len(sizes) != 1+pages || sizes[0] != 1000 || slices.ContainsFunc(sizes[1:], func(s int) bool { return s != 100 }) {
				t.Errorf("page sizes asked = %v, want 1000 once, then 100 %d times", sizes, pages)
			}
			if l.FellBack == "" || l.PageSize != 100 || l.Requests != 1+pages {
				t.Errorf("listing: fell back %q, page size %d, %d requests; want a reason, 100, %d", l.FellBack, l.PageSize, l.Requests, 1+pages)
			}
			l, err = c.EnabledRules(context.Background(), "core.intervaltimer")
			if err != nil {
				t.Fatal(err)
			}
			checkListing(t, "second listing", l, tc.n)
			if sizes, _ := a.asked(); len(sizes) != pages || sizes[0] != 100 || l.FellBack != "" {
				t.Errorf("second listing: page sizes asked = %v, fell back %q; want 100 only, %d times, no new fall-back", sizes, l.FellBack, pages)
			}
		})
	}
}

// At the fallback size a short page is what it always was: read, and the
// listing's own checks decide (here the count does not match the total).
func TestEnabledRulesShortPagesAtFallbackSize(t *testing.T) {
	a := newPagedAPI(t, 250, 100)
	a.attune, a.maxSize = true, 60 // serves 60 of every 100
	l, err := (&RulesClient{APIURL: a.srv.URL, PageSize: 100}).EnabledRules(context.Background(), "core.intervaltimer")
	if err != nil {
		t.Fatal(err)
	}
	if l.Incomplete != IncompleteCountMismatch || len(l.Rules) != 170 || l.Requests != 3 || l.FellBack != "" {
		t.Errorf("EnabledRules = %d rules in %d requests, incomplete %q, fell back %q; want 170 (60 + 60 + 50) in 3, %q, none",
			len(l.Rules), l.Requests, l.Incomplete, l.FellBack, IncompleteCountMismatch)
	}
}

// A 400 at the fallback size, or an error other than a 400, is an error:
// nothing is listed, and the client does not fall back on it.
func TestEnabledRulesErrorsAreNotFallBacks(t *testing.T) {
	var asked atomic.Int32
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		asked.Add(1)
		w.WriteHeader(http.StatusServiceUnavailable)
		w.Write([]byte(`{"error":"down"}`))
	}))
	defer srv.Close()
	c := &RulesClient{APIURL: srv.URL}
	if l, err := c.EnabledRules(context.Background(), "core.intervaltimer"); err == nil || len(l.Rules) != 0 || asked.Load() != 1 {
		t.Errorf("EnabledRules against a 503 = %d rules, %v, %d requests; want an error after 1", len(l.Rules), err, asked.Load())
	}
	if c.pageSize() != DefaultPageSize {
		t.Errorf("after a 503, page size = %d, want %d", c.pageSize(), DefaultPageSize)
	}
	a := newPagedAPI(t, 10, 50)
	a.refuse = true
	if _, err := (&RulesClient{APIURL: a.srv.URL, PageSize: 80}).EnabledRules(context.Background(), "core.intervaltimer"); err == nil {
		t.Error("EnabledRules with page_size 80 refused with 400: no error, want one (80 is below the fallback: nothing to fall back to)")
	}
}

// A listing page reads each rule as attune.RemoteRule's own UnmarshalJSON
// does (the page decodes rules once, as a plain struct).
func TestListedRuleReadsAsRemoteRule(t *testing.T) {
	for _, body := range []string{
		`{"id":1,"ref":"a","trigger_ref":"core.intervaltimer","trigger_params":{"interval":5},"enabled":true,"created":"2026-01-01T00:00:00Z","updated":"2026-01-02T00:00:00.123456789+02:00"}`,
		`{"id":2,"ref":"b","trigger_ref":"core.crontimer","trigger_params":{"expression":"@hourly"},"created_at":"2026-01-03T00:00:00Z","updated_at":"2026-01-04T00:00:00Z"}`,
		`{"id":3,"ref":"c","enabled":false,"updated":"not a time","updated_at":"2026-01-05T00:00:00Z","created":17}`,
		`{"id":4,"ref":"d","updated":"\u0032026-01-06T00:00:00Z","created":null,"created_at":""}`,
		`{"id":5,"ref":"e","updated":"2026-01-07T00:00:00Z\"","created":"\"","updated_at":"2026-01-08T00:00:00Z"}`,
		`{"id":6,"ref":"f","trigger_params":null,"enabled":null,"updated":{},"created":[]}`,
		`{"id":7}`,
	} {
		var want attune.RemoteRule
		if err := json.Unmarshal([]byte(body), &want); err != nil {
			t.Fatalf("attune.RemoteRule of %s: %v", body, err)
		}
		var lr attune.RuleJSON
		if err := json.Unmarshal([]byte(body), &lr); err != nil {
			t.Fatalf("attune.RuleJSON of %s: %v", body, err)
		}
		if got := lr.Remote(); !reflect.DeepEqual(got, want) {
			t.Errorf("attune.RuleJSON of %s = %+v, want %+v (as attune.RemoteRule reads it)", body, got, want)
		}
	}
}

// A page larger than the body bound (rules with large params) is read
// again at 100 a page, which keeps within it.
func TestEnabledRulesFallsBackFromAPageTooLarge(t *testing.T) {
	a := newPagedAPI(t, 250, 1000)
	c := &RulesClient{APIURL: a.srv.URL, maxBodyBytes: 20_000} // a rule is ~120 bytes: 100 fit, 250 do not
	l, err := c.EnabledRules(context.Background(), "core.intervaltimer")
	if err != nil {
		t.Fatal(err)
	}
	checkListing(t, "after a page too large", l, 250)
	if sizes, _ := a.asked(); !slices.Equal(sizes, []int{1000, 100, 100, 100}) || !strings.Contains(l.FellBack, "larger than 20000 bytes") {
		t.Errorf("page sizes asked = %v, fell back %q; want [1000 100 100 100], a page too large", sizes, l.FellBack)
	}
}
