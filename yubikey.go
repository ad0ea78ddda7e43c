package main

// Keys held on a YubiKey: the private key never leaves the token; this file
// registers such keys, generates new ones on the token, and signs through the
// token's PIV application (piv.go, over pcscd's socket: pcsc.go).
//
// Each token has one PC/SC session for the whole process, opened on first use
// and kept: opening one costs a reader scan and an applet selection, and a
// worker signing a hundred files must not pay that a hundred times. The
// session holds the card in exclusive mode with a transaction open, so it is
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
	card   *pivCard
	// rejectedPIN is the SHA-256 of the last PIN the token refused, and
	// rejection what was said then: every presentation of a wrong PIN burns
	// one of the token's few retries, so the same PIN is never presented
	// again; the operator fixes the PIN file and the next signature tries the
	// new PIN.
	rejectedPIN *[32]byte
	rejection   string
}

func (t *token) close() {
	if t.card != nil {
		// Its own bound: the operation's may have run out.
		t.card.ctx.SetDeadline(time.Now().Add(readerTimeout))
		t.card.close()
		t.card.ctx.Close()
		t.card = nil
	}
}

// Bounds of the waits on pcscd and the cards (variables for the tests): a
// token operation (token.do: finding the token, and what is done with it)
// ends by tokenOpTimeout, and while the token is looked for, each reader
// gets readerTimeout to say which card it holds, so that readers that
// stall, or a card another program keeps, cannot hold the search for
// long. A YubiKey answers the search in tens of milliseconds, and its
// longest operations (generating a key, waiting for a touch) take well
// under a minute.
var (
	tokenOpTimeout = 2 * time.Minute
	readerTimeout  = 5 * time.Second
)

// session returns the open session, finding the token among the PC/SC
// readers if there is none; all by deadline.
func (t *token) session(deadline time.Time) (*pivCard, error) {
	if t.card != nil {
		t.card.ctx.SetDeadline(deadline)
		return t.card, nil
	}
	ctx, err := pcscEstablish(deadline)
	if err != nil {
		return nil, fmt.Errorf("YubiKey %d: %w", t.serial, err)
	}
	readers, err := ctx.Readers()
	if err != nil {
		ctx.Close()
		return nil, fmt.Errorf("YubiKey %d: listing PC/SC readers: %w", t.serial, err)
	}
	// What was found instead, for the error: the operator may have plugged
	// in another token, or the reader may hold some other card.
	var seen []string
	for _, r := range readers {
		if r.State&pcscSCardPresent == 0 {
			continue
		}
		if ctx == nil || !time.Now().Before(deadline) {
			seen = append(seen, fmt.Sprintf("reader %q and those after it not looked at: out of time (%s for one operation)", r.Name, tokenOpTimeout))
			break
		}
		ctx.SetDeadline(earliest(deadline, time.Now().Add(readerTimeout)))
		card, err := openPIV(ctx, r.Name)
		if err == nil {
			var serial uint32
			if serial, err = card.serial(); err == nil && serial == t.serial {
				ctx.SetDeadline(deadline)
				t.card = card
				return card, nil
			}
			if err == nil {
				seen = append(seen, fmt.Sprintf("YubiKey %d in reader %q", serial, r.Name))
			} else {
				err = fmt.Errorf("reader %q: no serial number: %w", r.Name, err)
			}
			card.close()
		}
		if err != nil {
			// Not a PIV card, or held by another program, or stalled.
			seen = append(seen, err.Error())
		}
		if errors.Is(err, os.ErrDeadlineExceeded) {
			// The connection is out of step: a new one for the rest, if
			// there is time left for them.
			ctx.Close()
			ctx = nil
			if time.Now().Before(deadline) {
				if ctx, err = pcscEstablish(deadline); err != nil {
					return nil, fmt.Errorf("YubiKey %d: %w (found: %s)", t.serial, err, strings.Join(seen, "; "))
				}
			}
		}
	}
	if ctx != nil {
		ctx.Close()
	}
	switch {
	case len(readers) == 0:
		return nil, fmt.Errorf("YubiKey %d is not connected to this host (pcscd has no reader)", t.serial)
	case len(seen) == 0:
		return nil, fmt.Errorf("YubiKey %d is not connected to this host (%d PC/SC readers, no card in them)", t.serial, len(readers))
	}
	return nil, fmt.Errorf("YubiKey %d is not connected to this host (found: %s)", t.serial, strings.Join(seen, "; "))
}

// do runs fn with the token's session, under the token's lock. A session
// that broke (the token was pulled out and plugged back, reset by another
// program, or pcscd restarted) is reopened once and fn run again: fn failed
// on the dead session without the card doing anything, so nothing is done
// twice.
//
// The whole of it ends by tokenOpTimeout. A token that stalls is not tried
// again: its session is closed, and the error names its reader.
func (t *token) do(fn func(card *pivCard) error) error {
	t.mu.Lock()
	defer t.mu.Unlock()
	deadline := time.Now().Add(tokenOpTimeout)
	fresh := t.card == nil
	for {
		card, err := t.session(deadline)
		if err != nil {
			return err
		}
		err = fn(card)
		switch {
		case err == nil:
			return nil
		case errors.Is(err, os.ErrDeadlineExceeded):
			t.close()
			return fmt.Errorf("YubiKey %d in reader %q: %w", t.serial, card.card.reader, err)
		case !pcscGone(err):
			return err
		}
		t.close()
		if fresh {
			return fmt.Errorf("YubiKey %d: %w", t.serial, err)
		}
		fresh = true
	}
}

