package main

import (
	"bytes"
	"crypto"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"path"
	"path/filepath"
	"strings"
	"time"

	"github.com/ProtonMail/go-crypto/openpgp"
	"github.com/ProtonMail/go-crypto/openpgp/armor"
	"github.com/ProtonMail/go-crypto/openpgp/clearsign"
	"github.com/ProtonMail/go-crypto/openpgp/packet"
)

// OpenPGP signing modes accepted by signOpenPGPStream. "debsign" is handled by
// debsignUpload because it signs several files of an upload at once.
const (
	openpgpModeDetached = "detached"
	openpgpModeClear    = "clear"
	openpgpModeDebsign  = "debsign"
)

// openpgpConfig fixes the digest to SHA-512 for every signature: Debusine
// configures GnuPG to prefer SHA-512 (an Ed25519 signature needs a digest of
// at least 256 bits, and SHA-512 is what Ed25519 itself uses), and one fixed
// digest for all key types keeps outputs predictable.
func openpgpConfig(now time.Time) *packet.Config {
	return &packet.Config{
		DefaultHash: crypto.SHA512,
		Algorithm:   packet.PubKeyAlgoEdDSA,
		Curve:       packet.Curve25519,
		Time:        func() time.Time { return now },
		// go-crypto otherwise adds a random "salt@notations.openpgpjs.org"
		// notation to every signature; GnuPG adds none and needs none.
		NonDeterministicSignaturesViaNotation: new(bool),
	}
}

// newOpenPGPEntity makes the key Debusine makes with GnuPG: a v4 Ed25519
// (EdDSA legacy, which every GnuPG 2.2+ reads) primary key flagged sign and
// certify, no expiry, no subkeys, and one user ID that is the description
// verbatim. The description is used as is rather than split into name,
// comment and e-mail, so "Archive key <ftp@example.org>" works like in gpg.
func newOpenPGPEntity(description string, now time.Time) (*openpgp.Entity, error) {
	if err := checkOpenPGPDescription(description); err != nil {
		return nil, err
	}
	// NewEntity generates the Ed25519 key pair; its placeholder identity and
	// encryption subkey are replaced below.
	gen, err := openpgp.NewEntity("placeholder", "", "", openpgpConfig(now))
	if err != nil {
		return nil, fmt.Errorf("generating Ed25519 key: %w", err)
	}
	return selfCertifiedEntity(description, gen.PrivateKey, now)
}

func checkOpenPGPDescription(description string) error {
	if description == "" || strings.ContainsAny(description, "\x00\r\n") {
		return fmt.Errorf("OpenPGP key description %q: must be one non-empty line", description)
	}
	return nil
}

// selfCertifiedEntity makes the entity of a primary key with one user ID,
// the description, certified by the key itself (which may be on a token):
// flagged sign and certify, no expiry, no subkeys.
func selfCertifiedEntity(description string, priv *packet.PrivateKey, now time.Time) (*openpgp.Entity, error) {
	cfg := openpgpConfig(now)
	isPrimary := true
	var noExpiry uint32
	self := &packet.Signature{
		Version:              4,
		SigType:              packet.SigTypePositiveCert,
		PubKeyAlgo:           priv.PubKeyAlgo,
		Hash:                 crypto.SHA512,
		CreationTime:         now,
		IssuerKeyId:          &priv.KeyId,
		IssuerKeyVersion:     4,
		IssuerFingerprint:    priv.Fingerprint,
		KeyLifetimeSecs:      &noExpiry,
		FlagsValid:           true,
		FlagSign:             true,
		FlagCertify:          true,
		IsPrimaryId:          &isPrimary,
		PreferredHash:        []uint8{10, 9, 8}, // SHA-512, SHA-384, SHA-256
		PreferredSymmetric:   []uint8{uint8(packet.CipherAES256), uint8(packet.CipherAES128)},
		PreferredCompression: []uint8{uint8(packet.CompressionNone)},
		SEIPDv1:              true,
	}
	if err := self.SignUserId(description, &priv.PublicKey, priv, cfg); err != nil {
		return nil, fmt.Errorf("self-signing user ID %q: %w", description, err)
	}
	uid := &packet.UserId{Id: description}
	return &openpgp.Entity{
		PrimaryKey: &priv.PublicKey,
		PrivateKey: priv,
		Identities: map[string]*openpgp.Identity{description: {
			Name:          description,
			UserId:        uid,
			SelfSignature: self,
			Signatures:    []*packet.Signature{self},
		}},
	}, nil
}

