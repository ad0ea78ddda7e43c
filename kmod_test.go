package main

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"fmt"
	mrand "math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"testing"
	"time"
)

// The kernel's sign-file as Debian's linux-kbuild-6.1 ships it.
const signFilePath = "/usr/lib/linux-kbuild-6.1/scripts/sign-file"

// testModulesEnv names a directory of real modules from Debian's kernel
// package, made by .ci/fetch-kernel-modules.
const testModulesEnv = "DEBUSINE_SIGNING_TEST_MODULES"

// testModule is a synthetic kernel module: an ELF64 little-endian
// relocatable object's header, then n pseudo-random bytes. sign-file does
// not look inside modules, so it is as good a test input as a real one.
func testModule(n int, seed uint64) []byte {
	b := make([]byte, elf64HdrSize+n)
	copy(b, "\x7fELF\x02\x01\x01")
	le := binary.LittleEndian
	le.PutUint16(b[16:], elfTypeRel)
	le.PutUint16(b[18:], 62) // EM_X86_64
	le.PutUint32(b[20:], 1)
	le.PutUint16(b[52:], elf64HdrSize)
	rng := mrand.New(mrand.NewPCG(seed, 2))
	for i := elf64HdrSize; i < len(b); i++ {
		b[i] = byte(rng.Uint32())
	}
	return b
}

// withTestSignature appends a signature of sigLen bytes in the kernel's
// format, as a module signed at build time has it.
func withTestSignature(module []byte, sigLen int) []byte {
	out := append(bytes.Clone(module), bytes.Repeat([]byte{0x30}, sigLen)...)
	info := make([]byte, 12)
	info[2] = 2
	binary.BigEndian.PutUint32(info[8:], uint32(sigLen))
	return append(append(out, info...), "~Module signature appended~\n"...)
}

// stripTestSignature drops an appended signature, if any, reading the
// trailer independently of parseKmod.
func stripTestSignature(module []byte) []byte {
	const marker = "~Module signature appended~\n"
	if !bytes.HasSuffix(module, []byte(marker)) {
		return module
	}
	end := len(module) - len(marker) - 12
	return module[:end-int(binary.BigEndian.Uint32(module[end+8:]))]
}

// realModules returns the real modules of $DEBUSINE_SIGNING_TEST_MODULES,
// as Debian ships them (signed with the build's ephemeral key), or nil.
func realModules(t *testing.T) map[string][]byte {
	t.Helper()
	dir := os.Getenv(testModulesEnv)
	paths, _ := filepath.Glob(filepath.Join(dir, "*.ko"))
	if dir == "" || len(paths) == 0 {
		t.Logf("no real kernel modules: $%s names no directory of .ko files (.ci/fetch-kernel-modules makes one)", testModulesEnv)
		return nil
	}
	mods := map[string][]byte{}
	for _, p := range paths {
		b, err := os.ReadFile(p)
		if err != nil {
			t.Fatal(err)
		}
		mods[filepath.Base(p)] = b
	}
	return mods
}

// kmodTestKey stores a UEFI key and returns it with its private key and
// certificate as PEM files, for sign-file.
func kmodTestKey(t *testing.T) (te *testEnv, st *Store, k *Key, keyPath, certPath string) {
	t.Helper()
	te = newTestEnv(t)
	st = te.store(t)
	keyPEM, certPEM, err := newUEFIKeyPair("Module signing test", time.Now())
	if err != nil {
		t.Fatal(err)
	}
	fpr, err := importUEFIKey(st, keyPEM, certPEM, "Module signing test")
	if err != nil {
		t.Fatal(err)
	}
	if k, err = st.Key(purposeUEFI, fpr); err != nil {
		t.Fatal(err)
	}
	return te, st, k, writeFile(t, te.dir, "key.pem", keyPEM), writeFile(t, te.dir, "cert.pem", certPEM)
}

