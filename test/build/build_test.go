package build

import (
	"bufio"
	"bytes"
	"context"
	"debug/buildinfo"
	"debug/elf"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"

	"github.com/timerd/timerd/test/testkit"
)

// What TestMain hands `make build`: a version of its own, and a
// SOURCE_DATE_EPOCH, so that the build date is known.
const (
	testVersion   = "v9.8.7-buildtest"
	sourceEpoch   = "1700000000"
	wantBuildDate = "2023-11-14T22:13:20Z"
)

var (
	repoRoot string // the module's root, where the Makefile is
	binary   string // the binary `make build` made
	revision string // git rev-parse HEAD: what make injects
)

// TestMain runs `make build` once, into a temporary directory (BUILD_OUT),
// as a user or the Dockerfile runs it.
func TestMain(m *testing.M) {
	code, err := run(m)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		code = 1
	}
	os.Exit(code)
}

func run(m *testing.M) (int, error) {
	gomod, err := exec.Command("go", "env", "GOMOD").Output()
	if err != nil {
		return 0, fmt.Errorf("go env GOMOD: %w", err)
	}
	repoRoot = filepath.Dir(strings.TrimSpace(string(gomod)))
	rev, err := exec.Command("git", "-C", repoRoot, "rev-parse", "HEAD").Output()
	if err != nil {
		return 0, fmt.Errorf("git rev-parse HEAD: %w", err)
	}
	revision = strings.TrimSpace(string(rev))
	dir, err := os.MkdirTemp("", "timerd-build-")
	if err != nil {
		return 0, err
	}
	defer os.RemoveAll(dir)
	binary = filepath.Join(dir, "timerd")
	mk := makeCmd("build", "BUILD_OUT="+binary, "VERSION="+testVersion)
	mk.Env = append(mk.Env, "SOURCE_DATE_EPOCH="+sourceEpoch)
	if out, err := mk.CombinedOutput(); err != nil {
		return 0, fmt.Errorf("make build: %w\n%s", err, out)
	}
	return m.Run(), nil
}

// makeCmd is make -s in the repository's root, with none of the Makefile's
// build variables from the environment (nor those of an outer make, as in
// `make test`): the Makefile's defaults and args only.
func makeCmd(args ...string) *exec.Cmd {
	cmd := exec.Command("make", append([]string{"-s", "-C", repoRoot}, args...)...)
	for _, e := range os.Environ() {
		name, _, _ := strings.Cut(e, "=")
		switch name {
		case "MAKEFLAGS", "MFLAGS", "MAKELEVEL", "VERSION", "REVISION", "BUILD_DATE", "BUILD_OUT", "SOURCE_DATE_EPOCH":
			continue
		}
		cmd.Env = append(cmd.Env, e)
	}
	return cmd
}

// The binary links nothing at run time (no interpreter, no shared library)
// and was built as the Makefile says: no cgo, paths trimmed.
func TestBinaryIsStatic(t *testing.T) {
	f, err := elf.Open(binary)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	for _, p := range f.Progs {
		if p.Type == elf.PT_INTERP {
			t.Error("the binary has a program interpreter (PT_INTERP): it is dynamically linked")
		}
	}
	if libs, err := f.ImportedLibraries(); err != nil || len(libs) > 0 {
		t.Errorf("the binary needs shared libraries %v (%v)", libs, err)
	}
	bi, err := buildinfo.ReadFile(binary)
	if err != nil {
		t.Fatal(err)
	}
	settings := map[string]string{}
	for _, s := range bi.Settings {
		settings[s.Key] = s.Value
	}
	for key, want := range map[string]string{"CGO_ENABLED": "0", "-trimpath": "true"} {
		if settings[key] != want {
			t.Errorf("build setting %s = %q, want %q", key, settings[key], want)
		}
	}
}

