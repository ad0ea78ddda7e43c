package main

import (
	"bytes"
	"crypto/sha256"
	"fmt"
	"testing"
)

// BenchmarkImageHash compares the one pass over a PE image (the
// Authenticode image hash and the SHA-256 of the file at once) with plain
// SHA-256 over the same bytes; it should take about twice as long.
func BenchmarkImageHash(b *testing.B) {
	for _, mib := range []int{4, 64} {
		data := testPE{plus: true, sections: []int{mib<<20 - 0x1000, 0x800}, trailing: 5}.build()
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
