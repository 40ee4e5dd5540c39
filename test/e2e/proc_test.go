package e2e

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/timerd/timerd/test/testkit"
)

// timerdBin is the binary under test, built once by TestMain.
var timerdBin string

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "timerd-e2e-bin-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	timerdBin = filepath.Join(dir, "timerd")
	build := exec.Command("go", append(buildArgs(), "-o", timerdBin, "github.com/timerd/timerd/cmd/timerd")...)
	build.Stdout, build.Stderr = os.Stderr, os.Stderr
	if err := build.Run(); err != nil {
		fmt.Fprintln(os.Stderr, "build timerd:", err)
		os.Exit(1)
	}
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

// buildArgs is `go build` with the flags of the timerd processes under test: the
// binary as it ships (no race detector), or with TIMERD_E2E_RACE=1 (make e2e-race) a
// race-built one. The race detector covers the same code in every package's own
// tests, the node's in-process clusters included; here a race-built binary costs 5 to
// 10 times the CPU in each of the dozen processes a cluster test runs, and on two
// cores that load, not the code, decided whether their timing held.
func buildArgs() []string {
	if os.Getenv("TIMERD_E2E_RACE") == "1" {
		return []string{"build", "-race"}
	}
	return []string{"build"}
}

// proc is a running timerd process.
type proc struct {
	t       *testing.T
	cmd     *exec.Cmd
	mu      sync.Mutex
	out     bytes.Buffer // stdout and stderr
	done    chan struct{}
	waitErr error
}

func start(t *testing.T, args ...string) *proc {
	t.Helper()
	return startCmd(t, exec.Command(timerdBin, args...))
}

// startCmd starts cmd (a timerd command line whose environment or stdin
// the caller set) as start does.
func startCmd(t *testing.T, cmd *exec.Cmd) *proc {
	t.Helper()
	args := cmd.Args[1:]
	p := &proc{t: t, cmd: cmd, done: make(chan struct{})}
	pr, pw := io.Pipe()
	p.cmd.Stdout, p.cmd.Stderr = pw, pw
	if err := p.cmd.Start(); err != nil {
		t.Fatalf("start timerd %v: %v", args, err)
	}
	go func() {
		sc := bufio.NewScanner(pr)
		sc.Buffer(make([]byte, 1<<20), 1<<20)
		for sc.Scan() {
			p.mu.Lock()
			p.out.Write(sc.Bytes())
			p.out.WriteByte('\n')
			p.mu.Unlock()
		}
	}()
	go func() {
		p.waitErr = p.cmd.Wait()
		pw.Close()
		close(p.done)
	}()
	t.Cleanup(func() {
		p.kill()
		if t.Failed() {
			t.Logf("output of timerd %v:\n%s", args, p.output())
		}
	})
	return p
}

func (p *proc) output() string {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.out.String()
}

// waitOutput waits until the output matches re and returns the submatches.
func (p *proc) waitOutput(re *regexp.Regexp, timeout time.Duration) []string {
	p.t.Helper()
	var m []string
	testkit.Eventually(p.t, timeout, fmt.Sprintf("timerd prints %q", re), func() bool {
		if m = re.FindStringSubmatch(p.output()); m != nil {
			return true
		}
		select {
		case <-p.done:
			p.t.Fatalf("timerd exited (%v) before printing %q", p.waitErr, re)
		default:
		}
		return false
	})
	return m
}

func (p *proc) kill() {
	select {
	case <-p.done:
		return
	default:
	}
	_ = p.cmd.Process.Kill()
	<-p.done
}

// stop sends SIGTERM and waits for the exit status.
func (p *proc) stop(timeout time.Duration) error {
	p.t.Helper()
	_ = p.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-p.done:
		return p.waitErr
	case <-time.After(timeout):
		p.t.Fatalf("timerd did not stop within %s of SIGTERM", timeout)
		return nil
	}
}

var (
	apiURLRe  = regexp.MustCompile(`API:\s+(http://127\.0\.0\.1:\d+)`)
	nodeURLRe = regexp.MustCompile(`node:\s+(http://127\.0\.0\.1:\d+)`)
)

// dev is a running `timerd dev`.
type dev struct {
	*proc
	apiURL, nodeURL string
	token           string // the admin token dev wrote to its data dir
}

