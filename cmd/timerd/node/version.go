package node

import (
	"fmt"
	"runtime/debug"

	"github.com/prometheus/common/version"
)

// timerd keeps its build information where Prometheus's own binaries do, in
// github.com/prometheus/common/version: `make build` sets Version, Revision
// and BuildDate there with -ldflags -X (see the Makefile), and
// timerd_build_info is that package's collector.

func init() {
	// go build and go install leave Version unset: the module version
	// (go install ...@v1.2.3), else "devel".
	if version.Version == "" {
		version.Version = moduleVersion()
	}
}

func moduleVersion() string {
	if bi, ok := debug.ReadBuildInfo(); ok && bi.Main.Version != "" && bi.Main.Version != "(devel)" {
		return bi.Main.Version
	}
	return "devel"
}

// Version is timerd's version: the one set at build time, else the module
// version, else "devel".
func Version() string { return version.Version }

// VersionText is what `timerd version` and `timerd --version` print: the
// version, the revision (from -X, else the one Go stamped from git, else
// "unknown"), the build date, the Go version and the platform.
func VersionText() string {
	date := version.BuildDate
	if date == "" {
		date = "unknown"
	}
	return fmt.Sprintf("timerd version %s\n  revision:   %s\n  build date: %s\n  go version: %s\n  platform:   %s/%s\n",
		version.Version, version.GetRevision(), date, version.GoVersion, version.GoOS, version.GoArch)
}
