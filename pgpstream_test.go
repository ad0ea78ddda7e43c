package main

import (
	"bufio"
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"io"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/ProtonMail/go-crypto/openpgp"
	"github.com/ProtonMail/go-crypto/openpgp/armor"
	"github.com/ProtonMail/go-crypto/openpgp/clearsign"
	"github.com/ProtonMail/go-crypto/openpgp/packet"
)

// goCryptoSign signs data the way this service did before it streamed, with
// go-crypto's own DetachSign and clearsign over the whole input in memory:
// the streaming signer must give the same bytes.
func goCryptoSign(t testing.TB, entities []*openpgp.Entity, data []byte, mode string, now time.Time) []byte {
	t.Helper()
	cfg := openpgpConfig(now)
	var out bytes.Buffer
	if mode == openpgpModeDetached {
		w, err := armor.Encode(&out, openpgp.SignatureType, nil)
		if err != nil {
			t.Fatal(err)
		}
		for _, e := range entities {
			if err := openpgp.DetachSign(w, e, bytes.NewReader(data), cfg); err != nil {
				t.Fatal(err)
			}
		}
		if err := w.Close(); err != nil {
			t.Fatal(err)
		}
		return endLine(out.Bytes())
	}
	var signers []*packet.PrivateKey
	for _, e := range entities {
		k, _ := e.SigningKey(now)
		signers = append(signers, k.PrivateKey)
	}
	w, err := clearsign.EncodeMulti(&out, signers, cfg)
	if err != nil {
		t.Fatal(err)
	}
	body := data
	if bytes.HasSuffix(body, []byte("\r\n")) {
		body = body[:len(body)-2]
	} else if bytes.HasSuffix(body, []byte("\n")) {
		body = body[:len(body)-1]
	}
	if _, err := w.Write(body); err != nil {
		t.Fatal(err)
	}
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	// go-crypto leaves out the armour checksum: re-armour the signature
	// block with it, as the service always has.
	signed := out.Bytes()
	at := bytes.Index(signed, []byte("\n-----BEGIN PGP SIGNATURE-----"))
	block, err := armor.Decode(bytes.NewReader(signed[at+1:]))
	if err != nil {
		t.Fatal(err)
	}
	packets, err := io.ReadAll(block.Body)
	if err != nil {
		t.Fatal(err)
	}
	res := bytes.NewBuffer(append([]byte(nil), signed[:at+1]...))
	aw, err := armor.Encode(res, openpgp.SignatureType, nil)
	if err != nil {
		t.Fatal(err)
	}
	aw.Write(packets)
	if err := aw.Close(); err != nil {
		t.Fatal(err)
	}
	return endLine(res.Bytes())
}

// randomText is text made of the bytes canonicalisation cares about.
func randomText(r *rand.Rand, n int) []byte {
	const alphabet = "ab-- \t\r\n\n\n"
	b := make([]byte, n)
	for i := range b {
		b[i] = alphabet[r.IntN(len(alphabet))]
	}
	return b
}

func newRSATestEntity(t testing.TB) *openpgp.Entity {
	t.Helper()
	e, err := openpgp.NewEntity("RSA test", "", "", &packet.Config{Algorithm: packet.PubKeyAlgoRSA, RSABits: 2048})
	if err != nil {
		t.Fatal(err)
	}
	return e
}

var textCases = []string{
	"", "\n", "\n\n", "\r\n", "a", "a\n", "a\r\n", "a\n\n", "a \t\r\n", "a  ", "-", "-\n", "- a\n-\n--\n",
	"\n-x", " -x\n", "a\rb\n", "a \r b\r\r\n\r\n", "\r", " ", "\t\n \n", "-----BEGIN PGP SIGNATURE-----\n",
	"From the start\n", "x\n\r\n", "x\n\n\n", "a\r\r",
}

