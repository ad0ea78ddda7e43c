//go:build cgo

package main

// Keys held on a YubiKey: the private key never leaves the token; this file
// registers such keys, generates new ones on the token, and signs through the
// token's PIV applet (piv-go, which needs libpcsclite and therefore cgo).
//
// Each token has one PC/SC session for the whole process, opened on first use
// and kept: opening one costs a reader scan and an applet selection, and a
// worker signing a hundred files must not pay that a hundred times. piv-go
// holds the card in exclusive mode with a transaction open, so the session is
// also the token's lock against other processes; the mutex per token
// serializes this process's users, since a PIV applet has one security state.

import (
	"bytes"
	"crypto"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/x509"
	"encoding/hex"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"
	"sync"
	"time"

	"github.com/go-piv/piv-go/v2/piv"
)

// tokens is the process-wide pool of YubiKey sessions, by serial number.
var tokens = &tokenPool{bySerial: map[uint32]*token{}}

type tokenPool struct {
	mu       sync.Mutex
	bySerial map[uint32]*token
}

func (p *tokenPool) get(serial uint32) *token {
	p.mu.Lock()
	defer p.mu.Unlock()
	t := p.bySerial[serial]
	if t == nil {
		t = &token{serial: serial}
		p.bySerial[serial] = t
	}
	return t
}

// token is one YubiKey. All fields are guarded by mu.
type token struct {
	serial uint32
	mu     sync.Mutex
	yk     *piv.YubiKey
	// rejectedPIN is the SHA-256 of the last PIN the token refused, and
	// rejection what was said then: every presentation of a wrong PIN burns
	// one of the token's few retries, so the same PIN is never presented
	// again; the operator fixes the PIN file and the next signature tries the
	// new PIN.
	rejectedPIN *[32]byte
	rejection   string
}

func (t *token) close() {
	if t.yk != nil {
		t.yk.Close()
		t.yk = nil
	}
}

// session returns the open session, finding the token among the PC/SC
// readers if there is none.
func (t *token) session() (*piv.YubiKey, error) {
	if t.yk != nil {
		return t.yk, nil
	}
	readers, err := piv.Cards()
	if err != nil {
		return nil, fmt.Errorf("YubiKey %d: PC/SC: %v (is pcscd running?)", t.serial, err)
	}
	for _, reader := range readers {
		yk, err := piv.Open(reader)
		if err != nil {
			// No card, not a PIV card, or held by another program.
			continue
		}
		serial, err := yk.Serial()
		if err == nil && serial == t.serial {
			t.yk = yk
			return yk, nil
		}
		yk.Close()
	}
	return nil, fmt.Errorf("YubiKey %d is not connected to this host (%d PC/SC readers checked; or another program holds it)", t.serial, len(readers))
}

// do runs fn with the token's session, under the token's lock. A session
// that broke (the token was pulled out and plugged back, or reset) is
// reopened once and fn run again: fn failed on the dead session without the
// card doing anything, so nothing is done twice.
func (t *token) do(fn func(yk *piv.YubiKey) error) error {
	t.mu.Lock()
	defer t.mu.Unlock()
	fresh := t.yk == nil
	yk, err := t.session()
	if err != nil {
		return err
	}
	err = fn(yk)
	if err == nil || fresh || errors.As(err, new(piv.AuthErr)) {
		return err
	}
	// A harmless command tells a card's refusal from a dead session.
	if _, serr := yk.Serial(); serr == nil {
		return err
	}
	t.close()
	if yk, err = t.session(); err != nil {
		return err
	}
	return fn(yk)
}

func pivSlot(slot byte) (piv.Slot, error) {
	switch slot {
	case 0x9a:
		return piv.SlotAuthentication, nil
	case 0x9c:
		return piv.SlotSignature, nil
	case 0x9d:
		return piv.SlotKeyManagement, nil
	case 0x9e:
		return piv.SlotCardAuthentication, nil
	}
	if s, ok := piv.RetiredKeyManagementSlot(uint32(slot)); ok {
		return s, nil
	}
	return piv.Slot{}, fmt.Errorf("PIV slot %02x: not a key slot", slot)
}

