package main

// The task data of the signing tasks and the artifacts they make, shared
// by the worker (tasks.go) and the relay, which splits a task between a
// connected host and an offline one: what the server asks and what it gets
// back are decoded and shaped here, once.

import (
	"fmt"
	"path"
	"strings"
)

// signResult is one entry of a debusine:signing-output's results.
type signResult struct {
	File         string  `json:"file"`
	OutputFile   *string `json:"output_file"`
	ErrorMessage *string `json:"error_message"`
}

// signTask is the task data of a sign work request (docs/protocol.md §6.3).
type signTask struct {
	Purpose      string
	Fingerprint  string
	UnsignedIDs  []int64
	PackageNames []*string
}

func parseSignTask(wr *workRequest) (*signTask, error) {
	var d struct {
		Purpose string `json:"purpose"`
		Key     string `json:"key"`
	}
	var dyn struct {
		UnsignedIDs  []int64   `json:"unsigned_ids"`
		PackageNames []*string `json:"unsigned_binary_package_names"`
	}
	if err := decodeTaskData(wr.TaskData, &d); err != nil {
		return nil, err
	}
	if err := decodeTaskData(wr.DynamicTaskData, &dyn); err != nil {
		return nil, err
	}
	t := &signTask{Purpose: d.Purpose, Fingerprint: normalFingerprint(d.Key), UnsignedIDs: dyn.UnsignedIDs, PackageNames: dyn.PackageNames}
	switch {
	case t.Purpose != purposeUEFI && t.Purpose != purposeOpenPGP:
		return nil, fmt.Errorf("purpose %q: want %s or %s", t.Purpose, purposeUEFI, purposeOpenPGP)
	case t.Fingerprint == "":
		return nil, fmt.Errorf("task_data has no key")
	case len(t.UnsignedIDs) == 0:
		return nil, fmt.Errorf("dynamic_task_data has no unsigned_ids")
	case len(t.PackageNames) != 0 && len(t.PackageNames) != len(t.UnsignedIDs):
		return nil, fmt.Errorf("dynamic_task_data: %d unsigned_binary_package_names for %d unsigned_ids", len(t.PackageNames), len(t.UnsignedIDs))
	}
	return t, nil
}

// output is the debusine:signing-output artifact of input i: its data and
// its files, under out/<i>/ in the work directory.
func (t *signTask) output(i int, results []signResult) (map[string]any, []outFile) {
	var files []outFile
	for _, r := range results {
		if r.OutputFile != nil {
			files = append(files, outFile{Name: *r.OutputFile, ContentType: "application/octet-stream", Path: path.Join(fmt.Sprintf("out/%d", i), *r.OutputFile)})
		}
	}
	var pkg *string
	if len(t.PackageNames) > 0 {
		pkg = t.PackageNames[i]
	}
	data := map[string]any{"purpose": t.Purpose, "fingerprint": t.Fingerprint, "results": results, "binary_package_name": pkg}
	return data, files
}

// debsignTask is the task data of a debsign work request (docs/protocol.md §6.4).
type debsignTask struct {
	Fingerprint string
	UnsignedID  int64
}

func parseDebsignTask(wr *workRequest) (*debsignTask, error) {
	var d struct {
		Key string `json:"key"`
	}
	var dyn struct {
		UnsignedID int64 `json:"unsigned_id"`
	}
	if err := decodeTaskData(wr.TaskData, &d); err != nil {
		return nil, err
	}
	if err := decodeTaskData(wr.DynamicTaskData, &dyn); err != nil {
		return nil, err
	}
	t := &debsignTask{Fingerprint: normalFingerprint(d.Key), UnsignedID: dyn.UnsignedID}
	if t.Fingerprint == "" || t.UnsignedID == 0 {
		return nil, fmt.Errorf("debsign needs task_data key and dynamic_task_data unsigned_id")
	}
	return t, nil
}

