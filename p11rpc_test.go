package main

// The PKCS#11 RPC client against real components: SoftHSM2 behind
// "p11-kit remote" (exec:) and "p11-kit server" (unix:), Debian 13's
// p11-kit when DEBUSINE_SIGNING_TEST_P11KIT_ROOT names a root that has it,
// and OpenSC's pkcs11-tool as an independent witness.

import (
	"bytes"
	"crypto"
	"crypto/ed25519"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/x509"
	"errors"
	"fmt"
	"math/big"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

// p11rpcModules are where Debian puts SoftHSM2's module.
var p11rpcModules = []string{
	"/usr/lib/softhsm/libsofthsm2.so",
	"/usr/lib/x86_64-linux-gnu/softhsm/libsofthsm2.so",
	"/usr/lib/aarch64-linux-gnu/softhsm/libsofthsm2.so",
}

// dialRemote runs p11-kit remote on module as a child, and connects to it.
func dialRemote(t testing.TB, module string) *p11Client {
	t.Helper()
	c, err := dialP11(`exec:command="p11-kit remote ` + module + `"`)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// p11rpcSoftHSM makes a SoftHSM2 token "test" (user PIN 1234, SO PIN 5678)
// in a throw-away directory under root ("" for the host, else a root that
// commands run in with chroot), points SOFTHSM2_CONF at it and returns the
// module's path (inside root).
func p11rpcSoftHSM(t testing.TB, root string) string {
	t.Helper()
	module := ""
	for _, m := range p11rpcModules {
		if _, err := os.Stat(root + m); err == nil {
			module = m
			break
		}
	}
	if module == "" {
		t.Skip("SoftHSM2 is not installed (package softhsm2)")
	}
	util := []string{"softhsm2-util"}
	if root != "" {
		util = []string{"chroot", root, "softhsm2-util"}
	} else if _, err := exec.LookPath("softhsm2-util"); err != nil {
		t.Skip("softhsm2-util is not installed")
	}
	dir, err := os.MkdirTemp(root+"/tmp", "softhsm")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	inside := strings.TrimPrefix(dir, root)
	if err := os.Mkdir(dir+"/tokens", 0o700); err != nil {
		t.Fatal(err)
	}
	conf := fmt.Sprintf("directories.tokendir = %s/tokens\nobjectstore.backend = file\nlog.level = ERROR\n", inside)
	if err := os.WriteFile(dir+"/softhsm2.conf", []byte(conf), 0o600); err != nil {
		t.Fatal(err)
	}
	t.Setenv("SOFTHSM2_CONF", inside+"/softhsm2.conf")
	args := append(util, "--init-token", "--free", "--label", "test", "--pin", "1234", "--so-pin", "5678")
	if out, err := exec.Command(args[0], args[1:]...).CombinedOutput(); err != nil {
		t.Fatalf("softhsm2-util: %v\n%s", err, out)
	}
	return module
}

// p11rpcServer runs "p11-kit server" in the foreground for the token and
// returns its address.
func p11rpcServer(t *testing.T, module string) string {
	t.Helper()
	needTool(t, "p11-kit")
	dir, err := os.MkdirTemp("/tmp", "p11") // a socket path must stay short
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	sock := dir + "/pkcs11"
	var out bytes.Buffer
	cmd := exec.Command("p11-kit", "server", "-f", "--provider", module, "-n", sock, "pkcs11:token=test")
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		cmd.Process.Kill()
		cmd.Wait()
	})
	for range 100 {
		if _, err := os.Stat(sock); err == nil {
			return "unix:path=" + sock
		}
		time.Sleep(50 * time.Millisecond)
	}
	t.Fatalf("p11-kit server did not create %s:\n%s", sock, out.String())
	return ""
}

func TestP11RPCSoftHSMExec(t *testing.T) {
	needTool(t, "p11-kit")
	module := p11rpcSoftHSM(t, "")
	p11rpcExercise(t, `exec:command="p11-kit remote `+module+`"`)
}