func earliest(a, b time.Time) time.Time {
	if a.Before(b) {
		return a
	}
	return b
}

// tokenKey is a crypto.Signer whose private key is in a YubiKey PIV slot.
type tokenKey struct {
	token     *token
	slot      pivSlot
	pub       *rsa.PublicKey
	pinPolicy byte   // 0: unknown (firmware before 5.3)
	pinSource string // file holding the PIN; "" when none is configured
}

// tokenSigner returns the signer of the key a pkcs11-static URI names. The
// token must be present: its slot gives the public key and PIN policy.
func tokenSigner(cfg YubiKeyConfig, uri string) (crypto.Signer, error) {
	ref, err := parsePKCS11URI(uri)
	if err != nil {
		return nil, err
	}
	slot, err := pivSlotOf(ref.Slot)
	if err != nil {
		return nil, err
	}
	k := &tokenKey{token: tokens.get(ref.Serial), slot: slot, pinSource: ref.PINSource}
	if k.pinSource == "" {
		k.pinSource = cfg.PINFile
	}
	err = k.token.do(func(card *pivCard) error {
		info, err := card.metadata(byte(slot))
		if err == nil {
			if info.public == nil {
				return fmt.Errorf("YubiKey %d: PIV slot %s holds a key of algorithm %02x, not RSA-2048", ref.Serial, slot, info.algorithm)
			}
			k.pub, k.pinPolicy = info.public, info.pinPolicy
			return nil
		}
		if errors.Is(err, errPIVNotFound) {
			return fmt.Errorf("YubiKey %d: PIV slot %s holds no key", ref.Serial, slot)
		}
		if pcscGone(err) {
			return err
		}
		// Firmware before 5.3 has no metadata: the certificate has the key.
		cert, cerr := card.certificate(slot)
		if cerr != nil {
			return fmt.Errorf("YubiKey %d: PIV slot %s: no key metadata (%v) and no certificate (%v)", ref.Serial, slot, err, cerr)
		}
		pub, ok := cert.PublicKey.(*rsa.PublicKey)
		if !ok {
			return fmt.Errorf("YubiKey %d: PIV slot %s: the certificate's key is %T, not RSA", ref.Serial, slot, cert.PublicKey)
		}
		k.pub = pub
		return nil
	})
	if err != nil {
		return nil, err
	}
	return k, nil
}

// tokenKeyAvailable says why the key a URI names cannot be used on this
// host (its token is not connected, the URI cannot be mapped), or nil, so
// that a worker advertises only the keys it can use. An open session is
// checked with pcscd alone, without a command to the token; a token pulled
// out since (and maybe plugged back) is looked for again.
func tokenKeyAvailable(cfg YubiKeyConfig, uri string) error {
	ref, err := parsePKCS11URI(uri)
	if err != nil {
		return err
	}
	return tokens.get(ref.Serial).do(func(card *pivCard) error {
		_, err := card.card.Status()
		return err
	})
}

func (k *tokenKey) Public() crypto.PublicKey { return k.pub }

// Sign signs a digest on the token. The PIN, when the slot's policy wants
// one, is read from its file for every signature, so that a corrected file
// takes effect without a restart; it appears in no message.
func (k *tokenKey) Sign(rnd io.Reader, digest []byte, opts crypto.SignerOpts) ([]byte, error) {
	if _, ok := opts.(*rsa.PSSOptions); ok {
		return nil, errors.New("YubiKey keys make PKCS #1 v1.5 signatures only")
	}
	var pin string
	if k.pinPolicy != pivPINPolicyNever {
		p, err := k.readPIN()
		if err != nil {
			return nil, err
		}
		pin = p
	}
	var sig []byte
	err := k.token.do(func(card *pivCard) error {
		if err := k.token.refuseRejectedPIN(pin, k.pinSource); err != nil {
			return err
		}
		// PIN policy "always" wants the PIN before every signature, "once"
		// once per session; with the policy unknown, the card says.
		needPIN := k.pinPolicy == pivPINPolicyAlways || (k.pinPolicy == pivPINPolicyOnce && !card.pinVerified())
		if needPIN {
			if err := k.verifyPIN(card, pin); err != nil {
				return err
			}
		}
		var err error
		sig, err = card.signRSA(k.slot, k.pub, digest, opts.HashFunc())
		var ae *apduError
		if k.pinPolicy == 0 && errors.As(err, &ae) && ae.sw == 0x6982 {
			if pin == "" {
				return k.noPINError()
			}
			if err := k.verifyPIN(card, pin); err != nil {
				return err
			}
			sig, err = card.signRSA(k.slot, k.pub, digest, opts.HashFunc())
		}
		if err != nil {
			if pcscGone(err) {
				return err
			}
			return fmt.Errorf("YubiKey %d: signing with PIV slot %s: %w", k.token.serial, k.slot, err)
		}
		return nil
	})
	return sig, err
}

