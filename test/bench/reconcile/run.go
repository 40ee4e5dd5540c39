package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/timerd/timerd/test/internal/benchkit"
	"github.com/timerd/timerd/test/internal/procstat"
)

// result is one agent's periodic round.
type result struct {
	Build    string // benchkit.Build's name
	PageSize int
	PeakRSS  int64 // the agent's most resident memory by the end of its start-up round (VmHWM)
	Requests int
	Bytes    int64
	Round    time.Duration // from its first listing request to its "reconciled" log line
	AgentCPU time.Duration
	APICPU   time.Duration
	Ready    time.Duration // agent start to its first (start-up) round logged
}

// apiProc is a running `timerd api` with an admin and a sensor token.
type apiProc struct {
	cmd    *exec.Cmd
	url    string
	admin  string
	sensor string
	exited chan error
}

var apiListenRe = regexp.MustCompile(`"url":"(http://127\.0\.0\.1:\d+)"`)

// startAPI starts `timerd api` on dir (its signing key kept there too).
func startAPI(ctx context.Context, bin, dir string) (*apiProc, error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, err
	}
	key := filepath.Join(dir, "bench-signing.key")
	if _, err := os.Stat(key); err != nil {
		if _, err := output(ctx, bin, "token", "keygen", "--out", key); err != nil {
			return nil, err
		}
	}
	a := &apiProc{exited: make(chan error, 1)}
	var err error
	if a.admin, err = output(ctx, bin, "token", "issue", "--key-file", key, "--scope", "admin", "--sub", "bench-admin", "--ttl", "12h"); err != nil {
		return nil, err
	}
	if a.sensor, err = output(ctx, bin, "token", "issue", "--key-file", key, "--scope", "sensor", "--sub", "bench-node",
		"--login", "core.timer", "--trigger-types", "core.intervaltimer,core.crontimer,core.datetimetimer,core.timer", "--ttl", "12h"); err != nil {
		return nil, err
	}
	a.cmd = exec.CommandContext(ctx, bin, "api", "--addr", "127.0.0.1:0", "--data-dir", dir, "--key-file", key)
	a.cmd.Env = benchkit.CleanEnv()
	a.cmd.Cancel = func() error { return a.cmd.Process.Signal(syscall.SIGTERM) }
	logs, err := a.cmd.StderrPipe()
	if err != nil {
		return nil, err
	}
	a.cmd.Stdout = a.cmd.Stderr
	if err := a.cmd.Start(); err != nil {
		return nil, err
	}
	found := make(chan string, 1)
	go func() {
		sc := bufio.NewScanner(logs)
		sc.Buffer(make([]byte, 64<<10), 1<<20)
		for sc.Scan() {
			if m := apiListenRe.FindStringSubmatch(sc.Text()); m != nil {
				select {
				case found <- m[1]:
				default:
				}
			}
		}
	}()
	go func() { a.exited <- a.cmd.Wait() }()
	select {
	case a.url = <-found:
		return a, nil
	case err := <-a.exited:
		return nil, fmt.Errorf("timerd api exited: %w", err)
	case <-time.After(time.Minute):
		a.stop()
		return nil, errors.New("timerd api did not say where it listens within a minute")
	}
}

func (a *apiProc) stop() {
	if a.cmd.Process != nil {
		_ = a.cmd.Process.Signal(syscall.SIGTERM)
		select {
		case err := <-a.exited:
			_ = err // stopped by us: its status says so
		case <-time.After(30 * time.Second):
			_ = a.cmd.Process.Kill()
		}
	}
}

// total is the rules the API lists.
func (a *apiProc) total(ctx context.Context) (int, error) {
	var page struct {
		Pagination struct {
			TotalItems int `json:"total_items"`
		} `json:"pagination"`
	}
	err := a.do(ctx, http.MethodGet, "/api/v1/rules?page_size=1", nil, http.StatusOK, &page)
	return page.Pagination.TotalItems, err
}

