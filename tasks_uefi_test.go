package main

import (
	"crypto/sha256"
	"crypto/x509"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"
)

func TestWorkerGenerateKeyUEFI(t *testing.T) {
	_, _, k, raw := generateKeyTask(t, "uefi", "Secure Boot 2026")
	var data struct {
		Purpose     string `json:"purpose"`
		Fingerprint string `json:"fingerprint"`
		PublicKey   string `json:"public_key"`
		Description string `json:"description"`
	}
	json.Unmarshal(raw, &data)
	pemBytes, _ := base64.StdEncoding.DecodeString(data.PublicKey)
	der := pemBody(t, pemBytes, "asset public_key is not base64 of a PEM certificate: %s", raw)
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	sum := sha256.Sum256(cert.Raw)
	fpr := strings.ToUpper(hex.EncodeToString(sum[:]))
	if data.Purpose != "uefi" || data.Fingerprint != fpr || fpr != k.Fingerprint || string(pemBytes) != string(k.PublicKey) ||
		cert.Subject.CommonName != "Secure Boot 2026" || data.Description != "Secure Boot 2026" {
		t.Errorf("asset %s does not match the stored key %s", raw, k)
	}
}

// efiInputs reads the real EFI binaries the tests sign.
func efiInputs(t testing.TB) map[string][]byte {
	t.Helper()
	files := map[string][]byte{}
	for name, p := range map[string]string{
		"shimx64.efi":              "/usr/lib/shim/shimx64.efi",
		"boot/systemd-bootx64.efi": "/usr/lib/systemd/boot/efi/systemd-bootx64.efi",
	} {
		b, err := os.ReadFile(p)
		if err != nil {
			t.Skipf("%s: %v (install shim-unsigned and systemd-boot-efi)", p, err)
		}
		files[name] = b
	}
	return files
}

// uefiSignSetup makes a UEFI key the server lets alice use; it returns the
// key and its certificate file.
func uefiSignSetup(t testing.TB, srv *fakeServer, w *worker) (*Key, string) {
	t.Helper()
	fpr, err := generateUEFIKey(w.st, "Worker UEFI test", nil)
	if err != nil {
		t.Fatal(err)
	}
	k := servedKey(t, srv, w, "uefi", fpr)
	cert := filepath.Join(t.TempDir(), "cert.pem")
	if err := os.WriteFile(cert, k.PublicKey, 0o644); err != nil {
		t.Fatal(err)
	}
	return k, cert
}