func requireSignFile(t *testing.T) {
	t.Helper()
	if _, err := os.Stat(signFilePath); err != nil {
		t.Skipf("%s: %v (install linux-kbuild-6.1)", signFilePath, err)
	}
}

func runTool(t *testing.T, name string, args ...string) string {
	t.Helper()
	out, err := exec.Command(name, args...).CombinedOutput()
	if err != nil {
		t.Fatalf("%s %s: %v\n%s", name, strings.Join(args, " "), err, out)
	}
	return string(out)
}

// cmsVerify checks a detached module signature with openssl: true when it
// verifies over module with the certificate.
func cmsVerify(t *testing.T, certPath, sigPath, modulePath string) bool {
	t.Helper()
	out, err := exec.Command("openssl", "cms", "-verify", "-binary", "-inform", "DER", "-in", sigPath,
		"-content", modulePath, "-certfile", certPath, "-CAfile", certPath, "-out", os.DevNull).CombinedOutput()
	if err != nil {
		t.Logf("openssl cms -verify %s: %v\n%s", sigPath, err, out)
	}
	return err == nil
}

// checkModinfo checks what modinfo reads from a module's signature.
func checkModinfo(t *testing.T, path string, k *Key) {
	t.Helper()
	if _, err := exec.LookPath("modinfo"); err != nil {
		t.Log("modinfo is not installed (kmod): not checked")
		return
	}
	cert, err := parseUEFICertificate(k.PublicKey)
	if err != nil {
		t.Fatal(err)
	}
	var serial []string
	for _, b := range cert.SerialNumber.Bytes() {
		serial = append(serial, fmt.Sprintf("%02X", b))
	}
	for field, want := range map[string]string{
		"signer":       cert.Issuer.CommonName,
		"sig_key":      strings.Join(serial, ":"),
		"sig_hashalgo": "sha256",
		"sig_id":       "PKCS#7",
	} {
		if got := strings.TrimSpace(runTool(t, "modinfo", "-F", field, path)); got != want {
			t.Errorf("modinfo %s: %s %q, want %q", path, field, got, want)
		}
	}
}