// load creates rules until the API holds n, loaders at a time.
func (a *apiProc) load(ctx context.Context, n, loaders int) error {
	have, err := a.total(ctx)
	if err != nil {
		return err
	}
	if have >= n {
		benchkit.Progress("the API holds %d rules already", have)
		return nil
	}
	benchkit.Progress("loading %d rules (%d held)", n-have, have)
	start := time.Now()
	var next atomic.Int64
	next.Store(int64(have))
	errs := make(chan error, loaders)
	for range loaders {
		go func() {
			for {
				id := next.Add(1)
				if id > int64(n) {
					errs <- nil
					return
				}
				trigger, params := ruleOf(id)
				body := fmt.Sprintf(`{"ref":"bench.rule.%d","trigger_ref":%q,"trigger_params":%s}`, id, trigger, params)
				if err := a.do(ctx, http.MethodPost, "/api/v1/rules", strings.NewReader(body), http.StatusCreated, nil); err != nil {
					errs <- fmt.Errorf("create rule %d: %w", id, err)
					return
				}
				if id%50_000 == 0 {
					benchkit.Progress("%d rules", id)
				}
			}
		}()
	}
	for range loaders {
		if err := <-errs; err != nil {
			return err
		}
	}
	benchkit.Progress("loaded %d rules in %s (%.0f/s)", n-have, time.Since(start).Round(time.Second), float64(n-have)/time.Since(start).Seconds())
	return nil
}

// ruleOf is rule id's trigger and params: 80% interval timers of 1 to 24
// hours, 10% daily cron, 10% datetime in 2030: a fire rate the machine
// carries while it measures.
func ruleOf(id int64) (trigger, params string) {
	switch id % 10 {
	case 0:
		return "core.crontimer", fmt.Sprintf(`{"expression":"%d %d %d * * *"}`, id%60, (id/60)%60, (id/3600)%24)
	case 1:
		return "core.datetimetimer", fmt.Sprintf(`{"fire_at":"2030-01-01T%02d:%02d:00Z"}`, (id/60)%24, id%60)
	}
	return "core.intervaltimer", fmt.Sprintf(`{"interval":%d,"unit":"seconds"}`, 3600+id%82800)
}

func (a *apiProc) do(ctx context.Context, method, path string, body io.Reader, want int, out any) error {
	req, err := http.NewRequestWithContext(ctx, method, a.url+path, body)
	if err != nil {
		return err
	}
	req.Header.Set("Authorization", "Bearer "+a.admin)
	req.Header.Set("Content-Type", "application/json")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	if resp.StatusCode != want {
		return fmt.Errorf("%s %s: %d %s", method, path, resp.StatusCode, bytes.TrimSpace(b))
	}
	if out != nil {
		return json.Unmarshal(b, out)
	}
	return nil
}

// measure runs an agent asking size rules a page against the API through a
// counting proxy, until its first periodic round is done.
func measure(ctx context.Context, cfg config, bin string, api *apiProc, dataDir string, size int) (result, error) {
	res := result{PageSize: size}
	target, err := url.Parse(api.url)
	if err != nil {
		return res, err
	}
	px := newCountingProxy(target)
	defer px.Close()
	httpAddr, err := benchkit.FreePort()
	if err != nil {
		return res, err
	}
	cmd := exec.CommandContext(ctx, bin, "agent")
	cmd.Env = append(benchkit.CleanEnv(),
		"ATTUNE_API_URL="+px.URL, "ATTUNE_API_TOKEN="+api.sensor, "TIMERD_DATA_DIR="+dataDir,
		"TIMERD_HTTP_ADDR="+httpAddr, "TIMERD_BIND_ADDR=127.0.0.1:0", fmt.Sprintf("TIMERD_NODE_NAME=bench-%d", size),
		"TIMERD_RECONCILE_INTERVAL="+cfg.Interval.String(), fmt.Sprintf("TIMERD_RECONCILE_PAGE_SIZE=%d", size),
		"ATTUNE_LOG_LEVEL=info")
	cmd.Cancel = func() error { return cmd.Process.Signal(syscall.SIGTERM) }
	logs, err := cmd.StdoutPipe()
	if err != nil {
		return res, err
	}
	cmd.Stderr = cmd.Stdout
	start := time.Now()
	if err := cmd.Start(); err != nil {
		return res, err
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	defer func() {
		_ = cmd.Process.Signal(syscall.SIGTERM)
		select {
		case err := <-exited:
			_ = err // stopped by us: its status says so
		case <-time.After(30 * time.Second):
			_ = cmd.Process.Kill()
		}
	}()
	rounds := make(chan time.Time, 4)
	tail := &lastLines{}
	go watchRounds(logs, rounds, tail)
	wait := func(what string, within time.Duration) (time.Time, error) {
		select {
		case at := <-rounds:
			return at, nil
		case err := <-exited:
			exited <- err
			return time.Time{}, fmt.Errorf("the agent exited (%w) before %s:\n%s", err, what, tail)
		case <-time.After(within):
			return time.Time{}, fmt.Errorf("no %s within %s:\n%s", what, within, tail)
		case <-ctx.Done():
			return time.Time{}, ctx.Err()
		}
	}
	first, err := wait("start-up reconcile", 10*time.Minute)
	if err != nil {
		return res, err
	}
	res.Ready = first.Sub(start)
	if res.PeakRSS, err = procstat.PeakRSS(cmd.Process.Pid); err != nil {
		return res, err
	}
	// The periodic round: CPU from its first request to its log line.
	var agent0, api0 procstat.Sample
	var roundStart time.Time
	px.reset(func() {
		roundStart = time.Now()
		agent0, _ = procstat.Read(cmd.Process.Pid)
		api0, _ = procstat.Read(api.cmd.Process.Pid)
	})
	end, err := wait("periodic reconcile", cfg.Interval+10*time.Minute)
	if err != nil {
		return res, err
	}
	agent1, err := procstat.Read(cmd.Process.Pid)
	if err != nil {
		return res, err
	}
	api1, err := procstat.Read(api.cmd.Process.Pid)
	if err != nil {
		return res, err
	}
	res.Requests, res.Bytes = px.counts()
	px.mu.Lock()
	res.Round = end.Sub(roundStart)
	res.AgentCPU, res.APICPU = agent1.CPU-agent0.CPU, api1.CPU-api0.CPU
	px.mu.Unlock()
	return res, nil
}

var reconciledRe = regexp.MustCompile(`"message":"reconciled"`)

// watchRounds sends the time of each "reconciled" log line of the agent,
// keeping the last lines for an error.
func watchRounds(logs io.Reader, rounds chan<- time.Time, tail *lastLines) {
	sc := bufio.NewScanner(logs)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		tail.add(sc.Text())
		if reconciledRe.MatchString(sc.Text()) {
			select {
			case rounds <- time.Now():
			default:
			}
		}
	}
}