// verifyPIN presents the PIN on behalf of a signature. Called with the
// token locked.
func (k *tokenKey) verifyPIN(card *pivCard, pin string) error {
	if pin == "" {
		return k.noPINError()
	}
	err := card.verifyPIN(pin)
	if err == nil {
		k.token.rejectedPIN = nil
		return nil
	}
	if pinErr := k.token.pinRefused(err, pin, k.pinSource); pinErr != nil {
		return pinErr
	}
	if pcscGone(err) {
		return err
	}
	return fmt.Errorf("YubiKey %d: verifying the PIN: %w", k.token.serial, err)
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
	var auth *pivPINError
	if pin == "" || !errors.As(err, &auth) {
		return nil
	}
	h := sha256.Sum256([]byte(pin))
	t.rejectedPIN = &h
	if auth.retries == 0 {
		t.rejection = "the token refused it and the PIN is now blocked (unblock it with the PUK: ykman piv access unblock-pin)"
	} else {
		t.rejection = fmt.Sprintf("the token refused it, %d retries left before the PIN blocks", auth.retries)
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
	return readSecretInput(path, what+" file", maxSecretSize)
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

func parsePINPolicy(s string) (byte, error) {
	switch s {
	case "", "always":
		return pivPINPolicyAlways, nil
	case "once":
		return pivPINPolicyOnce, nil
	case "never":
		return pivPINPolicyNever, nil
	}
	return 0, fmt.Errorf("[yubikey] pin_policy %q: use always, once or never", s)
}

func parseTouchPolicy(s string) (byte, error) {
	switch s {
	case "", "never":
		return pivTouchPolicyNever, nil
	case "always":
		return pivTouchPolicyAlways, nil
	case "cached":
		return pivTouchPolicyCached, nil
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
		err = k.token.do(func(card *pivCard) error {
			cert, err = card.certificate(k.slot)
			if errors.Is(err, errPIVNotFound) {
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
	verified, err := testSignature(k, pub)
	if err != nil {
		return err
	}
	if !verified {
		return fmt.Errorf("certificate %q does not belong to the key in PIV slot %s of YubiKey %d: a test signature does not verify with it", cert.Subject, k.slot, k.token.serial)
	}
	return nil
}

// testSignature signs a random digest with the key on a token and says
// whether the signature verifies with pub: a certificate or OpenPGP key
// for another key is never registered.
func testSignature(k crypto.Signer, pub *rsa.PublicKey) (bool, error) {
	var challenge [32]byte
	if _, err := rand.Read(challenge[:]); err != nil {
		return false, err
	}
	digest := sha256.Sum256(append([]byte("debusine-signing key check "), challenge[:]...))
	sig, err := k.Sign(rand.Reader, digest[:], crypto.SHA256)
	if err != nil {
		return false, fmt.Errorf("test signature: %w", err)
	}
	return rsa.VerifyPKCS1v15(pub, crypto.SHA256, digest[:], sig) == nil, nil
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
	ps, err := pivSlotOf(slot)
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
	if pinPolicy != pivPINPolicyNever {
		if pin, err = k.readPIN(); err != nil {
			return "", err
		}
	}
	err = k.token.do(func(card *pivCard) error {
		// Generating replaces the slot's key for good: never over a key.
		if _, err := card.metadata(slot); err == nil {
			return fmt.Errorf("YubiKey %d: PIV slot %s already holds a key; generating would destroy it (choose an empty slot, or delete that key with ykman piv keys delete)", serial, ps)
		}
		if _, err := card.certificate(ps); err == nil {
			return fmt.Errorf("YubiKey %d: PIV slot %s already holds a certificate; generating would replace its key (choose an empty slot)", serial, ps)
		}
		if pin != "" {
			if err := k.token.refuseRejectedPIN(pin, k.pinSource); err != nil {
				return err
			}
			if err := k.verifyPIN(card, pin); err != nil {
				return err
			}
		}
		if err := card.authenticate(mgmtKey); err != nil {
			return fmt.Errorf("YubiKey %d: %w", serial, err)
		}
		pub, err := card.generateRSA(ps, pinPolicy, touchPolicy)
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
	err = k.token.do(func(card *pivCard) error {
		err := card.authenticate(mgmtKey)
		if err == nil {
			err = card.putCertificate(ps, cert.Raw)
		}
		if err != nil {
			return fmt.Errorf("YubiKey %d: writing the certificate into PIV slot %s: %w", serial, ps, err)
		}
		if chain := attestationChain(card, ps); chain != nil {
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
func attestationChain(card *pivCard, slot pivSlot) []string {
	att, err := card.attest(slot)
	if err != nil {
		return nil
	}
	ca, err := card.certificate(0xf9)
	if err != nil {
		return nil
	}
	var chain []string
	for _, c := range []*x509.Certificate{att, ca} {
		chain = append(chain, string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: c.Raw})))
	}
	return chain
}