func TestP11RPCSoftHSMUnix(t *testing.T) {
	module := p11rpcSoftHSM(t, "")
	p11rpcExercise(t, p11rpcServer(t, module))
}

// TestP11RPCChroot runs the same through the p11-kit and SoftHSM2 of
// another Debian, in the root DEBUSINE_SIGNING_TEST_P11KIT_ROOT names:
// .ci/test names its Debian 13 root (p11-kit 0.25.5, protocol version 1);
// unstable's (0.26.5) speaks version 2.
func TestP11RPCChroot(t *testing.T) {
	root := os.Getenv("DEBUSINE_SIGNING_TEST_P11KIT_ROOT")
	if root == "" {
		t.Skip("DEBUSINE_SIGNING_TEST_P11KIT_ROOT does not name a root with p11-kit and softhsm2")
	}
	if os.Geteuid() != 0 {
		t.Skip("chroot needs root")
	}
	if _, err := os.Stat(root + "/usr/bin/p11-kit"); err != nil {
		t.Fatalf("no p11-kit in %s: %v", root, err)
	}
	module := p11rpcSoftHSM(t, root)
	v := p11rpcExercise(t, `exec:command="chroot `+root+` p11-kit remote `+module+`"`)
	if v < 1 {
		t.Errorf("p11-kit in %s agreed on protocol version %d, Debian 12's; want a newer one", root, v)
	}
}

// p11rpcLogin opens a read-write session on the token "test" and logs in.
func p11rpcLogin(t *testing.T, c *p11Client) (slot, h uint64) {
	t.Helper()
	slots, err := c.Slots(true)
	if err != nil {
		t.Fatal(err)
	}
	found := false
	for _, s := range slots {
		ti, err := c.TokenInfo(s)
		if err != nil {
			t.Fatal(err)
		}
		if ti.Label == "test" {
			slot, found = s, true
			if ti.Manufacturer != "SoftHSM project" || ti.Model != "SoftHSM v2" || ti.Serial == "" ||
				ti.Flags&ckfTokenInitialized == 0 || ti.Flags&ckfLoginRequired == 0 || ti.MinPinLen == 0 {
				t.Errorf("token info %+v", ti)
			}
		}
	}
	if !found {
		t.Fatalf("no token labelled test in slots %v", slots)
	}
	if h, err = c.OpenSession(slot, true); err != nil {
		t.Fatal(err)
	}
	if err := c.Login(h, ckuUser, []byte("1234")); err != nil {
		t.Fatal(err)
	}
	return slot, h
}

