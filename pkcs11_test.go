package main

import (
	"bytes"
	"crypto/rsa"
	"encoding/binary"
	"encoding/pem"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

const (
	softHSMModule = "/usr/lib/softhsm/libsofthsm2.so"
	softHSMPIN    = "1234"
	softHSMLabel  = "test"
)

// softHSM is a SoftHSM2 token in a temporary directory, reachable through
// p11-kit (remote or server) by the processes the test starts.
type softHSM struct {
	dir     string
	conf    string
	serial  string
	pinFile string
}

// newSoftHSM initialises a token labelled "test" with PIN 1234 and points
// SOFTHSM2_CONF at it for the test.
func newSoftHSM(t *testing.T) *softHSM {
	t.Helper()
	requireTool(t, "softhsm2-util", "pkcs11-tool", "p11-kit")
	if _, err := os.Stat(softHSMModule); err != nil {
		t.Skipf("%s: %v (install softhsm2)", softHSMModule, err)
	}
	// Short: the p11-kit server's socket lives here.
	dir, err := os.MkdirTemp("/tmp", "hsm")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	h := &softHSM{dir: dir, conf: filepath.Join(dir, "softhsm2.conf")}
	if err := os.Mkdir(filepath.Join(dir, "tokens"), 0o700); err != nil {
		t.Fatal(err)
	}
	conf := fmt.Sprintf("directories.tokendir = %s/tokens\nobjectstore.backend = file\nlog.level = ERROR\n", dir)
	if err := os.WriteFile(h.conf, []byte(conf), 0o600); err != nil {
		t.Fatal(err)
	}
	t.Setenv("SOFTHSM2_CONF", h.conf)
	runTool(t, "softhsm2-util", "--init-token", "--free", "--label", softHSMLabel, "--pin", softHSMPIN, "--so-pin", "5678")
	out := runTool(t, "softhsm2-util", "--show-slots")
	for _, line := range strings.Split(out, "\n") {
		if s, ok := strings.CutPrefix(strings.TrimSpace(line), "Serial number:"); ok && strings.TrimSpace(s) != "" {
			h.serial = strings.TrimSpace(s)
			break
		}
	}
	if h.serial == "" {
		t.Fatalf("no token serial number in:\n%s", out)
	}
	h.pinFile = filepath.Join(dir, "pin")
	if err := os.WriteFile(h.pinFile, []byte(softHSMPIN+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	return h
}

// keygen makes an RSA key pair on the token with pkcs11-tool; id in hex.
func (h *softHSM) keygen(t *testing.T, idHex, label string, bits int) {
	t.Helper()
	runTool(t, "pkcs11-tool", "--module", softHSMModule, "--token-label", softHSMLabel, "--login", "--pin", softHSMPIN,
		"--keypairgen", "--key-type", fmt.Sprintf("rsa:%d", bits), "--id", idHex, "--label", label)
}

// uri is a URI for a key on the token with the PIN from the PIN file.
func (h *softHSM) uri(attrs string) string {
	return "pkcs11:token=" + softHSMLabel + ";" + attrs + "?pin-source=" + h.pinFile
}

// remoteAddress is the exec: transport: p11-kit remote, started by the
// client.
func (h *softHSM) remoteAddress() string {
	return `exec:command="p11-kit remote ` + softHSMModule + `"`
}

// p11KitServer is a p11-kit server serving the SoftHSM token.
type p11KitServer struct {
	socket string
	cmd    *exec.Cmd
}

func (s *p11KitServer) address() string { return "unix:path=" + s.socket }

// startServer starts p11-kit server in the foreground on a socket in the
// token's directory and waits for the socket.
func (h *softHSM) startServer(t *testing.T) *p11KitServer {
	t.Helper()
	s := &p11KitServer{socket: filepath.Join(h.dir, "p11.sock")}
	s.start(t)
	return s
}

func (s *p11KitServer) start(t *testing.T) {
	t.Helper()
	os.Remove(s.socket)
	cmd := exec.Command("p11-kit", "server", "-f", "--provider", softHSMModule, "-n", s.socket, "pkcs11:token="+softHSMLabel)
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	s.cmd = cmd
	t.Cleanup(s.kill)
	for range 200 {
		if c, err := net.Dial("unix", s.socket); err == nil {
			c.Close()
			return
		}
		time.Sleep(10 * time.Millisecond)
	}
	t.Fatalf("p11-kit server: no socket %s", s.socket)
}

// kill stops the server at once, as a crash would.
func (s *p11KitServer) kill() {
	if s.cmd != nil && s.cmd.ProcessState == nil {
		s.cmd.Process.Signal(syscall.SIGKILL)
		s.cmd.Wait()
	}
}

// p11TestEnv is a test store whose [pkcs11] provider is addr.
func p11TestEnv(t *testing.T, addr string) (*testEnv, *Store) {
	t.Helper()
	te := newTestEnv(t)
	te.writeConfig(t, fmt.Sprintf("database = \"signing.sqlite3\"\nservice_keys = [\"service-key\"]\n\n[[pkcs11.provider]]\naddress = %q\n", addr))
	t.Cleanup(p11ResetPool)
	return te, te.store(t)
}

// p11ResetPool drops every pooled connection, so that each test dials its
// own provider.
func p11ResetPool() {
	p11Pool.Lock()
	defer p11Pool.Unlock()
	for a, c := range p11Pool.byAddress {
		c.mu.Lock()
		c.reset()
		c.mu.Unlock()
		delete(p11Pool.byAddress, a)
	}
}

// p11Transports runs fn for the token behind each transport.
func p11Transports(t *testing.T, fn func(t *testing.T, h *softHSM, addr string)) {
	for _, transport := range []string{"remote", "server"} {
		t.Run(transport, func(t *testing.T) {
			h := newSoftHSM(t)
			addr := h.remoteAddress()
			if transport == "server" {
				addr = h.startServer(t).address()
			}
			fn(t, h, addr)
		})
	}
}

// tokenCertificate makes a certificate for the token key uri names, signed
// on the token, and returns it as PEM.
func tokenCertificate(t *testing.T, st *Store, uri, cn string) []byte {
	t.Helper()
	signer, err := keySigner(st, uri)
	if err != nil {
		t.Fatal(err)
	}
	der, err := uefiSelfSignedCertificate(cn, signer.Public(), signer, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})
}

// TestPKCS11RegisterSignUEFI: a key made on SoftHSM by pkcs11-tool is
// registered with Debusine's command and URI form, and signs EFI images
// that sbverify accepts, through both transports.
func TestPKCS11RegisterSignUEFI(t *testing.T) {
	p11Transports(t, func(t *testing.T, h *softHSM, addr string) {
		h.keygen(t, "01", "uefi key", 2048)
		te, st := p11TestEnv(t, addr)
		uri := h.uri("id=%01;type=private")
		certPEM := tokenCertificate(t, st, uri, "Token UEFI key")
		certPath := writeFile(t, te.dir, "cert.pem", certPEM)
		fpr := strings.TrimSpace(te.mustRun(t, "register-pkcs11-static-key", "uefi", uri, certPath, "Token UEFI key"))
		k, err := st.Key(purposeUEFI, fpr)
		if err != nil {
			t.Fatal(err)
		}
		if got, _ := k.PKCS11URI(); got != uri {
			t.Errorf("stored URI %q, want %q unchanged", got, uri)
		}
		img := writeFile(t, te.dir, "a.efi", testPE{plus: true, sections: []int{0x400, 0x600}, seed: 1}.build())
		te.mustRun(t, "sign", "--purpose", "uefi", "--key", fpr, "--mode", "attached", img)
		te.mustRun(t, "sign", "--purpose", "uefi", "--key", fpr, "--mode", "detached", img)
		if out, ok := sbverify(t, certPath, img+".signed", ""); !ok {
			t.Errorf("sbverify attached: %s", out)
		}
		if out, ok := sbverify(t, certPath, img, img+".sig"); !ok {
			t.Errorf("sbverify detached: %s", out)
		}
	})
}

// TestPKCS11GenerateUEFI: generate-key --pkcs11 makes the key on the
// token, sensitive and not extractable, with a certificate the token
// signed; a second generation with the same id is refused.
func TestPKCS11GenerateUEFI(t *testing.T) {
	h := newSoftHSM(t)
	te, st := p11TestEnv(t, h.remoteAddress())
	uri := h.uri("id=%42;object=generated")
	fpr := strings.TrimSpace(te.mustRun(t, "generate-key", "--purpose", "uefi", "--description", "Generated on token", "--pkcs11", uri, "--bits", "3072"))
	k, err := st.Key(purposeUEFI, fpr)
	if err != nil {
		t.Fatal(err)
	}
	cert, err := parseUEFICertificate(k.PublicKey)
	if err != nil {
		t.Fatal(err)
	}
	if err := cert.CheckSignatureFrom(cert); err != nil {
		t.Errorf("self-signature: %v", err)
	}
	if n := cert.PublicKey.(*rsa.PublicKey).N.BitLen(); n != 3072 {
		t.Errorf("key of %d bits, want 3072", n)
	}
	if cert.Subject.CommonName != "Generated on token" || !cert.IsCA {
		t.Errorf("certificate %v, CA %v", cert.Subject, cert.IsCA)
	}
	out := runTool(t, "pkcs11-tool", "--module", softHSMModule, "--token-label", softHSMLabel, "--login", "--pin", softHSMPIN, "--list-objects", "--type", "privkey")
	for _, want := range []string{"generated", "ID:         42", "sensitive", "never extractable"} {
		if !strings.Contains(out, want) {
			t.Errorf("pkcs11-tool does not list %q:\n%s", want, out)
		}
	}
	status, _, stderr := te.run(t, "generate-key", "--purpose", "uefi", "--description", "Again", "--pkcs11", uri)
	if status != exitError || !strings.Contains(stderr, "already on the token") {
		t.Errorf("generating over a key: exit %d: %s", status, stderr)
	}
	status, _, stderr = te.run(t, "generate-key", "--purpose", "uefi", "--description", "Huge", "--pkcs11", h.uri("id=%43"), "--bits", "32768")
	if status != exitError || !strings.Contains(stderr, "generates RSA keys of") {
		t.Errorf("--bits beyond the token: exit %d: %s", status, stderr)
	}
}

// TestPKCS11Faults: a wrong PIN is reported, without the PIN, and not
// presented again; a key not on the token and a certificate for another
// key are refused; nothing is recorded.
func TestPKCS11Faults(t *testing.T) {
	h := newSoftHSM(t)
	h.keygen(t, "01", "k1", 2048)
	te, st := p11TestEnv(t, h.remoteAddress())
	_, otherCert := testCertificate(t, "Another key")
	otherPath := writeFile(t, te.dir, "other.pem", otherCert)

	status, _, stderr := te.run(t, "register-pkcs11-static-key", "uefi", h.uri("id=%01"), otherPath, "Mismatch")
	if status != exitError || !strings.Contains(stderr, "does not belong to the key") {
		t.Errorf("certificate of another key: exit %d: %s", status, stderr)
	}
	status, _, stderr = te.run(t, "register-pkcs11-static-key", "uefi", h.uri("id=%99"), otherPath, "Absent")
	if status != exitError || !strings.Contains(stderr, "no private key with id=%99") {
		t.Errorf("key not on the token: exit %d: %s", status, stderr)
	}

	// A new connection, not logged in yet.
	p11ResetPool()
	wrong := filepath.Join(h.dir, "wrong-pin")
	if err := os.WriteFile(wrong, []byte("987654\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	bad := "pkcs11:token=test;id=%01;pin-source=" + wrong
	for i, want := range []string{"wrong PIN in pin-source " + wrong, "not presenting the PIN from pin-source " + wrong + " again"} {
		status, _, stderr = te.run(t, "register-pkcs11-static-key", "uefi", bad, otherPath, "Wrong PIN")
		if status != exitError || !strings.Contains(stderr, want) || strings.Contains(stderr, "987654") {
			t.Errorf("wrong PIN, attempt %d: exit %d: %s", i+1, status, stderr)
		}
	}
	status, _, stderr = te.run(t, "register-pkcs11-static-key", "uefi", "pkcs11:token=test;id=%01;pin-value=55555", otherPath, "Wrong PIN")
	if status != exitError || !strings.Contains(stderr, "wrong PIN in the URI's pin-value") || strings.Contains(stderr, "55555") {
		t.Errorf("wrong pin-value: exit %d: %s", status, stderr)
	}
	if keys, _ := st.Keys(); len(keys) != 0 {
		t.Errorf("%d keys recorded", len(keys))
	}

	// Selection by label: one match signs, several are not chosen from.
	if _, err := keySigner(st, h.uri("object=k1")); err != nil {
		t.Errorf("object=k1: %v", err)
	}
	h.keygen(t, "02", "k1", 2048)
	for _, attrs := range []string{"object=k1", "type=private"} {
		if _, err := keySigner(st, h.uri(attrs)); err == nil || !strings.Contains(err.Error(), "2 private keys match") {
			t.Errorf("%s with two keys labelled k1: %v", attrs, err)
		}
	}
	if k, err := keySigner(st, h.uri("object=k1;id=%02")); err != nil || k.(*p11Key).uri.keyName() != `id=%02 object="k1"` {
		t.Errorf("object=k1;id=%%02: %v", err)
	}
}

// TestPKCS11ProviderKilledMidSignature: the p11-kit server is killed while
// C_Sign is on its way; the signature fails with a clear error, no output
// and no audit row; once a server is back, the next signature reopens and
// succeeds.
func TestPKCS11ProviderKilledMidSignature(t *testing.T) {
	h := newSoftHSM(t)
	h.keygen(t, "01", "k1", 2048)
	srv := h.startServer(t)
	proxy := newSignKiller(t, srv)
	te, st := p11TestEnv(t, "unix:path="+proxy.socket)
	uri := h.uri("id=%01")
	certPath := writeFile(t, te.dir, "cert.pem", tokenCertificate(t, st, uri, "Kill test"))
	fpr := strings.TrimSpace(te.mustRun(t, "register-pkcs11-static-key", "uefi", uri, certPath, "Kill test"))
	img := writeFile(t, te.dir, "a.efi", testPE{plus: true, sections: []int{0x400}, seed: 2}.build())
	rowsBefore := len(auditRows(t, st, AuditFilter{Fingerprint: fpr}))

	proxy.arm()
	status, _, stderr := te.run(t, "sign", "--purpose", "uefi", "--key", fpr, "--mode", "attached", img)
	if status != exitError || !strings.Contains(stderr, "p11-kit connection closed") {
		t.Errorf("provider killed mid-signature: exit %d: %s", status, stderr)
	}
	if !proxy.fired() {
		t.Fatal("the proxy never saw C_Sign")
	}
	if _, err := os.Stat(img + ".signed"); !os.IsNotExist(err) {
		t.Errorf("output after a failed signature: %v", err)
	}
	if n := len(auditRows(t, st, AuditFilter{Fingerprint: fpr})); n != rowsBefore {
		t.Errorf("%d audit rows, want %d", n, rowsBefore)
	}
	srv.start(t)
	te.mustRun(t, "sign", "--purpose", "uefi", "--key", fpr, "--mode", "attached", img)
	if out, ok := sbverify(t, certPath, img+".signed", ""); !ok {
		t.Errorf("sbverify after the restart: %s", out)
	}
	// Restarted between two signatures (the server and the process that
	// served this connection): reopened without a failure.
	srv.kill()
	proxy.drop()
	srv.start(t)
	os.Remove(img + ".signed")
	te.mustRun(t, "sign", "--purpose", "uefi", "--key", fpr, "--mode", "attached", img)
}

// signKiller is a Unix socket in front of a p11-kit server that, once
// armed, kills the server and drops the connection when a C_Sign request
// goes through it.
type signKiller struct {
	socket string
	armed  chan struct{}
	done   chan struct{}
	mu     sync.Mutex
	conns  []net.Conn
}

// drop closes every connection, as the end of the serving process would.
func (k *signKiller) drop() {
	k.mu.Lock()
	defer k.mu.Unlock()
	for _, c := range k.conns {
		c.Close()
	}
	k.conns = nil
}

func newSignKiller(t *testing.T, srv *p11KitServer) *signKiller {
	t.Helper()
	k := &signKiller{socket: srv.socket + ".proxy", armed: make(chan struct{}, 1), done: make(chan struct{}, 1)}
	l, err := net.Listen("unix", k.socket)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			go k.relay(c, srv)
		}
	}()
	return k
}

func (k *signKiller) arm() { k.armed <- struct{}{} }
func (k *signKiller) fired() bool {
	select {
	case <-k.done:
		return true
	default:
		return false
	}
}

func (k *signKiller) relay(c net.Conn, srv *p11KitServer) {
	defer c.Close()
	s, err := net.Dial("unix", srv.socket)
	if err != nil {
		return
	}
	defer s.Close()
	k.mu.Lock()
	k.conns = append(k.conns, c, s)
	k.mu.Unlock()
	go func() {
		io.Copy(c, s)
		c.Close()
	}()
	// The version byte, then messages: a 12-byte header (call code,
	// options length, body length) whose body starts with the call id.
	buf := make([]byte, 1)
	if _, err := io.ReadFull(c, buf); err != nil {
		return
	}
	s.Write(buf)
	for {
		hdr := make([]byte, 12)
		if _, err := io.ReadFull(c, hdr); err != nil {
			return
		}
		n := int(binary.BigEndian.Uint32(hdr[4:])) + int(binary.BigEndian.Uint32(hdr[8:]))
		if n > 16<<20 {
			return
		}
		rest := make([]byte, n)
		if _, err := io.ReadFull(c, rest); err != nil {
			return
		}
		body := rest[int(binary.BigEndian.Uint32(hdr[4:])):]
		if len(body) >= 4 && binary.BigEndian.Uint32(body) == 43 {
			select {
			case <-k.armed:
				srv.kill()
				k.done <- struct{}{}
				return
			default:
			}
		}
		s.Write(append(hdr, rest...))
	}
}

// requireEngine skips without OpenSSL's libp11 engine, which is how
// Debusine's worker (sbsign --engine pkcs11) reaches a token.
func requireEngine(t *testing.T) {
	t.Helper()
	requireTool(t, "openssl", "sbsign", "sbverify")
	if _, err := os.Stat("/usr/lib/x86_64-linux-gnu/engines-3/pkcs11.so"); err != nil {
		t.Skipf("libp11's engine: %v (install libengine-pkcs11-openssl)", err)
	}
	t.Setenv("PKCS11_MODULE_PATH", softHSMModule)
}

// TestPKCS11SameKeyAsDebusine: the URI form of Debusine's YubiHSM guide
// (model, serial, pin-source in the path, id=1234 as four unescaped
// digits), on SoftHSM, whose model is "SoftHSM v2" and cannot be set.
// libp11 reads id=1234 as the bytes "1234", so a key with CKA_ID 12 34 is
// put beside it as a decoy. OpenSSL's engine makes the certificate; this
// service must find the same key (its test signature verifies with that
// certificate); sbsign --engine pkcs11 and this service sign the same
// image hash with it, both verified by sbverify; and a kernel module
// signature made on the token is byte for byte what openssl cms makes
// through the engine with sign-file's options (checked against sign-file
// itself with a file key: Debian 12's sign-file wants OpenSSL's
// pkcs11-provider, which Debian 12 only has in backports).
func TestPKCS11SameKeyAsDebusine(t *testing.T) {
	requireEngine(t)
	h := newSoftHSM(t)
	// libp11 0.4.12 (Debian 12) keeps the line end in the PIN.
	if err := os.WriteFile(h.pinFile, []byte(softHSMPIN), 0o600); err != nil {
		t.Fatal(err)
	}
	h.keygen(t, "31323334", "ascii 1234", 2048)
	h.keygen(t, "1234", "binary 12 34", 2048)
	uri := fmt.Sprintf("pkcs11:model=SoftHSM%%20v2;serial=%s;pin-source=%s;id=1234", h.serial, h.pinFile)
	te, st := p11TestEnv(t, h.remoteAddress())
	certPath := filepath.Join(te.dir, "cert.pem")
	runTool(t, "openssl", "req", "-new", "-x509", "-engine", "pkcs11", "-keyform", "engine", "-key", uri,
		"-subj", "/CN=Debusine HSM key", "-days", "30", "-out", certPath)
	fpr := strings.TrimSpace(te.mustRun(t, "register-pkcs11-static-key", "uefi", uri, certPath, "Debusine HSM key"))

	data := testPE{plus: true, sections: []int{0x600, 0x400}, trailing: 100, seed: 7}.build()
	img := writeFile(t, te.dir, "b.efi", data)
	te.mustRun(t, "sign", "--purpose", "uefi", "--key", fpr, "--mode", "detached", img)
	ref := filepath.Join(te.dir, "sbsign.sig")
	runTool(t, "sbsign", "--engine", "pkcs11", "--key", uri, "--cert", certPath, "--detached", "--output", ref, img)
	p, err := parsePE(bytes.NewReader(data), int64(len(data)))
	if err != nil {
		t.Fatal(err)
	}
	hash, err := p.imageHash(make([]byte, 4096))
	if err != nil {
		t.Fatal(err)
	}
	for _, sig := range []string{img + ".sig", ref} {
		if out, ok := sbverify(t, certPath, img, sig); !ok {
			t.Errorf("sbverify %s: %s", sig, out)
		}
		if b, _ := os.ReadFile(sig); !bytes.Contains(b, hash) {
			t.Errorf("%s does not sign the image hash %x", sig, hash)
		}
	}

	// The options that make openssl cms write what sign-file writes.
	cmsArgs := []string{"cms", "-sign", "-binary", "-noattr", "-nocerts", "-nosmimecap", "-md", "sha256", "-outform", "DER"}
	module := writeFile(t, te.dir, "m.ko", testModule(3000, 3))
	if _, err := os.Stat(signFilePath); err == nil {
		fileKey, fileCert := testCertificate(t, "File key")
		kp, cp := writeFile(t, te.dir, "fk.pem", fileKey), writeFile(t, te.dir, "fc.pem", fileCert)
		runTool(t, signFilePath, "-d", "sha256", kp, cp, module)
		runTool(t, "openssl", append(cmsArgs, "-signer", cp, "-inkey", kp, "-in", module, "-out", module+".cms")...)
		sameFile(t, module+".cms", module+".p7s")
	}
	ref = filepath.Join(te.dir, "engine.p7s")
	runTool(t, "openssl", append(cmsArgs, "-signer", certPath, "-engine", "pkcs11", "-keyform", "engine", "-inkey", uri, "-in", module, "-out", ref)...)
	if err := signKmodFiles(st, fpr, uefiModeDetached, "", false, []string{module}); err != nil {
		t.Fatal(err)
	}
	sameFile(t, module+".sig", ref)
}

// TestPKCS11OpenPGP: an OpenPGP key generated on the token (RSA, the
// self-signature made there) signs detached and clear-signed files that
// gpgv accepts and an upload that dscverify accepts; registered again from
// its public key in another store, it has the same fingerprint; a public
// key of another key is refused.
func TestPKCS11OpenPGP(t *testing.T) {
	h := newSoftHSM(t)
	te, _ := p11TestEnv(t, h.remoteAddress())
	uri := h.uri("id=%07;object=archive")
	fpr := strings.TrimSpace(te.mustRun(t, "generate-key", "--purpose", "openpgp", "--description", "Token archive key <archive@example.org>", "--pkcs11", uri))
	pub := te.mustRun(t, "export-public-key", "--purpose", "openpgp", "--key", fpr)
	keyring := keyringFile(t, []byte(pub))

	file := writeFile(t, te.dir, "Release", []byte("Origin: test\nSuite: unstable\n"))
	te.mustRun(t, "sign", "--purpose", "openpgp", "--key", fpr, "--mode", "detached", "--output", file+".gpg", file)
	te.mustRun(t, "sign", "--purpose", "openpgp", "--key", fpr, "--mode", "clear", "--output", filepath.Join(te.dir, "InRelease"), file)
	for _, files := range [][]string{{file + ".gpg", file}, {filepath.Join(te.dir, "InRelease")}} {
		if fprs, err := gpgv(t, keyring, files...); err != nil || len(fprs) != 1 || fprs[0] != fpr {
			t.Errorf("gpgv %v: %v %v", files, fprs, err)
		}
	}
	changes := fakeUpload(t, t.TempDir())
	te.mustRun(t, "sign", "--purpose", "openpgp", "--key", fpr, "--mode", "debsign", changes)
	signed := filepath.Join(strings.TrimSuffix(changes, ".changes")+".signed", filepath.Base(changes))
	if out, err := dscverify(t, keyring, signed); err != nil {
		t.Errorf("dscverify: %v\n%s", err, out)
	}

	te2, _ := p11TestEnv(t, h.remoteAddress())
	pubPath := writeFile(t, te2.dir, "pub.asc", []byte(pub))
	if got := strings.TrimSpace(te2.mustRun(t, "register-pkcs11-static-key", "openpgp", uri, pubPath, "")); got != fpr {
		t.Errorf("registered as %s, want %s", got, fpr)
	}
	other := writeFile(t, te2.dir, "other.asc", publicOf(t, newTestEntity(t, "Other")))
	status, _, stderr := te2.run(t, "register-pkcs11-static-key", "openpgp", uri, other, "")
	if status != exitError || !strings.Contains(stderr, "RSA") && !strings.Contains(stderr, "does not belong") {
		t.Errorf("another key's public key: exit %d: %s", status, stderr)
	}
}

// TestWorkerPKCS11: the worker advertises the UEFI and OpenPGP keys on a
// SoftHSM token it can reach through p11-kit server, signs a sign task
// (verified by sbverify) and a signrepositoryindex task (verified by gpgv)
// with them, and stops advertising them once the server is gone.
func TestWorkerPKCS11(t *testing.T) {
	needTool(t, "sbverify")
	files := efiInputs(t)
	h := newSoftHSM(t)
	h.keygen(t, "05", "worker key", 2048)
	p11srv := h.startServer(t)
	srv := newFakeServer(t)
	w, _ := testWorker(t, srv)
	registered(t, srv, w)
	w.st.pkcs11 = PKCS11Config{Providers: []PKCS11Provider{{Address: p11srv.address()}}}
	t.Cleanup(p11ResetPool)
	uri := h.uri("id=%05")
	certPEM := tokenCertificate(t, w.st, uri, "Worker token key")
	fpr, err := registerPKCS11Key(w.st, uri, certPEM, "Worker token key")
	if err != nil {
		t.Fatal(err)
	}
	srv.addSigningKeyAsset("uefi", fpr)
	certPath := writeFile(t, t.TempDir(), "cert.pem", certPEM)
	pgpFpr, err := generateP11OpenPGPKey(w.st, h.uri("id=%06"), "Token archive key", 2048, nil)
	if err != nil {
		t.Fatal(err)
	}
	srv.addSigningKeyAsset("openpgp", pgpFpr)

	md, err := w.metadata()
	if err != nil {
		t.Fatal(err)
	}
	want := []string{"openpgp:" + pgpFpr, "uefi:" + fpr}
	if got := md["signing:keys"].([]string); !slices.Equal(slices.Sorted(slices.Values(got)), want) {
		t.Errorf("signing:keys = %v, want %v", got, want)
	}
	in := srv.addArtifact("debusine:signing-input", map[string]any{"binary_package_name": "shim-signed"},
		map[string][]byte{"shimx64.efi": files["shimx64.efi"]})
	id := srv.addWorkRequest("sign", map[string]any{"purpose": "uefi", "unsigned": []int64{in}, "key": fpr},
		map[string]any{"unsigned_ids": []int64{in}, "unsigned_binary_package_names": []string{"shim-signed"}})
	runOnce(t, w)
	if c := srv.waitCompleted(t, id); c.Result != "success" {
		t.Fatalf("result %s: %s", c.Result, srv.debugLog(t, id, "execution.log"))
	}
	sbverifyShimOutput(t, srv, id, files["shimx64.efi"], certPath)

	release := []byte("Origin: test\nSuite: unstable\n")
	in = srv.addArtifact("debian:repository-index", map[string]any{"path": "Release"}, map[string][]byte{"Release": release})
	id = srv.addWorkRequest("signrepositoryindex", map[string]any{"suite_collection": "x", "unsigned": "y", "mode": "clear", "signed_name": "InRelease"},
		map[string]any{"signing_keys": []string{pgpFpr}, "unsigned_id": in})
	runOnce(t, w)
	if c := srv.waitCompleted(t, id); c.Result != "success" {
		t.Fatalf("signrepositoryindex: result %s: %s", c.Result, srv.debugLog(t, id, "fetch_input.log")+srv.debugLog(t, id, "execution.log"))
	}
	outs := srv.artifactsOf(id, "debian:repository-index")
	if len(outs) != 1 || outs[0].Files["InRelease"] == nil {
		t.Fatalf("signrepositoryindex outputs %+v", outs)
	}
	k, err := w.st.Key(purposeOpenPGP, pgpFpr)
	if err != nil {
		t.Fatal(err)
	}
	inRelease := writeFile(t, t.TempDir(), "InRelease", outs[0].Files["InRelease"].content)
	if fprs, err := gpgv(t, keyringFile(t, k.PublicKey), inRelease); err != nil || !slices.Equal(fprs, []string{pgpFpr}) {
		t.Errorf("gpgv InRelease: %v %v", fprs, err)
	}

	// p11-kit server serves each connection from a process of its own,
	// which outlives the server: stopping the unit (its cgroup) ends both,
	// as dropping the pool's connection does here.
	p11srv.kill()
	p11ResetPool()
	if md, err = w.metadata(); err != nil {
		t.Fatal(err)
	}
	if got := md["signing:keys"].([]string); len(got) != 0 {
		t.Errorf("provider gone: signing:keys = %v", got)
	}
}

// TestPKCS11ConfigExample: the [pkcs11] providers of signing.toml.example,
// uncommented, are read as the README describes them.
func TestPKCS11ConfigExample(t *testing.T) {
	data, err := os.ReadFile("signing.toml.example")
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	on := false
	for _, line := range strings.Split(string(data), "\n") {
		if strings.HasPrefix(line, "# [[pkcs11.provider]]") {
			on = true
		}
		if on && strings.HasPrefix(line, "# ") && !strings.HasPrefix(line, "# #") {
			line = strings.TrimPrefix(line, "# ")
		} else if on && !strings.HasPrefix(line, "#") {
			on = false
		}
		out = append(out, line)
	}
	path := writeFile(t, t.TempDir(), "signing.toml", []byte(strings.Join(out, "\n")))
	cfg, err := loadConfig(path)
	if err != nil {
		t.Fatal(err)
	}
	want := []PKCS11Provider{
		{Address: "unix:path=/run/debusine-signing-p11-kit/pkcs11", ModuleName: "yubihsm_pkcs11"},
		{Address: `exec:command="p11-kit remote /usr/lib/softhsm/libsofthsm2.so"`, ModulePath: "/usr/lib/softhsm/libsofthsm2.so"},
	}
	if !slices.Equal(cfg.PKCS11.Providers, want) {
		t.Errorf("providers %+v, want %+v", cfg.PKCS11.Providers, want)
	}
	for _, bad := range []string{"[[pkcs11.provider]]\nmodule_name = \"x\"\n", "[[pkcs11.provider]]\naddress = \"tcp:host=a\"\n"} {
		path := writeFile(t, t.TempDir(), "bad.toml", []byte(bad))
		if _, err := loadConfig(path); err == nil || !strings.Contains(err.Error(), "[[pkcs11.provider]] 1") {
			t.Errorf("%q: %v", bad, err)
		}
	}
}

// TestRelayPKCS11: on the relay's offline host, a UEFI key on a SoftHSM
// token (reached through p11-kit remote, configured in the offline host's
// [pkcs11] table) signs a sign task carried by a bundle; the server gets
// a signature sbverify accepts.
func TestRelayPKCS11(t *testing.T) {
	requireTool(t, "sbverify")
	h := newSoftHSM(t)
	h.keygen(t, "09", "offline key", 2048)
	r := newRelayRig(t, 1)
	appendFile(t, r.offlineCfg, fmt.Sprintf("[[pkcs11.provider]]\naddress = %q\n", h.remoteAddress()))
	t.Cleanup(p11ResetPool)
	r.st.pkcs11 = PKCS11Config{Providers: []PKCS11Provider{{Address: h.remoteAddress()}}}
	uri := h.uri("id=%09")
	certPEM := tokenCertificate(t, r.st, uri, "Offline token key")
	fpr, err := registerPKCS11Key(r.st, uri, certPEM, "Offline token key")
	if err != nil {
		t.Fatal(err)
	}
	certPath := writeFile(t, r.relayDir, "token.pem", certPEM)
	appendFile(t, r.relayCfg, fmt.Sprintf("[[relay.keys]]\npurpose = \"uefi\"\nfingerprint = %q\npublic_key_file = \"token.pem\"\n", fpr))
	r.srv.addSigningKeyAsset("uefi", fpr)
	efi := efiInputs(t)
	in := r.srv.addArtifact("debusine:signing-input", map[string]any{"binary_package_name": "shim-signed"},
		map[string][]byte{"shimx64.efi": efi["shimx64.efi"]})
	id := r.srv.addWorkRequest("sign", map[string]any{"purpose": "uefi", "unsigned": []string{"a"}, "key": fpr},
		map[string]any{"unsigned_ids": []int64{in}, "unsigned_binary_package_names": []string{"shim-signed"}})
	r.must(r.relay("fetch", "--output", r.path("bundle.tar"), "--wait", "2s"))
	r.must(r.offline("sign", r.path("bundle.tar"), "--output", r.path("result.tar")))
	r.must(r.relay("complete", r.path("result.tar")))
	if c := r.srv.completionsOf(id); len(c) != 1 || c[0].Result != "success" {
		t.Fatalf("completions %+v: %s", c, r.srv.debugLog(t, id, "execution.log"))
	}
	sbverifyShimOutput(t, r.srv, id, efi["shimx64.efi"], certPath)
}

func appendFile(t *testing.T, path, text string) {
	t.Helper()
	f, err := os.OpenFile(path, os.O_APPEND|os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if _, err := f.WriteString(text); err != nil {
		t.Fatal(err)
	}
}
