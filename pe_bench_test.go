package main

import (
	"bytes"
	"crypto/sha256"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// BenchmarkImageHash compares the Authenticode image hash alone
// (imagehash, read through a 2 MiB buffer as a large file is) and the one
// pass over a PE image (the image hash and the SHA-256 of the file at
// once) with plain SHA-256 over the same bytes. The two hashes of a chunk
// run on two cores, so with a second core free the one pass takes about
// as long as one SHA-256 stream while another runs on the other core.
func BenchmarkImageHash(b *testing.B) {
	for _, mib := range []int{4, 64} {
		data := testPE{plus: true, sections: []int{mib<<20 - 0x1000, 0x800}, trailing: 5}.build()
		b.Run(fmt.Sprintf("%dMiB/imagehash", mib), func(b *testing.B) {
			buf := make([]byte, peCopyBufferSize)
			b.SetBytes(int64(len(data)))
			b.ReportAllocs()
			for b.Loop() {
				p, err := parsePE(bytes.NewReader(data), int64(len(data)))
				if err != nil {
					b.Fatal(err)
				}
				if _, err := p.imageHash(buf); err != nil {
					b.Fatal(err)
				}
			}
		})
		b.Run(fmt.Sprintf("%dMiB/onepass", mib), func(b *testing.B) {
			buf := make([]byte, peCopyBufferSize)
			b.SetBytes(int64(len(data)))
			b.ReportAllocs()
			for b.Loop() {
				if _, err := readPEOnce(bytes.NewReader(data), int64(len(data)), nil, buf); err != nil {
					b.Fatal(err)
				}
			}
		})
		b.Run(fmt.Sprintf("%dMiB/sha256", mib), func(b *testing.B) {
			b.SetBytes(int64(len(data)))
			b.ReportAllocs()
			for b.Loop() {
				sha256.Sum256(data)
			}
		})
	}
}

// BenchmarkSignCommand is one `sign --purpose uefi` of Debian's
// shimx64.efi through the command line, as one process does it apart from
// the program's start-up: opening the store, unsealing the key, signing,
// auditing, closing. Run with -cpuprofile to see where a call goes.
func BenchmarkSignCommand(b *testing.B) {
	const shim = "/usr/lib/shim/shimx64.efi"
	if _, err := os.Stat(shim); err != nil {
		b.Skip("needs shim-unsigned")
	}
	te := newTestEnv(b)
	fpr := strings.TrimSpace(te.mustRun(b, "generate-key", "--purpose", "uefi", "--description", "bench"))
	in := filepath.Join(b.TempDir(), "shimx64.efi")
	data, err := os.ReadFile(shim)
	if err != nil {
		b.Fatal(err)
	}
	if err := os.WriteFile(in, data, 0o644); err != nil {
		b.Fatal(err)
	}
	for b.Loop() {
		te.mustRun(b, "sign", "--purpose", "uefi", "--key", fpr, in)
	}
}