// tokenKey is a crypto.Signer whose private key is in a YubiKey PIV slot.
type tokenKey struct {
	token     *token
	slot      piv.Slot
	pub       crypto.PublicKey
	pinPolicy piv.PINPolicy // 0: unknown (firmware before 5.3); piv-go asks the token
	pinSource string        // file holding the PIN; "" when none is configured
}

// tokenSigner returns the signer of the key a pkcs11-static URI names. The
// token must be present: its slot gives the public key and PIN policy.
func tokenSigner(cfg YubiKeyConfig, uri string) (crypto.Signer, error) {
	ref, err := parsePKCS11URI(uri)
	if err != nil {
		return nil, err
	}
	slot, err := pivSlot(ref.Slot)
	if err != nil {
		return nil, err
	}
	k := &tokenKey{token: tokens.get(ref.Serial), slot: slot, pinSource: ref.PINSource}
	if k.pinSource == "" {
		k.pinSource = cfg.PINFile
	}
	err = k.token.do(func(yk *piv.YubiKey) error {
		info, err := yk.KeyInfo(slot)
		if err == nil {
			k.pub, k.pinPolicy = info.PublicKey, info.PINPolicy
			return nil
		}
		if errors.Is(err, piv.ErrNotFound) {
			return fmt.Errorf("YubiKey %d: PIV slot %s holds no key", ref.Serial, slot)
		}
		// Firmware before 5.3 has no metadata: the certificate has the key.
		cert, cerr := yk.Certificate(slot)
		if cerr != nil {
			return fmt.Errorf("YubiKey %d: PIV slot %s: no key metadata (%v) and no certificate (%v)", ref.Serial, slot, err, cerr)
		}
		k.pub = cert.PublicKey
		return nil
	})
	if err != nil {
		return nil, err
	}
	return k, nil
}

// tokenKeyAvailable says why the key a URI names cannot be used on this
// host (its token is not connected, the URI cannot be mapped), or nil, so
// that a worker advertises only the keys it can use.
func tokenKeyAvailable(cfg YubiKeyConfig, uri string) error {
	ref, err := parsePKCS11URI(uri)
	if err != nil {
		return err
	}
	return tokens.get(ref.Serial).do(func(yk *piv.YubiKey) error {
		_, err := yk.Serial()
		return err
	})
}

func (k *tokenKey) Public() crypto.PublicKey { return k.pub }

// Sign signs a digest on the token. The PIN, when the slot's policy wants
// one, is read from its file for every signature, so that a corrected file
// takes effect without a restart; it appears in no message.
func (k *tokenKey) Sign(rnd io.Reader, digest []byte, opts crypto.SignerOpts) ([]byte, error) {
	var pin string
	if k.pinPolicy != piv.PINPolicyNever {
		p, err := k.readPIN()
		if err != nil {
			return nil, err
		}
		pin = p
	}
	var sig []byte
	err := k.token.do(func(yk *piv.YubiKey) error {
		if err := k.token.refuseRejectedPIN(pin, k.pinSource); err != nil {
			return err
		}
		priv, err := yk.PrivateKey(k.slot, k.pub, piv.KeyAuth{PIN: pin, PINPolicy: k.pinPolicy})
		if err != nil {
			return fmt.Errorf("YubiKey %d: PIV slot %s: %w", k.token.serial, k.slot, err)
		}
		signer, ok := priv.(crypto.Signer)
		if !ok {
			return fmt.Errorf("YubiKey %d: PIV slot %s does not hold a signing key", k.token.serial, k.slot)
		}
		sig, err = signer.Sign(rnd, digest, opts)
		if err == nil {
			if pin != "" {
				k.token.rejectedPIN = nil
			}
			return nil
		}
		if pinErr := k.token.pinRefused(err, pin, k.pinSource); pinErr != nil {
			return pinErr
		}
		return fmt.Errorf("YubiKey %d: signing with PIV slot %s: %w", k.token.serial, k.slot, err)
	})
	return sig, err
}