// The streaming signer writes, byte for byte, what go-crypto's signers
// write for the same data, key types and times; Ed25519 and RSA signatures
// are deterministic, so the outputs must be equal.
func TestOpenPGPStreamMatchesGoCrypto(t *testing.T) {
	ed := []*openpgp.Entity{newTestEntity(t, "Stream one"), newTestEntity(t, "Stream two")}
	rsaKey := newRSATestEntity(t)
	sets := map[string][]*openpgp.Entity{"ed25519": ed[:1], "two-ed25519": ed, "rsa+ed25519": {rsaKey, ed[0]}}
	rng := rand.New(rand.NewPCG(1, 2))
	inputs := [][]byte{}
	for _, c := range textCases {
		inputs = append(inputs, []byte(c))
	}
	for _, n := range []int{10, 100, 1000, 5000} {
		inputs = append(inputs, randomText(rng, n))
	}
	// Across chunk boundaries: a line break, a dash and whitespace runs
	// falling on them.
	inputs = append(inputs, randomText(rng, 2*pgpChunkSize+333))
	edge := bytes.Repeat([]byte("x"), pgpChunkSize-1)
	inputs = append(inputs, append(append([]byte(nil), edge...), "\n- \t\r\n-a \n"...))
	inputs = append(inputs, append(append([]byte(nil), edge...), "  \n  a"...))
	now := time.Now()
	for name, set := range sets {
		for _, mode := range []string{openpgpModeDetached, openpgpModeClear} {
			for i, data := range inputs {
				if name == "rsa+ed25519" && len(data) > 10000 && mode == openpgpModeClear {
					continue // go-crypto's clearsign is slow; one set covers them
				}
				got, err := signOpenPGP(set, data, mode, now)
				if err != nil {
					t.Fatalf("%s/%s/%d: %v", name, mode, i, err)
				}
				if want := goCryptoSign(t, set, data, mode, now); !bytes.Equal(got, want) {
					t.Fatalf("%s/%s: input %d (%.40q...): output differs from go-crypto's:\n%s\nwant:\n%s", name, mode, i, data, got, want)
				}
			}
		}
	}
}

// canonicalText gives the same output and digest however the text is cut
// into writes.
func TestCanonicalTextSplits(t *testing.T) {
	rng := rand.New(rand.NewPCG(3, 4))
	for i := 0; i < 200; i++ {
		data := randomText(rng, rng.IntN(300))
		whole := canonicalize(t, [][]byte{data})
		var parts [][]byte
		for rest := data; len(rest) > 0; {
			n := 1 + rng.IntN(min(len(rest), 7))
			parts = append(parts, rest[:n])
			rest = rest[n:]
		}
		if got := canonicalize(t, parts); got != whole {
			t.Fatalf("%q: in parts gives %q, whole %q", data, got, whole)
		}
	}
}

func canonicalize(t *testing.T, parts [][]byte) string {
	var out bytes.Buffer
	bw := bufio.NewWriter(&out)
	c := &canonicalText{out: bw, digest: sha256.New(), atLineStart: true}
	for _, p := range parts {
		if err := c.write(p); err != nil {
			t.Fatal(err)
		}
	}
	bw.Flush()
	return out.String() + "|" + hex.EncodeToString(c.digest.Sum(nil))
}

func FuzzClearSign(f *testing.F) {
	for _, c := range textCases {
		f.Add([]byte(c))
	}
	e, err := newOpenPGPEntity("Fuzz key", time.Now())
	if err != nil {
		f.Fatal(err)
	}
	now := time.Now()
	f.Fuzz(func(t *testing.T, data []byte) {
		got, err := signOpenPGP([]*openpgp.Entity{e}, data, openpgpModeClear, now)
		if err != nil {
			t.Fatal(err)
		}
		if want := goCryptoSign(t, []*openpgp.Entity{e}, data, openpgpModeClear, now); !bytes.Equal(got, want) {
			t.Fatalf("%q: output differs from go-crypto's:\n%s\nwant:\n%s", data, got, want)
		}
	})
}

// A run of whitespace too long to hold within a line is refused, not held
// in memory; one as long as the limit passes.
func TestClearSignLongWhitespaceRefused(t *testing.T) {
	e := newTestEntity(t, "Space key")
	data := append(bytes.Repeat([]byte(" \t"), maxTrailingSpace/2), 'x', '\n')
	now := time.Now()
	got, err := signOpenPGP([]*openpgp.Entity{e}, data, openpgpModeClear, now)
	if err != nil {
		t.Fatal(err)
	}
	if want := goCryptoSign(t, []*openpgp.Entity{e}, data, openpgpModeClear, now); !bytes.Equal(got, want) {
		t.Fatal("a long run of whitespace is not signed as go-crypto signs it")
	}
	data = append(bytes.Repeat([]byte(" "), maxTrailingSpace+pgpChunkSize+1), 'x')
	if _, err := signOpenPGP([]*openpgp.Entity{e}, data, openpgpModeClear, time.Now()); err == nil || !strings.Contains(err.Error(), "whitespace") {
		t.Fatalf("err %v, want a whitespace error", err)
	}
	if _, err := signOpenPGP([]*openpgp.Entity{e}, data, openpgpModeDetached, time.Now()); err != nil {
		t.Fatalf("detached: %v", err)
	}
}

// changingReader rewrites the file it reads after its first read, as
// another process could while it is being signed.
type changingReader struct {
	f       *os.File
	path    string
	next    []byte
	changed bool
}

func (r *changingReader) Read(p []byte) (int, error) {
	n, err := r.f.Read(p)
	if !r.changed {
		r.changed = true
		if werr := os.WriteFile(r.path, r.next, 0o644); werr != nil {
			return n, werr
		}
	}
	return n, err
}

