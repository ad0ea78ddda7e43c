package main

import (
	"bytes"
	"crypto"
	"crypto/sha256"
	"crypto/x509"
	"encoding/binary"
	"encoding/hex"
	"encoding/pem"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"
)

// testPE describes a synthetic PE image for tests.
type testPE struct {
	plus     bool  // PE32+ rather than PE32
	sections []int // raw sizes (multiples of 0x200 keep the layout realistic)
	trailing int   // bytes of data after the last section
	seed     uint64
}

// build lays out a plausible EFI application: MZ stub, PE header, optional
// header with 16 data directories, section table, headers padded to
// FileAlignment, sections back to back, then the trailing bytes.
func (t testPE) build() []byte {
	rng := rand.New(rand.NewPCG(t.seed, 1))
	const e = 0x80
	optSize := 224
	if t.plus {
		optSize = 240
	}
	secTable := e + 4 + 20 + optSize
	sizeOfHeaders := (secTable + 40*len(t.sections) + 0x1ff) &^ 0x1ff
	total := sizeOfHeaders
	for _, s := range t.sections {
		total += s
	}
	total += t.trailing
	b := make([]byte, total)
	for i := sizeOfHeaders; i < total; i++ {
		b[i] = byte(rng.Uint32())
	}
	le := binary.LittleEndian
	copy(b, "MZ")
	le.PutUint32(b[0x3c:], e)
	copy(b[e:], "PE\x00\x00")
	coff := b[e+4:]
	machine := uint16(0x14c)
	if t.plus {
		machine = 0x8664
	}
	le.PutUint16(coff[0:], machine)
	le.PutUint16(coff[2:], uint16(len(t.sections)))
	le.PutUint16(coff[16:], uint16(optSize))
	le.PutUint16(coff[18:], 0x2022)
	opt := b[e+24:]
	if t.plus {
		le.PutUint16(opt[0:], 0x20b)
		le.PutUint32(opt[108:], 16)
	} else {
		le.PutUint16(opt[0:], 0x10b)
		le.PutUint32(opt[92:], 16)
	}
	le.PutUint32(opt[16:], 0x1000) // AddressOfEntryPoint
	le.PutUint32(opt[32:], 0x1000) // SectionAlignment
	le.PutUint32(opt[36:], 0x200)  // FileAlignment
	le.PutUint32(opt[60:], uint32(sizeOfHeaders))
	le.PutUint32(opt[64:], 0x12345678) // CheckSum: not hashed
	le.PutUint16(opt[68:], 10)         // EFI application
	va := 0x1000
	off := sizeOfHeaders
	for i, s := range t.sections {
		h := b[secTable+40*i:]
		copy(h, []byte(".sec"+string(rune('a'+i))))
		le.PutUint32(h[8:], uint32(s))
		le.PutUint32(h[12:], uint32(va))
		le.PutUint32(h[16:], uint32(s))
		le.PutUint32(h[20:], uint32(off))
		le.PutUint32(h[36:], 0x60000020)
		va += (s + 0xfff) &^ 0xfff
		off += s
	}
	le.PutUint32(opt[56:], uint32(va)) // SizeOfImage
	return b
}

// sharedUEFIKey returns a getter for one key pair with common name cn,
// made on first use and then shared by the tests (RSA generation is slow
// on a shared machine).
func sharedUEFIKey(cn string) func(testing.TB) *uefiTestKey {
	get := sync.OnceValues(func() (*uefiTestKey, error) {
		keyPEM, certPEM, err := newUEFIKeyPair(cn, time.Now())
		if err != nil {
			return nil, err
		}
		signer, cert, err := parseUEFIKeyPair(keyPEM, certPEM)
		if err != nil {
			return nil, err
		}
		return &uefiTestKey{keyPEM, certPEM, signer, cert}, nil
	})
	return func(t testing.TB) *uefiTestKey {
		t.Helper()
		k, err := get()
		if err != nil {
			t.Fatal(err)
		}
		return k
	}
}

// getTestUEFIKey is the key most tests sign with; otherTestKey is a second,
// unrelated one for the tests that need a key that does not match.
var (
	getTestUEFIKey = sharedUEFIKey("debusine-signing test key")
	otherTestKey   = sharedUEFIKey("someone else")
)

