package main

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"strings"
	"testing"
)

// imageHash computes the Authenticode SHA-256 image hash with random
// access, range by range: the tests' reference for readPEOnce's one pass.
func (p *peFile) imageHash(buf []byte) ([]byte, error) {
	h := sha256.New()
	for _, r := range p.hashedRanges() {
		if err := copyRange(h, p.r, r.offset, r.size, buf); err != nil {
			return nil, err
		}
	}
	clear(buf[:p.hashPadding()])
	h.Write(buf[:p.hashPadding()])
	return h.Sum(nil), nil
}

// attachInMemory reads data once and returns it with pkcs7 attached.
func attachInMemory(data, pkcs7 []byte, buf []byte) ([]byte, *peOnePass, error) {
	var out bytes.Buffer
	o, err := readPEOnce(bytes.NewReader(data), int64(len(data)), &out, buf)
	if err != nil {
		return nil, nil, err
	}
	patches, err := o.appendSignature(&out, pkcs7)
	if err != nil {
		return nil, nil, err
	}
	b := out.Bytes()
	for _, p := range patches {
		copy(b[p.offset:], p.data)
	}
	return b, o, nil
}

// FuzzParsePE feeds arbitrary bytes to the PE parser. The one-pass reader
// must accept exactly what the random-access parser accepts, with the same
// image hash and the file's SHA-256, and adding a signature must give an
// image that parses again, with one more signature and the same image hash.
func FuzzParsePE(f *testing.F) {
	for _, seed := range []testPE{
		{sections: []int{0x200}},
		{plus: true, sections: []int{0x200, 0x200}, trailing: 3},
		{plus: true, trailing: 9},
	} {
		f.Add(seed.build())
	}
	buf := make([]byte, 4096)
	small := make([]byte, 7) // odd-sized chunks cross every boundary
	f.Fuzz(func(t *testing.T, data []byte) {
		p, err := parsePE(bytes.NewReader(data), int64(len(data)))
		o, oerr := readPEOnce(bytes.NewReader(data), int64(len(data)), nil, small)
		if err != nil {
			if strings.ContainsRune(err.Error(), '\n') {
				t.Fatalf("multi-line error %q", err)
			}
			if oerr == nil {
				t.Fatalf("parsePE refuses (%v), readPEOnce accepts", err)
			}
			return
		}
		if oerr != nil {
			t.Fatalf("parsePE accepts, readPEOnce refuses: %v", oerr)
		}
		h1, err := p.imageHash(buf)
		if err != nil {
			t.Fatal(err)
		}
		if sum := sha256.Sum256(data); !bytes.Equal(h1, o.imageHash) || !bytes.Equal(sum[:], o.fileSHA256) || o.pe.signatures != p.signatures {
			t.Fatalf("one pass: image hash %x, want %x; file hash %x, want %x", o.imageHash, h1, o.fileSHA256, sum)
		}
		out, _, err := attachInMemory(data, []byte("not really a signature"), small)
		if err != nil {
			t.Fatal(err)
		}
		p2, err := parsePE(bytes.NewReader(out), int64(len(out)))
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

// TestReadPEOnceBothWays checks the one pass against the random-access
// reference on images either side of peSmallFile: the smaller is read
// through peSmallChunk bytes and hashed on one core, the larger through
// the whole buffer, the file's SHA-256 of each chunk on another core. The
// image hash is also sbverify's.
func TestReadPEOnceBothWays(t *testing.T) {
	needTool(t, "sbverify")
	dir := t.TempDir()
	certPath, zeroSigPath := zeroHashSignature(t, getTestUEFIKey(t), dir)
	buf := make([]byte, peCopyBufferSize)
	for _, size := range []int{peSmallFile - 0x10000, peSmallFile + 3*peCopyBufferSize + 0x1400} {
		data := testPE{plus: true, sections: []int{0x1000, size - 0x3000}, trailing: 0x1001, seed: uint64(size)}.build()
		t.Run(fmt.Sprintf("%d bytes", len(data)), func(t *testing.T) {
			p, err := parsePE(bytes.NewReader(data), int64(len(data)))
			if err != nil {
				t.Fatal(err)
			}
			want, err := p.imageHash(make([]byte, 4096))
			if err != nil {
				t.Fatal(err)
			}
			var out bytes.Buffer
			o, err := readPEOnce(bytes.NewReader(data), int64(len(data)), &out, buf)
			if err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(o.imageHash, want) {
				t.Errorf("image hash %x, reference %x", o.imageHash, want)
			}
			path := writeFile(t, dir, "image.efi", data)
			if theirs := sbverifyImageHash(t, certPath, path, zeroSigPath); theirs != hex.EncodeToString(o.imageHash) {
				t.Errorf("image hash %x, sbverify %s", o.imageHash, theirs)
			}
			if sum := sha256.Sum256(data); !bytes.Equal(o.fileSHA256, sum[:]) {
				t.Errorf("file SHA-256 %x, want %x", o.fileSHA256, sum)
			}
			expected := bytes.Clone(data)
			clear(expected[p.checksumOffset : p.checksumOffset+4])
			clear(expected[p.certDirOffset : p.certDirOffset+8])
			if !bytes.Equal(out.Bytes(), expected) {
				t.Error("the output is not the input with its CheckSum and certificate table entry zeroed")
			}
		})
	}
}