// p11rpcExercise is what the signing code does, through the address given;
// it returns the protocol version agreed.
func p11rpcExercise(t *testing.T, address string) int {
	c, err := dialP11Wait(address, 20*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	t.Logf("%s: protocol version %d", address, c.Version())

	info, err := c.Info()
	if err != nil {
		t.Fatal(err)
	}
	// p11-kit server puts its proxy module in front of the token.
	if (info.Manufacturer != "SoftHSM" && info.Manufacturer != "PKCS#11 Kit") || info.CryptokiVersion.Major < 2 {
		t.Errorf("C_GetInfo: %+v", info)
	}
	all, err := c.Slots(false)
	if err != nil {
		t.Fatal(err)
	}
	present, err := c.Slots(true)
	if err != nil {
		t.Fatal(err)
	}
	// SoftHSM offers the initialized token and one free slot.
	if len(present) == 0 || len(all) < len(present) {
		t.Errorf("slots %v, with a token %v", all, present)
	}
	si, err := c.SlotInfo(present[0])
	if err != nil {
		t.Fatal(err)
	}
	if si.Flags&ckfTokenPresent == 0 || si.Description == "" || strings.HasSuffix(si.Description, " ") {
		t.Errorf("slot info %+v", si)
	}
	if _, err := c.TokenInfo(1 << 40); !p11rpcIsRV(err, 0x3) { // CKR_SLOT_ID_INVALID
		t.Errorf("token info of a slot that is not there: %v", err)
	}

	slot, h := p11rpcWrongPIN(t, c)
	mechs, err := c.Mechanisms(slot)
	if err != nil {
		t.Fatal(err)
	}
	has := map[uint64]bool{}
	for _, m := range mechs {
		has[m] = true
	}
	for _, m := range []uint64{ckmRSAPKCSKeyPairGen, ckmRSAPKCS, ckmSHA256RSAPKCS} {
		if !has[m] {
			t.Fatalf("mechanism %#x not offered: %x", m, mechs)
		}
	}
	mi, err := c.MechanismInfo(slot, ckmRSAPKCSKeyPairGen)
	if err != nil {
		t.Fatal(err)
	}
	if mi.MinKeySize > 2048 || mi.MaxKeySize < 4096 || mi.Flags&ckfGenerateKeyPair == 0 {
		t.Errorf("CKM_RSA_PKCS_KEY_PAIR_GEN: %+v", mi)
	}

	p11rpcRSA(t, c, h)
	if has[ckmECEdwardsKeyPairGen] && has[ckmEDDSA] {
		p11rpcEd25519(t, c, h)
	} else {
		t.Log("no Ed25519 on this SoftHSM")
	}

	if si, err := c.SessionInfo(h); err != nil || si.State != cksRWUserFunctions || si.Slot != slot || si.Flags&ckfRWSession == 0 {
		t.Errorf("session info %+v, %v", si, err)
	}
	if err := c.Logout(h); err != nil {
		t.Fatal(err)
	}
	if si, err := c.SessionInfo(h); err != nil || si.State != cksRWPublicSession {
		t.Errorf("session info after C_Logout %+v, %v", si, err)
	}
	if err := c.CloseSession(h); err != nil {
		t.Fatal(err)
	}
	if err := c.CloseSession(h); !p11rpcIsRV(err, ckrSessionHandleInvalid) {
		t.Errorf("closing a closed session: %v", err)
	}
	return c.Version()
}

// p11rpcWrongPIN logs in with a wrong PIN, then the right one.
func p11rpcWrongPIN(t *testing.T, c *p11Client) (slot, h uint64) {
	slots, _ := c.Slots(true)
	for _, s := range slots {
		if ti, _ := c.TokenInfo(s); ti.Label == "test" {
			slot = s
		}
	}
	h, err := c.OpenSession(slot, true)
	if err != nil {
		t.Fatal(err)
	}
	err = c.Login(h, ckuUser, []byte("9876"))
	if !p11rpcIsRV(err, ckrPINIncorrect) || err.Error() != "C_Login: CKR_PIN_INCORRECT (0xa0)" {
		t.Fatalf("login with a wrong PIN: %v", err)
	}
	// A wrong PIN is an answer, not a broken connection.
	if errors.Is(err, errP11Closed) {
		t.Fatal("a wrong PIN closed the connection")
	}
	c.CloseSession(h)
	return p11rpcLogin(t, c)
}

func p11rpcIsRV(err error, rv uint64) bool {
	got, ok := p11RV(err)
	return ok && got == rv
}

// p11rpcRSA generates an RSA 2048 key pair as the signing code does, finds
// it, reads it and signs with it.
func p11rpcRSA(t *testing.T, c *p11Client, h uint64) {
	id := []byte{0x42, 0x01}
	pubT := []p11Attr{
		{Type: ckaClass, Value: p11Ulong(ckoPublicKey)}, {Type: ckaKeyType, Value: p11Ulong(ckkRSA)},
		{Type: ckaToken, Value: p11Bool(true)}, {Type: ckaVerify, Value: p11Bool(true)},
		{Type: ckaModulusBits, Value: p11Ulong(2048)}, {Type: ckaPublicExponent, Value: []byte{1, 0, 1}},
		{Type: ckaID, Value: id}, {Type: ckaLabel, Value: []byte("rpc key")},
	}
	privT := []p11Attr{
		{Type: ckaClass, Value: p11Ulong(ckoPrivateKey)}, {Type: ckaKeyType, Value: p11Ulong(ckkRSA)},
		{Type: ckaToken, Value: p11Bool(true)}, {Type: ckaPrivate, Value: p11Bool(true)},
		{Type: ckaSign, Value: p11Bool(true)}, {Type: ckaSensitive, Value: p11Bool(true)},
		{Type: ckaExtractable, Value: p11Bool(false)},
		{Type: ckaID, Value: id}, {Type: ckaLabel, Value: []byte("rpc key")},
	}
	pubObj, privObj, err := c.GenerateKeyPair(h, p11Mechanism{Type: ckmRSAPKCSKeyPairGen}, pubT, privT)
	if err != nil {
		t.Fatal(err)
	}
	found, err := c.FindObjects(h, []p11Attr{{Type: ckaClass, Value: p11Ulong(ckoPrivateKey)}, {Type: ckaID, Value: id}}, 10)
	if err != nil || len(found) != 1 || found[0] != privObj {
		t.Fatalf("find by CKA_ID: %v, %v; want [%d]", found, err, privObj)
	}
	found, err = c.FindObjects(h, []p11Attr{{Type: ckaLabel, Value: []byte("rpc key")}}, 10)
	if err != nil || len(found) != 2 {
		t.Fatalf("find by CKA_LABEL: %v, %v", found, err)
	}
	if found, err := c.FindObjects(h, []p11Attr{{Type: ckaLabel, Value: []byte("no such key")}}, 10); err != nil || len(found) != 0 {
		t.Fatalf("find a key that is not there: %v, %v", found, err)
	}
	attrs, err := c.Attributes(h, privObj, ckaClass, ckaSensitive, ckaExtractable, ckaNeverExtractable,
		ckaPrivateExponent, ckaModulus, ckaPublicExponent, ckaLabel, ckaID)
	if err != nil {
		t.Fatal(err)
	}
	if class, err := p11AttrUlong(attrs[0]); err != nil || class != ckoPrivateKey {
		t.Errorf("CKA_CLASS %v: %d %v", attrs[0], class, err)
	}
	if !bytes.Equal(attrs[1].Value, []byte{1}) || !bytes.Equal(attrs[2].Value, []byte{0}) || !bytes.Equal(attrs[3].Value, []byte{1}) {
		t.Errorf("sensitive, extractable, never extractable: %v %v %v", attrs[1], attrs[2], attrs[3])
	}
	if !attrs[4].Missing || attrs[4].Value != nil {
		t.Errorf("the private exponent of a sensitive key: %+v", attrs[4])
	}
	if string(attrs[7].Value) != "rpc key" || !bytes.Equal(attrs[8].Value, id) {
		t.Errorf("label %q, id %x", attrs[7].Value, attrs[8].Value)
	}
	pubA, err := c.Attributes(h, pubObj, ckaModulus, ckaPublicExponent)
	if err != nil {
		t.Fatal(err)
	}
	pub := &rsa.PublicKey{N: new(big.Int).SetBytes(pubA[0].Value), E: int(new(big.Int).SetBytes(pubA[1].Value).Int64())}
	if pub.N.BitLen() != 2048 || pub.E != 65537 || !bytes.Equal(attrs[5].Value, pubA[0].Value) {
		t.Fatalf("public key: %d bits, e=%d", pub.N.BitLen(), pub.E)
	}
	p11rpcCheckRSA(t, c, h, privObj, pub)
}

// p11rpcCheckRSA signs with the token's key, PKCS#1 v1.5 over a DigestInfo
// and with the token hashing, and checks both signatures with crypto/rsa.
func p11rpcCheckRSA(t *testing.T, c *p11Client, h, key uint64, pub *rsa.PublicKey) {
	t.Helper()
	msg := []byte("signed through p11-kit")
	digest := sha256.Sum256(msg)
	digestInfo := append([]byte{0x30, 0x31, 0x30, 0x0d, 0x06, 0x09, 0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x02, 0x01, 0x05, 0x00, 0x04, 0x20}, digest[:]...)
	sig, err := c.Sign(h, p11Mechanism{Type: ckmRSAPKCS}, key, digestInfo, nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := rsa.VerifyPKCS1v15(pub, crypto.SHA256, digest[:], sig); err != nil {
		t.Errorf("CKM_RSA_PKCS signature: %v", err)
	}
	sig2, err := c.Sign(h, p11Mechanism{Type: ckmSHA256RSAPKCS}, key, msg, nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := rsa.VerifyPKCS1v15(pub, crypto.SHA256, digest[:], sig2); err != nil || !bytes.Equal(sig, sig2) {
		t.Errorf("CKM_SHA256_RSA_PKCS signature: %v (same as the other: %v)", err, bytes.Equal(sig, sig2))
	}
}

// p11rpcEd25519 generates an Ed25519 key pair and signs with CKM_EDDSA.
func p11rpcEd25519(t *testing.T, c *p11Client, h uint64) {
	oid := []byte{0x06, 0x03, 0x2b, 0x65, 0x70} // id-Ed25519
	pubObj, privObj, err := c.GenerateKeyPair(h, p11Mechanism{Type: ckmECEdwardsKeyPairGen},
		[]p11Attr{{Type: ckaToken, Value: p11Bool(true)}, {Type: ckaECParams, Value: oid}, {Type: ckaVerify, Value: p11Bool(true)}},
		[]p11Attr{{Type: ckaToken, Value: p11Bool(true)}, {Type: ckaSign, Value: p11Bool(true)}, {Type: ckaSensitive, Value: p11Bool(true)},
			{Type: ckaExtractable, Value: p11Bool(false)}, {Type: ckaPrivate, Value: p11Bool(true)}})
	if err != nil {
		t.Fatal(err)
	}
	a, err := c.Attributes(h, pubObj, ckaECPoint, ckaKeyType)
	if err != nil {
		t.Fatal(err)
	}
	point := a[0].Value
	if len(point) == 34 && point[0] == 0x04 && point[1] == 32 { // a DER OCTET STRING
		point = point[2:]
	}
	if kt, _ := p11AttrUlong(a[1]); len(point) != ed25519.PublicKeySize || kt != ckkECEdwards {
		t.Fatalf("Ed25519 public key %x, key type %#x", a[0].Value, kt)
	}
	msg := []byte("signed with Ed25519 through p11-kit")
	sig, err := c.Sign(h, p11Mechanism{Type: ckmEDDSA}, privObj, msg, nil)
	if err != nil {
		t.Fatal(err)
	}
	if !ed25519.Verify(ed25519.PublicKey(point), msg, sig) {
		t.Error("the Ed25519 signature does not verify")
	}
	t.Log("Ed25519 key generated, signature verified")
}

// TestP11RPCPkcs11Tool has OpenSC's pkcs11-tool make a key on the token and
// read its public key, independently of this client, which finds the key
// and signs with it.
func TestP11RPCPkcs11Tool(t *testing.T) {
	needTool(t, "pkcs11-tool")
	needTool(t, "p11-kit")
	module := p11rpcSoftHSM(t, "")
	dir := t.TempDir()
	tool := func(args ...string) {
		t.Helper()
		args = append([]string{"--module", module, "--token-label", "test"}, args...)
		if out, err := exec.Command("pkcs11-tool", args...).CombinedOutput(); err != nil {
			t.Fatalf("pkcs11-tool %v: %v\n%s", args, err, out)
		}
	}
	tool("--login", "--pin", "1234", "--keypairgen", "--key-type", "rsa:2048", "--id", "a1b2", "--label", "tool key")
	tool("--read-object", "--type", "pubkey", "--id", "a1b2", "--output-file", dir+"/pub.der")
	der, err := os.ReadFile(dir + "/pub.der")
	if err != nil {
		t.Fatal(err)
	}
	pk, err := x509.ParsePKIXPublicKey(der)
	if err != nil {
		pk, err = x509.ParsePKCS1PublicKey(der)
	}
	if err != nil {
		t.Fatalf("pkcs11-tool's public key: %v", err)
	}
	c := dialRemote(t, module)
	defer c.Close()
	_, h := p11rpcLogin(t, c)
	keys, err := c.FindObjects(h, []p11Attr{{Type: ckaClass, Value: p11Ulong(ckoPrivateKey)}, {Type: ckaID, Value: []byte{0xa1, 0xb2}}}, 2)
	if err != nil || len(keys) != 1 {
		t.Fatalf("pkcs11-tool's key: %v, %v", keys, err)
	}
	p11rpcCheckRSA(t, c, h, keys[0], pk.(*rsa.PublicKey))
}

// TestP11RPCChildKilled kills p11-kit remote in the middle of a call: the
// call fails at once with errP11Closed, later calls too, and Close reaps
// the child.
func TestP11RPCChildKilled(t *testing.T) {
	needTool(t, "p11-kit")
	module := p11rpcSoftHSM(t, "")
	c := dialRemote(t, module)
	defer c.Close()
	pid := c.cmd.Process.Pid
	// Stopped, the child cannot answer: the call is under way when it dies.
	syscall.Kill(pid, syscall.SIGSTOP)
	done := make(chan error, 1)
	go func() {
		_, err := c.Slots(true)
		done <- err
	}()
	time.Sleep(200 * time.Millisecond)
	syscall.Kill(pid, syscall.SIGKILL)
	var err error
	select {
	case err = <-done:
	case <-time.After(10 * time.Second):
		t.Fatal("the call hangs after its server died")
	}
	if !errors.Is(err, errP11Closed) || !strings.Contains(err.Error(), "C_GetSlotList") {
		t.Fatalf("call to a killed child: %v", err)
	}
	t.Log(err)
	if _, err := c.Info(); !errors.Is(err, errP11Closed) {
		t.Fatalf("call after the child died: %v", err)
	}
	if c.cmd.ProcessState == nil {
		t.Error("the dead child was not reaped")
	}
	// A new connection works.
	c2 := dialRemote(t, module)
	p11rpcLogin(t, c2)
	c2.Close()
	if c2.cmd.ProcessState == nil || !c2.cmd.ProcessState.Success() {
		t.Errorf("p11-kit remote after Close: %v", c2.cmd.ProcessState)
	}
}

// TestP11RPCChildStalls gives up on a child that does not answer, within
// the deadline, and kills it.
func TestP11RPCChildStalls(t *testing.T) {
	needTool(t, "p11-kit")
	module := p11rpcSoftHSM(t, "")
	c, err := dialP11Wait(`exec:command="p11-kit remote `+module+`"`, time.Second)
	if err != nil {
		t.Fatal(err)
	}
	syscall.Kill(c.cmd.Process.Pid, syscall.SIGSTOP)
	start := time.Now()
	_, err = c.Info()
	if !errors.Is(err, errP11Closed) || !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("a stalled child: %v", err)
	}
	if d := time.Since(start); d > 5*time.Second {
		t.Errorf("gave up after %v", d)
	}
	c.Close()
	if c.cmd.ProcessState == nil {
		t.Error("the stalled child was left behind")
	}
}

func TestP11RPCExecNotFound(t *testing.T) {
	_, err := dialP11(`exec:command="/nonexistent/p11-kit remote x.so"`)
	if err == nil || !strings.Contains(err.Error(), "/nonexistent/p11-kit") {
		t.Fatalf("a command that is not there: %v", err)
	}
	// p11-kit remote with a module that is not there exits at once.
	if _, err := exec.LookPath("p11-kit"); err == nil {
		_, err := dialP11(`exec:command="p11-kit remote ` + filepath.Join(t.TempDir(), "none.so") + `"`)
		if !errors.Is(err, errP11Closed) {
			t.Fatalf("a module that is not there: %v", err)
		}
		t.Log(err)
	}
}

// p11rpcRSAKey makes an RSA 2048 signing key (CKA_ID 01) on the first
// token and returns a logged-in session and the key.
func p11rpcRSAKey(t testing.TB, c *p11Client) (h, key uint64) {
	slots, err := c.Slots(true)
	if err != nil || len(slots) == 0 {
		t.Fatalf("slots %v, %v", slots, err)
	}
	if h, err = c.OpenSession(slots[0], true); err != nil {
		t.Fatal(err)
	}
	if err := c.Login(h, ckuUser, []byte("1234")); err != nil {
		t.Fatal(err)
	}
	_, key, err = c.GenerateKeyPair(h, p11Mechanism{Type: ckmRSAPKCSKeyPairGen},
		[]p11Attr{{Type: ckaModulusBits, Value: p11Ulong(2048)}, {Type: ckaVerify, Value: p11Bool(true)}, {Type: ckaToken, Value: p11Bool(true)}, {Type: ckaID, Value: []byte{1}}},
		[]p11Attr{{Type: ckaSign, Value: p11Bool(true)}, {Type: ckaSensitive, Value: p11Bool(true)}, {Type: ckaToken, Value: p11Bool(true)}, {Type: ckaID, Value: []byte{1}}})
	if err != nil {
		t.Fatal(err)
	}
	return h, key
}

// TestP11RPCConcurrentSign: goroutines signing on one session do not
// interleave their C_SignInit and C_Sign calls.
func TestP11RPCConcurrentSign(t *testing.T) {
	needTool(t, "p11-kit")
	module := p11rpcSoftHSM(t, "")
	c := dialRemote(t, module)
	defer c.Close()
	h, key := p11rpcRSAKey(t, c)
	errs := make(chan error, 4)
	for range 4 {
		go func() {
			var err error
			for range 10 {
				if _, err = c.Sign(h, p11Mechanism{Type: ckmSHA256RSAPKCS}, key, []byte("data"), nil); err != nil {
					break
				}
			}
			errs <- err
		}()
	}
	for range 4 {
		if err := <-errs; err != nil {
			t.Fatal(err)
		}
	}
}

// BenchmarkP11RPCSign: one RSA 2048 signature by SoftHSM2 through p11-kit
// remote on a kept session (C_SignInit, C_Sign twice), and, for scale,
// pkcs11-tool signing with the same key, one process per signature as a
// tool run per file does.
func BenchmarkP11RPCSign(b *testing.B) {
	if _, err := exec.LookPath("p11-kit"); err != nil {
		b.Skip("p11-kit is not installed")
	}
	module := p11rpcSoftHSM(b, "")
	c := dialRemote(b, module)
	defer c.Close()
	h, key := p11rpcRSAKey(b, c)
	b.Run("rpc", func(b *testing.B) {
		for b.Loop() {
			if _, err := c.Sign(h, p11Mechanism{Type: ckmSHA256RSAPKCS}, key, []byte("data"), nil); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("pkcs11-tool", func(b *testing.B) {
		if _, err := exec.LookPath("pkcs11-tool"); err != nil {
			b.Skip("pkcs11-tool is not installed")
		}
		in := filepath.Join(b.TempDir(), "in")
		os.WriteFile(in, []byte("data"), 0o600)
		for b.Loop() {
			out, err := exec.Command("pkcs11-tool", "--module", module, "--token-label", "test", "--login", "--pin", "1234",
				"--sign", "--mechanism", "SHA256-RSA-PKCS", "--id", "01", "--input-file", in, "--output-file", in+".sig").CombinedOutput()
			if err != nil {
				b.Fatalf("%v\n%s", err, out)
			}
		}
	})
}
