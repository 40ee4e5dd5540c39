package node

import "runtime/debug"

// version is set at build time with -ldflags "-X github.com/timerd/timerd/cmd/timerd/node.version=v1.2.3".
var version = ""

// Version is timerd's version: the one set at build time, else the module
// version, else "devel".
func Version() string {
	if version != "" {
		return version
	}
	if bi, ok := debug.ReadBuildInfo(); ok && bi.Main.Version != "" && bi.Main.Version != "(devel)" {
		return bi.Main.Version
	}
	return "devel"
}