// countingProxy forwards everything to the API and counts the rules
// listing's requests and the bytes of its answers; onFirst runs (once after
// each reset) on the first listing request.
type countingProxy struct {
	*httptest.Server
	mu       sync.Mutex
	requests int
	bytes    int64
	onFirst  func()
}

func newCountingProxy(target *url.URL) *countingProxy {
	p := &countingProxy{}
	rp := httputil.NewSingleHostReverseProxy(target)
	rp.ModifyResponse = func(resp *http.Response) error {
		if isListing(resp.Request) {
			resp.Body = &countingBody{ReadCloser: resp.Body, p: p}
		}
		return nil
	}
	p.Server = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if isListing(r) {
			p.mu.Lock()
			p.requests++
			f := p.onFirst
			p.onFirst = nil
			if f != nil {
				f()
			}
			p.mu.Unlock()
		}
		rp.ServeHTTP(w, r)
	}))
	return p
}

func isListing(r *http.Request) bool {
	return r.Method == http.MethodGet && r.URL.Path == "/api/v1/rules"
}

// reset zeroes the counts; onFirst runs on the next listing request.
func (p *countingProxy) reset(onFirst func()) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.requests, p.bytes, p.onFirst = 0, 0, onFirst
}

func (p *countingProxy) counts() (requests int, bytes int64) {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.requests, p.bytes
}

type countingBody struct {
	io.ReadCloser
	p *countingProxy
}

func (b *countingBody) Read(buf []byte) (int, error) {
	n, err := b.ReadCloser.Read(buf)
	b.p.mu.Lock()
	b.p.bytes += int64(n)
	b.p.mu.Unlock()
	return n, err
}

// lastLines keeps the last 40 lines written to it.
type lastLines struct {
	mu    sync.Mutex
	lines []string
}

func (l *lastLines) add(s string) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.lines = append(l.lines, s)
	if len(l.lines) > 40 {
		l.lines = l.lines[len(l.lines)-40:]
	}
}

func (l *lastLines) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return strings.Join(l.lines, "\n")
}

func output(ctx context.Context, bin string, args ...string) (string, error) {
	cmd := exec.CommandContext(ctx, bin, args...)
	cmd.Env = benchkit.CleanEnv()
	out, err := cmd.Output()
	if err != nil {
		return "", fmt.Errorf("timerd %s %s: %w", args[0], args[1], err)
	}
	return strings.TrimSpace(string(out)), nil
}
