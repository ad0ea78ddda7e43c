package main

import (
	"fmt"
	"runtime/debug"
	"strings"
)

// programVersion names the build that is running, from what the Go
// toolchain embeds: the module version (built from a git checkout with
// -buildvcs=auto, a pseudo-version naming the commit, with +dirty when the
// tree had uncommitted changes), and the VCS revision when the version does
// not already name it. Audit rows record it.
func programVersion() string {
	bi, ok := debug.ReadBuildInfo()
	if !ok {
		return "unknown"
	}
	return versionOf(bi)
}

func versionOf(bi *debug.BuildInfo) string {
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
	if rev != "" && !strings.Contains(v, rev[:min(12, len(rev))]) {
		v += " " + rev
	}
	if modified == "true" && !strings.HasSuffix(v, "+dirty") {
		v += "+modified"
	}
	return v
}

// versionReport is what `debusine-signing version` prints: enough to
// identify the binary and rebuild it bit for bit (the README's build
// command, with the same Go version, at that revision).
func versionReport() string {
	bi, ok := debug.ReadBuildInfo()
	if !ok {
		return "debusine-signing: no build information embedded\n"
	}
	var b strings.Builder
	fmt.Fprintf(&b, "debusine-signing %s\n", versionOf(bi))
	fmt.Fprintf(&b, "go: %s\n", bi.GoVersion)
	for _, s := range bi.Settings {
		fmt.Fprintf(&b, "build %s=%s\n", s.Key, s.Value)
	}
	return b.String()
}
