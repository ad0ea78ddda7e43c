package main

// Keys held on any PKCS#11 token, reached through p11-kit's RPC protocol
// (p11rpc.go): the vendor's module runs in a p11-kit process, never in this
// one. This file keeps the sessions, finds the key a URI names (matching
// the URI as pkcs11uri.go reads it, as libp11 does), signs with it,
// registers keys and generates them on the token.
//
// Each provider has one connection for the whole process, and one session
// per token on it, logged in once: PKCS#11 login state belongs to the
// application, which for p11-kit's server is the connection. A signature
// first checks its key handle (one C_GetAttributeValue); when that finds the
// connection or the session gone (a restarted server, a token pulled out
// and back), everything is reopened and the key found again. A failure in
// the signature itself is reported, never retried: the next signature
// reopens.

import (
	"bytes"
	"crypto"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"math/big"
	"strings"
	"sync"
	"time"
)

// keySigner returns the signer of the key a pkcs11-static URI names, on a
// YubiKey or on a PKCS#11 token.
func keySigner(st *Store, uri string) (crypto.Signer, error) {
	yubikey, providers, u, err := routeKeyURI(st.pkcs11, uri)
	if err != nil {
		return nil, err
	}
	if yubikey {
		return tokenSigner(st.yubikey, uri)
	}
	return p11Signer(providers, u)
}

// keyAvailable says why the key a URI names cannot be used on this host, or
// nil; on a PKCS#11 token that means finding it (logged in, where private
// keys are only visible then), on the session that will sign.
func keyAvailable(st *Store, uri string) error {
	yubikey, providers, u, err := routeKeyURI(st.pkcs11, uri)
	if err != nil {
		return err
	}
	if yubikey {
		return tokenKeyAvailable(st.yubikey, uri)
	}
	_, err = p11Signer(providers, u)
	return err
}

// p11Pool holds one connection per provider address for the process.
var p11Pool = struct {
	sync.Mutex
	byAddress map[string]*p11Conn
}{byAddress: map[string]*p11Conn{}}

func p11ConnFor(address string) *p11Conn {
	p11Pool.Lock()
	defer p11Pool.Unlock()
	c := p11Pool.byAddress[address]
	if c == nil {
		c = &p11Conn{address: address, rejected: map[string]rejectedPIN{}}
		p11Pool.byAddress[address] = c
	}
	return c
}

// p11Conn is a provider's connection and its sessions. All fields are
// guarded by mu.
type p11Conn struct {
	address string
	mu      sync.Mutex
	client  *p11Client
	// gen counts connections: handles from another one are stale.
	gen      int
	sessions map[uint64]uint64 // slot → session
	loggedIn map[uint64]bool   // slot → logged in
	// rejected remembers, by token, the PIN the token last refused: each
	// presentation of a wrong PIN burns one of its retries, so the same PIN
	// is not presented again until it changes. It outlives connections.
	rejected map[string]rejectedPIN
}

type rejectedPIN struct {
	sum    [32]byte
	reason string
}

// reset drops the connection; the next use dials again.
func (p *p11Conn) reset() {
	if p.client != nil {
		p.client.Close()
		p.client = nil
	}
	p.sessions, p.loggedIn = nil, nil
}

func (p *p11Conn) dial() error {
	if p.client != nil {
		return nil
	}
	c, err := dialP11(p.address)
	if err != nil {
		return fmt.Errorf("PKCS#11 provider %s: %w", p.address, err)
	}
	p.client, p.gen = c, p.gen+1
	p.sessions, p.loggedIn = map[uint64]uint64{}, map[uint64]bool{}
	return nil
}

// p11Lost says whether err means the connection, the session or the
// handles are gone, so that reopening and finding the key again may help.
func p11Lost(err error) bool {
	if errors.Is(err, errP11Closed) {
		return true
	}
	rv, ok := p11RV(err)
	if !ok {
		return false
	}
	switch rv {
	case ckrSessionHandleInvalid, ckrSessionClosed, ckrDeviceRemoved, ckrTokenNotPresent,
		ckrCryptokiNotInitialized, ckrObjectHandleInvalid, ckrKeyHandleInvalid, ckrUserNotLoggedIn:
		return true
	}
	return false
}