func TestWorkerSignUEFI(t *testing.T) {
	if _, err := exec.LookPath("sbverify"); err != nil {
		t.Skip("sbverify is not installed")
	}
	srv := newFakeServer(t)
	w, _ := testWorker(t, srv)
	registered(t, srv, w)
	k, certPath := uefiSignSetup(t, srv, w)
	files := efiInputs(t)
	in1 := srv.addArtifact("debusine:signing-input", map[string]any{"binary_package_name": "shim-signed"}, map[string][]byte{"shimx64.efi": files["shimx64.efi"]})
	in2 := srv.addArtifact("debusine:signing-input", map[string]any{"binary_package_name": "systemd-boot-efi-amd64-signed"},
		map[string][]byte{"boot/systemd-bootx64.efi": files["boot/systemd-bootx64.efi"], "not-a-pe.efi": []byte("MZ but no PE")})
	id := srv.addWorkRequest("sign", map[string]any{"purpose": "uefi", "unsigned": []string{"a", "b"}, "key": k.Fingerprint},
		map[string]any{"unsigned_ids": []int64{in1, in2}, "unsigned_binary_package_names": []string{"shim-signed", "systemd-boot-efi-amd64-signed"}})
	runOnce(t, w)
	// A file that is not a PE image fails on its own; the others are signed.
	c := srv.waitCompleted(t, id)
	if c.Result != "failure" {
		t.Fatalf("result %s", c.Result)
	}
	// The signing took CPU time in this process, which is reported
	// (rounded up to whole seconds), not 0.
	var body completion
	if json.Unmarshal(c.Body, &body); body.OutputData == nil || body.OutputData.RuntimeStatistics == nil || body.OutputData.RuntimeStatistics.CPUTime < 1 {
		t.Errorf("completion %s: want cpu_time of at least 1", c.Body)
	}
	outs := srv.artifactsOf(id, "debusine:signing-output")
	if len(outs) != 2 {
		t.Fatalf("%d signing outputs", len(outs))
	}
	dir := t.TempDir()
	signed := 0
	for i, out := range outs {
		var data struct {
			Purpose           string       `json:"purpose"`
			Fingerprint       string       `json:"fingerprint"`
			BinaryPackageName string       `json:"binary_package_name"`
			Results           []signResult `json:"results"`
		}
		json.Unmarshal(out.Data, &data)
		if data.Purpose != "uefi" || data.Fingerprint != k.Fingerprint || data.BinaryPackageName != []string{"shim-signed", "systemd-boot-efi-amd64-signed"}[i] {
			t.Errorf("output data %s", out.Data)
		}
		for _, r := range data.Results {
			if r.File == "not-a-pe.efi" {
				if r.OutputFile != nil || r.ErrorMessage == nil || strings.Contains(*r.ErrorMessage, w.workDir) {
					t.Errorf("result %+v", r)
				}
				continue
			}
			if r.OutputFile == nil || *r.OutputFile != r.File+".sig" || out.Files[*r.OutputFile] == nil {
				t.Fatalf("result %+v", r)
			}
			img := filepath.Join(dir, filepath.Base(r.File))
			sig := img + ".sig"
			os.WriteFile(img, files[r.File], 0o644)
			os.WriteFile(sig, out.Files[*r.OutputFile].content, 0o644)
			if o, err := exec.Command("sbverify", "--cert", certPath, "--detached", sig, img).CombinedOutput(); err != nil {
				t.Errorf("sbverify %s: %v\n%s", r.File, err, o)
			}
			signed++
		}
	}
	if signed != 2 {
		t.Errorf("%d files signed, want 2", signed)
	}
	sumShim, sumBoot := sha256.Sum256(files["shimx64.efi"]), sha256.Sum256(files["boot/systemd-bootx64.efi"])
	checkSignAudits(t, w.st, 2, id, func(d signAuditData) bool {
		return d.Resource["package"] != "" &&
			(d.DataSHA256 == hex.EncodeToString(sumShim[:]) || d.DataSHA256 == hex.EncodeToString(sumBoot[:]))
	})
}

// BenchmarkWorkerSign200 runs a sign work request of 200 EFI files against
// the fake server end to end (download, permission check, sign, audit,
// upload, completion) and, as the baseline, signs the same files directly
// with signUEFIFile. It reports files/s and the time per file the worker
// adds to the bare signing cost.
func BenchmarkWorkerSign200(b *testing.B) {
	const n = 200
	srv := newFakeServer(b)
	w, _ := testWorker(b, srv)
	registered(b, srv, w)
	k, _ := uefiSignSetup(b, srv, w)
	var blobs [][]byte
	for _, p := range []string{"/usr/lib/systemd/boot/efi/systemd-bootx64.efi", "/usr/lib/shim/fbx64.efi"} {
		data, err := os.ReadFile(p)
		if err != nil {
			b.Skip(err)
		}
		blobs = append(blobs, data)
	}
	files := map[string][]byte{}
	for i := range n {
		files[fmt.Sprintf("f%03d.efi", i)] = blobs[i%len(blobs)]
	}
	in := srv.addArtifact("debusine:signing-input", map[string]any{"binary_package_name": "bench"}, files)

	// Baseline: the same files, signed one by one from disk.
	direct := func() time.Duration {
		dir := b.TempDir()
		var paths []string
		for name, data := range files {
			p := filepath.Join(dir, name)
			os.WriteFile(p, data, 0o644)
			paths = append(paths, p)
		}
		start := time.Now()
		signer, cert, err := uefiSigner(w.st, k)
		if err != nil {
			b.Fatal(err)
		}
		for _, p := range paths {
			if err := signUEFIFile(w.st, k, signer, cert, p, p+".sig", uefiModeDetached, auditContext{}); err != nil {
				b.Fatal(err)
			}
		}
		return time.Since(start)
	}

	var workerTime, directTime time.Duration
	w.onceQuiet = 50 * time.Millisecond
	b.ResetTimer()
	for range b.N {
		id := srv.addWorkRequest("sign", map[string]any{"purpose": "uefi", "unsigned": "x", "key": k.Fingerprint},
			map[string]any{"unsigned_ids": []int64{in}})
		start := time.Now()
		runOnce(b, w)
		workerTime += time.Since(start)
		if c := srv.completionsOf(id); len(c) != 1 || c[0].Result != "success" {
			b.Fatalf("completion %+v", c)
		}
		b.StopTimer()
		directTime += direct()
		b.StartTimer()
	}
	perFile := func(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 / float64(b.N*n) }
	b.ReportMetric(float64(b.N*n)/workerTime.Seconds(), "files/s")
	b.ReportMetric(perFile(workerTime), "ms/file")
	b.ReportMetric(perFile(directTime), "direct-ms/file")
	b.ReportMetric(perFile(workerTime-directTime), "added-ms/file")
}