// chroot runs the binary alone in a fresh directory as its root, with an
// empty environment: no libc, no /usr/share/zoneinfo, no ZONEINFO, no /etc,
// no /tmp. dirs are made in the root first.
func chroot(t *testing.T, dirs []string, args ...string) *exec.Cmd {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("chroot needs root") // CI runs as root, as for the tmpfs and iptables tests
	}
	root := t.TempDir()
	src, err := os.Open(binary)
	if err != nil {
		t.Fatal(err)
	}
	defer src.Close()
	dst, err := os.OpenFile(filepath.Join(root, "timerd"), os.O_CREATE|os.O_WRONLY|os.O_EXCL, 0o755)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := io.Copy(dst, src); err != nil {
		t.Fatal(err)
	}
	if err := dst.Close(); err != nil {
		t.Fatal(err)
	}
	for _, d := range dirs {
		if err := os.MkdirAll(filepath.Join(root, d), 0o700); err != nil {
			t.Fatal(err)
		}
	}
	entries, err := os.ReadDir(root)
	if err != nil {
		t.Fatal(err)
	}
	if len(entries) != 1+len(dirs) {
		t.Fatalf("the root holds %d entries, want the binary and %v", len(entries), dirs)
	}
	cmd := exec.Command("chroot", append([]string{root, "/timerd"}, args...)...)
	cmd.Env = []string{}
	return cmd
}

func output(t *testing.T, cmd *exec.Cmd) string {
	t.Helper()
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("%v: %v\n%s%s", cmd.Args[2:], err, out, stderr.Bytes())
	}
	return string(out)
}

// Europe/Berlin slots from the embedded zone data: noon is 11:00 UTC in
// winter (CET, +01:00) and 10:00 UTC in summer (CEST, +02:00), switching on
// the last Sundays of March and October 2026.
func TestBerlinCronInEmptyRoot(t *testing.T) {
	t.Parallel()
	const params = `{"expression":"0 0 12 * * *","timezone":"Europe/Berlin"}`
	for _, tc := range []struct {
		from string
		want []string
	}{
		{"2026-03-27T12:00:00Z", []string{"2026-03-28T11:00:00Z", "2026-03-29T10:00:00Z", "2026-03-30T10:00:00Z"}},
		{"2026-10-24T00:00:00Z", []string{"2026-10-24T10:00:00Z", "2026-10-25T11:00:00Z", "2026-10-26T11:00:00Z"}},
	} {
		out := output(t, chroot(t, nil, "schedule", "next", "--trigger", "core.crontimer", "--params", params,
			"--from", tc.from, "--count", "3"))
		if got := strings.Fields(out); strings.Join(got, " ") != strings.Join(tc.want, " ") {
			t.Errorf("schedule next --from %s:\n got %q\nwant %q", tc.from, got, tc.want)
		}
	}
	// A zone the embedded database does not hold is an error, not UTC.
	cmd := chroot(t, nil, "schedule", "next", "--trigger", "core.crontimer",
		"--params", `{"expression":"0 0 12 * * *","timezone":"Europe/Atlantis"}`, "--count", "1")
	out, err := cmd.CombinedOutput()
	if err == nil || !strings.Contains(string(out), "Europe/Atlantis") {
		t.Errorf("an unknown zone: %v, %q; want an error naming it", err, out)
	}
}

// `timerd --version` and `timerd version` print what make injected.
func TestVersionIsInjected(t *testing.T) {
	t.Parallel()
	want := fmt.Sprintf("timerd version %s\n  revision:   %s\n  build date: %s\n  go version: %s\n  platform:   %s/%s\n",
		testVersion, revision, wantBuildDate, runtime.Version(), runtime.GOOS, runtime.GOARCH)
	for _, args := range [][]string{{"--version"}, {"version"}} {
		if got := output(t, chroot(t, nil, args...)); got != want {
			t.Errorf("timerd %s:\n%s\nwant\n%s", args[0], got, want)
		}
	}
}

var nodeURLRe = regexp.MustCompile(`node:\s+(http://127\.0\.0\.1:\d+)`)

