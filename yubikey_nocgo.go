//go:build !cgo

package main

// A CGO_ENABLED=0 build is static and has no libpcsclite, so it cannot talk
// to a YubiKey: every YubiKey operation fails with this one line, and keys on
// a token are never advertised.

import (
	"crypto"
	"errors"
)

var errNoPCSC = errors.New("this build has no PC/SC (YubiKey) support: rebuild with CGO_ENABLED=1")

func tokenSigner(cfg YubiKeyConfig, uri string) (crypto.Signer, error) { return nil, errNoPCSC }

func tokenKeyAvailable(cfg YubiKeyConfig, uri string) error { return errNoPCSC }

func registerYubiKeyKey(st *Store, serial uint32, slot byte, description string, certPEM []byte) (string, error) {
	return "", errNoPCSC
}

func generateYubiKeyKey(st *Store, serial uint32, slot byte, description string, workRequest *int64) (string, error) {
	return "", errNoPCSC
}
