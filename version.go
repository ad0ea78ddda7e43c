package main

import (
	"fmt"
	"runtime/debug"
	"strings"
)

// programVersion names the build that is running, from what the Go
// toolchain embeds: the module version, the VCS revision and whether the
// tree it was built from had uncommitted changes. Audit rows record it.
func programVersion() string {
	bi, ok := debug.ReadBuildInfo()
	if !ok {
		return "unknown"
	}
	v := bi.Main.Version
	if v == "" {
		v = "(devel)"
	}
	var rev, modified string
	for _, s := range bi.Settings {
		switch s.Key {
		case "vcs.revision":
			rev = s.Value
		case "vcs.modified":
			modified = s.Value
		}
	}
	if rev != "" {
		v += " " + rev
		if modified == "true" {
			v += "+modified"
		}
	}
	return v
}

// versionReport is what `debusine-signing version` prints: enough to
// identify the binary and rebuild it bit for bit.
func versionReport() string {
	bi, ok := debug.ReadBuildInfo()
	if !ok {
		return "debusine-signing: no build information embedded\n"
	}
	var b strings.Builder
	fmt.Fprintf(&b, "debusine-signing %s\n", programVersion())
	fmt.Fprintf(&b, "go: %s\n", bi.GoVersion)
	for _, s := range bi.Settings {
		fmt.Fprintf(&b, "build %s=%s\n", s.Key, s.Value)
	}
	return b.String()
}
