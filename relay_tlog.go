package main

// The relay and the audit tree. The offline host's result carries its
// audit checkpoint; since bundle and result format 2 it also carries
// consistency proofs, so that the connected relay checks that the
// offline log only grew since the last checkpoint it saw, and an offline
// log cut, restored from a backup or kept twice cannot fork unnoticed
// (docs/relay.md, "The audit log across the gap").
//
// A bundle names the newest checkpoint the relay holds (audit_checkpoint).
// The offline host refuses, before signing anything, a bundle whose
// checkpoint its log does not extend, and proves consistency from that
// checkpoint and from the one of its own previous result; the relay, at
// completion, requires a proof from its newest checkpoint, and from the
// bundle's, that verifies.

import (
	"errors"
	"fmt"
	"io/fs"
	"path/filepath"

	"golang.org/x/mod/sumdb/tlog"
)

const (
	// newestCheckpointName, in the relay's state_dir, is the checkpoint
	// covering the most rows of the results completed.
	newestCheckpointName = "newest.checkpoint"
	// lastResultCheckpointName, in the offline host's state_dir, is the
	// checkpoint of the last result it wrote.
	lastResultCheckpointName = "last-result.checkpoint"
)

// auditProof is a consistency proof, in a result, from the offline log's
// tree of From rows to the tree the result's checkpoint signs.
type auditProof struct {
	From  int64          `json:"from"`
	Proof tlog.TreeProof `json:"proof"`
}

// readOptional reads a checkpoint file that may not exist yet (nil then).
func readOptional(path string) ([]byte, error) {
	data, err := readInput(path, "checkpoint", maxKeyFileSize)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	return data, err
}

// relayBases are the checkpoints the offline host proves consistency
// from: the relay's newest, which the bundle carries, and that of its own
// last result. Each must be of this log's tree (the bundle's is refused
// otherwise, before anything is signed); first-form checkpoints, without a
// tree, are skipped.
func (s *Store) relayBases(m *bundleManifest, stateDir string) ([]AuditCheckpoint, error) {
	last, err := readOptional(filepath.Join(stateDir, lastResultCheckpointName))
	if err != nil {
		return nil, err
	}
	verifiers, vkey, err := s.storeVerifiers()
	if err != nil {
		return nil, err
	}
	tree, err := s.treeHead(s.db)
	if err != nil {
		return nil, err
	}
	var bases []AuditCheckpoint
	for _, b := range []struct {
		what string
		msg  []byte
	}{{"the relay's newest audit checkpoint (in the bundle)", []byte(m.AuditCheckpoint)}, {"the audit checkpoint of this host's last result", last}} {
		if len(b.msg) == 0 {
			continue
		}
		cp, err := openCheckpoint(b.msg, verifiers, vkey)
		if err != nil {
			return nil, fmt.Errorf("%s: %w", b.what, err)
		}
		if cp.Legacy {
			continue
		}
		if cp.Size > tree.N {
			return nil, fmt.Errorf("%s covers %d rows, this audit log has %d: it was cut or restored from a backup", b.what, cp.Size, tree.N)
		}
		root, err := tlog.TreeHash(cp.Size, treeHashReader(s.db))
		if err != nil {
			return nil, err
		}
		if root != cp.Root {
			return nil, fmt.Errorf("%s is not of this audit log's tree (rewritten, or another log under the same key)", b.what)
		}
		bases = append(bases, cp)
	}
	return bases, nil
}

// relayProofs proves the tree of checkpoint msg (this log's) consistent
// with each base, once per size.
func (s *Store) relayProofs(msg []byte, bases []AuditCheckpoint) ([]auditProof, error) {
	vkey, err := s.CheckpointVerifierKey()
	if err != nil {
		return nil, err
	}
	cp, err := OpenCheckpoint(msg, vkey)
	if err != nil {
		return nil, err
	}
	proofs := []auditProof{}
	seen := map[int64]bool{}
	for _, b := range bases {
		if seen[b.Size] {
			continue
		}
		seen[b.Size] = true
		p, err := tlog.ProveTree(cp.Size, b.Size, treeHashReader(s.db))
		if err != nil {
			return nil, err
		}
		proofs = append(proofs, auditProof{From: b.Size, Proof: p})
	}
	return proofs, nil
}

// checkConsistency checks, on the relay, that the result's checkpoint cp
// extends the relay's newest checkpoint and the one the bundle carried,
// by the result's proofs. A newest checkpoint larger than cp (results
// completed out of the order they were signed in) is checked through
// the bundle's alone.
func (c *relayComplete) checkConsistency(p string, cp AuditCheckpoint, proofs []auditProof) error {
	vkey := c.cfg.Relay.AuditPublicKey
	newest, err := readOptional(filepath.Join(c.cfg.Relay.StateDir, newestCheckpointName))
	if err != nil {
		return err
	}
	for _, b := range []struct {
		what string
		msg  []byte
		// later: the checkpoint may be of a result signed after this one
		later bool
	}{{"the checkpoint the bundle carried", []byte(c.bundle.AuditCheckpoint), false}, {"the relay's newest checkpoint", newest, true}} {
		if len(b.msg) == 0 {
			continue
		}
		base, err := OpenCheckpoint(b.msg, vkey)
		if err != nil {
			return fmt.Errorf("%s: %s: %w", p, b.what, err)
		}
		if base.Legacy || (b.later && base.Size > cp.Size) {
			continue
		}
		if base.Size > cp.Size {
			return fmt.Errorf("%s: the offline audit log has %d rows, %s covers %d: cut or restored from a backup: refused", p, cp.Size, b.what, base.Size)
		}
		i := -1
		for j := range proofs {
			if proofs[j].From == base.Size {
				i = j
			}
		}
		if i < 0 {
			return fmt.Errorf("%s: no consistency proof from %s (%d rows) to the offline audit log (complete results in the order they were signed): refused", p, b.what, base.Size)
		}
		if err := tlog.CheckTree(proofs[i].Proof, cp.Size, cp.Root, base.Size, base.Root); err != nil {
			return fmt.Errorf("%s: the offline audit log forked: its tree of %d rows does not extend %s (%d rows): refused", p, cp.Size, b.what, base.Size)
		}
	}
	return nil
}
