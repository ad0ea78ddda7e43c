package main

import (
	"bytes"
	"crypto/sha256"
	"fmt"
	"testing"
)

// BenchmarkImageHash compares the Authenticode image hash of a PE image
// with plain SHA-256 over the same bytes; the image hash should run at
// nearly the same speed.
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
		b.Run(fmt.Sprintf("%dMiB/sha256", mib), func(b *testing.B) {
			b.SetBytes(int64(len(data)))
			b.ReportAllocs()
			for b.Loop() {
				sha256.Sum256(data)
			}
		})
	}
}
