package main

// The relay's two file formats (docs/relay.md): a bundle carries work
// requests and their inputs from the connected relay to the offline host, a
// result carries the outputs back. Each is one uncompressed tar file whose
// first member, MANIFEST, is a signed note (golang.org/x/mod/sumdb/note):
// indented JSON listing every other member with its size and SHA-256,
// followed by the Ed25519 signature of the host that wrote it. A reader
// checks the signature before it believes anything, and refuses a member
// that is missing, extra, renamed, truncated or changed.

import (
	"archive/tar"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"golang.org/x/mod/sumdb/note"
)

const (
	// Format 2 added the audit tree's checkpoint and proofs
	// (relay_tlog.go); the offline host still reads bundles of format 1.
	bundleFormat   = "debusine-signing relay bundle 2"
	bundleFormatV1 = "debusine-signing relay bundle 1"
	resultFormat   = "debusine-signing relay result 2"
	manifestName   = "MANIFEST"
	// checkpointName is the result member holding the offline host's
	// signed audit checkpoint.
	checkpointName = "CHECKPOINT"
	// maxManifest bounds the manifest read into memory.
	maxManifest = 16 << 20
)

// archiveFile is one member of a bundle or result, besides MANIFEST.
type archiveFile struct {
	Path   string `json:"path"`
	Size   int64  `json:"size"`
	SHA256 string `json:"sha256"`
}

// bundleManifest is the MANIFEST of a bundle.
type bundleManifest struct {
	Format       string              `json:"format"`
	ID           string              `json:"id"`
	CreatedAt    string              `json:"created_at"`
	Server       string              `json:"server"`
	WorkRequests []bundleWorkRequest `json:"work_requests"`
	Files        []archiveFile       `json:"files"`
	// AuditCheckpoint is the newest offline audit checkpoint the relay
	// holds, "" for none.
	AuditCheckpoint string `json:"audit_checkpoint,omitempty"`
}

// bundleWorkRequest is a work request as the server gave it, the keys it
// needs (purpose:fingerprint) and its checked inputs. Its files are under
// wr-<id>/ in the tar, laid out as in the worker's work directory.
type bundleWorkRequest struct {
	WorkRequest workRequest   `json:"work_request"`
	Keys        []string      `json:"keys"`
	Inputs      []bundleInput `json:"inputs"`
}

// bundleInput is one input artifact: what the worker's input holds.
type bundleInput struct {
	Artifact   int64           `json:"artifact"`
	Category   string          `json:"category"`
	Data       json.RawMessage `json:"data"`
	Dir        string          `json:"dir"`
	Files      []string        `json:"files"`
	Permission *permission     `json:"permission"`
}

// resultManifest is the MANIFEST of a result.
type resultManifest struct {
	Format string `json:"format"`
	// Bundle and BundleSHA256 bind the result to the one bundle it
	// answers: its id and the SHA-256 of its MANIFEST member.
	Bundle       string              `json:"bundle"`
	BundleSHA256 string              `json:"bundle_sha256"`
	SignedAt     string              `json:"signed_at"`
	WorkRequests []resultWorkRequest `json:"work_requests"`
	Files        []archiveFile       `json:"files"`
	// AuditProofs prove the checkpoint's tree consistent with the
	// bundle's checkpoint and the offline host's previous result's.
	AuditProofs []auditProof `json:"audit_proofs"`
}

// resultWorkRequest is the outcome of one work request on the offline
// host. Its outputs are under wr-<id>/out/ in the tar.
type resultWorkRequest struct {
	ID      int64             `json:"id"`
	Success bool              `json:"success"`
	Logs    map[string]string `json:"logs"`
	// Results is, for a sign task, the results of each input.
	Results [][]signResult `json:"results,omitempty"`
	// Copies, for debsign, are the files of the re-signed upload left
	// out of the result because they are the upload's own, unchanged:
	// the relay takes them from its copy of the bundle.
	Copies     []string `json:"copies,omitempty"`
	DurationMS int64    `json:"duration_ms"`
	CPUTimeMS  int64    `json:"cpu_time_ms"`
}

// wrDir is the directory of a work request's files in a bundle or result.
func wrDir(id int64) string { return fmt.Sprintf("wr-%d", id) }

func newBundleID() (string, error) {
	b := make([]byte, 16)
	if _, err := rand.Read(b); err != nil {
		return "", err
	}
	return hex.EncodeToString(b), nil
}

func nowRFC3339() string { return time.Now().UTC().Format(time.RFC3339) }

// signManifest encodes m as the text of a note signed by signer.
func signManifest(m any, signer note.Signer) ([]byte, error) {
	text, err := json.MarshalIndent(m, "", "  ")
	if err != nil {
		return nil, err
	}
	return note.Sign(&note.Note{Text: string(text) + "\n"}, signer)
}

