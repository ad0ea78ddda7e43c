package main

// Witnesses: independent services that cosign the log's checkpoints once
// they have checked that each is consistent with the last one they saw
// (C2SP tlog-witness). A log that showed two different histories to two
// people would have to get both past the same witnesses, which refuse the
// second; a client that asks for a quorum of cosignatures (--witness KEY
// --quorum N) therefore sees the one history everybody sees.
//
// The log submits each checkpoint with `add-checkpoint` (POST to the
// witness's URL + "/add-checkpoint"; the body is "old N", the consistency
// proof from size N, one hash per line, a blank line, then the signed
// checkpoint). N is the size the witness last cosigned: the previous
// checkpoint's, or, when the witness answers 409 Conflict with its own, that
// one. Its answer is its cosignature line, kept beside the checkpoint: the
// checkpoint file holds the note with every cosignature line appended, so
// receipts carry them.
//
// Cosignatures are Ed25519 cosignature/v1 (C2SP tlog-cosignature): key type
// 0x04, and the signature covers "cosignature/v1\ntime T\n" and the
// checkpoint, with T, the witness's clock, in the signature's first 8
// bytes. golang.org/x/mod/sumdb/note knows only key type 0x01, so the
// verifier is here.

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"crypto/sha256"
	"encoding/base64"
	"encoding/binary"
	"errors"
	"flag"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"strings"
	"time"
	"unicode"

	"golang.org/x/mod/sumdb/note"
	"golang.org/x/mod/sumdb/tlog"
)

// WitnessConfig is one [[witness]] table.
type WitnessConfig struct {
	// URL is the witness's submission prefix; add-checkpoint is below it.
	URL string `toml:"url"`
	// Key is the witness's cosignature/v1 verifier key.
	Key string `toml:"key"`
}

const algCosignatureV1 = 0x04

// cosignatureVerifier is a note.Verifier of C2SP tlog-cosignature's
// Ed25519 cosignature/v1.
type cosignatureVerifier struct {
	name string
	hash uint32
	key  ed25519.PublicKey
}

// newCosignatureVerifier parses a witness's verifier key,
// "NAME+HASH+base64(0x04 || Ed25519 public key)".
func newCosignatureVerifier(vkey string) (*cosignatureVerifier, error) {
	name, rest, ok1 := strings.Cut(vkey, "+")
	hexHash, key64, ok2 := strings.Cut(rest, "+")
	h, err1 := strconv.ParseUint(hexHash, 16, 32)
	key, err2 := base64.StdEncoding.DecodeString(key64)
	if !ok1 || !ok2 || err1 != nil || err2 != nil || len(hexHash) != 8 || name == "" ||
		strings.IndexFunc(name, unicode.IsSpace) >= 0 || strings.Contains(name, "+") {
		return nil, fmt.Errorf("witness key %q: malformed (want NAME+HASH+KEY)", vkey)
	}
	if len(key) != 1+ed25519.PublicKeySize || key[0] != algCosignatureV1 {
		return nil, fmt.Errorf("witness key %q: not an Ed25519 cosignature/v1 key (type 0x04)", vkey)
	}
	if keyHash(name, key) != uint32(h) {
		return nil, fmt.Errorf("witness key %q: its hash does not match its name and key", vkey)
	}
	return &cosignatureVerifier{name: name, hash: uint32(h), key: ed25519.PublicKey(key[1:])}, nil
}

// keyHash is signed-note's key ID: the first four bytes of
// SHA-256(name || "\n" || key type || key).
func keyHash(name string, key []byte) uint32 {
	h := sha256.New()
	h.Write([]byte(name + "\n"))
	h.Write(key)
	return binary.BigEndian.Uint32(h.Sum(nil))
}

func (v *cosignatureVerifier) Name() string    { return v.name }
func (v *cosignatureVerifier) KeyHash() uint32 { return v.hash }

// Verify checks a cosignature: 8 bytes of timestamp, then the Ed25519
// signature of "cosignature/v1\ntime T\n" followed by the checkpoint.
func (v *cosignatureVerifier) Verify(msg, sig []byte) bool {
	if len(sig) != 8+ed25519.SignatureSize {
		return false
	}
	t := binary.BigEndian.Uint64(sig)
	if t > 1<<62 {
		return false
	}
	signed := fmt.Appendf(nil, "cosignature/v1\ntime %d\n%s", t, msg)
	return ed25519.Verify(v.key, signed, sig[8:])
}

