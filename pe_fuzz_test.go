package main

import (
	"bytes"
	"testing"
)

// FuzzParsePE feeds arbitrary bytes to the PE parser. Whatever it accepts
// must hash without error, and adding a signature must give an image that
// parses again, with one more signature and the same image hash.
func FuzzParsePE(f *testing.F) {
	for _, seed := range []testPE{
		{sections: []int{0x200}},
		{plus: true, sections: []int{0x200, 0x200}, trailing: 3},
		{plus: true, trailing: 9},
	} {
		f.Add(seed.build())
	}
	buf := make([]byte, 4096)
	f.Fuzz(func(t *testing.T, data []byte) {
		p, err := parsePE(bytes.NewReader(data), int64(len(data)))
		if err != nil {
			if bytes.ContainsRune([]byte(err.Error()), '\n') {
				t.Fatalf("multi-line error %q", err)
			}
			return
		}
		h1, err := p.imageHash(buf)
		if err != nil {
			t.Fatal(err)
		}
		var out bytes.Buffer
		if _, err := p.writeAttached(&out, []byte("not really a signature"), buf); err != nil {
			t.Fatal(err)
		}
		p2, err := parsePE(bytes.NewReader(out.Bytes()), int64(out.Len()))
		if err != nil {
			t.Fatalf("signed image does not parse: %v", err)
		}
		if p2.signatures != p.signatures+1 {
			t.Fatalf("%d signatures after adding one to %d", p2.signatures, p.signatures)
		}
		h2, err := p2.imageHash(buf)
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(h1, h2) {
			t.Fatalf("image hash changed by signing: %x -> %x", h1, h2)
		}
	})
}
