package main

// Tests of the UEFI signing commands and calls with a store: the sign
// command, its errors and parallel pipeline, and the worker's detached
// signatures.

import (
	"bytes"
	"crypto"
	"crypto/sha256"
	"crypto/x509"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"
)

// uefiStoreKey is a store with a generated UEFI key, its certificate
// written to cert.pem in the test directory.
func uefiStoreKey(t *testing.T) (te *testEnv, st *Store, k *Key, certPath string) {
	t.Helper()
	te = newTestEnv(t)
	st = te.store(t)
	fpr, err := generateUEFIKey(st, "Debusine UEFI test", nil)
	if err != nil {
		t.Fatal(err)
	}
	k, err = st.Key(purposeUEFI, fpr)
	if err != nil {
		t.Fatal(err)
	}
	return te, st, k, writeFile(t, te.dir, "cert.pem", k.PublicKey)
}

func TestGenerateUEFIKey(t *testing.T) {
	_, st, k, _ := uefiStoreKey(t)
	if !regexp.MustCompile(`^[0-9A-F]{64}$`).MatchString(k.Fingerprint) {
		t.Errorf("fingerprint %q", k.Fingerprint)
	}
	if bytes.Contains(k.PrivateKey, []byte("PRIVATE KEY")) {
		t.Fatal("private key stored in the clear")
	}
	if s, err := k.Storage(); err != nil || s != storageNaCl {
		t.Errorf("storage %q, %v", s, err)
	}
	signer, cert, err := uefiSigner(st, k)
	if err != nil {
		t.Fatal(err)
	}
	if certificateFingerprint(cert) != k.Fingerprint || cert.Subject.CommonName != "Debusine UEFI test" || k.Description != "Debusine UEFI test" {
		t.Errorf("certificate %s (%s), key %s", cert.Subject, certificateFingerprint(cert), k.Fingerprint)
	}
	if !signer.Public().(interface{ Equal(crypto.PublicKey) bool }).Equal(cert.PublicKey) {
		t.Error("signer does not match the certificate")
	}
	rows := auditRows(t, st, AuditFilter{Fingerprint: k.Fingerprint})
	if len(rows) != 1 || rows[0].Event != "generate" || rows[0].Purpose != purposeUEFI || !strings.Contains(string(rows[0].Data), `"Debusine UEFI test"`) {
		t.Errorf("audit rows %+v", rows)
	}
}

