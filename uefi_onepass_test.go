package main

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"testing"
)

// TestUEFIFileChangedWhileSigned signs a file while another goroutine
// flips one byte of a section back and forth, in the three ways a UEFI
// signature is made (the CLI's detached and attached modes, the worker's
// signUEFIDetached). Whatever version was read, the audit row names it,
// sbverify accepts the signature over it, and the attached output is it.
// Run on a real EFI binary and on an image with a gap between sections,
// where the trailing data is hashed from a spill.
func TestUEFIFileChangedWhileSigned(t *testing.T) {
	needTool(t, "sbverify")
	inputs := []uefiTestInput{{"gap", peWithGap()}}
	for _, f := range realEFIFiles[1:] {
		if data, err := os.ReadFile(f); err == nil {
			inputs = append(inputs, uefiTestInput{filepath.Base(f), data})
		}
	}
	te, st, k, certPath := uefiStoreKey(t)
	signer, cert, err := uefiSigner(st, k)
	if err != nil {
		t.Fatal(err)
	}
	for _, in := range inputs {
		p, err := parsePE(bytes.NewReader(in.data), int64(len(in.data)))
		if err != nil {
			t.Fatal(err)
		}
		flipAt := p.sections[0].offset + p.sections[0].size/2
		a := in.data
		b := bytes.Clone(a)
		b[flipAt] ^= 0xff
		versions := map[string][]byte{}
		for _, v := range [][]byte{a, b} {
			sum := sha256.Sum256(v)
			versions[hex.EncodeToString(sum[:])] = v
			name := "version-" + hex.EncodeToString(sum[:4])
			writeFile(t, te.dir, name, v)
		}
		path := writeFile(t, te.dir, in.name, a)
		for _, mode := range []string{uefiModeDetached, uefiModeAttached, "worker"} {
			t.Run(in.name+"/"+mode, func(t *testing.T) {
				f, stop := keepFlipping(t, path, flipAt, a[flipAt], b[flipAt])
				seen := map[string]int{}
				for round := range 12 {
					out := filepath.Join(te.dir, "out")
					os.Remove(out)
					var sig []byte
					if mode == "worker" {
						sig, err = signUEFIDetached(st, k, signer, cert, in.name, f, int64(len(a)), auditContext{})
						if err == nil {
							err = os.WriteFile(out, sig, 0o644)
						}
					} else {
						err = signUEFIFile(st, k, signer, cert, path, out, mode, auditContext{})
					}
					if err != nil {
						t.Fatal(err)
					}
					rows := auditRows(t, st, AuditFilter{})
					var data struct {
						DataSHA256 string `json:"data_sha256"`
					}
					json.Unmarshal(rows[len(rows)-1].Data, &data)
					v, ok := versions[data.DataSHA256]
					if !ok {
						t.Fatalf("round %d: audit row names %s, neither version", round, data.DataSHA256)
					}
					seen[data.DataSHA256]++
					vPath := filepath.Join(te.dir, "version-"+data.DataSHA256[:8])
					if mode == uefiModeAttached {
						if log, ok := sbverify(t, certPath, out, ""); !ok {
							t.Fatalf("round %d: sbverify of the output:\n%s", round, log)
						}
						signed, _ := os.ReadFile(out)
						if !bytes.Equal(stripAttached(p, signed, len(v)), stripAttached(p, v, len(v))) {
							t.Fatalf("round %d: the output is not the audited version", round)
						}
					} else if log, ok := sbverify(t, certPath, vPath, out); !ok {
						t.Fatalf("round %d: sbverify of the signature over the audited version:\n%s", round, log)
					}
				}
				stop()
				t.Logf("versions read: %v", seen)
			})
		}
	}
}

// stripAttached returns the first n bytes of an image with the CheckSum
// and the certificate table entry zeroed: what signing changes in them.
func stripAttached(p *peFile, image []byte, n int) []byte {
	b := bytes.Clone(image[:n])
	clear(b[p.checksumOffset : p.checksumOffset+4])
	clear(b[p.certDirOffset : p.certDirOffset+8])
	return b
}

// keepFlipping opens path and, until stop is called (at the latest when
// the test ends), keeps writing the byte at off back and forth between x
// and y, so that any read of the file may see either version.
func keepFlipping(t *testing.T, path string, off int64, x, y byte) (f *os.File, stop func()) {
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	var done atomic.Bool
	var wg sync.WaitGroup
	wg.Go(func() {
		for i := 0; !done.Load(); i++ {
			f.WriteAt([]byte{[]byte{x, y}[i%2]}, off)
		}
	})
	stop = func() {
		done.Store(true)
		wg.Wait()
	}
	t.Cleanup(func() {
		stop()
		f.Close()
	})
	return f, stop
}