// witnessPolicy is what a verifier asks of a checkpoint's cosignatures:
// Quorum of the Witnesses.
type witnessPolicy struct {
	keys      stringList
	quorum    int
	witnesses []*cosignatureVerifier
}

// addFlags registers --witness and --quorum on fs.
func (p *witnessPolicy) addFlags(fs *flag.FlagSet) {
	fs.Var(&p.keys, "witness", "a witness's cosignature verifier `key` (repeatable); with --quorum, the checkpoint must carry their cosignatures")
	fs.IntVar(&p.quorum, "quorum", 0, "how many of the --witness keys must have cosigned (default: all of them)")
}

// parse checks the flags once they are parsed.
func (p *witnessPolicy) parse() error {
	for _, k := range p.keys {
		v, err := newCosignatureVerifier(k)
		if err != nil {
			return usagef("--witness: %v", err)
		}
		p.witnesses = append(p.witnesses, v)
	}
	switch {
	case p.quorum < 0 || p.quorum > len(p.witnesses):
		return usagef("--quorum %d: between 1 and the number of --witness keys (%d)", p.quorum, len(p.witnesses))
	case p.quorum == 0:
		p.quorum = len(p.witnesses)
	}
	return nil
}

// check opens the signed checkpoint msg with the log's verifier key vkey
// (`audit key`) and counts the cosignatures of the policy's witnesses: at
// least quorum of them must verify.
func (p *witnessPolicy) check(msg []byte, vkey string) (AuditCheckpoint, error) {
	others := make([]note.Verifier, len(p.witnesses))
	for i, w := range p.witnesses {
		others[i] = w
	}
	verifiers, err := checkpointVerifiers(vkey, note.VerifierList(others...))
	if err != nil {
		return AuditCheckpoint{}, err
	}
	cp, n, err := parseCheckpoint(msg, verifiers)
	if err != nil {
		return cp, err
	}
	if got := p.cosigners(n); got < p.quorum {
		return cp, fmt.Errorf("checkpoint: cosigned by %d of the %d witnesses, the policy asks for %d", got, len(p.witnesses), p.quorum)
	}
	return cp, nil
}

// cosigners counts the policy's witnesses among the note's verified
// signatures, by name and key hash.
func (p *witnessPolicy) cosigners(n *note.Note) int {
	count := 0
	for _, w := range p.witnesses {
		for _, sig := range n.Sigs {
			if sig.Name == w.name && sig.Hash == w.hash {
				count++
				break
			}
		}
	}
	return count
}

// witnessClient speaks add-checkpoint. Each witness gets at most timeout:
// a witness that is down must not hold up the worker.
var witnessClient = &http.Client{Timeout: 15 * time.Second}

// errWitnessConflict is a witness's 409: it has cosigned another size.
type errWitnessConflict struct{ size int64 }

func (e *errWitnessConflict) Error() string {
	return fmt.Sprintf("the witness last cosigned size %d", e.size)
}

// addCheckpoint submits a signed checkpoint to a witness with the
// consistency proof from oldSize, and returns the cosignature line it
// answered with, checked against its key and the checkpoint's text.
func addCheckpoint(ctx context.Context, w WitnessConfig, v *cosignatureVerifier, oldSize int64, proof tlog.TreeProof, signed []byte) ([]byte, error) {
	var body bytes.Buffer
	fmt.Fprintf(&body, "old %d\n", oldSize)
	for _, h := range proof {
		fmt.Fprintf(&body, "%s\n", h)
	}
	body.WriteString("\n")
	body.Write(signed)
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, strings.TrimSuffix(w.URL, "/")+"/add-checkpoint", &body)
	if err != nil {
		return nil, err
	}
	resp, err := witnessClient.Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	answer, err := io.ReadAll(io.LimitReader(resp.Body, 64<<10))
	if err != nil {
		return nil, err
	}
	switch {
	case resp.StatusCode == http.StatusConflict:
		n, err := strconv.ParseInt(strings.TrimSpace(string(answer)), 10, 64)
		if err != nil || n < 0 {
			return nil, fmt.Errorf("409 Conflict without a tree size: %q", answer)
		}
		return nil, &errWitnessConflict{n}
	case resp.StatusCode != http.StatusOK:
		return nil, fmt.Errorf("%s: %s", resp.Status, strings.TrimSpace(string(answer)))
	}
	// The answer is note signature lines; the one of this witness must
	// verify over the checkpoint's text.
	text, _, ok := bytes.Cut(signed, []byte("\n\n"))
	if !ok {
		return nil, errors.New("the checkpoint is not a signed note")
	}
	text = append(text, '\n')
	for _, line := range strings.SplitAfter(string(answer), "\n") {
		if line == "" {
			continue
		}
		n, err := note.Open(append(append(bytes.Clone(text), '\n'), line...), note.VerifierList(v))
		if err == nil && len(n.Sigs) == 1 {
			return []byte(line), nil
		}
	}
	return nil, fmt.Errorf("its answer holds no valid cosignature of key %s+%08x: %q", v.name, v.hash, answer)
}