// TestKmodMatchesSignFile: for a synthetic module and Debian's real ones,
// both forms are byte for byte what sign-file writes with the same key and
// certificate, modinfo reads the attached signature, and openssl verifies
// the detached one. Debian ships its modules signed with the build's
// ephemeral key: signing them needs --replace, and gives what sign-file
// gives for the module without that signature.
func TestKmodMatchesSignFile(t *testing.T) {
	requireSignFile(t)
	requireTool(t, "openssl")
	te, st, k, keyPath, certPath := kmodTestKey(t)
	modules := map[string][]byte{"synthetic.ko": testModule(5000, 1)}
	for name, data := range realModules(t) {
		modules[name] = data
	}
	var wantRows []string
	for name, data := range modules {
		dir := filepath.Join(te.dir, strings.TrimSuffix(name, ".ko"))
		if err := os.Mkdir(dir, 0o755); err != nil {
			t.Fatal(err)
		}
		unsigned := writeFile(t, dir, name, stripTestSignature(data))
		runTool(t, signFilePath, "-d", "sha256", keyPath, certPath, unsigned)
		refAttached := filepath.Join(dir, "reference.ko")
		runTool(t, signFilePath, "sha256", keyPath, certPath, unsigned, refAttached)

		for _, mode := range []string{uefiModeDetached, uefiModeAttached} {
			if err := signKmodFiles(st, k.Fingerprint, mode, "", false, []string{unsigned}); err != nil {
				t.Fatal(err)
			}
		}
		sumUnsigned := sha256.Sum256(stripTestSignature(data))
		wantRows = append(wantRows, hex.EncodeToString(sumUnsigned[:]), hex.EncodeToString(sumUnsigned[:]))
		sameFile(t, unsigned+".sig", unsigned+".p7s")
		sameFile(t, unsigned+".signed", refAttached)

		if !bytes.Equal(data, stripTestSignature(data)) {
			asShipped := writeFile(t, dir, "shipped.ko", data)
			err := signKmodFiles(st, k.Fingerprint, uefiModeAttached, "", false, []string{asShipped})
			if err == nil || !strings.Contains(err.Error(), "already signed") || !strings.Contains(err.Error(), "--replace") {
				t.Errorf("%s as shipped, without --replace: %v", name, err)
			}
			for _, mode := range []string{uefiModeDetached, uefiModeAttached} {
				if err := signKmodFiles(st, k.Fingerprint, mode, "", true, []string{asShipped}); err != nil {
					t.Fatal(err)
				}
			}
			sum := sha256.Sum256(data)
			wantRows = append(wantRows, hex.EncodeToString(sum[:]), hex.EncodeToString(sum[:]))
			sameFile(t, asShipped+".sig", unsigned+".p7s")
			sameFile(t, asShipped+".signed", refAttached)
		}

		attached := filepath.Join(dir, "ours-signed.ko") // modinfo wants a .ko name
		if err := os.Rename(unsigned+".signed", attached); err != nil {
			t.Fatal(err)
		}
		if name != "synthetic.ko" { // modinfo reads the ELF sections of real modules only
			checkModinfo(t, attached, k)
		}
		if !cmsVerify(t, certPath, unsigned+".sig", unsigned) {
			t.Errorf("%s: openssl cms does not verify the detached signature", name)
		}
		tampered := writeFile(t, dir, "tampered.ko", append(stripTestSignature(data), 0))
		if cmsVerify(t, certPath, unsigned+".sig", tampered) {
			t.Errorf("%s: the detached signature verifies over another module", name)
		}
	}
	var rows []string
	for _, r := range auditRows(t, st, AuditFilter{Fingerprint: k.Fingerprint}) {
		if r.Event == "sign" {
			var d signAuditData
			json.Unmarshal(r.Data, &d)
			rows = append(rows, d.DataSHA256)
		}
	}
	slices.Sort(rows)
	slices.Sort(wantRows)
	if !slices.Equal(rows, wantRows) {
		t.Errorf("sign audit rows' data_sha256:\n%v\nwant (the inputs as given):\n%v", rows, wantRows)
	}
}

func sameFile(t *testing.T, got, want string) {
	t.Helper()
	a, err := os.ReadFile(got)
	if err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(want)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(a, b) {
		i := 0
		for i < min(len(a), len(b)) && a[i] == b[i] {
			i++
		}
		t.Errorf("%s differs from %s (%d and %d bytes, first difference at %d)", got, want, len(a), len(b), i)
	}
}

// TestKmodReplaceOwnSignature: a module signed here, signed again with
// --replace, is signed once, with the same bytes as before.
func TestKmodReplaceOwnSignature(t *testing.T) {
	te, st, k, _, _ := kmodTestKey(t)
	in := writeFile(t, te.dir, "m.ko", testModule(3000, 3))
	once := filepath.Join(te.dir, "once.ko")
	if err := signKmodFiles(st, k.Fingerprint, uefiModeAttached, once, false, []string{in}); err != nil {
		t.Fatal(err)
	}
	if err := signKmodFiles(st, k.Fingerprint, uefiModeAttached, "", true, []string{once}); err != nil {
		t.Fatal(err)
	}
	sameFile(t, once+".signed", once)
	// In place: --output FILE replaces the module atomically.
	if err := signKmodFiles(st, k.Fingerprint, uefiModeAttached, in, false, []string{in}); err != nil {
		t.Fatal(err)
	}
	sameFile(t, in, once)
}