type uefiTestKey struct {
	keyPEM, certPEM []byte
	signer          crypto.Signer
	cert            *x509.Certificate
}

func needTool(t testing.TB, name string) {
	t.Helper()
	if _, err := exec.LookPath(name); err != nil {
		t.Skipf("%s not installed", name)
	}
}

// sbverify runs sbverify on image (with the detached signature sig if not
// empty) and returns its combined output and whether it succeeded.
func sbverify(t testing.TB, certPath, image, sig string) (string, bool) {
	t.Helper()
	needTool(t, "sbverify")
	args := []string{"--cert", certPath}
	if sig != "" {
		args = append(args, "--detached", sig)
	}
	out, err := exec.Command("sbverify", append(args, image)...).CombinedOutput()
	if err != nil {
		if _, ok := err.(*exec.ExitError); !ok {
			t.Fatal(err)
		}
	}
	return string(out), err == nil
}

// osslVerify runs `osslsigncode verify` trusting only certPath as a root.
// osslsigncode verify has no option for a detached signature, so one is
// first attached to a copy with `osslsigncode attach-signature -sigin`.
// Success needs exit status 0 and the explicit "Signature verification: ok"
// line (the digest matched and the chain verified).
func osslVerify(t testing.TB, certPath, image, sig string) (string, bool) {
	t.Helper()
	needTool(t, "osslsigncode")
	var log string
	if sig != "" {
		attached := filepath.Join(t.TempDir(), "attached.efi")
		out, err := exec.Command("osslsigncode", "attach-signature", "-CAfile", certPath, "-sigin", sig, "-in", image, "-out", attached).CombinedOutput()
		log = "attach-signature:\n" + string(out)
		if err != nil {
			if _, ok := err.(*exec.ExitError); !ok {
				t.Fatal(err)
			}
			return log, false
		}
		image = attached
	}
	out, err := exec.Command("osslsigncode", "verify", "-CAfile", certPath, "-in", image).CombinedOutput()
	if err != nil {
		if _, ok := err.(*exec.ExitError); !ok {
			t.Fatal(err)
		}
	}
	return log + string(out), err == nil && strings.Contains(string(out), "Signature verification: ok")
}

// verifyBoth checks a signature with both tools: for detached mode out is
// the signature of in, for attached mode out is the signed image.
func verifyBoth(t *testing.T, certPath, in, out, mode string) (sbOK, osslOK bool, outputs string) {
	t.Helper()
	var sb, ossl string
	if mode == uefiModeDetached {
		sb, sbOK = sbverify(t, certPath, in, out)
		ossl, osslOK = osslVerify(t, certPath, in, out)
	} else {
		sb, sbOK = sbverify(t, certPath, out, "")
		ossl, osslOK = osslVerify(t, certPath, out, "")
	}
	return sbOK, osslOK, "sbverify:\n" + sb + "\nosslsigncode:\n" + ossl
}

// peWithGap is a PE32+ image whose middle section has no raw data, leaving
// a gap in the file between the other two: the trailing data then starts
// at SizeOfHeaders plus the section sizes, inside the last section.
func peWithGap() []byte {
	b := testPE{plus: true, sections: []int{0x200, 0x200, 0x400}, trailing: 5, seed: 6}.build()
	const secTable = 0x80 + 24 + 240
	binary.LittleEndian.PutUint32(b[secTable+40+16:], 0)
	return b
}

