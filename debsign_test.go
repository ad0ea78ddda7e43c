package main

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/ProtonMail/go-crypto/openpgp"
)

// fakeUpload writes a tiny source+binary upload into dir and returns the
// path of its .changes, whose checksums match the files.
func fakeUpload(t *testing.T, dir string) string {
	t.Helper()
	files := map[string][]byte{
		"hello_1.0.tar.xz":    []byte("\xfd7zXZ\x00 not really xz, but dscverify only checks sums"),
		"hello_1.0_amd64.deb": []byte("!<arch>\ndebian-binary   0           0     0     100644  4         `\n2.0\n"),
	}
	tarSum := sha256.Sum256(files["hello_1.0.tar.xz"])
	files["hello_1.0.dsc"] = []byte(fmt.Sprintf(`Format: 3.0 (native)
Source: hello
Binary: hello
Architecture: any
Version: 1.0
Maintainer: Test Maintainer <test@example.org>
Standards-Version: 4.6.2
Package-List:
 hello deb misc optional arch=any
Checksums-Sha256:
 %s %d hello_1.0.tar.xz
Files:
 %s %d hello_1.0.tar.xz
`, hex.EncodeToString(tarSum[:]), len(files["hello_1.0.tar.xz"]), md5hex(files["hello_1.0.tar.xz"]), len(files["hello_1.0.tar.xz"])))
	files["hello_1.0_amd64.buildinfo"] = []byte("Format: 1.0\nSource: hello\nBinary: hello\nArchitecture: amd64 source\nVersion: 1.0\nBuild-Origin: Debian\n")
	order := []string{"hello_1.0.dsc", "hello_1.0.tar.xz", "hello_1.0_amd64.deb", "hello_1.0_amd64.buildinfo"}
	section := map[string]string{"hello_1.0_amd64.deb": "misc optional", "hello_1.0_amd64.buildinfo": "misc optional"}
	var sha1s, sha256s, md5s strings.Builder
	for _, name := range order {
		writeTemp(t, dir, name, files[name])
		d, err := debDigestsOf(bytes.NewReader(files[name]))
		if err != nil {
			t.Fatal(err)
		}
		sec := section[name]
		if sec == "" {
			sec = "misc optional"
		}
		fmt.Fprintf(&sha1s, " %s %d %s\n", d.sha1, d.size, name)
		fmt.Fprintf(&sha256s, " %s %d %s\n", d.sha256, d.size, name)
		fmt.Fprintf(&md5s, " %s %d %s %s\n", d.md5, d.size, sec, name)
	}
	changes := "Format: 1.8\nDate: Mon, 01 Jan 2024 00:00:00 +0000\nSource: hello\nBinary: hello\nArchitecture: source amd64\nVersion: 1.0\nDistribution: unstable\nUrgency: medium\nMaintainer: Test Maintainer <test@example.org>\nChanged-By: Test Maintainer <test@example.org>\nDescription:\n hello - example package\nChanges:\n hello (1.0) unstable; urgency=medium\n .\n   * Initial release.\n" +
		"Checksums-Sha1:\n" + sha1s.String() + "Checksums-Sha256:\n" + sha256s.String() + "Files:\n" + md5s.String()
	return writeTemp(t, dir, "hello_1.0_amd64.changes", []byte(changes))
}

func md5hex(b []byte) string {
	d, _ := debDigestsOf(bytes.NewReader(b))
	return d.md5
}

func dscverify(t *testing.T, keyring, changes string) (string, error) {
	t.Helper()
	requireTool(t, "dscverify")
	cmd := exec.Command("dscverify", "--no-default-keyrings", "--keyring", keyring, changes)
	cmd.Env = append(os.Environ(), "HOME="+t.TempDir())
	out, err := cmd.CombinedOutput()
	return string(out), err
}

