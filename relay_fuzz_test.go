package main

import (
	"archive/tar"
	"bytes"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"golang.org/x/mod/sumdb/note"
)

// FuzzReadArchive feeds arbitrary files to the bundle reader, once through
// the signature check and once with any well-formed manifest accepted, so
// that the member checks behind the signature are reached too. It must
// refuse with a one-line error or extract exactly the members listed.
func FuzzReadArchive(f *testing.F) {
	dir := f.TempDir()
	skey, vkey, err := note.GenerateKey(nil, "relay.example.org")
	if err != nil {
		f.Fatal(err)
	}
	signer, _ := note.NewSigner(skey)
	verifier, _ := note.NewVerifier(vkey)
	os.MkdirAll(filepath.Join(dir, "wr-1", "in"), 0o700)
	os.WriteFile(filepath.Join(dir, "wr-1", "in", "a.efi"), []byte("MZ not really"), 0o600)
	files, _ := describeFiles(dir, "wr-1")
	manifest, err := signManifest(bundleManifest{Format: bundleFormat, ID: strings.Repeat("ab", 16), Files: files}, signer)
	if err != nil {
		f.Fatal(err)
	}
	good := filepath.Join(dir, "good.tar")
	if err := writeArchive(good, manifest, dir, files); err != nil {
		f.Fatal(err)
	}
	seed, _ := os.ReadFile(good)
	f.Add(seed)
	f.Add(seed[:len(seed)/2])
	anyManifest := func(raw []byte) (string, error) {
		var unverified *note.UnverifiedNoteError
		if _, err := note.Open(raw, nil); !errors.As(err, &unverified) {
			return "", errors.New("malformed")
		}
		return unverified.Note.Text, nil
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		tmp := t.TempDir()
		p := filepath.Join(tmp, "bundle.tar")
		os.WriteFile(p, data, 0o600)
		for i, open := range []func([]byte) (string, error){signedBy(verifier, "relay bundle"), anyManifest} {
			var m bundleManifest
			out := filepath.Join(tmp, string(rune('a'+i)))
			_, err := readArchive(p, "relay bundle", open, out, &m, func() []archiveFile { return m.Files })
			if err != nil {
				if strings.Contains(err.Error(), "\n") {
					t.Fatalf("multi-line error %q", err)
				}
				continue
			}
			got, err := describeFiles(out, "")
			if err != nil {
				t.Fatal(err)
			}
			if len(got) != len(m.Files) {
				t.Fatalf("extracted %d files, the manifest lists %d", len(got), len(m.Files))
			}
		}
	})
}

// FuzzVerifyAuthenticode feeds arbitrary signatures to the relay's
// Authenticode check, which must refuse them with a one-line error or,
// having accepted one, have found the image's hash in it (the unsigned
// parts of a PKCS#7 message, such as its certificate list, may change).
func FuzzVerifyAuthenticode(f *testing.F) {
	img := testPE{plus: true, sections: []int{0x200}}.build()
	keyPEM, certPEM := testCertificate(f, "Fuzz key")
	signer, cert, err := parseUEFIKeyPair(keyPEM, certPEM)
	if err != nil {
		f.Fatal(err)
	}
	s, err := signPEImage(bytes.NewReader(img), int64(len(img)), nil, signer, cert, time.Now(), make([]byte, peCopyBufferSize))
	if err != nil {
		f.Fatal(err)
	}
	if err := verifyAuthenticode(s.pkcs7, bytes.NewReader(img), int64(len(img)), cert); err != nil {
		f.Fatalf("the real signature: %v", err)
	}
	if err := verifyAuthenticode(s.pkcs7, bytes.NewReader(img[:len(img)-8]), int64(len(img)-8), cert); err == nil {
		f.Fatal("a signature verified for another image")
	}
	f.Add(s.pkcs7)
	p, err := parsePE(bytes.NewReader(img), int64(len(img)))
	if err != nil {
		f.Fatal(err)
	}
	hash, _ := p.imageHash(make([]byte, peCopyBufferSize))
	f.Fuzz(func(t *testing.T, sig []byte) {
		err := verifyAuthenticode(sig, bytes.NewReader(img), int64(len(img)), cert)
		if err != nil {
			if strings.Contains(err.Error(), "\n") {
				t.Fatalf("multi-line error %q", err)
			}
			return
		}
		if !bytes.Contains(sig, hash) {
			t.Fatal("a signature without the image hash verified")
		}
	})
}

// TestReadArchiveManifestTooLarge: an oversize manifest is refused as too
// large, with the limit, before it is read.
func TestReadArchiveManifestTooLarge(t *testing.T) {
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	// Only the header: the reader must refuse before reading the member.
	if err := tw.WriteHeader(&tar.Header{Name: manifestName, Mode: 0o644, Size: maxManifest + 1, Typeflag: tar.TypeReg}); err != nil {
		t.Fatal(err)
	}
	p := writeFile(t, t.TempDir(), "bundle.tar", buf.Bytes())
	var m bundleManifest
	_, err := readArchive(p, "relay bundle", func([]byte) (string, error) { return "", errors.New("read") }, filepath.Join(t.TempDir(), "out"), &m, func() []archiveFile { return m.Files })
	want := fmt.Sprintf("the relay bundle's MANIFEST is too large (%d bytes, more than the %d this accepts): refused", maxManifest+1, maxManifest)
	if err == nil || !strings.Contains(err.Error(), want) {
		t.Errorf("got %v, want %q", err, want)
	}
}
