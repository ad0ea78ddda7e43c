package main

import (
	"sync"

	"golang.org/x/sys/unix"
)

var hardenOnce sync.Once

// harden keeps secret keys out of core dumps: the core size limit goes to
// 0 (for this process and what it starts), and the process is made
// non-dumpable, which also keeps other processes of the same user from
// attaching to it or reading its memory through /proc. It runs before the
// first secret is read or unsealed (loadServiceKey, Unseal,
// openAuditSecret); failures are ignored, as there is nothing better to do
// than to carry on with the kernel's defaults.
func harden() {
	hardenOnce.Do(func() {
		// prlimit64 rather than setrlimit: the systemd unit's system
		// call filter (~@resources) kills a process calling setrlimit.
		unix.Prlimit(0, unix.RLIMIT_CORE, &unix.Rlimit{Cur: 0, Max: 0}, nil)
		unix.Prctl(unix.PR_SET_DUMPABLE, 0, 0, 0, 0)
	})
}