// writeArchive writes the tar file out: MANIFEST, then each file of files
// read from dir (files[i].Path relative to dir). It goes through a
// temporary file, synced, and a rename, so out is whole or absent.
func writeArchive(out string, manifest []byte, dir string, files []archiveFile) (err error) {
	tmp, err := os.CreateTemp(filepath.Dir(out), "."+filepath.Base(out)+".*")
	if err != nil {
		return err
	}
	defer func() {
		if err != nil {
			tmp.Close()
			os.Remove(tmp.Name())
		}
	}()
	tw := tar.NewWriter(tmp)
	add := func(name string, size int64, r io.Reader) error {
		hdr := &tar.Header{Name: name, Mode: 0o644, Size: size, Typeflag: tar.TypeReg, ModTime: time.Now().UTC().Truncate(time.Second), Format: tar.FormatPAX}
		if err := tw.WriteHeader(hdr); err != nil {
			return fmt.Errorf("%s: %s: %w", out, name, err)
		}
		if _, err := io.Copy(tw, r); err != nil {
			return fmt.Errorf("%s: %s: %w", out, name, err)
		}
		return nil
	}
	if err := add(manifestName, int64(len(manifest)), strings.NewReader(string(manifest))); err != nil {
		return err
	}
	for _, f := range files {
		src, _, err := openInput(filepath.Join(dir, filepath.FromSlash(f.Path)))
		if err != nil {
			return err
		}
		err = add(f.Path, f.Size, src)
		src.Close()
		if err != nil {
			return err
		}
	}
	if err := tw.Close(); err != nil {
		return fmt.Errorf("%s: %w", out, err)
	}
	if err := tmp.Sync(); err != nil {
		return fmt.Errorf("%s: %w", out, err)
	}
	if err := tmp.Close(); err != nil {
		return fmt.Errorf("%s: %w", out, err)
	}
	if err := os.Rename(tmp.Name(), out); err != nil {
		return err
	}
	syncDir(filepath.Dir(out))
	return nil
}

// describeFiles lists, sorted, the files under dir/sub as archive members
// named relative to dir.
func describeFiles(dir, sub string) ([]archiveFile, error) {
	var files []archiveFile
	err := filepath.WalkDir(filepath.Join(dir, sub), func(p string, d os.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		if !d.Type().IsRegular() {
			return fmt.Errorf("%s: not a regular file", p)
		}
		rel, err := filepath.Rel(dir, p)
		if err != nil {
			return err
		}
		f, _, err := openInput(p)
		if err != nil {
			return err
		}
		defer f.Close()
		h := sha256.New()
		n, err := io.Copy(h, f)
		if err != nil {
			return err
		}
		files = append(files, archiveFile{Path: filepath.ToSlash(rel), Size: n, SHA256: hex.EncodeToString(h.Sum(nil))})
		return nil
	})
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	slices.SortFunc(files, func(a, b archiveFile) int { return strings.Compare(a.Path, b.Path) })
	return files, err
}

// openedArchive is an archive whose manifest signature and every member
// have been checked; its members are extracted under Dir.
type openedArchive struct {
	Manifest []byte // the MANIFEST member as it was in the tar
	Text     []byte // the note's text: the manifest JSON
	Dir      string
}

// SHA256 is the hex SHA-256 of the MANIFEST member, which a result names.
func (a *openedArchive) SHA256() string {
	h := sha256.Sum256(a.Manifest)
	return hex.EncodeToString(h[:])
}

// signedBy opens a manifest signed by verifier's key, refusing any other.
func signedBy(verifier note.Verifier, what string) func([]byte) (string, error) {
	return func(raw []byte) (string, error) {
		n, err := note.Open(raw, note.VerifierList(verifier))
		if err != nil {
			var unknown *note.UnverifiedNoteError
			if errors.As(err, &unknown) {
				return "", fmt.Errorf("this %s is not signed by %s, the only key this host accepts for it: refused", what, verifier.Name())
			}
			return "", fmt.Errorf("%s signature check failed (%v): refused", what, err)
		}
		return n.Text, nil
	}
}

// sameManifest opens a manifest that must be, byte for byte, the one
// whose SHA-256 is sum: the relay's copy of a bundle it wrote.
func sameManifest(sum string) func([]byte) (string, error) {
	return func(raw []byte) (string, error) {
		if (&openedArchive{Manifest: raw}).SHA256() != sum {
			return "", errors.New("this copy's manifest is not the one sent")
		}
		var unverified *note.UnverifiedNoteError
		if _, err := note.Open(raw, nil); !errors.As(err, &unverified) {
			return "", fmt.Errorf("malformed manifest (%v)", err)
		}
		return unverified.Note.Text, nil
	}
}

