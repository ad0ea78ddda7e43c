package main

import (
	"bytes"
	"crypto/md5"
	"crypto/sha1"
	"crypto/sha256"
	"crypto/sha512"
	"encoding/hex"
	"errors"
	"fmt"
	"hash"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/ProtonMail/go-crypto/openpgp"
)

// validSignedName accepts a plain file name: the signrepositoryindex task's
// signed_name and every file a .changes lists come from the network and are
// joined to a local directory, so nothing that could leave it is allowed.
func validSignedName(name string) error {
	switch {
	case name == "":
		return errors.New("file name is empty")
	case name == "." || name == "..":
		return fmt.Errorf("file name %q is not a file", name)
	case strings.ContainsAny(name, "/\\"):
		return fmt.Errorf("file name %q contains a path separator", name)
	case strings.ContainsRune(name, 0):
		return fmt.Errorf("file name %q contains a NUL byte", name)
	}
	return nil
}

// deb822Field is one field of a deb822 paragraph, kept as written so that a
// .changes can be rewritten without disturbing the fields it does not touch.
type deb822Field struct {
	Name  string
	First string   // the value on the field's own line, trimmed
	Cont  []string // continuation lines, without the line break
}

// parseDeb822 reads a single-paragraph deb822 document (a .changes, .dsc or
// .buildinfo without its signature).
func parseDeb822(name string, text []byte) ([]deb822Field, error) {
	var fields []deb822Field
	seen := map[string]bool{}
	lines := strings.Split(strings.ReplaceAll(string(text), "\r\n", "\n"), "\n")
	ended := false
	for i, line := range lines {
		switch {
		case strings.TrimSpace(line) == "":
			if len(fields) > 0 {
				ended = true
			}
		case ended:
			return nil, fmt.Errorf("%s line %d: a second paragraph, but a .changes has one", name, i+1)
		case line[0] == ' ' || line[0] == '\t':
			if len(fields) == 0 {
				return nil, fmt.Errorf("%s line %d: continuation line before any field", name, i+1)
			}
			f := &fields[len(fields)-1]
			f.Cont = append(f.Cont, strings.TrimRight(line, " \t"))
		case line[0] == '#':
			// deb822 comment line
		default:
			colon := strings.IndexByte(line, ':')
			if colon <= 0 || strings.ContainsAny(line[:colon], " \t") {
				return nil, fmt.Errorf("%s line %d: %q is not a \"Field: value\" line", name, i+1, line)
			}
			field := line[:colon]
			if seen[strings.ToLower(field)] {
				return nil, fmt.Errorf("%s line %d: field %s appears twice", name, i+1, field)
			}
			seen[strings.ToLower(field)] = true
			fields = append(fields, deb822Field{Name: field, First: strings.TrimSpace(line[colon+1:])})
		}
	}
	if len(fields) == 0 {
		return nil, fmt.Errorf("%s: no fields", name)
	}
	return fields, nil
}

// changesListFields are the .changes fields that list files, with the names
// of their columns. python-debian (and so Debusine's changes_fields) splits
// exactly these into lists of dicts.
var changesListFields = map[string][]string{
	"files":            {"md5sum", "size", "section", "priority", "name"},
	"checksums-sha1":   {"sha1", "size", "name"},
	"checksums-sha256": {"sha256", "size", "name"},
	"checksums-sha512": {"sha512", "size", "name"},
}

// parseChanges turns a .changes (signed or not) into the changes_fields of
// a debian:upload artifact: file lists become lists of dicts of strings;
// every other field is a string, a multi-line one holding its continuation
// lines after a line break, as python-debian gives them.
func parseChanges(name string, data []byte) (map[string]any, error) {
	text, err := stripClearSignature(name, data)
	if err != nil {
		return nil, err
	}
	fields, err := parseDeb822(name, text)
	if err != nil {
		return nil, err
	}
	out := make(map[string]any, len(fields))
	for _, f := range fields {
		cols, isList := changesListFields[strings.ToLower(f.Name)]
		if !isList {
			out[f.Name] = strings.Join(append([]string{f.First}, f.Cont...), "\n")
			continue
		}
		entries := []map[string]string{}
		for _, line := range f.Cont {
			words := strings.Fields(line)
			if len(words) == 0 {
				continue
			}
			if len(words) != len(cols) {
				return nil, fmt.Errorf("%s: field %s: line %q has %d columns, want %d (%s)", name, f.Name, strings.TrimSpace(line), len(words), len(cols), strings.Join(cols, " "))
			}
			entry := make(map[string]string, len(cols))
			for i, c := range cols {
				entry[c] = words[i]
			}
			entries = append(entries, entry)
		}
		out[f.Name] = entries
	}
	return out, nil
}

// debFileDigests are the size and checksums a .changes can state for a file.
type debFileDigests struct {
	size                      int64
	md5, sha1, sha256, sha512 string
}