// openpgpFingerprint is the key's v4 fingerprint in uppercase hex, the form
// the keys table and the server use.
func openpgpFingerprint(e *openpgp.Entity) string {
	return fmt.Sprintf("%X", e.PrimaryKey.Fingerprint)
}

// armoredOpenPGPSecret is what gets sealed in the database: the transferable
// secret key with its own signatures, unencrypted (the sealed box protects it).
func armoredOpenPGPSecret(e *openpgp.Entity) ([]byte, error) {
	var buf bytes.Buffer
	w, err := armor.Encode(&buf, openpgp.PrivateKeyType, nil)
	if err != nil {
		return nil, err
	}
	if err := e.SerializePrivateWithoutSigning(w, nil); err != nil {
		return nil, fmt.Errorf("serialising secret key %s: %w", openpgpFingerprint(e), err)
	}
	if err := w.Close(); err != nil {
		return nil, err
	}
	return endLine(buf.Bytes()), nil
}

// armoredOpenPGPPublic is the equivalent of gpg --export-options
// export-minimal: the public keys, user IDs and only the key's own
// signatures (certifications by other keys are dropped).
func armoredOpenPGPPublic(e *openpgp.Entity) ([]byte, error) {
	minimal := *e
	minimal.Identities = make(map[string]*openpgp.Identity, len(e.Identities))
	for name, id := range e.Identities {
		own := *id
		own.Signatures = nil
		for _, sig := range id.Signatures {
			if sig.CheckKeyIdOrFingerprint(e.PrimaryKey) {
				own.Signatures = append(own.Signatures, sig)
			}
		}
		minimal.Identities[name] = &own
	}
	minimal.Signatures = nil
	for _, sig := range e.Signatures {
		if sig.CheckKeyIdOrFingerprint(e.PrimaryKey) {
			minimal.Signatures = append(minimal.Signatures, sig)
		}
	}
	var buf bytes.Buffer
	w, err := armor.Encode(&buf, openpgp.PublicKeyType, nil)
	if err != nil {
		return nil, err
	}
	if err := minimal.Serialize(w); err != nil {
		return nil, fmt.Errorf("serialising public key %s: %w", openpgpFingerprint(e), err)
	}
	if err := w.Close(); err != nil {
		return nil, err
	}
	return endLine(buf.Bytes()), nil
}

// parseOpenPGPSecretKey reads one armoured transferable secret key (as
// written by gpg --armor --export-secret-keys or by this service), decrypts
// it with passphrase when it is protected, and checks it can sign now.
func parseOpenPGPSecretKey(armoured, passphrase []byte, now time.Time) (*openpgp.Entity, error) {
	block, err := armor.Decode(bytes.NewReader(armoured))
	if err != nil {
		return nil, fmt.Errorf("malformed OpenPGP secret key: not ASCII armour: %v", err)
	}
	if block.Type != openpgp.PrivateKeyType {
		return nil, fmt.Errorf("armour block is %q, want %q (export it with gpg --armor --export-secret-keys)", block.Type, openpgp.PrivateKeyType)
	}
	entities, err := openpgp.ReadKeyRing(block.Body)
	if err != nil {
		return nil, fmt.Errorf("malformed OpenPGP secret key: %v", err)
	}
	if len(entities) != 1 {
		return nil, fmt.Errorf("armour holds %d keys, want exactly one", len(entities))
	}
	e := entities[0]
	if e.PrivateKey == nil {
		return nil, errors.New("armour holds a public key only, not a secret key")
	}
	fpr := openpgpFingerprint(e)
	if e.PrimaryKey.Version != 4 {
		return nil, fmt.Errorf("key %s: version %d keys are not supported, only v4", fpr, e.PrimaryKey.Version)
	}
	if openpgpEncrypted(e) {
		if len(passphrase) == 0 {
			return nil, fmt.Errorf("key %s is protected by a passphrase: give it with --passphrase-file", fpr)
		}
		if err := e.DecryptPrivateKeys(passphrase); err != nil {
			// A wrong passphrase shows up as a bad checksum of the
			// decrypted key material, so it cannot be told apart from a
			// damaged key.
			return nil, fmt.Errorf("key %s: wrong passphrase (or damaged key): %v", fpr, err)
		}
	}
	if err := checkOpenPGPSigner(e, now); err != nil {
		return nil, err
	}
	return e, nil
}