func TestDebsignVerifiesWithDscverify(t *testing.T) {
	key := newTestEntity(t, "Upload key <upload@example.org>")
	other := newTestEntity(t, "Previous signer")
	keyring := keyringFile(t, publicOf(t, key))
	for _, presigned := range []bool{false, true} {
		t.Run(fmt.Sprintf("presigned=%v", presigned), func(t *testing.T) {
			src := t.TempDir()
			changes := fakeUpload(t, src)
			if presigned {
				// An upload already signed by someone else is re-signed.
				for _, name := range []string{"hello_1.0.dsc", "hello_1.0_amd64.buildinfo"} {
					data, _ := os.ReadFile(filepath.Join(src, name))
					sig, err := signOpenPGP([]*openpgp.Entity{other}, data, openpgpModeClear, time.Now())
					if err != nil {
						t.Fatal(err)
					}
					writeTemp(t, src, name, sig)
				}
				os.Remove(changes)
				changes = fakeUploadChangesFor(t, src)
				data, _ := os.ReadFile(changes)
				sig, _ := signOpenPGP([]*openpgp.Entity{other}, data, openpgpModeClear, time.Now())
				writeTemp(t, src, filepath.Base(changes), sig)
			}
			if out, err := dscverify(t, keyring, changes); err == nil {
				t.Fatalf("dscverify accepted the unsigned/foreign-signed input:\n%s", out)
			}
			u, err := readUpload(changes)
			if err != nil {
				t.Fatal(err)
			}
			res, err := debsignPrepare(u, key, time.Now())
			if err != nil {
				t.Fatal(err)
			}
			outDir := filepath.Join(t.TempDir(), "signed")
			signed, err := writeDebsign(res, src, outDir)
			if err != nil {
				t.Fatal(err)
			}
			if out, err := dscverify(t, keyring, signed); err != nil {
				t.Fatalf("dscverify: %v\n%s", err, out)
			}
			// The .dsc is signed by the key too, and every listed file's
			// size and checksums match what the signed .changes says.
			fprs, err := gpgv(t, keyring, filepath.Join(outDir, "hello_1.0.dsc"))
			if err != nil || !sameSet(fprs, []string{openpgpFingerprint(key)}) {
				t.Fatalf(".dsc: good signatures %v, err %v", fprs, err)
			}
			data, _ := os.ReadFile(signed)
			fields, err := parseChanges(signed, data)
			if err != nil {
				t.Fatal(err)
			}
			entries := fields["Checksums-Sha256"].([]map[string]string)
			if len(entries) != 4 {
				t.Fatalf("Checksums-Sha256 has %d entries", len(entries))
			}
			for _, ent := range entries {
				content, err := os.ReadFile(filepath.Join(outDir, ent["name"]))
				if err != nil {
					t.Fatal(err)
				}
				sum := sha256.Sum256(content)
				if ent["sha256"] != hex.EncodeToString(sum[:]) || ent["size"] != fmt.Sprint(len(content)) {
					t.Errorf("%s: .changes says %s %s, file is %x %d", ent["name"], ent["sha256"], ent["size"], sum, len(content))
				}
			}
			if fields["Source"] != "hello" || fields["Changes"] != "\n hello (1.0) unstable; urgency=medium\n .\n   * Initial release." {
				t.Errorf("changes_fields: Source %q Changes %q", fields["Source"], fields["Changes"])
			}
			if files := fields["Files"].([]map[string]string); files[0]["section"] != "misc" || files[0]["md5sum"] == "" {
				t.Errorf("Files entry %v", files[0])
			}
		})
	}
}

// fakeUploadChangesFor rewrites a .changes for the current files of dir
// (after they were replaced by signed versions).
func fakeUploadChangesFor(t *testing.T, dir string) string {
	t.Helper()
	digests := map[string]debFileDigests{}
	for _, name := range []string{"hello_1.0.dsc", "hello_1.0_amd64.buildinfo"} {
		data, _ := os.ReadFile(filepath.Join(dir, name))
		digests[name], _ = debDigestsOf(bytes.NewReader(data))
	}
	tmp := t.TempDir()
	for _, name := range []string{"hello_1.0.tar.xz", "hello_1.0_amd64.deb"} {
		data, _ := os.ReadFile(filepath.Join(dir, name))
		writeTemp(t, tmp, name, data)
	}
	orig, _ := os.ReadFile(fakeUpload(t, tmp))
	fields, err := parseDeb822("orig", orig)
	if err != nil {
		t.Fatal(err)
	}
	return writeTemp(t, dir, "hello_1.0_amd64.changes", rewriteChangesDigests(fields, digests))
}