// p11Key is a crypto.Signer whose private key is on a PKCS#11 token.
type p11Key struct {
	conn *p11Conn
	uri  *p11URI
	// token identifies the token found first, so that reopening finds the
	// same one: label, manufacturer, model and serial.
	token p11TokenInfo
	pub   *rsa.PublicKey
	// tokenOnly: the key is about to be generated; ready opens the
	// session and logs in, and looks for no key.
	tokenOnly bool
	// alwaysAuth: the key has CKA_ALWAYS_AUTHENTICATE (OpenSC says so of
	// a PIV card's slot 9c), so each signature logs in again for itself.
	alwaysAuth bool
	// Valid while gen is conn.gen.
	gen    int
	slot   uint64
	handle uint64
}

// p11Signer finds the key u names at one of the providers.
func p11Signer(providers []PKCS11Provider, u *p11URI) (*p11Key, error) {
	k, err := p11FindToken(providers, u)
	if err != nil {
		return nil, err
	}
	if err := k.conn.use(k, nil); err != nil {
		return nil, err
	}
	return k, nil
}

// p11FindToken finds the one token u names at the providers, as a key not
// looked for yet.
func p11FindToken(providers []PKCS11Provider, u *p11URI) (*p11Key, error) {
	var found []*p11Key
	var seen []string
	for _, p := range providers {
		keys, saw, err := p11ConnFor(p.Address).search(u)
		if err != nil {
			return nil, err
		}
		found, seen = append(found, keys...), append(seen, saw...)
	}
	switch {
	case len(found) == 0 && len(seen) == 0:
		return nil, errors.New("PKCS#11: no token present at any provider")
	case len(found) == 0:
		return nil, fmt.Errorf("PKCS#11: no token matches the URI (found: %s)", strings.Join(seen, "; "))
	case len(found) > 1:
		return nil, fmt.Errorf("PKCS#11: %d tokens match the URI (%s): add token=, serial= or slot-id= to choose one", len(found), strings.Join(seen, "; "))
	}
	return found[0], nil
}

// search finds the tokens the URI names at this provider, as keys not
// looked for yet, and describes every token seen. A connection found lost
// is reopened once.
func (p *p11Conn) search(u *p11URI) (keys []*p11Key, seen []string, err error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	for attempt := 0; ; attempt++ {
		if err = p.dial(); err != nil {
			return nil, nil, err
		}
		var slots []uint64
		var tokens []p11TokenInfo
		slots, tokens, seen, err = u.matchTokens(p.client)
		if err == nil {
			for i := range slots {
				keys = append(keys, &p11Key{conn: p, uri: u, token: tokens[i], slot: slots[i], gen: p.gen})
			}
			return keys, seen, nil
		}
		if !p11Lost(err) {
			return nil, nil, err
		}
		p.reset()
		if attempt == 1 {
			return nil, nil, err
		}
	}
}

// tokenName is how messages name a token.
func tokenName(t p11TokenInfo) string {
	return fmt.Sprintf("token %q (%s %s, serial %s)", t.Label, t.Manufacturer, t.Model, t.Serial)
}

func (t p11TokenInfo) identity() string {
	return t.Label + "\x00" + t.Manufacturer + "\x00" + t.Model + "\x00" + t.Serial
}

// use makes the key ready on its connection (dialling, opening the session,
// logging in and finding the key as needed) and runs fn with it. When
// readying finds the connection or the session gone, all is reopened once.
// fn's own failure is returned as is; if it lost the connection, the next
// use reopens it.
func (p *p11Conn) use(k *p11Key, fn func(c *p11Client, session uint64) error) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	err := p.ready(k)
	if err != nil && p11Lost(err) {
		p.reset()
		err = p.ready(k)
	}
	if err != nil {
		if p11Lost(err) {
			p.reset()
		}
		return err
	}
	if fn == nil {
		return nil
	}
	err = fn(p.client, p.sessions[k.slot])
	if rv, _ := p11RV(err); rv == ckrUserNotLoggedIn {
		// The token forgot the login while the module still holds it (a
		// PIV card does, for every slot, after a signature with a key of
		// PIN policy "always"): a new connection logs in again, once.
		p.reset()
		if err = p.ready(k); err == nil {
			err = fn(p.client, p.sessions[k.slot])
		}
	}
	if p11Lost(err) {
		p.reset()
		return fmt.Errorf("%s: %w (the connection is reopened for the next signature)", tokenName(k.token), err)
	}
	return err
}