func debDigestsOf(r io.Reader) (debFileDigests, error) {
	hs := []hash.Hash{md5.New(), sha1.New(), sha256.New(), sha512.New()}
	n, err := io.Copy(io.MultiWriter(hs[0], hs[1], hs[2], hs[3]), r)
	if err != nil {
		return debFileDigests{}, err
	}
	return debFileDigests{
		size:   n,
		md5:    hex.EncodeToString(hs[0].Sum(nil)),
		sha1:   hex.EncodeToString(hs[1].Sum(nil)),
		sha256: hex.EncodeToString(hs[2].Sum(nil)),
		sha512: hex.EncodeToString(hs[3].Sum(nil)),
	}, nil
}

func (d debFileDigests) column(col string) string {
	switch col {
	case "size":
		return strconv.FormatInt(d.size, 10)
	case "md5sum":
		return d.md5
	case "sha1":
		return d.sha1
	case "sha256":
		return d.sha256
	case "sha512":
		return d.sha512
	}
	return ""
}

// upload is a .changes read from disk with every file it lists checked
// against the sizes and checksums it states.
type debUpload struct {
	dir, changesName string
	changesSHA256    string // of the .changes file as given (audited)
	text             []byte // the .changes without any old signature
	fields           []deb822Field
	files            []string // listed file names, in first-listed order
	digests          map[string]debFileDigests
}

func readUpload(changesPath string) (*debUpload, error) {
	data, err := readInput(changesPath, ".changes", maxTextSize)
	if err != nil {
		return nil, err
	}
	u := &debUpload{
		dir:         filepath.Dir(changesPath),
		changesName: filepath.Base(changesPath),
		digests:     map[string]debFileDigests{},
	}
	sum := sha256.Sum256(data)
	u.changesSHA256 = hex.EncodeToString(sum[:])
	if u.text, err = stripClearSignature(changesPath, data); err != nil {
		return nil, err
	}
	if u.fields, err = parseDeb822(changesPath, u.text); err != nil {
		return nil, err
	}
	type claim struct{ field, col, value string }
	claims := map[string][]claim{}
	for _, f := range u.fields {
		cols, isList := changesListFields[strings.ToLower(f.Name)]
		if !isList {
			continue
		}
		for _, line := range f.Cont {
			words := strings.Fields(line)
			if len(words) == 0 {
				continue
			}
			if len(words) != len(cols) {
				return nil, fmt.Errorf("%s: field %s: line %q has %d columns, want %d", changesPath, f.Name, strings.TrimSpace(line), len(words), len(cols))
			}
			name := words[len(words)-1]
			if err := validSignedName(name); err != nil {
				return nil, fmt.Errorf("%s: field %s: %w", changesPath, f.Name, err)
			}
			if name == u.changesName {
				return nil, fmt.Errorf("%s: field %s lists the .changes itself", changesPath, f.Name)
			}
			if _, ok := claims[name]; !ok {
				u.files = append(u.files, name)
			}
			for i, c := range cols {
				if c != "name" && c != "section" && c != "priority" {
					claims[name] = append(claims[name], claim{f.Name, c, words[i]})
				}
			}
		}
	}
	if len(u.files) == 0 {
		return nil, fmt.Errorf("%s lists no files (no Files or Checksums-* field)", changesPath)
	}
	for _, name := range u.files {
		f, _, err := openInput(filepath.Join(u.dir, name))
		if err != nil {
			return nil, fmt.Errorf("%s lists %s, which cannot be read: %w", changesPath, name, err)
		}
		d, err := debDigestsOf(f)
		f.Close()
		if err != nil {
			return nil, fmt.Errorf("reading %s: %w", filepath.Join(u.dir, name), err)
		}
		// Sizes first: a wrong size is the plainer message.
		for _, sizes := range []bool{true, false} {
			for _, c := range claims[name] {
				if (c.col == "size") != sizes {
					continue
				}
				if got := d.column(c.col); !strings.EqualFold(got, c.value) {
					return nil, fmt.Errorf("%s: field %s gives %s %s for %s, but the file has %s", changesPath, c.field, c.col, c.value, name, got)
				}
			}
		}
		u.digests[name] = d
	}
	return u, nil
}

// debsignResult is a re-signed upload held in memory until its signatures
// are audited.
type debsignResult struct {
	changesName string
	signed      map[string][]byte         // .dsc, .buildinfo and .changes, signed
	order       []string                  // signed files, the .changes last
	inputSHA256 map[string]string         // of each signed file as given
	copies      []string                  // listed files copied unchanged
	copyDigests map[string]debFileDigests // what the .changes says of them
}

