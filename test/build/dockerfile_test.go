package build

import (
	"encoding/json"
	"net"
	"os"
	"os/exec"
	"path"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"
)

// instruction is one Dockerfile instruction: its keyword, upper case, and
// the rest of its line (continuations joined).
type instruction struct {
	cmd, args string
}

// stage is the instructions of one FROM.
type stage struct {
	from string
	ins  []instruction
}

func (s stage) all(cmd string) []string {
	var out []string
	for _, in := range s.ins {
		if in.cmd == cmd {
			out = append(out, in.args)
		}
	}
	return out
}

// parseDockerfile reads the subset of the Dockerfile syntax the file uses:
// comment lines, backslash continuations, one instruction a line.
func parseDockerfile(t *testing.T, file string) []stage {
	t.Helper()
	b, err := os.ReadFile(file)
	if err != nil {
		t.Fatal(err)
	}
	var stages []stage
	var line string
	for raw := range strings.Lines(string(b)) {
		raw = strings.TrimSpace(raw)
		if strings.HasPrefix(raw, "#") || (raw == "" && line == "") {
			continue
		}
		if cont, ok := strings.CutSuffix(raw, `\`); ok {
			line += cont + " "
			continue
		}
		line += raw
		cmd, args, _ := strings.Cut(line, " ")
		line = ""
		in := instruction{strings.ToUpper(cmd), strings.Join(strings.Fields(args), " ")}
		if in.cmd == "FROM" {
			stages = append(stages, stage{from: in.args})
			continue
		}
		if len(stages) == 0 {
			if in.cmd != "ARG" {
				t.Fatalf("%s before the first FROM", in.cmd)
			}
			continue
		}
		stages[len(stages)-1].ins = append(stages[len(stages)-1].ins, in)
	}
	return stages
}

// agentHelp is `timerd agent --help` of the built binary: the settings the
// agent reads and their defaults.
func agentHelp(t *testing.T) string {
	t.Helper()
	out, err := exec.Command(binary, "agent", "--help").CombinedOutput()
	if err != nil {
		t.Fatalf("timerd agent --help: %v\n%s", err, out)
	}
	return string(out)
}

// flagDefault is the default a flag's help line gives.
func flagDefault(t *testing.T, help, flag string) string {
	t.Helper()
	m := regexp.MustCompile(`(?m)^\s+--` + flag + ` .*\(default "([^"]*)"\)$`).FindStringSubmatch(help)
	if m == nil {
		t.Fatalf("timerd agent --help gives no default for --%s", flag)
	}
	return m[1]
}

// readsEnv reports whether the agent reads the environment variable name:
// a flag's "(env NAME)" or a line of the settings without a flag.
func readsEnv(help, name string) bool {
	return strings.Contains(help, "(env "+name+")") ||
		regexp.MustCompile(`(?m)^\s+`+regexp.QuoteMeta(name)+`\s`).MatchString(help)
}

func port(t *testing.T, hostport string) string {
	t.Helper()
	_, p, err := net.SplitHostPort(hostport)
	if err != nil {
		t.Fatalf("%q: %v", hostport, err)
	}
	return p
}

// The image builds with `make build` (so with the flags the binary of
// TestBinaryIsStatic was built with), copies what it made, and exposes,
// stores and runs what the agent reads.
func TestDockerfile(t *testing.T) {
	t.Parallel()
	stages := parseDockerfile(t, filepath.Join(repoRoot, "Dockerfile"))
	if len(stages) != 2 {
		t.Fatalf("%d stages, want a build stage and the image", len(stages))
	}
	build, image := stages[0], stages[1]

	// The build stage: the Go of go.mod, and `make build` as the one build.
	gomod, err := os.ReadFile(filepath.Join(repoRoot, "go.mod"))
	if err != nil {
		t.Fatal(err)
	}
	goVersion := regexp.MustCompile(`(?m)^go (\d+\.\d+)`).FindSubmatch(gomod)
	if goVersion == nil {
		t.Fatal("go.mod has no go directive")
	}
	if want := "golang:" + string(goVersion[1]) + " AS build"; build.from != want {
		t.Errorf("FROM %s, want %s (go.mod's Go)", build.from, want)
	}
	var makes int
	for _, run := range build.all("RUN") {
		if strings.Contains(run, "go build") || strings.Contains(run, "go install") {
			t.Errorf("RUN %s: the image builds with make build only", run)
		}
		_, rest, ok := strings.Cut(run, "make build")
		if !ok {
			continue
		}
		makes++
		rest, _, _ = strings.Cut(rest, "&&")
		for _, arg := range strings.Fields(rest) {
			if name, _, _ := strings.Cut(arg, "="); name != "VERSION" && name != "REVISION" {
				t.Errorf("make build %s: only VERSION and REVISION may be set, the rest is the Makefile's", arg)
			}
		}
	}
	if makes != 1 {
		t.Errorf("the build stage runs make build %d times, want once", makes)
	}
	for _, kind := range []string{"ENV", "ARG"} {
		for _, v := range build.all(kind) {
			name, _, _ := strings.Cut(strings.Fields(v)[0], "=")
			if slices.Contains([]string{"GOFLAGS", "CGO_ENABLED", "GO", "BUILD_FLAGS", "BUILD_OUT", "BUILD_DATE", "GOOS", "GOARCH"}, name) {
				t.Errorf("%s %s in the build stage changes what make build makes", kind, v)
			}
		}
	}

	// What make build writes (its -o) is what the image copies.
	dry, err := makeCmd("-n", "build").Output()
	if err != nil {
		t.Fatalf("make -n build: %v", err)
	}
	out := regexp.MustCompile(` -o (\S+) `).FindSubmatch(dry)
	if out == nil {
		t.Fatalf("make -n build prints no go build -o:\n%s", dry)
	}
	workdir := build.all("WORKDIR")
	if len(workdir) != 1 {
		t.Fatalf("WORKDIR %q, want one", workdir)
	}
	if want := "--from=build " + path.Join(workdir[0], string(out[1])) + " /timerd"; !slices.Contains(image.all("COPY"), want) {
		t.Errorf("COPY %q: none is %q", image.all("COPY"), want)
	}

	// The image: static, non-root, running the agent.
	if !strings.HasPrefix(image.from, "gcr.io/distroless/static") && image.from != "scratch" {
		t.Errorf("FROM %s, want distroless static or scratch (the binary needs no libc)", image.from)
	}
	users := image.all("USER")
	if len(users) != 1 {
		t.Fatalf("USER %q, want one", users)
	}
	user := users[0]
	if uid, _, _ := strings.Cut(user, ":"); uid == "0" || uid == "root" || uid == "" {
		t.Errorf("USER %s: timerd runs as root", user)
	}
	for kind, want := range map[string][]string{"ENTRYPOINT": {"/timerd"}, "CMD": {"agent"}} {
		got := image.all(kind)
		var argv []string
		if len(got) != 1 || json.Unmarshal([]byte(got[0]), &argv) != nil || !slices.Equal(argv, want) {
			t.Errorf("%s %q, want one, in exec form, %q", kind, got, want)
		}
	}

	help := agentHelp(t)
	// Every variable the image sets is one the agent reads; the data
	// directory is the volume, owned by the user.
	env := map[string]string{}
	for _, e := range image.all("ENV") {
		name, value, ok := strings.Cut(e, "=")
		if !ok {
			t.Errorf("ENV %s: want NAME=value", e)
			continue
		}
		env[name] = value
		if !readsEnv(help, name) {
			t.Errorf("ENV %s: timerd agent does not read %s", e, name)
		}
	}
	dataDir := env["TIMERD_DATA_DIR"]
	if dataDir == "" {
		t.Fatal("no ENV TIMERD_DATA_DIR: the agent needs a data directory")
	}
	if vols := image.all("VOLUME"); len(vols) != 1 || vols[0] != `["`+dataDir+`"]` {
		t.Errorf("VOLUME %q, want [%q] (TIMERD_DATA_DIR)", vols, dataDir)
	}
	if !slices.ContainsFunc(image.all("COPY"), func(c string) bool {
		f := strings.Fields(c)
		return slices.Contains(f, "--chown="+user) && slices.Contains(f, "--chmod=0700") && f[len(f)-1] == dataDir
	}) {
		t.Errorf("no COPY --chown=%s --chmod=0700 into %s: the volume would belong to root, or be open to others", user, dataDir)
	}

	// The ports are the agent's defaults: its HTTP, and the gossip's TCP and UDP.
	httpPort := port(t, flagDefault(t, help, "http-addr"))
	gossipPort := port(t, flagDefault(t, help, "bind-addr"))
	var exposed []string
	for _, e := range image.all("EXPOSE") {
		exposed = append(exposed, strings.Fields(e)...)
	}
	slices.Sort(exposed)
	want := []string{httpPort + "/tcp", gossipPort + "/tcp", gossipPort + "/udp"}
	slices.Sort(want)
	if !slices.Equal(exposed, want) {
		t.Errorf("EXPOSE %q, want %q (--http-addr and --bind-addr defaults)", exposed, want)
	}
}

// .dockerignore leaves in the context every file make build reads.
func TestDockerignoreKeepsTheBuildInputs(t *testing.T) {
	t.Parallel()
	b, err := os.ReadFile(filepath.Join(repoRoot, ".dockerignore"))
	if err != nil {
		t.Fatal(err)
	}
	var patterns []string
	for l := range strings.Lines(string(b)) {
		l = strings.TrimSpace(l)
		if l == "" || strings.HasPrefix(l, "#") {
			continue
		}
		if strings.HasPrefix(l, "!") {
			t.Fatalf(".dockerignore: %s: this test does not read exceptions", l)
		}
		patterns = append(patterns, path.Clean(strings.TrimPrefix(l, "/")))
	}
	if !slices.Contains(patterns, ".git") {
		t.Error(".dockerignore keeps .git: the context would carry the whole history")
	}
	needed := []string{"go.mod", "go.sum", "Makefile"}
	list, err := exec.Command("go", "list", "-C", repoRoot, "-deps",
		"-f", `{{if .Module}}{{if .Module.Main}}{{range .GoFiles}}{{$.Dir}}/{{.}}{{"\n"}}{{end}}{{range .EmbedFiles}}{{$.Dir}}/{{.}}{{"\n"}}{{end}}{{end}}{{end}}`,
		"./cmd/timerd").Output()
	if err != nil {
		t.Fatalf("go list: %v", err)
	}
	for _, f := range strings.Fields(string(list)) {
		rel, err := filepath.Rel(repoRoot, f)
		if err != nil {
			t.Fatal(err)
		}
		needed = append(needed, filepath.ToSlash(rel))
	}
	if len(needed) < 20 {
		t.Fatalf("go list found %d files of cmd/timerd: %q", len(needed), needed)
	}
	for _, f := range needed {
		if p := ignoredBy(patterns, f); p != "" {
			t.Errorf(".dockerignore %s leaves %s out of the build", p, f)
		}
	}
	for _, f := range []string{".git", "bin/timerd", "test/e2e/e2e.test"} {
		if ignoredBy(patterns, f) == "" {
			t.Errorf(".dockerignore keeps %s", f)
		}
	}
}

// ignoredBy is the pattern that leaves file out: one that matches it or
// one of its directories, from the context's root, "**/" matching any
// number of directories.
func ignoredBy(patterns []string, file string) string {
	parts := strings.Split(file, "/")
	for _, p := range patterns {
		for i := 1; i <= len(parts); i++ {
			prefix := strings.Join(parts[:i], "/")
			if ok, _ := path.Match(p, prefix); ok {
				return p
			}
			if rest, ok := strings.CutPrefix(p, "**/"); ok {
				for j := range i {
					if ok, _ := path.Match(rest, strings.Join(parts[j:i], "/")); ok {
						return p
					}
				}
			}
		}
	}
	return ""
}