// open dials and opens the token's session, not logging in. Called with p
// locked.
func (p *p11Conn) open(k *p11Key) (uint64, error) {
	if err := p.dial(); err != nil {
		return 0, err
	}
	c := p.client
	if k.gen != p.gen {
		// A new connection: the slot may have another id; the token is
		// the same one found first.
		slots, tokens, _, err := k.uri.matchTokens(c)
		if err != nil {
			return 0, err
		}
		found := false
		for i, t := range tokens {
			if t.identity() == k.token.identity() {
				k.slot, found = slots[i], true
			}
		}
		if !found {
			return 0, fmt.Errorf("PKCS#11 provider %s: %s is no longer present", p.address, tokenName(k.token))
		}
		k.gen, k.handle = p.gen, 0
	}
	session, ok := p.sessions[k.slot]
	if !ok {
		var err error
		if session, err = c.OpenSession(k.slot, true); err != nil {
			return 0, err
		}
		p.sessions[k.slot] = session
	}
	return session, nil
}

// ready is use's first half. Called with p locked.
func (p *p11Conn) ready(k *p11Key) error {
	session, err := p.open(k)
	if err != nil {
		return err
	}
	c := p.client
	if !p.loggedIn[k.slot] {
		if err := p.login(k, session); err != nil {
			return err
		}
	}
	if k.tokenOnly {
		return nil
	}
	if k.handle != 0 {
		// The key handle is checked on every use: this is what finds a
		// server restarted or a session closed since.
		attrs, err := c.Attributes(session, k.handle, ckaClass, ckaID)
		if err != nil {
			return err
		}
		class, _ := p11AttrUlong(attrs[0])
		if attrs[0].Missing || class != ckoPrivateKey || (k.uri.id != nil && (attrs[1].Missing || !bytes.Equal(attrs[1].Value, k.uri.id))) {
			return &p11Error{"C_GetAttributeValue", ckrObjectHandleInvalid}
		}
		return nil
	}
	return p.findKey(k, session)
}

// login logs the token in when it wants it, with the PIN from the URI.
// Called with p locked.
func (p *p11Conn) login(k *p11Key, session uint64) error {
	c := p.client
	ti, err := c.TokenInfo(k.slot)
	if err != nil {
		return err
	}
	if ti.Flags&ckfLoginRequired == 0 {
		p.loggedIn[k.slot] = true
		return nil
	}
	name := tokenName(k.token)
	if ti.Flags&ckfUserPINLocked != 0 {
		return fmt.Errorf("%s: the user PIN is locked (unlock it with the SO PIN)", name)
	}
	pin, source, err := k.uri.pin()
	if err != nil {
		return fmt.Errorf("%s: %w", name, err)
	}
	defer clear(pin)
	sum := sha256.Sum256(pin)
	if r, ok := p.rejected[k.token.identity()]; ok && r.sum == sum {
		return fmt.Errorf("%s: not presenting the PIN from %s again: %s", name, source, r.reason)
	}
	err = c.Login(session, ckuUser, pin)
	rv, _ := p11RV(err)
	switch {
	case err == nil || rv == ckrUserAlreadyLoggedIn:
		delete(p.rejected, k.token.identity())
		p.loggedIn[k.slot] = true
		return nil
	case pinRefused(rv):
		reason := fmt.Sprintf("the token refused it (%s)", p11RVName(rv))
		if ti, err := c.TokenInfo(k.slot); err == nil {
			switch {
			case ti.Flags&ckfUserPINLocked != 0:
				reason += " and the PIN is now locked"
			case ti.Flags&ckfUserPINFinalTry != 0:
				reason += "; one try is left before the PIN locks"
			case ti.Flags&ckfUserPINCountLow != 0:
				reason += "; few tries are left before the PIN locks"
			}
		}
		p.rejected[k.token.identity()] = rejectedPIN{sum, reason}
		return fmt.Errorf("%s: wrong PIN in %s: %s; it will not be tried again until it changes", name, source, reason)
	}
	return fmt.Errorf("%s: logging in: %w", name, err)
}