// TestKmodBadInput: every refusal is one line naming the file and the
// problem, leaves no output and adds no audit row; a good module listed
// first is not signed either.
func TestKmodBadInput(t *testing.T) {
	te, st, k, _, _ := kmodTestKey(t)
	good := writeFile(t, te.dir, "good.ko", testModule(1000, 1))
	mod := testModule(2000, 2)
	signed := withTestSignature(mod, 300)
	mutate := func(b []byte, f func(b []byte)) []byte { b = bytes.Clone(b); f(b); return b }
	tail := len(signed) - 40
	cases := map[string]struct {
		data []byte
		want string
	}{
		"empty.ko":            {nil, "too short for an ELF header"},
		"text.ko":             {[]byte("#!/bin/sh\necho this is not a module, whatever its name\n"), "no ELF signature"},
		"executable.ko":       {mutate(mod, func(b []byte) { b[16] = 2 }), "ELF type 2, not a relocatable object"},
		"short-elf64.ko":      {mod[:60], "too short for an ELF64 header"},
		"bad-class.ko":        {mutate(mod, func(b []byte) { b[4] = 3 }), "ELF class 3"},
		"marker-only.ko":      {[]byte("~Module signature appended~\n"), "truncated module signature"},
		"marker-no-info.ko":   {append(bytes.Clone(mod[:5]), "~Module signature appended~\n"...), "truncated module signature"},
		"sig-too-long.ko":     {mutate(signed, func(b []byte) { binary.BigEndian.PutUint32(b[tail+8:], uint32(tail)) }), "truncated module signature"},
		"sig-empty.ko":        {mutate(signed, func(b []byte) { binary.BigEndian.PutUint32(b[tail+8:], 0) }), "empty signature"},
		"sig-type.ko":         {mutate(signed, func(b []byte) { b[tail+2] = 1 }), "not PKCS#7"},
		"sig-fields.ko":       {mutate(signed, func(b []byte) { b[tail+3] = 7 }), "non-zero"},
		"already-signed.ko":   {signed, "already signed"},
		"signed-not-elf.ko":   {withTestSignature(bytes.Repeat([]byte("not ELF "), 10), 20), "no ELF signature"},
		"truncated-elf-hd.ko": {withTestSignature(mod[:40], 10), "too short for an ELF header"},
	}
	rowsBefore := len(auditRows(t, st, AuditFilter{}))
	for name, c := range cases {
		p := writeFile(t, te.dir, name, c.data)
		for _, mode := range []string{uefiModeDetached, uefiModeAttached} {
			err := signKmodFiles(st, k.Fingerprint, mode, "", false, []string{good, p})
			if err == nil || !strings.Contains(err.Error(), p) || !strings.Contains(err.Error(), c.want) || strings.Contains(err.Error(), "\n") {
				t.Errorf("%s (%s): error %v, want one line naming it and %q", name, mode, err, c.want)
			}
		}
	}
	for _, args := range [][]string{
		{k.Fingerprint, uefiModeDetached, "x", good, good},
		{k.Fingerprint, "clear", "", good},
		{strings.Repeat("0", 64), uefiModeDetached, "", good},
		{k.Fingerprint, uefiModeDetached, "", filepath.Join(te.dir, "missing.ko")},
		{k.Fingerprint, uefiModeDetached, "", te.dir},
	} {
		if err := signKmodFiles(st, args[0], args[1], args[2], false, args[3:]); err == nil {
			t.Errorf("%v: no error", args)
		}
	}
	for _, pattern := range []string{"*.sig", "*.signed", ".*tmp*"} {
		if outs, _ := filepath.Glob(filepath.Join(te.dir, pattern)); len(outs) > 0 {
			t.Errorf("outputs left: %v", outs)
		}
	}
	if n := len(auditRows(t, st, AuditFilter{})); n != rowsBefore {
		t.Errorf("%d audit rows added", n-rowsBefore)
	}

	// A key that is not RSA: no signature, no audit row.
	ec, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	_, cert, err := uefiSigner(st, k)
	if err != nil {
		t.Fatal(err)
	}
	_, err = signKmodDetached(st, k, ec, cert, "m.ko", bytes.NewReader(mod), int64(len(mod)), auditContext{})
	if err == nil || !strings.Contains(err.Error(), "needs an RSA key") {
		t.Errorf("ECDSA key: %v", err)
	}
	if n := len(auditRows(t, st, AuditFilter{})); n != rowsBefore {
		t.Errorf("%d audit rows added", n-rowsBefore)
	}
}