// readArchive opens the tar file p, checks its manifest with open (which
// returns the note's text), decodes the text into m (whose list of members
// files returns) and extracts every member under the new directory dir,
// checking each against the manifest. Any mismatch is an error naming the
// member; nothing is believed before the manifest is.
func readArchive(p, what string, open func([]byte) (string, error), dir string, m any, files func() []archiveFile) (*openedArchive, error) {
	f, _, err := openInput(p)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", what, err)
	}
	defer f.Close()
	tr := tar.NewReader(f)
	hdr, err := tr.Next()
	if err != nil {
		return nil, fmt.Errorf("%s: not a %s (unreadable tar: %v)", p, what, err)
	}
	if hdr.Name != manifestName || hdr.Typeflag != tar.TypeReg || sparse(hdr) {
		return nil, fmt.Errorf("%s: not a %s (its first member is %q, not %s)", p, what, hdr.Name, manifestName)
	}
	if hdr.Size > maxManifest {
		return nil, fmt.Errorf("%s: the %s's %s is too large (%d bytes, more than the %d this accepts): refused", p, what, manifestName, hdr.Size, maxManifest)
	}
	raw, err := io.ReadAll(tr)
	if err != nil {
		return nil, fmt.Errorf("%s: %s truncated: %v", p, manifestName, err)
	}
	text, err := open(raw)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", p, err)
	}
	a := &openedArchive{Manifest: raw, Text: []byte(text), Dir: dir}
	if err := json.Unmarshal(a.Text, m); err != nil {
		return nil, fmt.Errorf("%s: %s manifest: %w", p, what, err)
	}
	want := map[string]archiveFile{}
	for _, af := range files() {
		if err := checkName(af.Path); err != nil {
			return nil, fmt.Errorf("%s: %w", p, err)
		}
		want[af.Path] = af
	}
	if err := os.Mkdir(dir, 0o700); err != nil {
		return nil, err
	}
	root, err := os.OpenRoot(dir)
	if err != nil {
		return nil, err
	}
	defer root.Close()
	seen := map[string]bool{}
	for {
		hdr, err := tr.Next()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return nil, fmt.Errorf("%s: truncated or damaged %s: %v", p, what, err)
		}
		af, ok := want[hdr.Name]
		switch {
		case !ok:
			return nil, fmt.Errorf("%s: member %q is not in the manifest: refused", p, hdr.Name)
		case seen[hdr.Name]:
			return nil, fmt.Errorf("%s: member %q appears twice: refused", p, hdr.Name)
		case hdr.Typeflag != tar.TypeReg || sparse(hdr):
			return nil, fmt.Errorf("%s: member %q is not a regular file: refused", p, hdr.Name)
		case hdr.Size != af.Size:
			return nil, fmt.Errorf("%s: member %s has %d bytes, the manifest says %d: refused", p, hdr.Name, hdr.Size, af.Size)
		}
		seen[hdr.Name] = true
		if err := extractMember(root, hdr.Name, tr, af); err != nil {
			return nil, fmt.Errorf("%s: %w", p, err)
		}
	}
	for name := range want {
		if !seen[name] {
			return nil, fmt.Errorf("%s: member %s is missing (truncated %s?): refused", p, name, what)
		}
	}
	return a, nil
}

// sparse says whether a member is a PAX sparse file, which archive/tar
// expands, holes as zeros, to a size its content does not bound.
func sparse(hdr *tar.Header) bool {
	for k := range hdr.PAXRecords {
		if strings.HasPrefix(k, "GNU.sparse.") {
			return true
		}
	}
	return false
}

// extractMember copies one member to root/name and checks its SHA-256.
func extractMember(root *os.Root, name string, r io.Reader, af archiveFile) error {
	if err := root.MkdirAll(path.Dir(name), 0o700); err != nil {
		return err
	}
	out, err := root.OpenFile(name, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return err
	}
	h := sha256.New()
	n, err := io.Copy(io.MultiWriter(out, h), r)
	if cerr := out.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return fmt.Errorf("member %s truncated: %v", name, err)
	}
	if n != af.Size {
		return fmt.Errorf("member %s truncated: %d of %d bytes", name, n, af.Size)
	}
	if got := hex.EncodeToString(h.Sum(nil)); got != af.SHA256 {
		return fmt.Errorf("member %s was modified: sha256 %s, the manifest says %s: refused", name, got, af.SHA256)
	}
	return nil
}

// loadNoteSigner reads a note signer key (PRIVATE+KEY+…) from a file that
// must not be readable by group or others.
func loadNoteSigner(p string) (note.Signer, error) {
	b, err := readSecretInput(p, "relay key", maxSecretSize)
	if err != nil {
		return nil, err
	}
	defer clear(b)
	s, err := note.NewSigner(strings.TrimSpace(string(b)))
	if err != nil {
		return nil, fmt.Errorf("relay key %s: %w", p, err)
	}
	return s, nil
}

// generateNoteKey writes a new Ed25519 note signer key named name to p
// (never overwriting) and returns its public verifier key.
func generateNoteKey(p, name string) (string, error) {
	skey, vkey, err := note.GenerateKey(rand.Reader, name)
	if err != nil {
		return "", fmt.Errorf("relay key: %w", err)
	}
	f, err := os.OpenFile(p, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if errors.Is(err, os.ErrExist) {
		return "", fmt.Errorf("%s already exists; refusing to overwrite it", p)
	}
	if err != nil {
		return "", err
	}
	if err := writeSyncClose(f, []byte(skey+"\n")); err != nil {
		return "", err
	}
	return vkey, nil
}