// refuseRejectedPIN fails when pin is the one the token last refused.
// Called with the token locked.
func (t *token) refuseRejectedPIN(pin, source string) error {
	if pin == "" || t.rejectedPIN == nil || *t.rejectedPIN != sha256.Sum256([]byte(pin)) {
		return nil
	}
	return fmt.Errorf("YubiKey %d: not presenting the PIN from %s again: %s", t.serial, source, t.rejection)
}

// pinRefused turns the token's refusal of a PIN into the error to report,
// and remembers the PIN so that it is not presented again; it returns nil
// when err is not a PIN refusal. Called with the token locked.
func (t *token) pinRefused(err error, pin, source string) error {
	var auth piv.AuthErr
	if pin == "" || !errors.As(err, &auth) {
		return nil
	}
	h := sha256.Sum256([]byte(pin))
	t.rejectedPIN = &h
	if auth.Retries == 0 {
		t.rejection = "the token refused it and the PIN is now blocked (unblock it with the PUK: ykman piv access unblock-pin)"
	} else {
		t.rejection = fmt.Sprintf("the token refused it, %d retries left before the PIN blocks", auth.Retries)
	}
	return fmt.Errorf("YubiKey %d: wrong PIN in %s: %s; it will not be tried again until the file changes", t.serial, source, t.rejection)
}

func (k *tokenKey) noPINError() error {
	return fmt.Errorf("YubiKey %d: PIV slot %s needs the PIN: set pin_file in [yubikey] or pin-source in the key's URI", k.token.serial, k.slot)
}

// readPIN reads the PIN file: the PIN, optionally followed by a newline.
func (k *tokenKey) readPIN() (string, error) {
	if k.pinSource == "" {
		if k.pinPolicy == 0 {
			return "", nil // the token may not need one; Sign says if it does
		}
		return "", k.noPINError()
	}
	data, err := readSecretFile(k.pinSource, "PIN")
	if err != nil {
		return "", err
	}
	defer clear(data)
	pin := strings.TrimSuffix(strings.TrimSuffix(string(data), "\n"), "\r")
	if len(pin) < 1 || len(pin) > 8 {
		return "", fmt.Errorf("PIN file %s: a PIV PIN has 1 to 8 characters, the file holds %d", k.pinSource, len(pin))
	}
	return pin, nil
}

// readSecretFile reads a PIN or management key file named by a path, file:
// URI or systemd credential name, refusing one that group or others can
// read, as service key files are refused.
func readSecretFile(source, what string) ([]byte, error) {
	path, err := pinSourcePath(source)
	if err != nil {
		return nil, err
	}
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("%s file: %w", what, err)
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return nil, fmt.Errorf("%s file: %w", what, err)
	}
	if fi.Mode().Perm()&0o077 != 0 {
		return nil, fmt.Errorf("%s file %s: permissions %04o are too open (readable by group or others); run chmod 600 %s", what, path, fi.Mode().Perm(), path)
	}
	data, err := io.ReadAll(io.LimitReader(f, 4096))
	if err != nil {
		return nil, fmt.Errorf("%s file %s: %w", what, path, err)
	}
	return data, nil
}

// readManagementKey reads the management key file: the key in hex, as
// ykman and yubico-piv-tool print it (48 digits for 3DES or AES-192, 32 for
// AES-128, 64 for AES-256).
func readManagementKey(cfg YubiKeyConfig) ([]byte, error) {
	if cfg.ManagementKeyFile == "" {
		return nil, errors.New("generating a key on a YubiKey needs its management key: set management_key_file in [yubikey]")
	}
	data, err := readSecretFile(cfg.ManagementKeyFile, "management key")
	if err != nil {
		return nil, err
	}
	defer clear(data)
	key, err := hex.DecodeString(string(bytes.TrimSpace(data)))
	if err != nil || (len(key) != 16 && len(key) != 24 && len(key) != 32) {
		return nil, fmt.Errorf("management key file %s: not a management key in hex (32, 48 or 64 hex digits)", cfg.ManagementKeyFile)
	}
	return key, nil
}