// The whole node runs in the empty root (`timerd dev`: API and node in one
// process, data in /data): it gets ready, and timerd_build_info carries the
// injected version and revision.
func TestDevRunsInEmptyRootWithBuildInfo(t *testing.T) {
	t.Parallel()
	cmd := chroot(t, []string{"data"}, "dev", "--data-dir", "/data", "--api-addr", "127.0.0.1:0", "--http-addr", "127.0.0.1:0")
	var mu sync.Mutex
	var out bytes.Buffer
	pr, pw := io.Pipe()
	cmd.Stdout, cmd.Stderr = pw, pw
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan struct{})
	go func() { _ = cmd.Wait(); pw.Close(); close(exited) }() // killed at the end: its status says nothing
	t.Cleanup(func() {
		_ = cmd.Process.Kill()
		<-exited
		if t.Failed() {
			mu.Lock()
			t.Logf("output of timerd dev:\n%s", out.String())
			mu.Unlock()
		}
	})
	go func() {
		sc := bufio.NewScanner(pr)
		for sc.Scan() {
			mu.Lock()
			out.Write(sc.Bytes())
			out.WriteByte('\n')
			mu.Unlock()
		}
	}()
	var nodeURL string
	testkit.Eventually(t, 30*time.Second, "timerd dev prints its node URL", func() bool {
		mu.Lock()
		defer mu.Unlock()
		if m := nodeURLRe.FindStringSubmatch(out.String()); m != nil {
			nodeURL = m[1]
			return true
		}
		return false
	})
	testkit.Eventually(t, 30*time.Second, nodeURL+"/readyz 200", func() bool {
		return get(t, nodeURL+"/readyz", nil) == http.StatusOK
	})
	var body []byte
	if code := get(t, nodeURL+"/metrics", &body); code != http.StatusOK {
		t.Fatalf("/metrics: %d", code)
	}
	parser := expfmt.NewTextParser(model.UTF8Validation)
	mfs, err := parser.TextToMetricFamilies(bytes.NewReader(body))
	if err != nil {
		t.Fatalf("/metrics: %v", err)
	}
	mf := mfs["timerd_build_info"]
	if mf == nil || len(mf.GetMetric()) != 1 {
		t.Fatalf("timerd_build_info: %v, want one series", mf)
	}
	labels := map[string]string{}
	for _, l := range mf.GetMetric()[0].GetLabel() {
		labels[l.GetName()] = l.GetValue()
	}
	for name, want := range map[string]string{"version": testVersion, "revision": revision, "goversion": runtime.Version()} {
		if labels[name] != want {
			t.Errorf("timerd_build_info{%s=%q}, want %q (labels %v)", name, labels[name], want, labels)
		}
	}
	if v := mf.GetMetric()[0].GetGauge().GetValue(); v != 1 {
		t.Errorf("timerd_build_info = %v, want 1", v)
	}
}

// get returns the status of GET url (0 when it fails), and its body in body.
func get(t *testing.T, url string, body *[]byte) int {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		t.Fatal(err)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return 0
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		return 0
	}
	if body != nil {
		*body = b
	}
	return resp.StatusCode
}

// Without overrides make build takes the version from git describe, the
// revision from git rev-parse and the date from now, RFC 3339 UTC; a
// SOURCE_DATE_EPOCH that is not a number stops it before it builds.
func TestMakeBuildDefaults(t *testing.T) {
	t.Parallel()
	describe, err := exec.Command("git", "-C", repoRoot, "describe", "--tags", "--always", "--dirty").Output()
	if err != nil {
		t.Fatalf("git describe: %v", err)
	}
	dry, err := makeCmd("-n", "build").Output()
	if err != nil {
		t.Fatalf("make -n build: %v", err)
	}
	const pkg = "github.com/prometheus/common/version."
	for _, want := range []string{
		"CGO_ENABLED=0 ", " -trimpath ",
		"-X " + pkg + "Version=" + strings.TrimSpace(string(describe)) + " ",
		"-X " + pkg + "Revision=" + revision + " ",
	} {
		if !strings.Contains(string(dry), want) {
			t.Errorf("make -n build does not run %q:\n%s", want, dry)
		}
	}
	date := regexp.MustCompile(`-X ` + regexp.QuoteMeta(pkg) + `BuildDate=(\S+)"`).FindSubmatch(dry)
	if date == nil {
		t.Fatalf("make -n build sets no build date:\n%s", dry)
	}
	if d, err := time.Parse(time.RFC3339, string(date[1])); err != nil || d.Location() != time.UTC || time.Since(d).Abs() > time.Minute {
		t.Errorf("build date %s (%v): want now, RFC 3339 UTC", date[1], err)
	}

	out := filepath.Join(t.TempDir(), "timerd")
	mk := makeCmd("build", "BUILD_OUT="+out)
	mk.Env = append(mk.Env, "SOURCE_DATE_EPOCH=yesterday")
	msg, err := mk.CombinedOutput()
	if err == nil || !strings.Contains(string(msg), "SOURCE_DATE_EPOCH=yesterday is not seconds since 1970") {
		t.Errorf("make build with SOURCE_DATE_EPOCH=yesterday: %v\n%s", err, msg)
	}
	if _, err := os.Stat(out); !os.IsNotExist(err) {
		t.Errorf("make build with a bad SOURCE_DATE_EPOCH built %s (%v)", out, err)
	}
}