// startDev starts `timerd dev` on dataDir with ports picked by the kernel
// and reads back the URLs it printed and its admin token.
func startDev(t *testing.T, dataDir string) *dev {
	t.Helper()
	p := start(t, "dev", "--data-dir", dataDir, "--api-addr", "127.0.0.1:0", "--http-addr", "127.0.0.1:0", "--log-format", "text")
	d := &dev{proc: p}
	d.apiURL = p.waitOutput(apiURLRe, 30*time.Second)[1]
	d.nodeURL = p.waitOutput(nodeURLRe, 5*time.Second)[1]
	tok, err := os.ReadFile(filepath.Join(dataDir, "admin.token"))
	if err != nil {
		t.Fatalf("admin token of timerd dev: %v", err)
	}
	d.token = strings.TrimSpace(string(tok))
	waitReady(t, d.nodeURL, 30*time.Second)
	return d
}

func waitReady(t *testing.T, nodeURL string, timeout time.Duration) {
	t.Helper()
	testkit.Eventually(t, timeout, nodeURL+"/readyz 200", func() bool {
		resp, err := http.Get(nodeURL + "/readyz")
		if err != nil {
			return false
		}
		resp.Body.Close()
		return resp.StatusCode == http.StatusOK
	})
}

// apiDo sends a JSON request to the API, as admin, and decodes the answer
// into out.
func (d *dev) apiDo(t *testing.T, method, path string, body any, out any) int {
	t.Helper()
	var rd io.Reader
	if body != nil {
		b, err := json.Marshal(body)
		if err != nil {
			t.Fatal(err)
		}
		rd = bytes.NewReader(b)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	url := d.apiURL + path
	req, err := http.NewRequestWithContext(ctx, method, url, rd)
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("Authorization", "Bearer "+d.token)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", method, url, err)
	}
	defer resp.Body.Close()
	raw, _ := io.ReadAll(resp.Body)
	if out != nil && len(raw) > 0 {
		if err := json.Unmarshal(raw, out); err != nil {
			t.Fatalf("%s %s: decode %q: %v", method, url, raw, err)
		}
	}
	return resp.StatusCode
}

type event struct {
	ID                int64          `json:"id"`
	TriggerRef        string         `json:"trigger_ref"`
	TriggerInstanceID string         `json:"trigger_instance_id"`
	RuleRef           string         `json:"rule_ref"`
	IdempotencyKey    string         `json:"idempotency_key"`
	Payload           map[string]any `json:"payload"`
}

// events lists every event of a rule, all pages.
func (d *dev) events(t *testing.T, ruleRef string) []event {
	t.Helper()
	var all []event
	for page := 1; ; page++ {
		var body struct {
			Items      []event `json:"items"`
			Pagination struct {
				HasNext bool `json:"has_next"`
			} `json:"pagination"`
		}
		path := fmt.Sprintf("/api/v1/events?rule_ref=%s&page=%d&page_size=1000", ruleRef, page)
		if code := d.apiDo(t, http.MethodGet, path, nil, &body); code != http.StatusOK {
			t.Fatalf("GET %s: status %d", path, code)
		}
		all = append(all, body.Items...)
		if !body.Pagination.HasNext {
			return all
		}
	}
}

func (d *dev) createRule(t *testing.T, ref, triggerRef string, params map[string]any) int64 {
	t.Helper()
	var out struct {
		Data struct {
			ID int64 `json:"id"`
		} `json:"data"`
	}
	body := map[string]any{"ref": ref, "trigger_ref": triggerRef, "trigger_params": params, "enabled": true}
	if code := d.apiDo(t, http.MethodPost, "/api/v1/rules", body, &out); code != http.StatusCreated {
		t.Fatalf("create rule %s: status %d", ref, code)
	}
	return out.Data.ID
}

func payloadTime(t *testing.T, e event, key string) time.Time {
	t.Helper()
	s, _ := e.Payload[key].(string)
	ts, err := time.Parse(time.RFC3339Nano, s)
	if err != nil {
		t.Fatalf("event %d: payload %s = %q: %v", e.ID, key, s, err)
	}
	return ts
}

func payloadInt(e event, key string) int64 {
	f, _ := e.Payload[key].(float64)
	return int64(f)
}