// uploadChanges names the one .changes file of an upload.
func uploadChanges(in *input) (string, error) {
	var changes []string
	for _, name := range in.files {
		if strings.HasSuffix(name, ".changes") {
			changes = append(changes, name)
		}
	}
	if len(changes) != 1 {
		return "", fmt.Errorf("artifact %d holds %d .changes files, want 1", in.id, len(changes))
	}
	return changes[0], nil
}

// debsignOutput is the debian:upload artifact of the re-signed upload in
// out/: the fields of its .changes, and every file it lists.
func debsignOutput(tr *taskRun, in *input) (map[string]any, []outFile, error) {
	changes, err := uploadChanges(in)
	if err != nil {
		return nil, nil, err
	}
	signed, err := tr.root.ReadFile(path.Join("out", changes))
	if err != nil {
		return nil, nil, err
	}
	fields, err := parseChanges(changes, signed)
	if err != nil {
		return nil, nil, err
	}
	files := []outFile{{Name: changes, ContentType: uploadContentType(changes), Path: "out/" + changes}}
	listed, _ := fields["Checksums-Sha256"].([]map[string]string)
	for _, f := range listed {
		if err := validSignedName(f["name"]); err != nil {
			return nil, nil, err
		}
		files = append(files, outFile{Name: f["name"], ContentType: uploadContentType(f["name"]), Path: "out/" + f["name"]})
	}
	return map[string]any{"type": "dpkg", "changes_fields": fields}, files, nil
}

// uploadContentType: the types Debusine gives the files of an upload.
func uploadContentType(name string) string {
	switch path.Ext(name) {
	case ".changes", ".dsc", ".buildinfo":
		return "text/plain; charset=utf-8"
	case ".deb", ".udeb", ".ddeb":
		return "application/vnd.debian.binary-package"
	case ".xz":
		return "application/x-xz"
	case ".gz":
		return "application/gzip"
	case ".bz2":
		return "application/x-bzip2"
	}
	return "application/octet-stream"
}

// repositoryIndexTask is the task data of a signrepositoryindex work
// request (docs/protocol.md §6.5).
type repositoryIndexTask struct {
	Mode        string
	SignedName  string
	SigningKeys []string
	UnsignedID  int64
}

func parseRepositoryIndexTask(wr *workRequest) (*repositoryIndexTask, error) {
	var d struct {
		Mode       string `json:"mode"`
		SignedName string `json:"signed_name"`
	}
	var dyn struct {
		SigningKeys []string `json:"signing_keys"`
		UnsignedID  int64    `json:"unsigned_id"`
	}
	if err := decodeTaskData(wr.TaskData, &d); err != nil {
		return nil, err
	}
	if err := decodeTaskData(wr.DynamicTaskData, &dyn); err != nil {
		return nil, err
	}
	if d.Mode != openpgpModeDetached && d.Mode != openpgpModeClear {
		return nil, fmt.Errorf("mode %q: want %s or %s", d.Mode, openpgpModeDetached, openpgpModeClear)
	}
	if err := validSignedName(d.SignedName); err != nil {
		return nil, fmt.Errorf("signed_name: %w", err)
	}
	if dyn.UnsignedID == 0 {
		return nil, fmt.Errorf("dynamic_task_data has no unsigned_id")
	}
	t := &repositoryIndexTask{Mode: d.Mode, SignedName: d.SignedName, UnsignedID: dyn.UnsignedID}
	for _, f := range dyn.SigningKeys {
		t.SigningKeys = append(t.SigningKeys, normalFingerprint(f))
	}
	return t, nil
}

// output is the debian:repository-index artifact holding the signature.
func (t *repositoryIndexTask) output() (map[string]any, []outFile) {
	ct := "application/pgp-signature"
	if t.Mode == openpgpModeClear {
		ct = "text/plain; charset=utf-8"
	}
	files := []outFile{{Name: t.SignedName, ContentType: ct, Path: path.Join("out", t.SignedName)}}
	return map[string]any{"path": t.SignedName}, files
}