// zeroHashSignature writes k's certificate and a detached signature over an
// all-zero image hash into dir: sbverify prints the hash it computed only
// when a signature does not match, so this one makes it show its hash.
func zeroHashSignature(t testing.TB, k *uefiTestKey, dir string) (certPath, sigPath string) {
	t.Helper()
	sig, err := authenticodeSignature(make([]byte, 32), k.signer, k.cert, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	return writeFile(t, dir, "cert.pem", k.certPEM), writeFile(t, dir, "zero.sig", sig)
}

// TestUEFISectionGap: with a gap between sections, the image hash follows
// the Authenticode specification, as sbsign/sbverify, EDK2 and shim do
// (trailing data counted from SizeOfHeaders plus the section sizes).
// osslsigncode hashes the file linearly instead and disagrees on such
// images, so only sbverify can check them.
func TestUEFISectionGap(t *testing.T) {
	k := getTestUEFIKey(t)
	dir := t.TempDir()
	certPath, zeroSigPath := zeroHashSignature(t, k, dir)
	data := peWithGap()
	in := writeFile(t, dir, "gap.efi", data)
	p, err := parsePE(bytes.NewReader(data), int64(len(data)))
	if err != nil {
		t.Fatal(err)
	}
	h, err := p.imageHash(make([]byte, 4096))
	if err != nil {
		t.Fatal(err)
	}
	out, _ := sbverify(t, certPath, in, zeroSigPath)
	if m := sbverifyExpecting.FindStringSubmatch(out); m == nil || m[1] != hex.EncodeToString(h) {
		t.Fatalf("image hash %x, sbverify:\n%s", h, out)
	}
	for _, mode := range []string{uefiModeDetached, uefiModeAttached} {
		signed, _, err := signUEFIBytes(data, mode, k.signer, k.cert, time.Now())
		if err != nil {
			t.Fatal(err)
		}
		outPath := writeFile(t, dir, "gap."+mode, signed)
		var ok bool
		if mode == uefiModeDetached {
			out, ok = sbverify(t, certPath, in, outPath)
		} else {
			out, ok = sbverify(t, certPath, outPath, "")
		}
		if !ok {
			t.Errorf("%s: sbverify failed:\n%s", mode, out)
		}
	}
}

// realEFIFiles are the Debian EFI binaries the tests use (shim-unsigned,
// systemd-boot-efi).
var realEFIFiles = []string{
	"/usr/lib/shim/shimx64.efi",
	"/usr/lib/systemd/boot/efi/systemd-bootx64.efi",
}

type uefiTestInput struct {
	name string
	data []byte
}

func uefiTestInputs(t *testing.T) []uefiTestInput {
	in := []uefiTestInput{
		{"pe32", testPE{sections: []int{0x400, 0x200}}.build()},
		{"pe32plus", testPE{plus: true, sections: []int{0x600, 0x200, 0x400}}.build()},
		{"pe32-trailing-odd", testPE{sections: []int{0x400}, trailing: 1001, seed: 2}.build()},
		{"pe32plus-trailing-odd", testPE{plus: true, sections: []int{0x200, 0x200}, trailing: 13, seed: 3}.build()},
		{"pe32plus-trailing-aligned", testPE{plus: true, sections: []int{0x200}, trailing: 64, seed: 4}.build()},
	}
	for _, f := range realEFIFiles {
		data, err := os.ReadFile(f)
		if err != nil {
			t.Logf("skipping %s: %v", f, err)
			continue
		}
		in = append(in, uefiTestInput{filepath.Base(f), data})
	}
	return in
}

func TestUEFISignVerifies(t *testing.T) {
	k := getTestUEFIKey(t)
	dir := t.TempDir()
	certPath := writeFile(t, dir, "cert.pem", k.certPEM)
	for _, in := range uefiTestInputs(t) {
		for _, mode := range []string{uefiModeDetached, uefiModeAttached} {
			t.Run(in.name+"/"+mode, func(t *testing.T) {
				out, dataSHA, err := signUEFIBytes(in.data, mode, k.signer, k.cert, time.Now())
				if err != nil {
					t.Fatal(err)
				}
				if want := sha256.Sum256(in.data); dataSHA != hex.EncodeToString(want[:]) {
					t.Errorf("data_sha256 %s, want %x", dataSHA, want)
				}
				inPath := writeFile(t, dir, in.name+"-"+mode, in.data)
				outPath := writeFile(t, dir, in.name+"-"+mode+".out", out)
				sbOK, osslOK, log := verifyBoth(t, certPath, inPath, outPath, mode)
				if !sbOK || !osslOK {
					t.Fatalf("verification failed (sbverify ok=%v, osslsigncode ok=%v)\n%s", sbOK, osslOK, log)
				}
				if mode == uefiModeAttached {
					checkAttachedLayout(t, in.data, out)
					// osslsigncode recomputes the CheckSum and warns on a mismatch.
					if strings.Contains(log, "invalid PE checksum") {
						t.Errorf("osslsigncode disagrees with the CheckSum:\n%s", log)
					}
				}
			})
		}
	}
}

// checkAttachedLayout checks the signed image: the original bytes (but
// CheckSum and directory entry), zero padding to 8, the table at the end,
// and the CheckSum recomputed.
func checkAttachedLayout(t *testing.T, orig, signed []byte) {
	t.Helper()
	p, err := parsePE(bytes.NewReader(signed), int64(len(signed)))
	if err != nil {
		t.Fatalf("signed image does not parse: %v", err)
	}
	if p.certOffset%8 != 0 || p.certOffset != alignUp8(int64(len(orig))) || p.signatures != 1 {
		t.Errorf("certificate table at %d (%d entries), want one at %d", p.certOffset, p.signatures, alignUp8(int64(len(orig))))
	}
	if p.certSize%8 != 0 || p.certOffset+p.certSize != int64(len(signed)) {
		t.Errorf("certificate table size %d at %d, file %d", p.certSize, p.certOffset, len(signed))
	}
	var ck peChecksum
	withZero := bytes.Clone(signed)
	copy(withZero[p.checksumOffset:], []byte{0, 0, 0, 0})
	ck.Write(withZero)
	if got, want := binary.LittleEndian.Uint32(signed[p.checksumOffset:]), ck.Sum32(); got != want {
		t.Errorf("CheckSum %#x, want %#x", got, want)
	}
	if want := referencePEChecksum(withZero, p.checksumOffset); ck.Sum32() != want {
		t.Errorf("peChecksum %#x, reference %#x", ck.Sum32(), want)
	}
}

// referencePEChecksum is the textbook 16-bit algorithm, to check the
// 32-bit-word implementation against.
func referencePEChecksum(b []byte, ckOff int64) uint32 {
	var sum uint32
	for i := 0; i < len(b); i += 2 {
		var w uint32
		if int64(i) >= ckOff && int64(i) < ckOff+4 {
			w = 0
		} else if i+1 < len(b) {
			w = uint32(binary.LittleEndian.Uint16(b[i:]))
		} else {
			w = uint32(b[i])
		}
		sum += w
		sum = (sum & 0xffff) + (sum >> 16)
	}
	return sum + uint32(len(b))
}

func TestPEChecksumMatchesReference(t *testing.T) {
	rng := rand.New(rand.NewPCG(7, 7))
	for _, n := range []int{0, 1, 2, 3, 5, 8, 1001, 65536, 100003} {
		b := make([]byte, n)
		for i := range b {
			b[i] = byte(rng.Uint32())
		}
		for _, split := range []int{1, 3, 7, 4096} {
			var ck peChecksum
			for rest := b; len(rest) > 0; {
				m := min(split, len(rest))
				ck.Write(rest[:m])
				rest = rest[m:]
			}
			if got, want := ck.Sum32(), referencePEChecksum(b, -8); got != want {
				t.Errorf("size %d split %d: %#x, want %#x", n, split, got, want)
			}
		}
	}
}

var (
	sbverifyExpecting = regexp.MustCompile(`expecting: ([0-9a-f]{64})`)
	osslCalculated    = regexp.MustCompile(`Calculated message digest : ([0-9A-F]{64})`)
)

// sbverifyShimOutput checks that work request id has one signing output,
// a detached signature of shim that sbverify accepts with certPath.
func sbverifyShimOutput(t *testing.T, srv *fakeServer, id int64, shim []byte, certPath string) {
	t.Helper()
	outs := srv.artifactsOf(id, "debusine:signing-output")
	if len(outs) != 1 || outs[0].Files["shimx64.efi.sig"] == nil {
		t.Fatalf("signing outputs %+v", outs)
	}
	dir := t.TempDir()
	img := writeFile(t, dir, "shimx64.efi", shim)
	sig := writeFile(t, dir, "shimx64.efi.sig", outs[0].Files["shimx64.efi.sig"].content)
	if out, ok := sbverify(t, certPath, img, sig); !ok {
		t.Errorf("sbverify: %s", out)
	}
}

// sbverifyImageHash is the image hash sbverify computes for image, which
// it prints only when a signature does not match: zeroSigPath is a
// signature over a zero hash (zeroHashSignature).
func sbverifyImageHash(t *testing.T, certPath, image, zeroSigPath string) string {
	t.Helper()
	out, ok := sbverify(t, certPath, image, zeroSigPath)
	m := sbverifyExpecting.FindStringSubmatch(out)
	if ok || m == nil {
		t.Fatalf("sbverify did not report its image hash:\n%s", out)
	}
	return m[1]
}

// TestUEFIImageHashMatchesTools compares our image hash with the ones
// sbverify and osslsigncode compute. sbverify prints its hash only when a
// signature does not match, so it is given a signature over a zero hash.
func TestUEFIImageHashMatchesTools(t *testing.T) {
	k := getTestUEFIKey(t)
	dir := t.TempDir()
	certPath, zeroSigPath := zeroHashSignature(t, k, dir)
	for _, in := range append(uefiTestInputs(t), alreadySignedInputs(t)...) {
		t.Run(in.name, func(t *testing.T) {
			p, err := parsePE(bytes.NewReader(in.data), int64(len(in.data)))
			if err != nil {
				t.Fatal(err)
			}
			h, err := p.imageHash(make([]byte, 4096))
			if err != nil {
				t.Fatal(err)
			}
			ours := hex.EncodeToString(h)
			path := writeFile(t, dir, in.name, in.data)

			if theirs := sbverifyImageHash(t, certPath, path, zeroSigPath); theirs != ours {
				t.Errorf("image hash %s, sbverify %s", ours, theirs)
			}

			out, ok := osslVerify(t, certPath, path, zeroSigPath)
			m := osslCalculated.FindStringSubmatch(out)
			if ok || m == nil {
				t.Fatalf("osslsigncode did not report its image hash:\n%s", out)
			}
			if !strings.EqualFold(m[1], ours) {
				t.Errorf("image hash %s, osslsigncode %s", ours, m[1])
			}
		})
	}
}

// alreadySignedInputs returns images signed by sbsign with a key of its
// own, in both a synthetic and a real variant.
func alreadySignedInputs(t *testing.T) []uefiTestInput {
	t.Helper()
	if _, err := exec.LookPath("sbsign"); err != nil {
		return nil
	}
	other := otherTestKey(t)
	dir := t.TempDir()
	keyPath := writeFile(t, dir, "other.key", other.keyPEM)
	certPath := writeFile(t, dir, "other.pem", other.certPEM)
	var res []uefiTestInput
	for _, in := range []uefiTestInput{
		{"signed-pe32plus-odd", testPE{plus: true, sections: []int{0x400}, trailing: 5, seed: 9}.build()},
		{"signed-pe32", testPE{sections: []int{0x200}, seed: 10}.build()},
	} {
		unsigned := writeFile(t, dir, in.name+".unsigned", in.data)
		signed := filepath.Join(dir, in.name)
		if out, err := exec.Command("sbsign", "--key", keyPath, "--cert", certPath, "--output", signed, unsigned).CombinedOutput(); err != nil {
			t.Fatalf("sbsign: %v\n%s", err, out)
		}
		data, err := os.ReadFile(signed)
		if err != nil {
			t.Fatal(err)
		}
		res = append(res, uefiTestInput{in.name, data})
	}
	return res
}

// TestUEFITamper flips one byte of the input: in a hashed region both tools
// must reject the signature, in the CheckSum field both must accept it.
func TestUEFITamper(t *testing.T) {
	k := getTestUEFIKey(t)
	dir := t.TempDir()
	certPath := writeFile(t, dir, "cert.pem", k.certPEM)
	data := testPE{plus: true, sections: []int{0x400, 0x200}, trailing: 21, seed: 11}.build()
	p, err := parsePE(bytes.NewReader(data), int64(len(data)))
	if err != nil {
		t.Fatal(err)
	}
	cases := []struct {
		name   string
		offset int64
		valid  bool
	}{
		{"checksum", p.checksumOffset + 1, true},
		{"header", 0x3e, false},
		{"section", p.sections[1].offset + 17, false},
		{"trailing", int64(len(data)) - 3, false},
	}
	for _, mode := range []string{uefiModeDetached, uefiModeAttached} {
		out, _, err := signUEFIBytes(data, mode, k.signer, k.cert, time.Now())
		if err != nil {
			t.Fatal(err)
		}
		for _, c := range cases {
			t.Run(mode+"/"+c.name, func(t *testing.T) {
				in, signed := bytes.Clone(data), bytes.Clone(out)
				if mode == uefiModeDetached {
					in[c.offset] ^= 0x40
				} else {
					signed[c.offset] ^= 0x40
				}
				inPath := writeFile(t, dir, "in-"+mode+c.name, in)
				outPath := writeFile(t, dir, "out-"+mode+c.name, signed)
				sbOK, osslOK, log := verifyBoth(t, certPath, inPath, outPath, mode)
				if sbOK != c.valid || osslOK != c.valid {
					t.Fatalf("sbverify ok=%v, osslsigncode ok=%v, want %v\n%s", sbOK, osslOK, c.valid, log)
				}
			})
		}
	}
}

// TestUEFIAlreadySigned: detached signatures of a signed image cover the
// image without its table; attached mode keeps the existing signature and
// adds ours as a second entry, as sbsign does.
func TestUEFIAlreadySigned(t *testing.T) {
	needTool(t, "sbsign")
	needTool(t, "sbattach")
	k := getTestUEFIKey(t)
	other := otherTestKey(t)
	dir := t.TempDir()
	certPath := writeFile(t, dir, "cert.pem", k.certPEM)
	otherCertPath := writeFile(t, dir, "other.pem", other.certPEM)
	for _, in := range alreadySignedInputs(t) {
		t.Run(in.name, func(t *testing.T) {
			inPath := writeFile(t, dir, in.name, in.data)

			sig, _, err := signUEFIBytes(in.data, uefiModeDetached, k.signer, k.cert, time.Now())
			if err != nil {
				t.Fatal(err)
			}
			sigPath := writeFile(t, dir, in.name+".sig", sig)
			if sbOK, osslOK, log := verifyBoth(t, certPath, inPath, sigPath, uefiModeDetached); !sbOK || !osslOK {
				t.Fatalf("detached: sbverify ok=%v osslsigncode ok=%v\n%s", sbOK, osslOK, log)
			}

			signed, _, err := signUEFIBytes(in.data, uefiModeAttached, k.signer, k.cert, time.Now())
			if err != nil {
				t.Fatal(err)
			}
			p, err := parsePE(bytes.NewReader(signed), int64(len(signed)))
			if err != nil {
				t.Fatal(err)
			}
			if p.signatures != 2 {
				t.Fatalf("attached output has %d signatures, want 2", p.signatures)
			}
			signedPath := writeFile(t, dir, in.name+".signed", signed)
			for _, c := range []string{certPath, otherCertPath} {
				if out, ok := sbverify(t, c, signedPath, ""); !ok {
					t.Errorf("sbverify --cert %s failed:\n%s", filepath.Base(c), out)
				}
			}
			// osslsigncode reads only single-entry tables: check our
			// entry, taken out with sbattach, against the image.
			ours := filepath.Join(dir, in.name+".2.sig")
			if out, err := exec.Command("sbattach", "--detach", ours, "--signum", "2", signedPath).CombinedOutput(); err != nil {
				t.Fatalf("sbattach --detach: %v\n%s", err, out)
			}
			if got, err := os.ReadFile(ours); err != nil || !bytes.HasPrefix(got, sig[:2]) {
				t.Fatalf("sbattach extracted %d bytes (%v)", len(got), err)
			}
			if out, ok := osslVerify(t, certPath, inPath, ours); !ok {
				t.Errorf("osslsigncode verify -sigin (entry 2) failed:\n%s", out)
			}
		})
	}
}

// TestUEFIBadPE feeds malformed images to the parser; each must give a
// one-line error that says what is wrong.
func TestUEFIBadPE(t *testing.T) {
	good := func() []byte { return testPE{plus: true, sections: []int{0x400, 0x200}, seed: 5}.build() }
	le := binary.LittleEndian
	const e, opt = 0x80, 0x80 + 24
	secTable := opt + 240
	// withCertEntry appends one 24-byte certificate table entry whose own
	// length field says length, and points the certificate table at it.
	withCertEntry := func(length uint32) []byte {
		b := good()
		entry := make([]byte, 24)
		le.PutUint32(entry, length)
		b = append(b, entry...)
		le.PutUint32(b[opt+144:], uint32(len(b)-24))
		le.PutUint32(b[opt+148:], 24)
		return b
	}
	cases := []struct {
		name string
		data func() []byte
		want string
	}{
		{"empty", func() []byte { return nil }, "not a PE image"},
		{"text", func() []byte { return []byte(strings.Repeat("hello world\n", 20)) }, "no MZ signature"},
		{"truncated headers", func() []byte { return good()[:0x100] }, "truncated PE header"},
		{"lfanew past end", func() []byte { b := good(); le.PutUint32(b[0x3c:], 0xfffffff0); return b }, "PE header offset"},
		{"no PE signature", func() []byte { b := good(); b[e] = 'X'; return b }, "no PE signature"},
		{"bad magic", func() []byte { b := good(); le.PutUint16(b[opt:], 0x999); return b }, "magic"},
		{"few data directories", func() []byte { b := good(); le.PutUint32(b[opt+108:], 4); return b }, "no certificate table entry"},
		{"section table past end", func() []byte { b := good(); le.PutUint16(b[e+6:], 90); return b[:0x600] }, "section table"},
		{"too many sections", func() []byte { b := good(); le.PutUint16(b[e+6:], 0xffff); return b }, "sections"},
		{"huge SizeOfHeaders", func() []byte { b := good(); le.PutUint32(b[opt+60:], 0xffffffff); return b }, "SizeOfHeaders"},
		{"section past end", func() []byte { b := good(); le.PutUint32(b[secTable+40+16:], 0x7fffffff); return b }, "past the end of the image"},
		{"section offset past end", func() []byte { b := good(); le.PutUint32(b[secTable+40+20:], 0xfffffe00); return b }, "past the end of the image"},
		{"sections overlap", func() []byte { b := good(); le.PutUint32(b[secTable+40+20:], 0x500); return b }, "sections overlap"},
		{"section in headers", func() []byte { b := good(); le.PutUint32(b[secTable+20:], 0x10); return b }, "overlaps the headers"},
		{"cert table not at end", func() []byte {
			b := append(good(), make([]byte, 64)...)
			le.PutUint32(b[opt+144:], uint32(len(b)-64))
			le.PutUint32(b[opt+148:], 32)
			return b
		}, "not at the end of the file"},
		{"cert table past end", func() []byte {
			b := good()
			le.PutUint32(b[opt+144:], uint32(len(b)-8))
			le.PutUint32(b[opt+148:], 0x7fffffff)
			return b
		}, "past the end of the file"},
		{"bytes after cert table", func() []byte { return append(withCertEntry(24), 0xcc) }, "not at the end of the file"},
		{"bad cert entry length", func() []byte { return withCertEntry(0xfffffff0) }, "bad length"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			data := c.data()
			_, err := parsePE(bytes.NewReader(data), int64(len(data)))
			if err == nil {
				t.Fatal("no error")
			}
			if !strings.Contains(err.Error(), c.want) || strings.Contains(err.Error(), "\n") {
				t.Errorf("error %q, want one line containing %q", err, c.want)
			}
		})
	}
}

