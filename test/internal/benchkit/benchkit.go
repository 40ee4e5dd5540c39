// Package benchkit holds what the benchmark commands under test/bench share: building
// timerd (this tree's, or a revision's for a side-by-side run), a progress line on
// standard error, and a bounded buffer for a child process's output.
package benchkit

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"time"
)

// Progress prints a time-stamped line on standard error.
func Progress(format string, args ...any) {
	fmt.Fprintf(os.Stderr, "%s "+format+"\n", append([]any{time.Now().Format("15:04:05")}, args...)...)
}

// GoBuild builds ./cmd/timerd of the module in dir into out.
func GoBuild(ctx context.Context, dir, out string) error {
	cmd := exec.CommandContext(ctx, "go", "build", "-o", out, "./cmd/timerd")
	cmd.Dir, cmd.Stderr = dir, os.Stderr
	if err := cmd.Run(); err != nil {
		return fmt.Errorf("go build in %s: %w", dir, err)
	}
	return nil
}

// BuildRevision builds the timerd of rev from a detached worktree of this repository
// (removed after), into tmp.
func BuildRevision(ctx context.Context, rev, tmp string) (string, error) {
	wt := filepath.Join(tmp, "baseline")
	add := exec.CommandContext(ctx, "git", "worktree", "add", "--detach", wt, rev)
	if b, err := add.CombinedOutput(); err != nil {
		return "", fmt.Errorf("git worktree add %s: %w: %s", rev, err, strings.TrimSpace(string(b)))
	}
	defer func() { _ = exec.Command("git", "worktree", "remove", "--force", wt).Run() }() // a leftover worktree is only clutter
	bin := filepath.Join(tmp, "timerd-"+strings.ReplaceAll(rev, "/", "_"))
	return bin, GoBuild(ctx, wt, bin)
}

// TailBuffer keeps the last 64 KiB written to it: a child process's output, for
// the error that says why it failed.
type TailBuffer struct {
	mu sync.Mutex
	b  []byte
}

func (t *TailBuffer) Write(p []byte) (int, error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.b = append(t.b, p...)
	if over := len(t.b) - 64<<10; over > 0 {
		t.b = t.b[over:]
	}
	return len(p), nil
}

func (t *TailBuffer) String() string {
	t.mu.Lock()
	defer t.mu.Unlock()
	return string(t.b)
}

// FreePort is a 127.0.0.1 address no one listens on right now.
func FreePort() (string, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", err
	}
	defer ln.Close()
	return ln.Addr().String(), nil
}

// CleanEnv is this process's environment without ATTUNE_* and TIMERD_*: a child
// timerd gets only the settings its command gives it.
func CleanEnv() []string {
	var env []string
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "ATTUNE_") && !strings.HasPrefix(kv, "TIMERD_") {
			env = append(env, kv)
		}
	}
	return env
}

// Build is a timerd binary a benchmark runs, and the name it reports it by.
type Build struct{ Name, Bin string }

// Builds are the binaries of a side-by-side run: baseline's (a git revision, "" for
// none) first, then binary, or this tree's built into tmp when binary is "".
func Builds(ctx context.Context, baseline, binary, tmp string) ([]Build, error) {
	var out []Build
	if baseline != "" {
		bin, err := BuildRevision(ctx, baseline, tmp)
		if err != nil {
			return nil, err
		}
		out = append(out, Build{baseline, bin})
	}
	if binary == "" {
		binary = filepath.Join(tmp, "timerd")
		if err := GoBuild(ctx, ".", binary); err != nil {
			return nil, err
		}
	}
	return append(out, Build{"this tree", binary}), nil
}

// ParseMetrics reads a Prometheus text page into its series ("name{labels}", as
// written) and their values; comments and lines that do not parse are skipped.
func ParseMetrics(r io.Reader) (map[string]float64, error) {
	m := map[string]float64{}
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 0, 64<<10), 1<<20)
	for sc.Scan() {
		line := sc.Text()
		if line == "" || line[0] == '#' {
			continue
		}
		i := strings.LastIndexByte(line, ' ')
		if i < 0 {
			continue
		}
		v, err := strconv.ParseFloat(line[i+1:], 64)
		if err != nil {
			continue
		}
		m[line[:i]] = v
	}
	return m, sc.Err()
}