// TestKmodChangedWhileSigned signs a module attached while another
// goroutine flips one of its bytes back and forth: whatever version was
// read, the audit row names it, the output is it with the signature
// appended, and openssl accepts the signature over it. A module that
// shrinks under the read gives an error and no output.
func TestKmodChangedWhileSigned(t *testing.T) {
	te, st, k, _, certPath := kmodTestKey(t)
	a := testModule(40000, 4)
	b := bytes.Clone(a)
	const flipAt = 20000
	b[flipAt] ^= 0xff
	versions := map[string][]byte{}
	for _, v := range [][]byte{a, b} {
		sum := sha256.Sum256(v)
		versions[hex.EncodeToString(sum[:])] = v
	}
	in := writeFile(t, te.dir, "m.ko", a)
	_, stop := keepFlipping(t, in, flipAt, a[flipAt], b[flipAt])
	_, noOpenSSL := exec.LookPath("openssl")
	out := filepath.Join(te.dir, "out.ko")
	for round := range 12 {
		if err := signKmodFiles(st, k.Fingerprint, uefiModeAttached, out, false, []string{in}); err != nil {
			t.Fatal(err)
		}
		rows := auditRows(t, st, AuditFilter{})
		var d signAuditData
		json.Unmarshal(rows[len(rows)-1].Data, &d)
		v, ok := versions[d.DataSHA256]
		if !ok {
			t.Fatalf("round %d: audit row names %s, neither version", round, d.DataSHA256)
		}
		signed, _ := os.ReadFile(out)
		if !bytes.Equal(stripTestSignature(signed), v) {
			t.Fatalf("round %d: the output is not the audited version with a signature", round)
		}
		if noOpenSSL == nil {
			sig := signed[len(v) : len(signed)-kmodTailBytes]
			vPath := writeFile(t, te.dir, "version.ko", v)
			sigPath := writeFile(t, te.dir, "version.ko.p7s", sig)
			if !cmsVerify(t, certPath, sigPath, vPath) {
				t.Fatalf("round %d: the signature does not verify over the audited version", round)
			}
		}
	}
	stop()

	signer, cert, err := uefiSigner(st, k)
	if err != nil {
		t.Fatal(err)
	}
	shrinking := &shrinkingReaderAt{data: a, after: 2, to: 3000}
	var copied bytes.Buffer
	if _, err := signKmod(shrinking, int64(len(a)), false, signer, cert, make([]byte, 1024), &copied); err == nil || !strings.Contains(err.Error(), "shorter") {
		t.Errorf("module shrinking under the read: %v", err)
	}
	if entries, _ := filepath.Glob(filepath.Join(te.dir, ".*tmp*")); len(entries) > 0 {
		t.Errorf("temporary files left: %v", entries)
	}
}

// shrinkingReaderAt reads data, cut to its first to bytes after the first
// after reads: a file truncated while being read.
type shrinkingReaderAt struct {
	data      []byte
	after, to int
	reads     int
}

func (r *shrinkingReaderAt) ReadAt(p []byte, off int64) (int, error) {
	if r.reads++; r.reads > r.after {
		r.data = r.data[:r.to]
	}
	return bytes.NewReader(r.data).ReadAt(p, off)
}