// TestUEFICertificate checks the generated certificate against what
// `openssl req -x509` makes, read back through openssl itself.
func TestUEFICertificate(t *testing.T) {
	k := getTestUEFIKey(t)
	c := k.cert
	if got := c.Subject.String(); got != "CN=debusine-signing test key" || c.Issuer.String() != got {
		t.Errorf("subject %q issuer %q", got, c.Issuer)
	}
	if d := c.NotAfter.Sub(c.NotBefore); d != 15*365*24*time.Hour {
		t.Errorf("validity %v", d)
	}
	if c.SignatureAlgorithm != x509.SHA256WithRSA || !c.IsCA || !c.BasicConstraintsValid {
		t.Errorf("algorithm %v, CA %v", c.SignatureAlgorithm, c.IsCA)
	}
	if !bytes.Equal(c.SubjectKeyId, c.AuthorityKeyId) || len(c.SubjectKeyId) != 20 {
		t.Errorf("SKID %x AKID %x", c.SubjectKeyId, c.AuthorityKeyId)
	}
	if err := c.CheckSignatureFrom(c); err != nil {
		t.Error(err)
	}
	needTool(t, "openssl")
	dir := t.TempDir()
	certPath := writeFile(t, dir, "cert.pem", k.certPEM)
	out, err := exec.Command("openssl", "x509", "-in", certPath, "-noout", "-text", "-fingerprint", "-sha256").CombinedOutput()
	if err != nil {
		t.Fatalf("openssl x509: %v\n%s", err, out)
	}
	text := string(out)
	for _, want := range []string{
		"Signature Algorithm: sha256WithRSAEncryption",
		"Public-Key: (2048 bit)",
		"X509v3 Subject Key Identifier",
		"X509v3 Authority Key Identifier",
		"X509v3 Basic Constraints: critical\n                CA:TRUE",
		"Subject: CN = debusine-signing test key",
	} {
		if !strings.Contains(text, want) {
			t.Errorf("openssl x509 -text lacks %q:\n%s", want, text)
		}
	}
	// openssl's own order of the extensions.
	if i, j := strings.Index(text, "Subject Key Identifier"), strings.Index(text, "Basic Constraints"); i > j {
		t.Errorf("extension order differs from openssl req -x509")
	}
	fpr := strings.ReplaceAll(strings.TrimSpace(text[strings.LastIndex(text, "=")+1:]), ":", "")
	if fpr != certificateFingerprint(c) {
		t.Errorf("fingerprint %s, openssl %s", certificateFingerprint(c), fpr)
	}
	// The key id is openssl's (SHA-1 of the public key): generate with
	// openssl's defaults from our key and compare.
	keyPath := writeFile(t, dir, "key.pem", k.keyPEM)
	ref, err := exec.Command("openssl", "req", "-x509", "-key", keyPath, "-subj", "/CN=debusine-signing test key", "-days", "5475").Output()
	if err != nil {
		t.Fatal(err)
	}
	block, _ := pem.Decode(ref)
	refCert, err := x509.ParseCertificate(block.Bytes)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(refCert.SubjectKeyId, c.SubjectKeyId) || !bytes.Equal(refCert.RawSubject, c.RawSubject) {
		t.Errorf("SKID %x subject %x; openssl: %x %x", c.SubjectKeyId, c.RawSubject, refCert.SubjectKeyId, refCert.RawSubject)
	}
	var gotExt, refExt []string
	for _, e := range c.Extensions {
		gotExt = append(gotExt, e.Id.String())
	}
	for _, e := range refCert.Extensions {
		refExt = append(refExt, e.Id.String())
	}
	if strings.Join(gotExt, " ") != strings.Join(refExt, " ") {
		t.Errorf("extensions %v, openssl %v", gotExt, refExt)
	}
}

func TestParseUEFIKeyPair(t *testing.T) {
	k := getTestUEFIKey(t)
	other := otherTestKey(t)
	if _, _, err := parseUEFIKeyPair(k.keyPEM, other.certPEM); err == nil || !strings.Contains(err.Error(), "does not match") {
		t.Errorf("mismatched pair: %v", err)
	}
	if _, _, err := parseUEFIKeyPair([]byte("junk"), k.certPEM); err == nil {
		t.Error("junk key accepted")
	}
	if _, _, err := parseUEFIKeyPair(k.keyPEM, []byte("junk")); err == nil {
		t.Error("junk certificate accepted")
	}
	if _, err := uefiSelfSignedCertificate(strings.Repeat("x", 65), k.signer.Public(), k.signer, time.Now()); err == nil {
		t.Error("65-character common name accepted")
	}
	if _, err := uefiSelfSignedCertificate("", k.signer.Public(), k.signer, time.Now()); err == nil {
		t.Error("empty common name accepted")
	}
}