// pin returns the PIN the URI gives and where it comes from, for messages:
// pin-value, or the first line of the pin-source file (without its line
// end, as libp11 0.4.13 and later read it).
func (u *p11URI) pin() ([]byte, string, error) {
	if u.hasPIN {
		return bytes.Clone(u.pinValue), "the URI's pin-value", nil
	}
	source, ok := u.get("pin-source")
	if !ok {
		return nil, "", errors.New("the token wants a PIN and the key's URI has neither pin-source nor pin-value")
	}
	data, err := readSecretFile(source, "PIN")
	if err != nil {
		return nil, "", err
	}
	defer clear(data)
	line, _, _ := bytes.Cut(data, []byte("\n"))
	return bytes.Clone(bytes.TrimRight(line, "\r")), "pin-source " + source, nil
}

// findKey finds the private key the URI names on the logged-in session,
// comparing CKA_ID and CKA_LABEL here rather than in the token's search:
// libp11 compares them itself, and YubiHSM 2's module cuts a CKA_ID in a
// search template to two bytes. Called with p locked.
func (p *p11Conn) findKey(k *p11Key, session uint64) error {
	c := p.client
	objs, err := c.FindObjects(session, []p11Attr{{Type: ckaClass, Value: p11Ulong(ckoPrivateKey)}}, 0)
	if err != nil {
		return err
	}
	var match []uint64
	var keyTypes []uint64
	var always []bool
	for _, obj := range objs {
		attrs, err := c.Attributes(session, obj, ckaID, ckaLabel, ckaKeyType, ckaAlwaysAuthenticate)
		if err != nil {
			return err
		}
		if !k.uri.namesObject(attrs[0], attrs[1]) {
			continue
		}
		kt, _ := p11AttrUlong(attrs[2])
		match, keyTypes = append(match, obj), append(keyTypes, kt)
		always = append(always, !attrs[3].Missing && len(attrs[3].Value) == 1 && attrs[3].Value[0] != 0)
	}
	name := tokenName(k.token)
	switch {
	case len(match) == 0:
		return fmt.Errorf("%s: no private key with %s (%d private keys on the token)", name, k.uri.keyName(), len(objs))
	case len(match) > 1:
		return fmt.Errorf("%s: %d private keys match %s: not choosing one; give id= and object= to tell them apart", name, len(match), k.uri.keyName())
	case keyTypes[0] != ckkRSA:
		return fmt.Errorf("%s: the key with %s is not an RSA key (CKK %#x); UEFI and OpenPGP keys on a token are RSA here", name, k.uri.keyName(), keyTypes[0])
	}
	k.handle, k.alwaysAuth = match[0], always[0]
	if k.pub == nil {
		pub, err := p.rsaPublic(session, match[0])
		if err != nil {
			return fmt.Errorf("%s: the public key of the key with %s: %w", name, k.uri.keyName(), err)
		}
		k.pub = pub
	}
	return nil
}

// namesObject says whether an object's CKA_ID and CKA_LABEL are those the
// URI's id= and object= name.
func (u *p11URI) namesObject(id, label p11Attr) bool {
	if u.id != nil && (id.Missing || !bytes.Equal(id.Value, u.id)) {
		return false
	}
	want, ok := u.get("object")
	return !ok || !label.Missing && string(label.Value) == want
}

// rsaPublic reads the RSA public key of a private key: from the private
// key object where it carries the modulus, else from the public key
// object with the same CKA_ID.
func (p *p11Conn) rsaPublic(session, priv uint64) (*rsa.PublicKey, error) {
	c := p.client
	attrs, err := c.Attributes(session, priv, ckaModulus, ckaPublicExponent, ckaID)
	if err != nil {
		return nil, err
	}
	if attrs[0].Missing || attrs[1].Missing {
		if attrs[2].Missing {
			return nil, errors.New("the private key has no modulus and no CKA_ID to find its public key by")
		}
		pubs, err := c.FindObjects(session, []p11Attr{{Type: ckaClass, Value: p11Ulong(ckoPublicKey)}, {Type: ckaID, Value: attrs[2].Value}}, 2)
		if err != nil {
			return nil, err
		}
		if len(pubs) != 1 {
			return nil, fmt.Errorf("the private key has no modulus and %d public keys have its CKA_ID", len(pubs))
		}
		if attrs, err = c.Attributes(session, pubs[0], ckaModulus, ckaPublicExponent); err != nil {
			return nil, err
		}
		if attrs[0].Missing || attrs[1].Missing {
			return nil, errors.New("the public key has no modulus")
		}
	}
	return p11RSAPublic(attrs[0], attrs[1])
}