func TestSignUEFIFiles(t *testing.T) {
	te, st, k, certPath := uefiStoreKey(t)
	a := writeFile(t, te.dir, "a.efi", testPE{plus: true, sections: []int{0x400}, trailing: 3}.build())
	b := writeFile(t, te.dir, "b.efi", testPE{sections: []int{0x200, 0x200}, seed: 1}.build())
	if err := signUEFIFiles(st, k.Fingerprint, "", "", []string{a, b}); err != nil {
		t.Fatal(err)
	}
	for _, in := range []string{a, b} {
		sbOK, osslOK, log := verifyBoth(t, certPath, in, in+".sig", uefiModeDetached)
		if !sbOK || !osslOK {
			t.Fatalf("%s: sbverify ok=%v, osslsigncode ok=%v\n%s", in, sbOK, osslOK, log)
		}
		if fi, err := os.Stat(in + ".sig"); err != nil || fi.Mode().Perm() != 0o644 {
			t.Errorf("%s.sig: %v %v", in, fi.Mode(), err)
		}
	}
	out := filepath.Join(te.dir, "signed.efi")
	if err := signUEFIFiles(st, k.Fingerprint, uefiModeAttached, out, []string{a}); err != nil {
		t.Fatal(err)
	}
	if sbOK, osslOK, log := verifyBoth(t, certPath, a, out, uefiModeAttached); !sbOK || !osslOK {
		t.Fatalf("attached: sbverify ok=%v, osslsigncode ok=%v\n%s", sbOK, osslOK, log)
	}
	if err := signUEFIFiles(st, k.Fingerprint, uefiModeAttached, "", []string{b}); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(b + ".signed"); err != nil {
		t.Error(err)
	}

	var got []string
	for _, r := range auditRows(t, st, AuditFilter{Fingerprint: k.Fingerprint}) {
		if r.Event == "sign" {
			got = append(got, string(r.Data))
		}
	}
	var want []string
	for _, in := range []string{a, b, a, b} {
		data, _ := os.ReadFile(in)
		sum := sha256.Sum256(data)
		want = append(want, `{"data_sha256":"`+hex.EncodeToString(sum[:])+`"}`)
	}
	if strings.Join(got, "\n") != strings.Join(want, "\n") {
		t.Errorf("sign audit rows:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
	if entries, _ := filepath.Glob(filepath.Join(te.dir, ".*tmp*")); len(entries) > 0 {
		t.Errorf("temporary files left: %v", entries)
	}
}

// TestSignUEFIFilesErrors: every refusal is one line naming the file or key
// and the problem, leaves no output file and adds no audit row.
func TestSignUEFIFilesErrors(t *testing.T) {
	te, st, k, _ := uefiStoreKey(t)
	good := writeFile(t, te.dir, "good.efi", testPE{plus: true, sections: []int{0x200}}.build())
	pe := testPE{plus: true, sections: []int{0x400, 0x200}, seed: 5}.build()
	le := binary.LittleEndian
	const e, opt = 0x80, 0x80 + 24
	secTable := opt + 240
	mutate := func(f func(b []byte) []byte) []byte { return f(bytes.Clone(pe)) }
	bad := map[string][]byte{
		"not-pe.efi":           []byte("#!/bin/sh\necho hello\n"),
		"truncated.efi":        pe[:0x100],
		"section-table.efi":    mutate(func(b []byte) []byte { le.PutUint16(b[e+6:], 90); return b[:0x600] }),
		"overlap.efi":          mutate(func(b []byte) []byte { le.PutUint32(b[secTable+40+20:], 0x500); return b }),
		"section-past-end.efi": mutate(func(b []byte) []byte { le.PutUint32(b[secTable+16:], 0x7ffffe00); return b }),
		"absurd-headers.efi":   mutate(func(b []byte) []byte { le.PutUint32(b[opt+60:], 0xfffffe00); return b }),
		"cert-not-at-end.efi": mutate(func(b []byte) []byte {
			b = append(b, make([]byte, 64)...)
			le.PutUint32(b[opt+144:], uint32(len(b)-64))
			le.PutUint32(b[opt+148:], 32)
			return b
		}),
	}
	sealed, err := st.Seal([]byte("not a key"))
	if err != nil {
		t.Fatal(err)
	}
	openpgp := &Key{Purpose: purposeOpenPGP, Fingerprint: strings.Repeat("AB", 20), PrivateKey: sealed, PublicKey: []byte("x"), Description: "other"}
	insertTestKeyRow(t, st, openpgp)
	rowsBefore := len(auditRows(t, st, AuditFilter{}))

	type call struct {
		fpr, mode, output string
		files             []string
		want              []string // substrings of the error
	}
	calls := []call{
		{fpr: strings.Repeat("0", 64), files: []string{good}, want: []string{"unknown key", strings.Repeat("0", 64)}},
		{fpr: openpgp.Fingerprint, files: []string{good}, want: []string{openpgp.Fingerprint, "openpgp"}},
		{fpr: k.Fingerprint, mode: "clear", files: []string{good}, want: []string{"mode"}},
		{fpr: k.Fingerprint, output: "x", files: []string{good, good}, want: []string{"--output"}},
		{fpr: k.Fingerprint, files: []string{good, filepath.Join(te.dir, "missing.efi")}, want: []string{"missing.efi"}},
	}
	for name, data := range bad {
		p := writeFile(t, te.dir, name, data)
		for _, mode := range []string{uefiModeDetached, uefiModeAttached} {
			// The good file comes first: the bad one must stop it too.
			calls = append(calls, call{fpr: k.Fingerprint, mode: mode, files: []string{good, p}, want: []string{p}})
		}
	}
	for _, c := range calls {
		err := signUEFIFiles(st, c.fpr, c.mode, c.output, c.files)
		if err == nil {
			t.Errorf("%v: no error", c)
			continue
		}
		msg := err.Error()
		for _, w := range c.want {
			if !strings.Contains(msg, w) || strings.Contains(msg, "\n") {
				t.Errorf("%v: error %q, want one line containing %q", c.files, msg, w)
			}
		}
		t.Logf("%s", msg)
	}
	if outs, _ := filepath.Glob(filepath.Join(te.dir, "*.sig")); len(outs) > 0 {
		t.Errorf("outputs left: %v", outs)
	}
	if outs, _ := filepath.Glob(filepath.Join(te.dir, "*.signed")); len(outs) > 0 {
		t.Errorf("outputs left: %v", outs)
	}
	if n := len(auditRows(t, st, AuditFilter{})); n != rowsBefore {
		t.Errorf("%d audit rows added", n-rowsBefore)
	}
}

// TestSignUEFIFileAuditFailure: when the audit row cannot be written, no
// signature is released.
func TestSignUEFIFileAuditFailure(t *testing.T) {
	te, st, k, _ := uefiStoreKey(t)
	signer, cert, err := uefiSigner(st, k)
	if err != nil {
		t.Fatal(err)
	}
	in := writeFile(t, te.dir, "in.efi", testPE{sections: []int{0x200}}.build())
	st.Close()
	for _, mode := range []string{uefiModeDetached, uefiModeAttached} {
		out := filepath.Join(te.dir, "out-"+mode)
		if err := signUEFIFile(st, k, signer, cert, in, out, mode, auditContext{}); err == nil {
			t.Errorf("%s: signed without an audit row", mode)
		}
		if err := signUEFIPipelined(st, k, signer, cert, []string{in, in}, []string{out + "1", out + "2"}, mode); err == nil {
			t.Errorf("%s: batch signed without audit rows", mode)
		}
		if entries, _ := filepath.Glob(filepath.Join(te.dir, "*out*")); len(entries) > 0 {
			t.Errorf("%s: outputs written without an audit row: %v", mode, entries)
		}
	}
}

// TestSignUEFIFilesMany signs more files than are signed ahead at once.
func TestSignUEFIFilesMany(t *testing.T) {
	te, st, k, certPath := uefiStoreKey(t)
	var files []string
	for i := range uefiMaxAhead + 5 {
		files = append(files, writeFile(t, te.dir, fmt.Sprintf("f%02d.efi", i), testPE{sections: []int{0x200}, trailing: i, seed: uint64(i)}.build()))
	}
	if err := signUEFIFiles(st, k.Fingerprint, uefiModeAttached, "", files); err != nil {
		t.Fatal(err)
	}
	for _, i := range []int{0, uefiMaxAhead, len(files) - 1} {
		if sbOK, osslOK, log := verifyBoth(t, certPath, files[i], files[i]+".signed", uefiModeAttached); !sbOK || !osslOK {
			t.Fatalf("%s: sbverify ok=%v, osslsigncode ok=%v\n%s", files[i], sbOK, osslOK, log)
		}
	}
	var signs int
	for _, r := range auditRows(t, st, AuditFilter{Fingerprint: k.Fingerprint}) {
		if r.Event == "sign" {
			signs++
		}
	}
	if signs != len(files) {
		t.Errorf("%d sign rows for %d files", signs, len(files))
	}
}

func TestUEFICommands(t *testing.T) {
	te := newTestEnv(t)
	status, stdout, stderr := te.run(t, "generate-key", "--purpose", "uefi", "--description", "CLI key")
	fpr := strings.TrimSpace(stdout)
	if status != 0 || !regexp.MustCompile(`^[0-9A-F]{64}$`).MatchString(fpr) {
		t.Fatalf("generate-key: status %d, stdout %q, stderr %q", status, stdout, stderr)
	}
	certPath := filepath.Join(te.dir, "cert.pem")
	if err := os.WriteFile(certPath, []byte(te.mustRun(t, "export-public-key", "--purpose", "uefi", "--key", fpr)), 0o644); err != nil {
		t.Fatal(err)
	}
	a := writeFile(t, te.dir, "a.efi", testPE{plus: true, sections: []int{0x400}, trailing: 7}.build())
	b := writeFile(t, te.dir, "b.efi", testPE{sections: []int{0x200}}.build())
	te.mustRun(t, "sign", "--purpose", "uefi", "--key", fpr, a, b)
	signed := filepath.Join(te.dir, "a-signed.efi")
	te.mustRun(t, "sign", "--purpose", "uefi", "--key", fpr, "--mode", "attached", "--output", signed, a)
	for _, c := range [][2]string{{a, a + ".sig"}, {b, b + ".sig"}, {a, signed}} {
		mode := uefiModeDetached
		if c[1] == signed {
			mode = uefiModeAttached
		}
		if sbOK, osslOK, log := verifyBoth(t, certPath, c[0], c[1], mode); !sbOK || !osslOK {
			t.Fatalf("%s: sbverify ok=%v, osslsigncode ok=%v\n%s", c[1], sbOK, osslOK, log)
		}
	}

	bad := writeFile(t, te.dir, "bad.efi", []byte("MZ not really"))
	for _, c := range []struct {
		args   []string
		status int
		want   string
	}{
		{[]string{"--key", fpr, bad}, 3, "bad.efi: not a PE image"},
		{[]string{"--key", strings.Repeat("1", 64), a}, 3, "unknown key"},
		{[]string{"--key", fpr, "--output", "x", a, b}, 2, "--output"},
		{[]string{"--key", fpr, "--mode", "clear", a}, 2, "mode"},
		{[]string{a}, 2, "--key"},
	} {
		status, _, stderr := te.run(t, append([]string{"sign", "--purpose", "uefi"}, c.args...)...)
		if status != c.status || !strings.Contains(stderr, c.want) || strings.Count(stderr, "\n") != 1 {
			t.Errorf("sign %v: status %d, stderr %q; want %d and one line with %q", c.args, status, stderr, c.status, c.want)
		}
	}
	if _, err := os.Stat(bad + ".sig"); err == nil {
		t.Error("bad.efi.sig written")
	}
}

// TestSignUEFIPipelinedError: a file that fails while others are being
// signed stops the run; every output written has its audit row and every
// audit row its output.
func TestSignUEFIPipelinedError(t *testing.T) {
	te, st, k, _ := uefiStoreKey(t)
	signer, cert, err := uefiSigner(st, k)
	if err != nil {
		t.Fatal(err)
	}
	var files, outputs []string
	for i := range 12 {
		data := testPE{sections: []int{0x200}, trailing: i, seed: uint64(i)}.build()
		if i == 7 {
			data = []byte("not a PE image")
		}
		f := writeFile(t, te.dir, fmt.Sprintf("f%02d.efi", i), data)
		files, outputs = append(files, f), append(outputs, f+".sig")
	}
	err = signUEFIPipelined(st, k, signer, cert, files, outputs, uefiModeDetached)
	if err == nil || !strings.Contains(err.Error(), "f07.efi") {
		t.Fatalf("error %v, want one naming f07.efi", err)
	}
	written := map[string]bool{}
	for i, out := range outputs {
		if _, err := os.Stat(out); err == nil {
			if i >= 7 {
				t.Errorf("%s written after the failure", out)
			}
			data, _ := os.ReadFile(files[i])
			sum := sha256.Sum256(data)
			written[hex.EncodeToString(sum[:])] = true
		}
	}
	audited := map[string]bool{}
	for _, r := range auditRows(t, st, AuditFilter{Fingerprint: k.Fingerprint}) {
		if r.Event == "sign" {
			var d struct {
				DataSHA256 string `json:"data_sha256"`
			}
			if err := json.Unmarshal(r.Data, &d); err != nil {
				t.Fatal(err)
			}
			audited[d.DataSHA256] = true
		}
	}
	if fmt.Sprint(written) != fmt.Sprint(audited) {
		t.Errorf("outputs for %v, audit rows for %v", written, audited)
	}
}

// TestSignUEFIDetached is the worker's path: the audit row carries the work
// request and the permission check's answer.
func TestSignUEFIDetached(t *testing.T) {
	te, st, k, certPath := uefiStoreKey(t)
	signer, cert, err := uefiSigner(st, k)
	if err != nil {
		t.Fatal(err)
	}
	data, err := os.ReadFile("/usr/lib/systemd/boot/efi/systemd-bootx64.efi")
	if err != nil {
		data = testPE{plus: true, sections: []int{0x400}, trailing: 11}.build()
	}
	in := writeFile(t, te.dir, "boot.efi", data)
	wr := int64(42)
	ac := auditContext{WorkRequest: &wr, Extra: map[string]any{"username": "alice", "user_id": 7, "resource": map[string]any{"package": "systemd"}}}
	sig, err := signUEFIDetached(st, k, signer, cert, "boot.efi", bytes.NewReader(data), int64(len(data)), ac)
	if err != nil {
		t.Fatal(err)
	}
	sigPath := writeFile(t, te.dir, "boot.efi.sig", sig)
	if sbOK, osslOK, log := verifyBoth(t, certPath, in, sigPath, uefiModeDetached); !sbOK || !osslOK {
		t.Fatalf("sbverify ok=%v, osslsigncode ok=%v\n%s", sbOK, osslOK, log)
	}
	rows := auditRows(t, st, AuditFilter{WorkRequest: &wr})
	sum := sha256.Sum256(data)
	if len(rows) != 1 || rows[0].Event != "sign" || !strings.Contains(string(rows[0].Data), hex.EncodeToString(sum[:])) || !strings.Contains(string(rows[0].Data), `"username":"alice"`) {
		t.Errorf("audit rows %+v", rows)
	}

	if _, err := signUEFIDetached(st, k, signer, cert, "junk.efi", strings.NewReader("junk"), 4, ac); err == nil || !strings.Contains(err.Error(), "junk.efi") {
		t.Errorf("junk: %v", err)
	}
	if n := len(auditRows(t, st, AuditFilter{WorkRequest: &wr})); n != 1 {
		t.Errorf("%d audit rows after a refused input", n)
	}
}

// signUEFIBytes signs a PE image held in memory, without auditing, and
// returns the output for mode (the detached signature or the signed image)
// and the input's SHA-256: the tests' way to sign many variants quickly.
func signUEFIBytes(data []byte, mode string, signer crypto.Signer, cert *x509.Certificate, now time.Time) (out []byte, dataSHA256 string, err error) {
	if err := checkUEFIMode(mode); err != nil {
		return nil, "", err
	}
	buf := make([]byte, peCopyBufferSize)
	s, err := signPEImage(bytes.NewReader(data), int64(len(data)), nil, signer, cert, now, buf)
	if err != nil {
		return nil, "", err
	}
	if mode == uefiModeDetached {
		return s.pkcs7, s.dataSHA256, nil
	}
	out, _, err = attachInMemory(data, s.pkcs7, buf)
	return out, s.dataSHA256, err
}