// openpgpEncrypted reports whether any secret key material still needs a
// passphrase. GnuPG stubs (gnu-dummy, secret part held elsewhere) do not.
func openpgpEncrypted(e *openpgp.Entity) bool {
	if e.PrivateKey != nil && !e.PrivateKey.Dummy() && e.PrivateKey.Encrypted {
		return true
	}
	for _, sub := range e.Subkeys {
		if sub.PrivateKey != nil && !sub.PrivateKey.Dummy() && sub.PrivateKey.Encrypted {
			return true
		}
	}
	return false
}

// checkOpenPGPSigner refuses a key that cannot make a signature a verifier
// would accept now, and says why: revoked (with the stated reason), expired,
// or without a key flagged for signing whose secret part is present.
func checkOpenPGPSigner(e *openpgp.Entity, now time.Time) error {
	fpr := openpgpFingerprint(e)
	if e.Revoked(now) {
		// The reason of the first revocation signature is the one reported.
		reason := "no reason given"
		rev := e.Revocations[0]
		if rev.RevocationReason != nil {
			reason = revocationReasonName(*rev.RevocationReason)
		}
		if rev.RevocationReasonText != "" {
			reason += ": " + rev.RevocationReasonText
		}
		return fmt.Errorf("key %s is revoked (%s)", fpr, reason)
	}
	self, id := e.PrimarySelfSignature()
	if self == nil {
		return fmt.Errorf("key %s has no valid self-signature", fpr)
	}
	if e.PrimaryKey.KeyExpired(self, now) {
		expiry := e.PrimaryKey.CreationTime.Add(time.Duration(*self.KeyLifetimeSecs) * time.Second)
		return fmt.Errorf("key %s expired on %s", fpr, expiry.UTC().Format(time.RFC3339))
	}
	if self.SigExpired(now) {
		return fmt.Errorf("key %s: its self-signature expired", fpr)
	}
	if id != nil && id.Revoked(now) {
		return fmt.Errorf("key %s: its user ID %q is revoked", fpr, id.Name)
	}
	k, ok := e.SigningKey(now)
	if !ok {
		return fmt.Errorf("key %s has no valid key with signing capability (neither the primary key nor a subkey is flagged for signing, or they are expired or revoked)", fpr)
	}
	if k.PrivateKey == nil || k.PrivateKey.Dummy() {
		return fmt.Errorf("key %s: the secret part of signing key %X is not in this export", fpr, k.PublicKey.Fingerprint)
	}
	if k.PrivateKey.Encrypted {
		return fmt.Errorf("key %s: signing key %X is still passphrase-protected", fpr, k.PublicKey.Fingerprint)
	}
	return nil
}

func revocationReasonName(r packet.ReasonForRevocation) string {
	switch r {
	case packet.NoReason:
		return "no reason specified"
	case packet.KeySuperseded:
		return "key is superseded"
	case packet.KeyCompromised:
		return "key has been compromised"
	case packet.KeyRetired:
		return "key is no longer used"
	}
	return fmt.Sprintf("reason code %d", r)
}

