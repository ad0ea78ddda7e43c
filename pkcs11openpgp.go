package main

// OpenPGP keys whose secret half is on a token: the keys table holds the
// pkcs11-static URI and the armoured public key (with the self-signature
// the token made), and every signature is made on the token through
// go-crypto's crypto.Signer support, which covers RSA keys.

import (
	"bytes"
	"crypto/rsa"
	"errors"
	"fmt"
	"time"

	"github.com/ProtonMail/go-crypto/openpgp"
	"github.com/ProtonMail/go-crypto/openpgp/packet"
)

// tokenOpenPGPPrivate is the private half of an OpenPGP primary key on a
// token: go-crypto signs RSA with any crypto.Signer.
func tokenOpenPGPPrivate(pub *packet.PublicKey, signer *p11Key) *packet.PrivateKey {
	return &packet.PrivateKey{PublicKey: *pub, PrivateKey: signer}
}

// generateP11OpenPGPKey generates an RSA key on the token the URI names
// and records it as an OpenPGP key whose self-signature the token made.
func generateP11OpenPGPKey(st *Store, uri, description string, bits int, workRequest *int64) (string, error) {
	if err := checkOpenPGPDescription(description); err != nil {
		return "", err
	}
	k, err := generateP11KeyPair(st, uri, bits)
	if err != nil {
		return "", err
	}
	now := time.Now()
	e, err := selfCertifiedEntity(description, tokenOpenPGPPrivate(packet.NewRSAPublicKey(now, k.pub), k), now)
	if err != nil {
		return "", fmt.Errorf("the key is on %s with %s, but: %w", tokenName(k.token), k.uri.keyName(), err)
	}
	return storeTokenOpenPGPKey(st, e, uri, description, "generate", workRequest)
}

// registerP11OpenPGPKey records an OpenPGP key whose primary key is the
// RSA key the URI names: the armoured public key must hold that key, and a
// test signature on the token must verify with it.
func registerP11OpenPGPKey(st *Store, uri string, armoured []byte, description string) (string, error) {
	yubikey, providers, u, err := routeKeyURI(st.pkcs11, uri)
	if err != nil {
		return "", err
	}
	if yubikey {
		return "", errors.New("OpenPGP keys on a YubiKey's PIV applet are not supported: use a PKCS#11 URI")
	}
	e, err := parseOpenPGPPublicKey(armoured)
	if err != nil {
		return "", err
	}
	k, err := p11Signer(providers, u)
	if err != nil {
		return "", err
	}
	pub, ok := e.PrimaryKey.PublicKey.(*rsa.PublicKey)
	if !ok {
		return "", fmt.Errorf("OpenPGP key %s: its primary key is not RSA", openpgpFingerprint(e))
	}
	if err := checkP11KeyMatches(k, pub, "OpenPGP key "+openpgpFingerprint(e)); err != nil {
		return "", err
	}
	e.PrivateKey = tokenOpenPGPPrivate(e.PrimaryKey, k)
	if err := checkOpenPGPSigner(e, time.Now()); err != nil {
		return "", err
	}
	if description == "" {
		if id := e.PrimaryIdentity(); id != nil {
			description = id.Name
		}
	}
	return storeTokenOpenPGPKey(st, e, uri, description, "register", nil)
}

// parseOpenPGPPublicKey reads one armoured v4 public key.
func parseOpenPGPPublicKey(armoured []byte) (*openpgp.Entity, error) {
	entities, err := openpgp.ReadArmoredKeyRing(bytes.NewReader(armoured))
	if err != nil {
		return nil, fmt.Errorf("OpenPGP public key: %v (export it with gpg --armor --export)", err)
	}
	if len(entities) != 1 {
		return nil, fmt.Errorf("OpenPGP public key: %d keys, want exactly one", len(entities))
	}
	e := entities[0]
	if e.PrimaryKey.Version != 4 {
		return nil, fmt.Errorf("key %s: version %d keys are not supported, only v4", openpgpFingerprint(e), e.PrimaryKey.Version)
	}
	return e, nil
}

func storeTokenOpenPGPKey(st *Store, e *openpgp.Entity, uri, description, event string, workRequest *int64) (string, error) {
	public, err := armoredOpenPGPPublic(e)
	if err != nil {
		return "", err
	}
	private, err := pkcs11KeyJSON(uri)
	if err != nil {
		return "", err
	}
	fpr := openpgpFingerprint(e)
	k := &Key{Purpose: purposeOpenPGP, Fingerprint: fpr, PrivateKey: private, PublicKey: public, Description: description}
	if err := st.AddKey(k, event, workRequest); err != nil {
		return "", err
	}
	return fpr, nil
}

// openpgpTokenEntity is openpgpEntity for a key on a token: the stored
// public key, signing on the token, whose key must be the stored one.
func openpgpTokenEntity(st *Store, k *Key) (*openpgp.Entity, error) {
	uri, err := k.PKCS11URI()
	if err != nil {
		return nil, err
	}
	e, err := parseOpenPGPPublicKey(k.PublicKey)
	if err != nil {
		return nil, fmt.Errorf("stored key %s: %w", k, err)
	}
	if got := openpgpFingerprint(e); got != k.Fingerprint {
		return nil, fmt.Errorf("stored key %s holds the public key of %s", k, got)
	}
	yubikey, providers, u, err := routeKeyURI(st.pkcs11, uri)
	if err != nil {
		return nil, fmt.Errorf("key %s: %w", k, err)
	}
	if yubikey {
		return nil, fmt.Errorf("key %s: OpenPGP keys on a YubiKey's PIV applet are not supported", k)
	}
	signer, err := p11Signer(providers, u)
	if err != nil {
		return nil, fmt.Errorf("key %s: %w", k, err)
	}
	if pub, ok := e.PrimaryKey.PublicKey.(*rsa.PublicKey); !ok || !pub.Equal(signer.pub) {
		return nil, fmt.Errorf("key %s: the key on the token does not match the stored public key", k)
	}
	e.PrivateKey = tokenOpenPGPPrivate(e.PrimaryKey, signer)
	if err := checkOpenPGPSigner(e, time.Now()); err != nil {
		return nil, fmt.Errorf("stored key %s: %w", k, err)
	}
	return e, nil
}