// A file changed while it is being signed: the signature and the audited
// SHA-256 still cover the same bytes, those read, in the one pass.
func TestOpenPGPFileChangedWhileSigned(t *testing.T) {
	requireTool(t, "gpgv")
	te := newTestEnv(t)
	st := te.store(t)
	fpr, err := generateOpenPGPKey(st, "Changing file key", nil)
	if err != nil {
		t.Fatal(err)
	}
	k, err := st.Key(purposeOpenPGP, fpr)
	if err != nil {
		t.Fatal(err)
	}
	entities, err := openpgpEntities(st, []*Key{k})
	if err != nil {
		t.Fatal(err)
	}
	keyring := keyringFile(t, k.PublicKey)
	before := bytes.Repeat([]byte("before line\n"), pgpChunkSize/6)
	after := bytes.Repeat([]byte("after  line\n"), pgpChunkSize/6)
	for i, mode := range []string{openpgpModeDetached, openpgpModeClear} {
		t.Run(mode, func(t *testing.T) {
			dir := t.TempDir()
			path := writeTemp(t, dir, "Release", before)
			f, err := os.Open(path)
			if err != nil {
				t.Fatal(err)
			}
			defer f.Close()
			var read, out bytes.Buffer
			r := io.TeeReader(&changingReader{f: f, path: path, next: after}, &read)
			if err := signOpenPGPAudited(st, []*Key{k}, entities, r, &out, mode, auditContext{}); err != nil {
				t.Fatal(err)
			}
			if bytes.Equal(read.Bytes(), before) || bytes.Equal(read.Bytes(), after) {
				t.Fatal("the file did not change while it was read")
			}
			rows := signRows(t, st, fpr)
			var d map[string]any
			if err := json.Unmarshal(rows[i].Data, &d); err != nil {
				t.Fatal(err)
			}
			sum := sha256.Sum256(read.Bytes())
			if d["data_sha256"] != hex.EncodeToString(sum[:]) {
				t.Fatalf("audited %v, but the bytes read have SHA-256 %x", d["data_sha256"], sum)
			}
			sigPath := writeTemp(t, dir, "Release.asc", out.Bytes())
			if mode == openpgpModeDetached {
				readPath := writeTemp(t, dir, "Release.read", read.Bytes())
				if _, err := gpgv(t, keyring, sigPath, readPath); err != nil {
					t.Fatalf("signature does not cover the bytes audited: %v", err)
				}
				if _, err := gpgv(t, keyring, sigPath, path); err == nil {
					t.Fatal("signature covers the file as it is now, not as it was read")
				}
				return
			}
			if _, err := gpgv(t, keyring, sigPath); err != nil {
				t.Fatal(err)
			}
			text, _ := clearsign.Decode(out.Bytes())
			if !bytes.Equal(append(text.Plaintext, '\n'), read.Bytes()) {
				t.Fatal("the clear-signed text is not the bytes audited")
			}
		})
	}
}

// Signing refuses at once what is not a regular file: a FIFO without a
// writer would hang a plain open, /dev/zero never ends.
func TestOpenPGPSignRefusesNonRegular(t *testing.T) {
	te := newTestEnv(t)
	fpr := strings.TrimSpace(te.mustRun(t, "generate-key", "--purpose", "openpgp", "--description", "FIFO key"))
	fifo := filepath.Join(t.TempDir(), "fifo")
	if err := syscall.Mkfifo(fifo, 0o600); err != nil {
		t.Fatal(err)
	}
	for _, in := range []string{"/dev/zero", fifo} {
		for _, mode := range []string{openpgpModeDetached, openpgpModeClear} {
			done := make(chan struct{})
			var status int
			var stderr string
			go func() {
				status, _, stderr = te.run(t, "sign", "--purpose", "openpgp", "--key", fpr, "--mode", mode, "--output", filepath.Join(t.TempDir(), "out.asc"), in)
				close(done)
			}()
			select {
			case <-done:
			case <-time.After(10 * time.Second):
				t.Fatalf("sign %s (%s) still running after 10 s", in, mode)
			}
			if status != exitError || !strings.Contains(stderr, "not a regular file") {
				t.Errorf("sign %s (%s): exit %d, %s", in, mode, status, stderr)
			}
		}
	}
	// With a good file first: nothing is written or audited for either.
	dir := t.TempDir()
	good := writeTemp(t, dir, "Release", []byte("Origin: test\n"))
	if status, _, stderr := te.run(t, "sign", "--purpose", "openpgp", "--key", fpr, good, fifo); status != exitError || !strings.Contains(stderr, "not a regular file") {
		t.Errorf("sign of a file and a FIFO: exit %d, %s", status, stderr)
	}
	if entries, _ := os.ReadDir(dir); len(entries) != 1 {
		t.Errorf("files left beside the input: %v", entries)
	}
	if n := len(signRows(t, te.store(t), fpr)); n != 0 {
		t.Fatalf("%d sign rows for refused inputs", n)
	}
}