// signOpenPGP signs data with every entity into one output, the way
// gpg -u A -u B does: mode "detached" gives one armoured block holding a
// binary-document signature per key (Release.gpg); mode "clear" gives one
// cleartext-signed message with a signature per key (InRelease, .dsc).
// Every signature uses SHA-512.
func signOpenPGP(entities []*openpgp.Entity, data []byte, mode string, now time.Time) ([]byte, error) {
	var out bytes.Buffer
	if _, err := signOpenPGPStream(entities, bytes.NewReader(data), &out, mode, now); err != nil {
		return nil, err
	}
	return out.Bytes(), nil
}

// endLine makes armoured output end with a line break, as gpg writes it;
// go-crypto's armour stops right after the final dashes.
func endLine(b []byte) []byte {
	if !bytes.HasSuffix(b, []byte("\n")) {
		b = append(b, '\n')
	}
	return b
}

// stripClearSignature returns the text of a cleartext-signed message (ending
// in a line break), or data unchanged when it is not signed. The old
// signature is not checked: re-signing replaces it, as debsign --re-sign does.
func stripClearSignature(name string, data []byte) ([]byte, error) {
	trimmed := bytes.TrimLeft(data, " \t\r\n")
	if !bytes.HasPrefix(trimmed, []byte("-----BEGIN PGP SIGNED MESSAGE-----")) {
		return data, nil
	}
	block, _ := clearsign.Decode(data)
	if block == nil {
		return nil, fmt.Errorf("%s: starts a PGP signed message but its signature block is malformed", name)
	}
	return append(block.Plaintext, '\n'), nil
}

// generateOpenPGPKey makes a new key, stores it sealed with the first
// service key and records the "generate" audit row (workRequest is nil for
// the command line).
func generateOpenPGPKey(st *Store, description string, workRequest *int64) (string, error) {
	e, err := newOpenPGPEntity(description, time.Now())
	if err != nil {
		return "", err
	}
	return storeOpenPGPKey(st, e, description, "generate", workRequest)
}

// importOpenPGPKey stores a secret key exported by GnuPG (gpg --armor
// --export-secret-keys) or by Debusine, decrypted with passphrase when it is
// protected, and records the "register" audit row. Without a description
// the key's primary user ID is used.
func importOpenPGPKey(st *Store, armouredSecret, passphrase []byte, description string) (string, error) {
	e, err := parseOpenPGPSecretKey(armouredSecret, passphrase, time.Now())
	if err != nil {
		return "", err
	}
	if description == "" {
		if id := e.PrimaryIdentity(); id != nil {
			description = id.Name
		}
	}
	return storeOpenPGPKey(st, e, description, "register", nil)
}

func storeOpenPGPKey(st *Store, e *openpgp.Entity, description, event string, workRequest *int64) (string, error) {
	fpr := openpgpFingerprint(e)
	secret, err := armoredOpenPGPSecret(e)
	if err != nil {
		return "", err
	}
	defer clear(secret)
	sealed, err := st.Seal(secret)
	if err != nil {
		return "", err
	}
	public, err := armoredOpenPGPPublic(e)
	if err != nil {
		return "", err
	}
	k := &Key{Purpose: purposeOpenPGP, Fingerprint: fpr, PrivateKey: sealed, PublicKey: public, Description: description}
	if err := st.AddKey(k, event, workRequest); err != nil {
		return "", err
	}
	return fpr, nil
}

// openpgpEntity unseals a stored key in memory and checks it can sign now:
// a key that has expired, or was revoked since it was stored, is refused
// with the reason.
func openpgpEntity(st *Store, k *Key) (*openpgp.Entity, error) {
	if k.Purpose != purposeOpenPGP {
		return nil, fmt.Errorf("key %s is not an OpenPGP key", k)
	}
	if storage, err := k.Storage(); err != nil {
		return nil, err
	} else if storage == storagePKCS11 {
		return openpgpTokenEntity(st, k)
	}
	secret, err := st.Unseal(k)
	if err != nil {
		return nil, err
	}
	defer clear(secret)
	e, err := parseOpenPGPSecretKey(secret, nil, time.Now())
	if err != nil {
		return nil, fmt.Errorf("stored key %s: %w", k, err)
	}
	if got := openpgpFingerprint(e); got != k.Fingerprint {
		return nil, fmt.Errorf("stored key %s holds the secret key of %s", k, got)
	}
	return e, nil
}