func parsePINPolicy(s string) (piv.PINPolicy, error) {
	switch s {
	case "", "always":
		return piv.PINPolicyAlways, nil
	case "once":
		return piv.PINPolicyOnce, nil
	case "never":
		return piv.PINPolicyNever, nil
	}
	return 0, fmt.Errorf("[yubikey] pin_policy %q: use always, once or never", s)
}

func parseTouchPolicy(s string) (piv.TouchPolicy, error) {
	switch s {
	case "", "never":
		return piv.TouchPolicyNever, nil
	case "always":
		return piv.TouchPolicyAlways, nil
	case "cached":
		return piv.TouchPolicyCached, nil
	}
	return 0, fmt.Errorf("[yubikey] touch_policy %q: use never, always or cached", s)
}

// registerYubiKeyKey records a UEFI key already in a YubiKey slot. The
// certificate is the one given, or the one in the slot; either way a test
// signature on the token must verify with it, so that a certificate for
// another key is never registered.
func registerYubiKeyKey(st *Store, serial uint32, slot byte, description string, certPEM []byte) (string, error) {
	uri, err := tokenKeyURI(serial, slot)
	if err != nil {
		return "", err
	}
	signer, err := tokenSigner(st.yubikey, uri)
	if err != nil {
		return "", err
	}
	k := signer.(*tokenKey)
	var cert *x509.Certificate
	if certPEM != nil {
		if cert, err = parseCertificatePEM(certPEM); err != nil {
			return "", err
		}
	} else {
		err = k.token.do(func(yk *piv.YubiKey) error {
			cert, err = yk.Certificate(k.slot)
			if errors.Is(err, piv.ErrNotFound) {
				return fmt.Errorf("YubiKey %d: PIV slot %s holds no certificate: give one with --certificate", serial, k.slot)
			}
			return err
		})
		if err != nil {
			return "", err
		}
	}
	if err := checkTokenKeyMatches(k, cert); err != nil {
		return "", err
	}
	private, err := pkcs11KeyJSON(uri)
	if err != nil {
		return "", err
	}
	return addUEFIKey(st, cert, private, description, "register", nil, nil)
}

// checkTokenKeyMatches signs a random digest on the token and verifies it
// with the certificate's key.
func checkTokenKeyMatches(k *tokenKey, cert *x509.Certificate) error {
	pub, ok := cert.PublicKey.(*rsa.PublicKey)
	if !ok {
		return fmt.Errorf("certificate %q: UEFI keys are RSA, this one is %T", cert.Subject, cert.PublicKey)
	}
	var challenge [32]byte
	if _, err := rand.Read(challenge[:]); err != nil {
		return err
	}
	digest := sha256.Sum256(append([]byte("debusine-signing key check "), challenge[:]...))
	sig, err := k.Sign(rand.Reader, digest[:], crypto.SHA256)
	if err != nil {
		return fmt.Errorf("test signature: %w", err)
	}
	if err := rsa.VerifyPKCS1v15(pub, crypto.SHA256, digest[:], sig); err != nil {
		return fmt.Errorf("certificate %q does not belong to the key in PIV slot %s of YubiKey %d: a test signature does not verify with it", cert.Subject, k.slot, k.token.serial)
	}
	return nil
}

