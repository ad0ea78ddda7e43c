package main

import (
	"bytes"
	"strings"
	"testing"
)

// FuzzParseKmod feeds arbitrary bytes to the module parser. Whatever it
// accepts has a module proper that starts with an ELF header and, when a
// signature is appended, ends where the signature starts; appending a new
// signature to the module proper gives a module that parses back to the
// same module proper.
func FuzzParseKmod(f *testing.F) {
	mod := testModule(200, 1)
	f.Add(mod)
	f.Add(withTestSignature(mod, 40))
	f.Add(withTestSignature(mod[:elf32HdrSize], 1))
	f.Add([]byte(kmodMarker))
	f.Add(append(bytes.Clone(mod[:8]), kmodTrailer(3)...))
	f.Fuzz(func(t *testing.T, data []byte) {
		m, err := parseKmod(bytes.NewReader(data), int64(len(data)))
		if err != nil {
			if strings.Contains(err.Error(), "\n") {
				t.Fatalf("multi-line error %q", err)
			}
			return
		}
		if m.size != int64(len(data)) || m.content < elf32HdrSize || m.content > m.size || !bytes.HasPrefix(data, []byte("\x7fELF")) {
			t.Fatalf("accepted %d bytes with module proper %d", m.size, m.content)
		}
		if m.signed() != bytes.HasSuffix(data, []byte(kmodMarker)) {
			t.Fatalf("signed() = %v", m.signed())
		}
		if m.signed() && !bytes.Equal(stripTestSignature(data), data[:m.content]) {
			t.Fatalf("module proper %d bytes, the trailer says %d", m.content, len(stripTestSignature(data)))
		}
		resigned := append(append(bytes.Clone(data[:m.content]), "signature"...), kmodTrailer(len("signature"))...)
		m2, err := parseKmod(bytes.NewReader(resigned), int64(len(resigned)))
		if err != nil {
			t.Fatalf("re-signed module does not parse: %v", err)
		}
		if m2.content != m.content {
			t.Fatalf("re-signed module proper %d bytes, was %d", m2.content, m.content)
		}
	})
}