// openpgpEntities unseals every key, checking each can sign now.
func openpgpEntities(st *Store, keys []*Key) ([]*openpgp.Entity, error) {
	entities := make([]*openpgp.Entity, len(keys))
	for i, k := range keys {
		e, err := openpgpEntity(st, k)
		if err != nil {
			return nil, err
		}
		entities[i] = e
	}
	return entities, nil
}

// signOpenPGPAudited signs what r yields with every key into w (mode
// detached or clear), reading r once, and records one "sign" audit row per
// key with the SHA-256 of the bytes it read, which are the bytes signed,
// all in one transaction. What was written to w may be released only when
// it returns nil: every row is stored by then.
func signOpenPGPAudited(st *Store, keys []*Key, entities []*openpgp.Entity, r io.Reader, w io.Writer, mode string, ac auditContext) error {
	sum, err := signOpenPGPStream(entities, r, w, mode, time.Now())
	if err != nil {
		return err
	}
	entries := make([]AuditEntry, len(keys))
	for i, k := range keys {
		entries[i] = ac.signEntry(k, hex.EncodeToString(sum[:]))
	}
	if err := st.auditAll(entries); err != nil {
		return fmt.Errorf("auditing the signatures (nothing was released): %w", err)
	}
	return nil
}

// signOpenPGPRootFile signs the file in of a task's work directory with
// every key into out (mode detached or clear), both names under root. The
// output goes to a temporary file renamed to out once every audit row is
// stored.
func signOpenPGPRootFile(st *Store, keys []*Key, root *os.Root, in, out, mode string, ac auditContext) error {
	entities, err := openpgpEntities(st, keys)
	if err != nil {
		return err
	}
	f, _, err := openRootInput(root, in)
	if err != nil {
		return err
	}
	defer f.Close()
	if dir := path.Dir(out); dir != "." {
		if err := root.MkdirAll(dir, 0o700); err != nil {
			return err
		}
	}
	tmp := out + ".tmp"
	o, err := root.OpenFile(tmp, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o600)
	if err != nil {
		return err
	}
	defer root.Remove(tmp)
	if err := signOpenPGPAudited(st, keys, entities, f, o, mode, ac); err != nil {
		o.Close()
		return err
	}
	if err := o.Close(); err != nil {
		return err
	}
	return root.Rename(tmp, out)
}

// debsignUpload re-signs the upload described by changesPath into outDir
// (which must not exist or be empty), as debsign --re-sign does, and
// returns the path of the signed .changes. One "sign" audit row is written
// per signed file (.dsc, .buildinfo, .changes), data_sha256 being the file
// as given; nothing is written to outDir unless all of them succeeded.
func debsignUpload(st *Store, k *Key, changesPath, outDir string, ac auditContext) (string, error) {
	if err := debsignCheckOutputDir(outDir); err != nil {
		return "", err
	}
	e, err := openpgpEntity(st, k)
	if err != nil {
		return "", err
	}
	u, err := readUpload(changesPath)
	if err != nil {
		return "", err
	}
	res, err := debsignPrepare(u, e, time.Now())
	if err != nil {
		return "", err
	}
	for _, name := range res.order {
		if err := st.Audit(ac.signEntry(k, res.inputSHA256[name])); err != nil {
			return "", fmt.Errorf("auditing signature of %s (nothing was written): %w", name, err)
		}
	}
	return writeDebsign(res, u.dir, outDir)
}