// p11RSAPublic is the RSA public key of a modulus and public exponent.
func p11RSAPublic(n, e p11Attr) (*rsa.PublicKey, error) {
	exp := new(big.Int).SetBytes(e.Value)
	if !exp.IsInt64() || exp.Int64() < 3 || exp.Int64() > 1<<31-1 {
		return nil, errors.New("unusable public exponent")
	}
	return &rsa.PublicKey{N: new(big.Int).SetBytes(n.Value), E: int(exp.Int64())}, nil
}

// p11CheckKey finds, without signing, the key the URI names and checks it
// is want; it says where it found it. The public key or certificate
// object is looked for first, without logging in; only when the token
// shows neither is the private key found as a signature would find it,
// logged in with the URI's PIN (which a token that refused it is not
// given again).
func p11CheckKey(providers []PKCS11Provider, u *p11URI, want *rsa.PublicKey) (string, error) {
	k, err := p11FindToken(providers, u)
	if err != nil {
		return "", err
	}
	name := tokenName(k.token)
	pubs, err := k.conn.visiblePublic(k)
	if err != nil {
		return "", fmt.Errorf("%s: %w", name, err)
	}
	for _, pub := range pubs {
		if pub.Equal(want) {
			return fmt.Sprintf("its public key is on %s (found without logging in)", name), nil
		}
	}
	if len(pubs) > 0 {
		return "", fmt.Errorf("%s: the public key with %s is not the stored key's", name, u.keyName())
	}
	if err := k.conn.use(k, nil); err != nil {
		return "", err
	}
	if !k.pub.Equal(want) {
		return "", fmt.Errorf("%s: the private key with %s is not the stored key's", name, u.keyName())
	}
	return "its private key is on " + name, nil
}

// visiblePublic reads the RSA public keys of the public key and
// certificate objects with the URI's id= and object= that the session
// shows, logged in or not.
func (p *p11Conn) visiblePublic(k *p11Key) ([]*rsa.PublicKey, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	session, err := p.open(k)
	if err != nil {
		if p11Lost(err) {
			p.reset()
		}
		return nil, err
	}
	c := p.client
	var pubs []*rsa.PublicKey
	for _, class := range []uint64{ckoPublicKey, ckoCertificate} {
		objs, err := c.FindObjects(session, []p11Attr{{Type: ckaClass, Value: p11Ulong(class)}}, 0)
		if err != nil {
			return nil, err
		}
		for _, obj := range objs {
			types := []uint64{ckaID, ckaLabel, ckaModulus, ckaPublicExponent}
			if class == ckoCertificate {
				types = []uint64{ckaID, ckaLabel, ckaValue}
			}
			attrs, err := c.Attributes(session, obj, types...)
			if err != nil {
				return nil, err
			}
			if !k.uri.namesObject(attrs[0], attrs[1]) {
				continue
			}
			var pub *rsa.PublicKey
			if class == ckoPublicKey && !attrs[2].Missing && !attrs[3].Missing {
				pub, _ = p11RSAPublic(attrs[2], attrs[3])
			} else if class == ckoCertificate && !attrs[2].Missing {
				if cert, err := x509.ParseCertificate(attrs[2].Value); err == nil {
					pub, _ = cert.PublicKey.(*rsa.PublicKey)
				}
			}
			if pub != nil {
				pubs = append(pubs, pub)
			}
		}
	}
	return pubs, nil
}

func (k *p11Key) Public() crypto.PublicKey { return k.pub }

