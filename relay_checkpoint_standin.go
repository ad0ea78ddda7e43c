package main

// A stand-in for the audit log's signed checkpoint, until the audit work
// provides Store.Checkpoint: a note naming the log's row count and head
// hash, signed with an Ed25519 key derived from the first service key.

import (
	"crypto/ed25519"
	"crypto/sha256"
	"errors"
	"fmt"

	"golang.org/x/mod/sumdb/note"
)

// Checkpoint returns a signed note of the audit log's size and head.
func (s *Store) Checkpoint() ([]byte, error) {
	v, err := s.VerifyAudit()
	if err != nil {
		return nil, err
	}
	if len(s.serviceKeys) == 0 {
		return nil, errors.New("audit checkpoint: no service key to sign it with")
	}
	seed := sha256.Sum256(append([]byte("debusine-signing audit checkpoint\x00"), s.serviceKeys[0].private[:]...))
	priv := ed25519.NewKeyFromSeed(seed[:])
	vkey, err := note.NewEd25519VerifierKey("debusine-signing-audit", priv.Public().(ed25519.PublicKey))
	if err != nil {
		return nil, err
	}
	v2, err := note.NewVerifier(vkey)
	if err != nil {
		return nil, err
	}
	signer := &standinSigner{name: v2.Name(), hash: v2.KeyHash(), key: priv}
	text := fmt.Sprintf("debusine-signing audit log\n%d\n%s\n", v.Rows, v.Head)
	return note.Sign(&note.Note{Text: text}, signer)
}

type standinSigner struct {
	name string
	hash uint32
	key  ed25519.PrivateKey
}

func (s *standinSigner) Name() string                    { return s.name }
func (s *standinSigner) KeyHash() uint32                 { return s.hash }
func (s *standinSigner) Sign(msg []byte) ([]byte, error) { return ed25519.Sign(s.key, msg), nil }