// TestKmodCommand: the sign command picks module signing by the .ko
// suffix or --type, and refuses mixes and misplaced flags.
func TestKmodCommand(t *testing.T) {
	te, _, k, _, certPath := kmodTestKey(t)
	a := writeFile(t, te.dir, "a.ko", testModule(1500, 6))
	b := writeFile(t, te.dir, "b.module", testModule(1500, 7))
	efi := writeFile(t, te.dir, "x.efi", testPE{sections: []int{0x200}}.build())
	te.mustRun(t, "sign", "--purpose", "uefi", "--key", k.Fingerprint, "--mode", "attached", a)
	te.mustRun(t, "sign", "--purpose", "uefi", "--key", k.Fingerprint, "--type", "linux-module", b)
	if _, err := exec.LookPath("openssl"); err == nil && !cmsVerify(t, certPath, b+".sig", b) {
		t.Error("b.module.sig does not verify")
	}
	signedA, _ := os.ReadFile(a + ".signed")
	if !bytes.Equal(stripTestSignature(signedA), testModule(1500, 6)) || !bytes.HasSuffix(signedA, []byte(kmodMarker)) {
		t.Error("a.ko.signed is not a.ko with a signature appended")
	}
	for _, c := range []struct {
		args   []string
		status int
		want   string
	}{
		{[]string{"--purpose", "uefi", "--key", k.Fingerprint, a, efi}, 2, "1 of the 2 FILEs are kernel modules"},
		{[]string{"--purpose", "uefi", "--key", k.Fingerprint, "--replace", efi}, 2, "--replace is for kernel modules only"},
		{[]string{"--purpose", "uefi", "--key", k.Fingerprint, "--type", "pe", a}, 2, "unknown --type"},
		{[]string{"--purpose", "openpgp", "--key", k.Fingerprint, "--type", "linux-module", a}, 2, "--purpose uefi only"},
		{[]string{"--purpose", "uefi", "--key", k.Fingerprint, "--type", "efi", a}, 3, "not a PE image"},
		{[]string{"--purpose", "uefi", "--key", k.Fingerprint, "--type", "linux-module", a + ".signed"}, 3, "already signed"},
	} {
		status, _, stderr := te.run(t, append([]string{"sign"}, c.args...)...)
		if status != c.status || !strings.Contains(stderr, c.want) || strings.Count(stderr, "\n") != 1 {
			t.Errorf("sign %v: status %d, stderr %q; want %d and one line with %q", c.args, status, stderr, c.status, c.want)
		}
	}
}

// TestKmodStreaming signs a 64 MiB module (sparse, so cheap on disk) in
// both forms: what the signing allocates does not grow with the module,
// and the output is still sign-file's.
func TestKmodStreaming(t *testing.T) {
	if testing.Short() {
		t.Skip("reads 64 MiB six times")
	}
	te, st, k, keyPath, certPath := kmodTestKey(t)
	in := writeFile(t, te.dir, "big.ko", testModule(1000, 8))
	const size = 64 << 20
	if err := os.Truncate(in, size); err != nil {
		t.Fatal(err)
	}
	for _, mode := range []string{uefiModeDetached, uefiModeAttached} {
		runtime.GC()
		var before, after runtime.MemStats
		runtime.ReadMemStats(&before)
		if err := signKmodFiles(st, k.Fingerprint, mode, "", false, []string{in}); err != nil {
			t.Fatal(err)
		}
		runtime.ReadMemStats(&after)
		if alloc := after.TotalAlloc - before.TotalAlloc; alloc > size/16 {
			t.Errorf("%s: signing a %d MiB module allocated %d MiB", mode, size>>20, alloc>>20)
		} else {
			t.Logf("%s: signing a %d MiB module allocated %d KiB", mode, size>>20, alloc>>10)
		}
	}
	if _, err := os.Stat(signFilePath); err != nil {
		t.Logf("%s: %v: outputs not compared", signFilePath, err)
		return
	}
	ref := filepath.Join(te.dir, "ref.ko")
	runTool(t, signFilePath, "-d", "sha256", keyPath, certPath, in)
	runTool(t, signFilePath, "sha256", keyPath, certPath, in, ref)
	sameFile(t, in+".sig", in+".p7s")
	sameFile(t, in+".signed", ref)
}