// cosign submits the signed checkpoint of tree to every configured witness,
// each from the size it last cosigned (prevSize, or what its 409 says),
// with consistency proofs read through hr. It returns the checkpoint with
// every cosignature line that came back appended, and one error per
// witness that did not cosign: the caller logs them; a witness that is
// down leaves the checkpoint signed by the log alone.
func cosign(ctx context.Context, witnesses []WitnessConfig, signed []byte, tree tlog.Tree, prevSize int64, hr tlog.HashReader) ([]byte, []error) {
	out := bytes.Clone(signed)
	var errs []error
	for _, w := range witnesses {
		line, err := cosignOne(ctx, w, signed, tree, prevSize, hr)
		if err != nil {
			errs = append(errs, fmt.Errorf("witness %s: %w", w.URL, err))
			continue
		}
		out = append(out, line...)
	}
	return out, errs
}

func cosignOne(ctx context.Context, w WitnessConfig, signed []byte, tree tlog.Tree, old int64, hr tlog.HashReader) ([]byte, error) {
	v, err := newCosignatureVerifier(w.Key)
	if err != nil {
		return nil, err
	}
	if old > tree.N {
		old = 0
	}
	for try := 0; ; try++ {
		var proof tlog.TreeProof
		if old > 0 && old < tree.N {
			if proof, err = tlog.ProveTree(tree.N, old, hr); err != nil {
				return nil, fmt.Errorf("consistency proof from %d: %w", old, err)
			}
		}
		line, err := addCheckpoint(ctx, w, v, old, proof, signed)
		var conflict *errWitnessConflict
		if !errors.As(err, &conflict) || try > 0 {
			return line, err
		}
		if conflict.size > tree.N {
			return nil, fmt.Errorf("%w, more than this log's %d: it has seen another log under this origin, or this one was cut", err, tree.N)
		}
		old = conflict.size
	}
}

// witnessedCheckpoint signs a checkpoint of the log as it is now and has
// the configured witnesses cosign it, each from the size of prev (the
// previous checkpoint file, nil for none) or the one it says it has. It
// returns the checkpoint with the cosignatures that came back, and the
// witnesses' errors, which must not stop the caller.
func (s *Store) witnessedCheckpoint(prev []byte) ([]byte, []error, error) {
	signed, err := s.Checkpoint()
	if err != nil || len(s.witnesses) == 0 {
		return signed, nil, err
	}
	text, _, _ := bytes.Cut(signed, []byte("\n\n"))
	tree, err := checkpointTree(string(text) + "\n")
	if err != nil {
		return nil, nil, err
	}
	var prevSize int64
	if prevText, _, ok := bytes.Cut(prev, []byte("\n\n")); ok {
		// Unverified: it only tells each witness where to start, and a
		// witness checks the proof against what it cosigned itself.
		if t, err := checkpointTree(string(prevText) + "\n"); err == nil {
			prevSize = t.N
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	out, errs := cosign(ctx, s.witnesses, signed, tree, prevSize, treeHashReader(s.db))
	return out, errs, nil
}

// checkpointTree reads the tree of a C2SP checkpoint's text: origin line,
// size, base64 root hash, then any extension lines.
func checkpointTree(text string) (tlog.Tree, error) {
	lines := strings.SplitN(text, "\n", 4)
	if len(lines) < 4 || lines[0] == "" {
		return tlog.Tree{}, errors.New("malformed checkpoint")
	}
	n, err := strconv.ParseInt(lines[1], 10, 64)
	if err != nil || n < 0 || strconv.FormatInt(n, 10) != lines[1] {
		return tlog.Tree{}, fmt.Errorf("malformed checkpoint size %q", lines[1])
	}
	h, err := base64.StdEncoding.DecodeString(lines[2])
	if err != nil || len(h) != tlog.HashSize {
		return tlog.Tree{}, fmt.Errorf("malformed checkpoint root hash %q", lines[2])
	}
	t := tlog.Tree{N: n}
	copy(t.Hash[:], h)
	return t, nil
}