// generateYubiKeyKey makes an RSA-2048 key on a YubiKey, certifies it with a
// self-signed certificate signed on the token, writes the certificate into
// the slot and records the key. The audit row carries the token's
// attestation (the slot's attestation certificate, then the token's
// attestation certificate) where the token offers one: that is the proof the
// key was generated on the token and cannot have been copied.
func generateYubiKeyKey(st *Store, serial uint32, slot byte, description string, workRequest *int64) (string, error) {
	cfg := st.yubikey
	pinPolicy, err := parsePINPolicy(cfg.PINPolicy)
	if err != nil {
		return "", err
	}
	touchPolicy, err := parseTouchPolicy(cfg.TouchPolicy)
	if err != nil {
		return "", err
	}
	uri, err := tokenKeyURI(serial, slot)
	if err != nil {
		return "", err
	}
	ps, err := pivSlot(slot)
	if err != nil {
		return "", err
	}
	mgmtKey, err := readManagementKey(cfg)
	if err != nil {
		return "", err
	}
	defer clear(mgmtKey)
	k := &tokenKey{token: tokens.get(serial), slot: ps, pinPolicy: pinPolicy, pinSource: cfg.PINFile}
	// The new key signs its own certificate: a PIN problem found only then
	// would leave an unrecorded key in the slot, so the PIN is checked first.
	var pin string
	if pinPolicy != piv.PINPolicyNever {
		if pin, err = k.readPIN(); err != nil {
			return "", err
		}
	}
	err = k.token.do(func(yk *piv.YubiKey) error {
		// Generating replaces the slot's key for good: never over a key.
		if _, err := yk.KeyInfo(ps); err == nil {
			return fmt.Errorf("YubiKey %d: PIV slot %s already holds a key; generating would destroy it (choose an empty slot, or delete that key with ykman piv keys delete)", serial, ps)
		}
		if _, err := yk.Certificate(ps); err == nil {
			return fmt.Errorf("YubiKey %d: PIV slot %s already holds a certificate; generating would replace its key (choose an empty slot)", serial, ps)
		}
		if pin != "" {
			if err := k.token.refuseRejectedPIN(pin, k.pinSource); err != nil {
				return err
			}
			if err := yk.VerifyPIN(pin); err != nil {
				if pinErr := k.token.pinRefused(err, pin, k.pinSource); pinErr != nil {
					return pinErr
				}
				return fmt.Errorf("YubiKey %d: verifying the PIN: %w", serial, err)
			}
		}
		pub, err := yk.GenerateKey(mgmtKey, ps, piv.Key{Algorithm: piv.AlgorithmRSA2048, PINPolicy: pinPolicy, TouchPolicy: touchPolicy})
		if err != nil {
			return fmt.Errorf("YubiKey %d: generating a key in PIV slot %s: %w", serial, ps, err)
		}
		k.pub = pub
		return nil
	})
	if err != nil {
		return "", err
	}
	der, err := uefiSelfSignedCertificate(description, k.pub, k, time.Now())
	if err != nil {
		return "", fmt.Errorf("YubiKey %d: self-signing the certificate of the new key in PIV slot %s: %w", serial, ps, err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		return "", err
	}
	data := map[string]any{"description": description}
	err = k.token.do(func(yk *piv.YubiKey) error {
		if err := yk.SetCertificate(mgmtKey, ps, cert); err != nil {
			return fmt.Errorf("YubiKey %d: writing the certificate into PIV slot %s: %w", serial, ps, err)
		}
		if chain := attestationChain(yk, ps); chain != nil {
			data["attestation"] = chain
		}
		return nil
	})
	if err != nil {
		return "", err
	}
	private, err := pkcs11KeyJSON(uri)
	if err != nil {
		return "", err
	}
	fpr, err := addUEFIKey(st, cert, private, description, "generate", data, workRequest)
	if err != nil {
		return "", fmt.Errorf("the key is on YubiKey %d in PIV slot %s but could not be recorded: %w", serial, ps, err)
	}
	return fpr, nil
}

// attestationChain returns the PEM certificates attesting that the key in
// slot was generated on the token, or nil when the token cannot attest
// (firmware before 4.3, or an imported key).
func attestationChain(yk *piv.YubiKey, slot piv.Slot) []string {
	att, err := yk.Attest(slot)
	if err != nil {
		return nil
	}
	ca, err := yk.AttestationCertificate()
	if err != nil {
		return nil
	}
	var chain []string
	for _, c := range []*x509.Certificate{att, ca} {
		chain = append(chain, string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: c.Raw})))
	}
	return chain
}