// kmodWorkerInput is a signing input of an EFI image and modules, as
// Debusine's ExtractForSigning makes one from a kernel package.
func kmodWorkerInput(t *testing.T) map[string][]byte {
	t.Helper()
	files := map[string][]byte{"boot/vmlinuz.efi": efiInputs(t)["shimx64.efi"]}
	const dir = "lib/modules/6.1.0-test-amd64/kernel/"
	files[dir+"lib/synthetic.ko"] = testModule(7000, 9)
	for name, data := range realModules(t) {
		files[dir+"fs/"+name] = stripTestSignature(data)
	}
	return files
}

// TestWorkerSignKernelModules: the sign task signs every module of its
// input next to the EFI image: each file gets its .sig, each .sig verifies
// (sbverify for the image, openssl cms for the modules) and, attached with
// `sign-file -s` as a signed-package build would, gives a module modinfo
// reads.
func TestWorkerSignKernelModules(t *testing.T) {
	requireTool(t, "sbverify", "openssl")
	srv := newFakeServer(t)
	w, _ := testWorker(t, srv)
	registered(t, srv, w)
	k, certPath := uefiSignSetup(t, srv, w)
	files := kmodWorkerInput(t)
	in := srv.addArtifact("debusine:signing-input", map[string]any{"binary_package_name": "linux-image-6.1.0-test-amd64-unsigned"}, files)
	id := srv.addWorkRequest("sign", map[string]any{"purpose": "uefi", "unsigned": "x", "key": k.Fingerprint},
		map[string]any{"unsigned_ids": []int64{in}})
	runOnce(t, w)
	if c := srv.waitCompleted(t, id); c.Result != "success" {
		t.Fatalf("result %s", c.Result)
	}
	outs := srv.artifactsOf(id, "debusine:signing-output")
	if len(outs) != 1 {
		t.Fatalf("%d signing outputs", len(outs))
	}
	var data struct {
		Results []signResult `json:"results"`
	}
	json.Unmarshal(outs[0].Data, &data)
	if len(data.Results) != len(files) {
		t.Fatalf("%d results for %d files", len(data.Results), len(files))
	}
	dir := t.TempDir()
	sums := map[string]bool{}
	for _, r := range data.Results {
		if r.ErrorMessage != nil || r.OutputFile == nil || *r.OutputFile != r.File+".sig" || outs[0].Files[*r.OutputFile] == nil {
			t.Fatalf("result %+v", r)
		}
		sum := sha256.Sum256(files[r.File])
		sums[hex.EncodeToString(sum[:])] = true
		base := filepath.Join(dir, filepath.Base(r.File))
		sig := writeFile(t, dir, filepath.Base(r.File)+".sig", outs[0].Files[*r.OutputFile].content)
		f := writeFile(t, dir, filepath.Base(r.File), files[r.File])
		if !strings.HasSuffix(r.File, ".ko") {
			if o, err := exec.Command("sbverify", "--cert", certPath, "--detached", sig, f).CombinedOutput(); err != nil {
				t.Errorf("sbverify %s: %v\n%s", r.File, err, o)
			}
			continue
		}
		if !cmsVerify(t, certPath, sig, f) {
			t.Errorf("%s: openssl cms does not verify its .sig", r.File)
		}
		if _, err := os.Stat(signFilePath); err == nil && !strings.HasSuffix(r.File, "synthetic.ko") {
			runTool(t, signFilePath, "-s", sig, "sha256", certPath, f, base+".attached.ko")
			checkModinfo(t, base+".attached.ko", k)
		}
	}
	checkSignAudits(t, w.st, len(files), id, func(d signAuditData) bool { return sums[d.DataSHA256] })
}