func TestDebsignBadUploads(t *testing.T) {
	key := newTestEntity(t, "Upload key")
	cases := []struct {
		name   string
		break_ func(t *testing.T, dir, changes string)
		reason string
	}{
		{"missing file", func(t *testing.T, dir, _ string) { os.Remove(filepath.Join(dir, "hello_1.0_amd64.deb")) }, "lists hello_1.0_amd64.deb, which cannot be read"},
		{"wrong checksum", func(t *testing.T, dir, _ string) {
			writeTemp(t, dir, "hello_1.0_amd64.deb", []byte("!<arch>\ndebian-binary   0           0     0     100644  4         `\n2.1\n"))
		}, "but the file has"},
		{"wrong size", func(t *testing.T, dir, _ string) { writeTemp(t, dir, "hello_1.0.tar.xz", []byte("short")) }, "gives size"},
		{"path in name", func(t *testing.T, dir, changes string) {
			data, _ := os.ReadFile(changes)
			writeTemp(t, dir, filepath.Base(changes), bytes.ReplaceAll(data, []byte(" hello_1.0_amd64.deb"), []byte(" ../hello_1.0_amd64.deb")))
		}, "path separator"},
		{"bad signature armour", func(t *testing.T, dir, changes string) {
			data, _ := os.ReadFile(changes)
			writeTemp(t, dir, filepath.Base(changes), append([]byte("-----BEGIN PGP SIGNED MESSAGE-----\nHash: SHA512\n\n"), data...))
		}, "signature block is malformed"},
		{"not deb822", func(t *testing.T, dir, changes string) {
			writeTemp(t, dir, filepath.Base(changes), []byte("just some text\n"))
		}, "is not a \"Field: value\" line"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			src := t.TempDir()
			changes := fakeUpload(t, src)
			c.break_(t, src, changes)
			_, err := readUpload(changes)
			if err == nil || !strings.Contains(err.Error(), c.reason) {
				t.Fatalf("err = %v, want one containing %q", err, c.reason)
			}
		})
	}
	t.Run("output not empty", func(t *testing.T) {
		src := t.TempDir()
		u, err := readUpload(fakeUpload(t, src))
		if err != nil {
			t.Fatal(err)
		}
		res, err := debsignPrepare(u, key, time.Now())
		if err != nil {
			t.Fatal(err)
		}
		if _, err := writeDebsign(res, src, src); err == nil || !strings.Contains(err.Error(), "not empty") {
			t.Fatalf("err = %v", err)
		}
	})
}

// FuzzParseChanges feeds the .changes parser (clear-signature stripping,
// deb822, file lists), whose input comes from the network in debsign.
func FuzzParseChanges(f *testing.F) {
	f.Add([]byte("Format: 1.8\nSource: hello\nFiles:\n d41d8cd98f00b204e9800998ecf8427e 0 misc optional hello_1.dsc\nChecksums-Sha256:\n e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855 0 hello_1.dsc\n"))
	f.Add([]byte("-----BEGIN PGP SIGNED MESSAGE-----\nHash: SHA512\n\nSource: x\nDescription:\n hello - a\n .\n-----BEGIN PGP SIGNATURE-----\n\nAAAA\n-----END PGP SIGNATURE-----\n"))
	f.Add([]byte("A: b\n\nC: d\n"))
	f.Fuzz(func(t *testing.T, data []byte) {
		fields, err := parseChanges("fuzz.changes", data)
		if err != nil {
			return
		}
		if len(fields) == 0 {
			t.Fatal("accepted a .changes with no fields")
		}
		for name, v := range fields {
			cols, isList := changesListFields[strings.ToLower(name)]
			if !isList {
				continue
			}
			for _, entry := range v.([]map[string]string) {
				if len(entry) != len(cols) {
					t.Fatalf("field %s: entry %v lacks columns %v", name, entry, cols)
				}
			}
		}
	})
}