// debsignPrepare does what debsign --re-sign does, in memory: clear-sign
// every listed .dsc and .buildinfo (dropping an old signature), put their
// new sizes and checksums in the .changes, and clear-sign the .changes.
func debsignPrepare(u *debUpload, e *openpgp.Entity, now time.Time) (*debsignResult, error) {
	res := &debsignResult{
		changesName: u.changesName,
		signed:      map[string][]byte{},
		inputSHA256: map[string]string{},
		copyDigests: map[string]debFileDigests{},
	}
	newDigests := map[string]debFileDigests{}
	for _, name := range u.files {
		if !strings.HasSuffix(name, ".dsc") && !strings.HasSuffix(name, ".buildinfo") {
			res.copies = append(res.copies, name)
			res.copyDigests[name] = u.digests[name]
			continue
		}
		path := filepath.Join(u.dir, name)
		data, err := readInput(path, "signed file", maxTextSize)
		if err != nil {
			return nil, err
		}
		if d, err := debDigestsOf(bytes.NewReader(data)); err != nil || d != u.digests[name] {
			return nil, fmt.Errorf("%s changed while being signed", path)
		}
		text, err := stripClearSignature(path, data)
		if err != nil {
			return nil, err
		}
		signed, err := signOpenPGP([]*openpgp.Entity{e}, text, openpgpModeClear, now)
		if err != nil {
			return nil, fmt.Errorf("signing %s: %w", path, err)
		}
		res.signed[name] = signed
		res.order = append(res.order, name)
		res.inputSHA256[name] = u.digests[name].sha256
		newDigests[name], _ = debDigestsOf(bytes.NewReader(signed))
	}
	changes := rewriteChangesDigests(u.fields, newDigests)
	signed, err := signOpenPGP([]*openpgp.Entity{e}, changes, openpgpModeClear, now)
	if err != nil {
		return nil, fmt.Errorf("signing %s: %w", u.changesName, err)
	}
	res.signed[u.changesName] = signed
	res.order = append(res.order, u.changesName)
	res.inputSHA256[u.changesName] = u.changesSHA256
	return res, nil
}

// rewriteChangesDigests writes the paragraph back with the size and
// checksum columns of the files in digests replaced in every file list.
func rewriteChangesDigests(fields []deb822Field, digests map[string]debFileDigests) []byte {
	var b strings.Builder
	for _, f := range fields {
		b.WriteString(f.Name + ":")
		if f.First != "" {
			b.WriteString(" " + f.First)
		}
		b.WriteByte('\n')
		cols, isList := changesListFields[strings.ToLower(f.Name)]
		for _, line := range f.Cont {
			words := strings.Fields(line)
			if isList && len(words) == len(cols) {
				if d, ok := digests[words[len(words)-1]]; ok {
					for i, c := range cols {
						if v := d.column(c); v != "" {
							words[i] = v
						}
					}
					line = " " + strings.Join(words, " ")
				}
			}
			b.WriteString(line + "\n")
		}
	}
	return []byte(b.String())
}

// debsignCheckOutputDir accepts a directory that does not exist yet or is
// empty, so that a re-signed upload is never mixed with other files.
func debsignCheckOutputDir(dir string) error {
	entries, err := os.ReadDir(dir)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("output directory %s: %w", dir, err)
	}
	if len(entries) > 0 {
		return fmt.Errorf("output directory %s is not empty", dir)
	}
	return nil
}

// writeDebsign puts the re-signed upload in outDir: every file is written
// into a locked temporary directory beside it, which is then renamed to
// outDir (rename(2) replaces an empty directory), so that outDir appears
// whole or not at all. A run killed on the way leaves only the temporary
// directory, which the next run removes (tempfiles.go), so a rerun works.
func writeDebsign(res *debsignResult, srcDir, outDir string) (string, error) {
	if err := debsignCheckOutputDir(outDir); err != nil {
		return "", err
	}
	outDir = filepath.Clean(outDir)
	if err := os.MkdirAll(filepath.Dir(outDir), 0o755); err != nil {
		return "", fmt.Errorf("creating output directory: %w", err)
	}
	tmp, lock, err := createOutputTempDir(outDir)
	if err != nil {
		return "", fmt.Errorf("creating output directory: %w", err)
	}
	defer lock.Close()
	ok := false
	defer func() {
		if !ok {
			os.RemoveAll(tmp)
		}
	}()
	for _, name := range res.copies {
		if err := debsignCopyFile(filepath.Join(srcDir, name), filepath.Join(tmp, name), res.copyDigests[name]); err != nil {
			return "", err
		}
	}
	for _, name := range res.order {
		if err := os.WriteFile(filepath.Join(tmp, name), res.signed[name], 0o644); err != nil {
			return "", fmt.Errorf("writing %s: %w", name, err)
		}
	}
	if err := os.Chmod(tmp, 0o755); err != nil {
		return "", err
	}
	if err := os.Rename(tmp, outDir); err != nil {
		return "", fmt.Errorf("output directory %s: %w", outDir, err)
	}
	ok = true
	return filepath.Join(outDir, res.changesName), nil
}

// debsignCopyFile copies a file the .changes lists, unchanged, and checks
// that the copy is what the .changes says: a file changed since it was
// checked is not passed on under a signature that does not cover it.
func debsignCopyFile(src, dst string, want debFileDigests) error {
	in, _, err := openInput(src)
	if err != nil {
		return err
	}
	defer in.Close()
	out, err := os.OpenFile(dst, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o644)
	if err != nil {
		return err
	}
	got, err := debDigestsOf(io.TeeReader(in, out))
	if err != nil {
		out.Close()
		return fmt.Errorf("copying %s: %w", src, err)
	}
	if got != want {
		out.Close()
		return fmt.Errorf("%s changed while being signed", src)
	}
	return out.Close()
}