// signOpenPGPFiles is the sign command for OpenPGP keys. Modes detached and
// clear write FILE.asc (the name gpg --armor gives both) or --output;
// debsign writes the re-signed upload to --output or to
// <dir of FILE>/<FILE without .changes>.signed/.
func signOpenPGPFiles(st *Store, fprs []string, mode, output string, files []string) error {
	if mode == "" {
		mode = openpgpModeClear
	}
	if len(fprs) == 0 {
		return usagef("sign --purpose openpgp needs --key")
	}
	if len(files) == 0 {
		return usagef("sign needs at least one FILE")
	}
	if output != "" && len(files) != 1 {
		return usagef("--output needs exactly one FILE")
	}
	switch mode {
	case openpgpModeDetached, openpgpModeClear:
	case openpgpModeDebsign:
		if len(fprs) != 1 {
			return usagef("--mode debsign signs with exactly one --key")
		}
	default:
		return usagef("--mode for openpgp must be %s, %s or %s, not %q", openpgpModeDetached, openpgpModeClear, openpgpModeDebsign, mode)
	}
	seen := map[string]bool{}
	var keys []*Key
	var entities []*openpgp.Entity
	for _, fpr := range fprs {
		if seen[strings.ToUpper(fpr)] {
			return usagef("--key %s given twice", fpr)
		}
		seen[strings.ToUpper(fpr)] = true
		k, err := st.Key(purposeOpenPGP, fpr)
		if err != nil {
			return err
		}
		e, err := openpgpEntity(st, k)
		if err != nil {
			return err
		}
		keys = append(keys, k)
		entities = append(entities, e)
	}
	if mode != openpgpModeDebsign {
		return signOpenPGPBatch(st, keys, entities, files, output, mode)
	}
	for _, file := range files {
		outDir := output
		if outDir == "" {
			outDir = strings.TrimSuffix(file, ".changes") + ".signed"
		}
		if _, err := debsignUpload(st, keys[0], file, outDir, auditContext{}); err != nil {
			return err
		}
	}
	return nil
}

// signOpenPGPBatch signs every file (mode detached or clear) into FILE.asc
// or output, each through a locked temporary file beside it (tempfiles.go).
// The audit rows of all of them are stored in one transaction, so one
// synchronous write however many files, and only then are the outputs
// renamed into place: all of them or none.
func signOpenPGPBatch(st *Store, keys []*Key, entities []*openpgp.Entity, files []string, output, mode string) error {
	outs := make([]string, len(files))
	for i, file := range files {
		outs[i] = output
		if outs[i] == "" {
			outs[i] = file + ".asc"
		}
		if filepath.Clean(outs[i]) == filepath.Clean(file) {
			return usagef("--output %s is the input file", outs[i])
		}
	}
	var tmps []*os.File
	defer func() {
		for _, tmp := range tmps {
			os.Remove(tmp.Name())
			tmp.Close()
		}
	}()
	var entries []AuditEntry
	for i, file := range files {
		tmp, sum, err := signOpenPGPFile(entities, file, outs[i], mode)
		if tmp != nil {
			tmps = append(tmps, tmp)
		}
		if err != nil {
			return err
		}
		for _, k := range keys {
			entries = append(entries, auditContext{}.signEntry(k, hex.EncodeToString(sum[:])))
		}
	}
	if err := st.auditAll(entries); err != nil {
		return fmt.Errorf("auditing the signatures (nothing was released): %w", err)
	}
	pending := tmps
	tmps = nil // each is now renamed, or removed here
	for i, tmp := range pending {
		if err := commitOutputTemp(tmp, outs[i]); err != nil {
			for _, t := range pending[i:] {
				os.Remove(t.Name())
				t.Close()
			}
			return fmt.Errorf("writing %s: %w", outs[i], err)
		}
	}
	return nil
}

// signOpenPGPFile signs the file in into a temporary file beside out, which
// it returns (for the caller to commit or remove) with the SHA-256 of the
// bytes signed. The input is opened, and refused if not a regular file,
// before the output is made, so a bad input is named as such even where out
// cannot be written.
func signOpenPGPFile(entities []*openpgp.Entity, in, out, mode string) (*os.File, [32]byte, error) {
	f, _, err := openInput(in)
	if err != nil {
		return nil, [32]byte{}, err
	}
	defer f.Close()
	tmp, err := createOutputTemp(out)
	if err != nil {
		return nil, [32]byte{}, fmt.Errorf("writing %s: %w", out, err)
	}
	sum, err := signOpenPGPStream(entities, f, tmp, mode, time.Now())
	if err != nil {
		return tmp, sum, fmt.Errorf("%s: %w", in, err)
	}
	return tmp, sum, nil
}