// benchEFIFiles returns 33 EFI images, about 48 MB as a real sign task of
// 33 files: the real ones Debian ships (shim, systemd-boot), then
// generated PE32+ images of 1 to 2 MB.
func benchEFIFiles(b *testing.B) map[string][]byte {
	files := map[string][]byte{}
	for _, p := range []string{"/usr/lib/shim/shimx64.efi", "/usr/lib/shim/mmx64.efi", "/usr/lib/shim/fbx64.efi",
		"/usr/lib/systemd/boot/efi/systemd-bootx64.efi", "/usr/lib/systemd/boot/efi/linuxx64.efi.stub"} {
		data, err := os.ReadFile(p)
		if err != nil {
			b.Skipf("%v (install shim-unsigned and systemd-boot-efi)", err)
		}
		files[filepath.Base(p)] = data
	}
	for i := len(files); i < 33; i++ {
		kb := 1024 + 37*i
		files[fmt.Sprintf("gen%02d.efi", i)] = testPE{plus: true, sections: []int{kb << 9, kb << 9, 0x200}, seed: uint64(i)}.build()
	}
	return files
}

// BenchmarkWorkerSign33 runs a sign work request of 33 EFI files against
// the fake server with 20 ms per request, end to end from the
// notification to the completion: in one input artifact, and in 33 (one
// per file, as a signing input per binary package gives). It also reports
// the HTTP requests of one task.
func BenchmarkWorkerSign33(b *testing.B) {
	files := benchEFIFiles(b)
	names := make([]string, 0, len(files))
	for n := range files {
		names = append(names, n)
	}
	slices.Sort(names)
	for _, layout := range []string{"1x33", "33x1"} {
		b.Run(layout, func(b *testing.B) {
			srv := newFakeServer(b)
			w, _ := testWorker(b, srv)
			registered(b, srv, w)
			w.statusEvery, w.watchEvery = time.Second, defaultWatchEvery // as in production
			k, _ := uefiSignSetup(b, srv, w)
			var ids []int64
			if layout == "1x33" {
				ids = append(ids, srv.addArtifact("debusine:signing-input", map[string]any{"binary_package_name": "bench"}, files))
			} else {
				for _, n := range names {
					ids = append(ids, srv.addArtifact("debusine:signing-input", map[string]any{"binary_package_name": n}, map[string][]byte{n: files[n]}))
				}
			}
			stop := start(b, w)
			defer stop()
			waitFor(b, "metadata", func() bool { return w.metadataSent.Load() })
			srv.mu.Lock()
			srv.latency = 20 * time.Millisecond
			requests0 := len(srv.requests)
			srv.mu.Unlock()
			b.ResetTimer()
			for range b.N {
				id := srv.addWorkRequest("sign", map[string]any{"purpose": "uefi", "unsigned": "x", "key": k.Fingerprint},
					map[string]any{"unsigned_ids": ids})
				for len(srv.completionsOf(id)) == 0 {
					time.Sleep(time.Millisecond)
				}
				if c := srv.completionsOf(id); c[0].Result != "success" {
					b.Fatalf("completion %s", c[0].Body)
				}
			}
			b.StopTimer()
			srv.mu.Lock()
			b.ReportMetric(float64(len(srv.requests)-requests0)/float64(b.N), "requests/op")
			srv.mu.Unlock()
		})
	}
}