// TestWorkerKernelModuleRefusals: with sign_kernel_modules = false the
// modules are skipped as Debusine skips them; a module already signed is
// refused (its own result says why) and the others are still signed.
func TestWorkerKernelModuleRefusals(t *testing.T) {
	srv := newFakeServer(t)
	w, _ := testWorker(t, srv)
	registered(t, srv, w)
	k, _ := uefiSignSetup(t, srv, w)
	mod := testModule(2000, 10)
	in := srv.addArtifact("debusine:signing-input", map[string]any{}, map[string][]byte{
		"a.ko": mod, "signed.ko": withTestSignature(mod, 100), "b.efi": testPE{sections: []int{0x200}}.build(),
	})
	results := func(id int64) map[string]signResult {
		t.Helper()
		srv.waitCompleted(t, id)
		outs := srv.artifactsOf(id, "debusine:signing-output")
		if len(outs) != 1 {
			t.Fatalf("%d signing outputs", len(outs))
		}
		var data struct {
			Results []signResult `json:"results"`
		}
		json.Unmarshal(outs[0].Data, &data)
		m := map[string]signResult{}
		for _, r := range data.Results {
			m[r.File] = r
		}
		return m
	}
	task := map[string]any{"purpose": "uefi", "unsigned": "x", "key": k.Fingerprint}
	dyn := map[string]any{"unsigned_ids": []int64{in}}

	id := srv.addWorkRequest("sign", task, dyn)
	runOnce(t, w)
	if c := srv.waitCompleted(t, id); c.Result != "failure" {
		t.Errorf("result %s, want failure (one module was refused)", c.Result)
	}
	r := results(id)
	if r["a.ko"].OutputFile == nil || r["b.efi"].OutputFile == nil {
		t.Errorf("results %+v", r)
	}
	if e := r["signed.ko"].ErrorMessage; e == nil || !strings.Contains(*e, "signed.ko: the module is already signed") || strings.Contains(*e, "--replace") {
		t.Errorf("signed.ko: %+v", r["signed.ko"])
	}

	w.skipKernelModules = true
	id = srv.addWorkRequest("sign", task, dyn)
	runOnce(t, w)
	if c := srv.waitCompleted(t, id); c.Result != "success" {
		t.Errorf("result %s, want success (modules skipped)", c.Result)
	}
	r = results(id)
	for _, name := range []string{"a.ko", "signed.ko"} {
		if e := r[name].ErrorMessage; r[name].OutputFile != nil || e == nil || *e != "Skipped kernel module (not yet supported)" {
			t.Errorf("%s: %+v", name, r[name])
		}
	}
	if r["b.efi"].OutputFile == nil {
		t.Errorf("b.efi: %+v", r["b.efi"])
	}
}

// TestSignKernelModulesSetting: the [worker] option, true unless set to
// false.
func TestSignKernelModulesSetting(t *testing.T) {
	te := newTestEnv(t)
	for text, want := range map[string]bool{
		"":                              true,
		"sign_kernel_modules = true\n":  true,
		"sign_kernel_modules = false\n": false,
	} {
		te.writeConfig(t, "database = \"signing.sqlite3\"\nservice_keys = [\"service-key\"]\n[worker]\n"+text)
		if got := te.cfg.Worker.signKernelModules(); got != want {
			t.Errorf("%q: %v, want %v", text, got, want)
		}
	}
}

// BenchmarkSignKmod: parsing, hashing and signing one 4 MiB module in
// memory (no audit, no output), the per-module cost of the sign command.
func BenchmarkSignKmod(b *testing.B) {
	keyPEM, certPEM, err := newUEFIKeyPair("bench", time.Now())
	if err != nil {
		b.Fatal(err)
	}
	signer, cert, err := parseUEFIKeyPair(keyPEM, certPEM)
	if err != nil {
		b.Fatal(err)
	}
	mod := testModule(4<<20, 1)
	buf := make([]byte, peCopyBufferSize)
	b.SetBytes(int64(len(mod)))
	for b.Loop() {
		if _, err := signKmod(bytes.NewReader(mod), int64(len(mod)), false, signer, cert, buf, nil); err != nil {
			b.Fatal(err)
		}
	}
}
