package main

import (
	"sync"

	"golang.org/x/sys/unix"
)

var hardenOnce sync.Once

// harden keeps secret keys out of core dumps: the core size limit goes to
// 0 (for this process and what it starts), and the process is made
// non-dumpable, which also keeps other processes of the same user from
// attaching to it or reading its memory through /proc. run calls it before
// every command of the table marked as holding secrets, so that no such
// command can forget it; loadServiceKey, Unseal and openAuditSecret call it
// too, for their callers outside the command line. Failures are ignored, as
// there is nothing better to do than to carry on with the kernel's
// defaults.
func harden() {
	hardenOnce.Do(func() {
		// prlimit64 rather than setrlimit: the systemd unit's system
		// call filter (~@resources) kills a process calling setrlimit.
		unix.Prlimit(0, unix.RLIMIT_CORE, &unix.Rlimit{Cur: 0, Max: 0}, nil)
		unix.Prctl(unix.PR_SET_DUMPABLE, 0, 0, 0, 0)
	})
}