// Sign makes a PKCS #1 v1.5 signature of digest on the token with
// CKM_RSA_PKCS, which every RSA token offers: the DigestInfo is made here
// (piv.go's pkcs1Prefixes).
func (k *p11Key) Sign(_ io.Reader, digest []byte, opts crypto.SignerOpts) ([]byte, error) {
	if _, ok := opts.(*rsa.PSSOptions); ok {
		return nil, errors.New("PKCS#11 keys make PKCS #1 v1.5 signatures only here")
	}
	prefix, ok := pkcs1Prefixes[opts.HashFunc()]
	if !ok || len(digest) != opts.HashFunc().Size() {
		return nil, fmt.Errorf("PKCS#11: cannot sign a %v digest of %d bytes", opts.HashFunc(), len(digest))
	}
	var sig []byte
	err := k.conn.use(k, func(c *p11Client, session uint64) error {
		var err error
		sig, err = k.conn.sign(k, session, append(bytes.Clone(prefix), digest...))
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("signing with the key with %s on %s: %w", k.uri.keyName(), tokenName(k.token), err)
	}
	return sig, nil
}

// sign is Sign's call to the token, with p locked. A key with
// CKA_ALWAYS_AUTHENTICATE gets the PIN again for each signature (C_Login
// as CKU_CONTEXT_SPECIFIC between C_SignInit and C_Sign), under login's
// rule: a PIN the token refused is not presented again until it changes.
func (p *p11Conn) sign(k *p11Key, session uint64, data []byte) ([]byte, error) {
	mech := p11Mechanism{Type: ckmRSAPKCS}
	if !k.alwaysAuth {
		return p.client.Sign(session, mech, k.handle, data, nil)
	}
	pin, source, err := k.uri.pin()
	if err != nil {
		return nil, err
	}
	defer clear(pin)
	sum := sha256.Sum256(pin)
	if r, ok := p.rejected[k.token.identity()]; ok && r.sum == sum {
		return nil, fmt.Errorf("not presenting the PIN from %s again: %s", source, r.reason)
	}
	sig, err := p.client.Sign(session, mech, k.handle, data, pin)
	var pe *p11Error
	if errors.As(err, &pe) && pe.Call == p11CallLogin.name && pinRefused(pe.RV) {
		reason := fmt.Sprintf("the token refused it (%s)", p11RVName(pe.RV))
		p.rejected[k.token.identity()] = rejectedPIN{sum, reason}
		return nil, fmt.Errorf("wrong PIN in %s for the key's own login (CKA_ALWAYS_AUTHENTICATE): %s; it will not be tried again until it changes", source, reason)
	}
	return sig, err
}

// pinRefused says whether rv is the token refusing a PIN.
func pinRefused(rv uint64) bool {
	return rv == ckrPINIncorrect || rv == ckrPINInvalid || rv == ckrPINLenRange || rv == ckrPINLocked || rv == ckrPINExpired
}

// checkP11KeyMatches signs a random digest on the token and verifies it
// with pub, as register-yubikey-key does: a certificate or OpenPGP key
// for another key is never registered.
func checkP11KeyMatches(k *p11Key, pub crypto.PublicKey, what string) error {
	rsaPub, ok := pub.(*rsa.PublicKey)
	if !ok {
		return fmt.Errorf("%s: its key is %T, and keys on a PKCS#11 token are RSA here", what, pub)
	}
	verified, err := testSignature(k, rsaPub)
	if err != nil {
		return err
	}
	if !verified {
		return fmt.Errorf("%s does not belong to the key with %s on %s: a test signature does not verify with it", what, k.uri.keyName(), tokenName(k.token))
	}
	return nil
}

// registerP11UEFIKey records a UEFI key on a PKCS#11 token by its URI and
// certificate, after a test signature that verifies with the certificate.
func registerP11UEFIKey(st *Store, providers []PKCS11Provider, u *p11URI, uri string, cert *x509.Certificate, description string) (string, error) {
	k, err := p11Signer(providers, u)
	if err != nil {
		return "", err
	}
	if err := checkP11KeyMatches(k, cert.PublicKey, fmt.Sprintf("certificate %q", cert.Subject)); err != nil {
		return "", err
	}
	private, err := pkcs11KeyJSON(uri)
	if err != nil {
		return "", err
	}
	return addUEFIKey(st, cert, private, description, "register", nil, nil)
}

// generateP11KeyPair generates an RSA key pair on the token the URI names,
// with the URI's id and object label: sensitive, never extractable, a
// token object. The URI must name no key yet.
func generateP11KeyPair(st *Store, uri string, bits int) (*p11Key, error) {
	yubikey, providers, u, err := routeKeyURI(st.pkcs11, uri)
	if err != nil {
		return nil, err
	}
	if yubikey {
		return nil, errors.New("this URI names a YubiKey PIV slot: generate with --yubikey SERIAL --slot SLOT")
	}
	label, hasLabel := u.get("object")
	if u.id == nil {
		return nil, errors.New("generating on a PKCS#11 token needs an id= in the URI: it is the new key's CKA_ID, and what the URI finds it by")
	}
	if u.typ != "" && u.typ != "private" {
		return nil, fmt.Errorf("PKCS#11 URI: type=%s: the URI names the private key", u.typ)
	}
	if _, err := p11Signer(providers, u); err == nil {
		return nil, fmt.Errorf("PKCS#11: a private key with %s is already on the token: not generating over it", u.keyName())
	} else if !strings.Contains(err.Error(), "no private key with") {
		return nil, err
	}
	// p11Signer failed after finding the token; find it again to generate.
	k, err := p11TokenOnly(providers, u)
	if err != nil {
		return nil, err
	}
	err = k.conn.use(k, func(c *p11Client, session uint64) error {
		mi, err := c.MechanismInfo(k.slot, ckmRSAPKCSKeyPairGen)
		if err != nil {
			return fmt.Errorf("%s: CKM_RSA_PKCS_KEY_PAIR_GEN: %w", tokenName(k.token), err)
		}
		if mi.Flags&ckfGenerateKeyPair == 0 || uint64(bits) < mi.MinKeySize || uint64(bits) > mi.MaxKeySize {
			return fmt.Errorf("%s: generates RSA keys of %d to %d bits, not %d", tokenName(k.token), mi.MinKeySize, mi.MaxKeySize, bits)
		}
		common := []p11Attr{{Type: ckaToken, Value: p11Bool(true)}, {Type: ckaID, Value: u.id}}
		if hasLabel {
			common = append(common, p11Attr{Type: ckaLabel, Value: []byte(label)})
		}
		pub := append([]p11Attr{
			{Type: ckaVerify, Value: p11Bool(true)},
			{Type: ckaModulusBits, Value: p11Ulong(uint64(bits))},
			{Type: ckaPublicExponent, Value: []byte{1, 0, 1}},
		}, common...)
		priv := append([]p11Attr{
			{Type: ckaPrivate, Value: p11Bool(true)},
			{Type: ckaSensitive, Value: p11Bool(true)},
			{Type: ckaExtractable, Value: p11Bool(false)},
			{Type: ckaSign, Value: p11Bool(true)},
		}, common...)
		_, privObj, err := c.GenerateKeyPair(session, p11Mechanism{Type: ckmRSAPKCSKeyPairGen}, pub, priv)
		if err != nil {
			return fmt.Errorf("%s: generating an RSA-%d key: %w", tokenName(k.token), bits, err)
		}
		k.handle = privObj
		k.pub, err = k.conn.rsaPublic(session, privObj)
		return err
	})
	if err != nil {
		return nil, err
	}
	// The URI must find the new key, and only it, as Debusine will.
	found, err := p11Signer(providers, u)
	if err != nil {
		return nil, fmt.Errorf("the key was generated but the URI does not find it: %w", err)
	}
	if !found.pub.Equal(k.pub) {
		return nil, errors.New("the key was generated but the URI finds another key")
	}
	return found, nil
}

// p11TokenOnly finds the one token the URI names, ready for a session,
// without looking for the key.
func p11TokenOnly(providers []PKCS11Provider, u *p11URI) (*p11Key, error) {
	k, err := p11FindToken(providers, u)
	if err != nil {
		return nil, err
	}
	k.tokenOnly = true
	return k, nil
}

// generateP11UEFIKey generates a UEFI key on a PKCS#11 token; the token
// signs its certificate, made as for a key generated here.
func generateP11UEFIKey(st *Store, uri, description string, bits int, workRequest *int64) (string, error) {
	if err := checkUEFIDescription(description); err != nil {
		return "", err
	}
	k, err := generateP11KeyPair(st, uri, bits)
	if err != nil {
		return "", err
	}
	der, err := uefiSelfSignedCertificate(description, k.pub, k, time.Now())
	if err != nil {
		return "", fmt.Errorf("the key is on %s with %s, but self-signing its certificate failed: %w", tokenName(k.token), k.uri.keyName(), err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		return "", err
	}
	private, err := pkcs11KeyJSON(uri)
	if err != nil {
		return "", err
	}
	fpr, err := addUEFIKey(st, cert, private, description, "generate", map[string]any{"description": description, "pkcs11_token": tokenName(k.token)}, workRequest)
	if err != nil {
		return "", fmt.Errorf("the key is on %s with %s but could not be recorded: %w", tokenName(k.token), k.uri.keyName(), err)
	}
	return fpr, nil
}
