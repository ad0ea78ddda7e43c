// Placeholder until yubikey.go lands on main: whoever merges yubikey.go
// deletes this file and keeps yubikey.go's tokenSigner (same signature).

package main

import (
	"crypto"
	"errors"
)

func tokenSigner(cfg YubiKeyConfig, uri string) (crypto.Signer, error) {
	return nil, errors.New("keys on a PKCS#11 token are not supported by this build")
}
