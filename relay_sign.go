package main

// `relay sign` on the offline host: check a bundle's origin and integrity,
// refuse a replayed bundle or one asking for a key this host does not hold,
// then sign exactly what it asks with the worker's own execution stage and
// write the result.

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io/fs"
	"log/slog"
	"os"
	"path"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"golang.org/x/mod/sumdb/note"
)

// signedRecord is the offline host's record of a bundle it processed, in
// <state_dir>/signed/<id>.json: created before the first signature, so a
// bundle is never signed twice, even after a crash half-way. The result is
// kept next to it, as <id>.result.tar.
type signedRecord struct {
	Bundle       string `json:"bundle"`
	BundleSHA256 string `json:"bundle_sha256"`
	StartedAt    string `json:"started_at"`
	SignedAt     string `json:"signed_at,omitempty"`
	ResultSHA256 string `json:"result_sha256,omitempty"`
}

// offlineWork is one work request of a bundle, checked and ready to sign.
type offlineWork struct {
	wr     *workRequest
	inputs []*input
	keys   []*Key
	sign   *signTask
	deb    *debsignTask
	index  *repositoryIndexTask
	// failure is why the worker would fail this work request before
	// signing (an untrusted certificate); it is reported, not signed.
	failure error
}

func cmdRelaySign(e *env, args []string) error {
	fs := flag.NewFlagSet("relay sign", flag.ContinueOnError)
	output := fs.String("output", "", "the result `file` to write")
	pos, err := parseInterspersed(fs, e, args)
	if err != nil {
		return err
	}
	if len(pos) != 1 || *output == "" {
		return usagef("relay sign takes BUNDLE and --output RESULT")
	}
	cfg, err := relayConfig(e, "state_dir", "bundle_public_key", "result_key_file")
	if err != nil {
		return err
	}
	verifier, err := note.NewVerifier(cfg.Relay.BundlePublicKey)
	if err != nil {
		return fmt.Errorf("configuration %s: [relay] bundle_public_key: %w", cfg.path, err)
	}
	signer, err := loadNoteSigner(cfg.Relay.ResultKeyFile)
	if err != nil {
		return err
	}
	trusted, err := trustedCerts(cfg)
	if err != nil {
		return err
	}
	st, err := e.openStore()
	if err != nil {
		return err
	}
	log := slog.New(slog.NewTextHandler(e.stderr, nil))
	w := &worker{st: st, log: log, trusted: trusted, skipKernelModules: !cfg.Worker.signKernelModules()}
	tmp, err := os.MkdirTemp(cfg.Relay.StateDir, "sign-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(tmp)

	var m bundleManifest
	a, err := readArchive(pos[0], "relay bundle", signedBy(verifier, "relay bundle"), filepath.Join(tmp, "bundle"), &m, func() []archiveFile { return m.Files })
	if err != nil {
		return err
	}
	if m.Format != bundleFormat && m.Format != bundleFormatV1 {
		return fmt.Errorf("%s: format %q, this program reads %q: refused", pos[0], m.Format, bundleFormat)
	}
	work, err := w.checkBundle(&m, a.Dir)
	if err != nil {
		return fmt.Errorf("%s: %w: refused, nothing signed", pos[0], err)
	}
	bases, err := st.relayBases(&m, cfg.Relay.StateDir)
	if err != nil {
		return fmt.Errorf("%s: %w: refused, nothing signed", pos[0], err)
	}
	records := filepath.Join(cfg.Relay.StateDir, "signed")
	rec := &signedRecord{Bundle: m.ID, BundleSHA256: a.SHA256(), StartedAt: nowRFC3339()}
	if err := claimBundle(records, rec); err != nil {
		return fmt.Errorf("%s: %w", pos[0], err)
	}

	rm := resultManifest{Format: resultFormat, Bundle: m.ID, BundleSHA256: a.SHA256()}
	for _, ow := range work {
		dir := filepath.Join(a.Dir, wrDir(ow.wr.ID))
		res := w.signOffline(ow, m.ID, dir)
		if ow.deb != nil {
			if res.Copies, err = leaveOutCopies(dir); err != nil {
				return err
			}
		}
		rm.WorkRequests = append(rm.WorkRequests, res)
	}
	rm.SignedAt = nowRFC3339()
	checkpoint, err := st.Checkpoint()
	if err != nil {
		return fmt.Errorf("audit checkpoint: %w", err)
	}
	if err := os.WriteFile(filepath.Join(a.Dir, checkpointName), checkpoint, 0o600); err != nil {
		return err
	}
	if rm.AuditProofs, err = st.relayProofs(checkpoint, bases); err != nil {
		return fmt.Errorf("audit consistency proofs: %w", err)
	}
	files, err := describeFiles(a.Dir, checkpointName)
	if err != nil {
		return err
	}
	for _, ow := range work {
		out, err := describeFiles(a.Dir, path.Join(wrDir(ow.wr.ID), "out"))
		if err != nil {
			return err
		}
		files = append(files, out...)
	}
	rm.Files = files
	manifest, err := signManifest(rm, signer)
	if err != nil {
		return err
	}
	// The host's own copy first: signatures made are never lost to a
	// failing medium, since the bundle will not be signed again.
	kept := filepath.Join(records, m.ID+".result.tar")
	if err := writeArchive(kept, manifest, a.Dir, files); err != nil {
		return err
	}
	rec.SignedAt, rec.ResultSHA256 = rm.SignedAt, (&openedArchive{Manifest: manifest}).SHA256()
	if err := writeRecord(records, rec); err != nil {
		return err
	}
	if err := writeFileAtomic(filepath.Join(cfg.Relay.StateDir, lastResultCheckpointName), func(f *os.File) error {
		_, err := f.Write(checkpoint)
		return err
	}); err != nil {
		return err
	}
	if err := writeArchive(*output, manifest, a.Dir, files); err != nil {
		return fmt.Errorf("%w (the result is kept as %s: copy that file instead)", err, kept)
	}
	for _, r := range rm.WorkRequests {
		outcome := "failed (see its logs after completion)"
		if r.Success {
			outcome = "signed"
		}
		fmt.Fprintf(e.stdout, "work request %d: %s\n", r.ID, outcome)
	}
	fmt.Fprintf(e.stdout, "result for bundle %s written to %s\n", m.ID, *output)
	return nil
}

// claimBundle records that bundle rec.Bundle is being signed, refusing one
// this host has seen before.
func claimBundle(dir string, rec *signedRecord) error {
	if len(rec.Bundle) != 32 || strings.Trim(rec.Bundle, "0123456789abcdef") != "" {
		return fmt.Errorf("bundle id %q is malformed: refused", rec.Bundle)
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return err
	}
	p := filepath.Join(dir, rec.Bundle+".json")
	b, _ := json.Marshal(rec)
	f, err := os.OpenFile(p, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if errors.Is(err, fs.ErrExist) {
		old, _ := readInput(p, "signing record", maxTextSize)
		var prev signedRecord
		json.Unmarshal(old, &prev)
		if prev.SignedAt == "" {
			return fmt.Errorf("bundle %s was already taken up on %s and interrupted before its result was written; it is not signed again: refused (see the audit log, and fetch the work again)", rec.Bundle, prev.StartedAt)
		}
		return fmt.Errorf("bundle %s was already signed on %s (replayed? its result is kept in %s): refused, nothing signed", rec.Bundle, prev.SignedAt, dir)
	}
	if err != nil {
		return err
	}
	_, err = f.Write(b)
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	syncDir(dir)
	return err
}

func writeRecord(dir string, rec *signedRecord) error {
	b, _ := json.Marshal(rec)
	p := filepath.Join(dir, rec.Bundle+".json")
	if err := writeFileSync(p+".tmp", b, 0o600); err != nil {
		return err
	}
	return os.Rename(p+".tmp", p)
}

// checkBundle checks every work request of m before anything is signed:
// its task data, that its inputs are exactly the files the bundle carries,
// that the server allowed them, that this host holds every key it needs,
// and that it was never signed here before.
func (w *worker) checkBundle(m *bundleManifest, dir string) ([]*offlineWork, error) {
	if len(m.WorkRequests) == 0 {
		return nil, errors.New("the bundle holds no work request")
	}
	carried := map[string]bool{}
	for _, f := range m.Files {
		carried[f.Path] = true
	}
	seen := map[int64]bool{}
	var work []*offlineWork
	for i := range m.WorkRequests {
		bw := &m.WorkRequests[i]
		wr := &bw.WorkRequest
		if seen[wr.ID] {
			return nil, fmt.Errorf("work request %d appears twice", wr.ID)
		}
		seen[wr.ID] = true
		ow, err := w.checkWork(bw, dir, carried)
		if err != nil {
			return nil, fmt.Errorf("work request %d: %w", wr.ID, err)
		}
		work = append(work, ow)
	}
	if len(carried) != 0 {
		extra := slices.Sorted(func(yield func(string) bool) {
			for p := range carried {
				if !yield(p) {
					return
				}
			}
		})
		return nil, fmt.Errorf("the bundle carries files no work request uses: %s", strings.Join(extra, ", "))
	}
	return work, nil
}

func (w *worker) checkWork(bw *bundleWorkRequest, dir string, carried map[string]bool) (*offlineWork, error) {
	wr := &bw.WorkRequest
	ow := &offlineWork{wr: wr}
	if !relayTasks[strings.ToLower(wr.TaskName)] {
		return nil, fmt.Errorf("task %s is not one the relay carries", wr.TaskName)
	}
	if _, bad := w.configure(wr); bad != nil {
		return nil, errors.New(bad.OutputData.Errors[0].Message)
	}
	var ids, keys []string
	switch strings.ToLower(wr.TaskName) {
	case "sign":
		t, _ := parseSignTask(wr)
		ow.sign = t
		for i, id := range t.UnsignedIDs {
			ids = append(ids, fmt.Sprintf("%d@in/%d", id, i))
		}
		keys = []string{t.Purpose + ":" + t.Fingerprint}
	case "debsign":
		t, _ := parseDebsignTask(wr)
		ow.deb = t
		ids, keys = []string{fmt.Sprintf("%d@in", t.UnsignedID)}, []string{purposeOpenPGP + ":" + t.Fingerprint}
	case "signrepositoryindex":
		t, _ := parseRepositoryIndexTask(wr)
		ow.index = t
		ids = []string{fmt.Sprintf("%d@in", t.UnsignedID)}
		for _, f := range t.SigningKeys {
			keys = append(keys, purposeOpenPGP+":"+f)
		}
		if len(keys) == 0 {
			return nil, errors.New("task_data has no signing_keys: nothing to sign with")
		}
	}
	if !slices.Equal(bw.Keys, keys) {
		return nil, fmt.Errorf("the bundle says it needs keys %v, the task %v", bw.Keys, keys)
	}
	var got []string
	for _, bi := range bw.Inputs {
		got = append(got, fmt.Sprintf("%d@%s", bi.Artifact, bi.Dir))
	}
	if !slices.Equal(got, ids) {
		return nil, fmt.Errorf("the bundle's inputs %v are not the task's %v", got, ids)
	}
	for _, bi := range bw.Inputs {
		if bi.Permission == nil || !bi.Permission.HasPermission {
			return nil, fmt.Errorf("artifact %d: the server did not grant sign_with", bi.Artifact)
		}
		in := &input{id: bi.Artifact, art: &artifact{ID: bi.Artifact, Category: bi.Category, Data: bi.Data}, dir: bi.Dir, perm: bi.Permission}
		for _, name := range bi.Files {
			p := path.Join(wrDir(wr.ID), bi.Dir, name)
			if err := checkName(name); err != nil || !carried[p] {
				return nil, fmt.Errorf("artifact %d: file %q is not in the bundle", bi.Artifact, name)
			}
			delete(carried, p)
			in.files = append(in.files, name)
		}
		if !slices.IsSorted(in.files) {
			return nil, fmt.Errorf("artifact %d: files not sorted", bi.Artifact)
		}
		if err := w.checkTrustedCerts(in); err != nil && ow.failure == nil {
			ow.failure = err
		}
		ow.inputs = append(ow.inputs, in)
	}
	if ow.deb != nil {
		if _, err := uploadChanges(ow.inputs[0]); err != nil {
			return nil, err
		}
	}
	if ow.index != nil && len(ow.inputs[0].files) != 1 {
		return nil, fmt.Errorf("artifact %d holds %d files, want exactly 1", ow.inputs[0].id, len(ow.inputs[0].files))
	}
	for _, slug := range keys {
		purpose, fpr, _ := strings.Cut(slug, ":")
		k, err := w.st.Key(purpose, fpr)
		if err != nil {
			return nil, fmt.Errorf("it asks for key %s, which this host does not hold (%v)", slug, err)
		}
		if err := w.keyUsable(k); err != nil {
			return nil, err
		}
		ow.keys = append(ow.keys, k)
	}
	rows, err := w.st.AuditRows(AuditFilter{WorkRequest: &wr.ID})
	if err != nil {
		return nil, err
	}
	for _, r := range rows {
		if r.Event == "sign" {
			return nil, fmt.Errorf("this host already signed for it (audit row %d, %s): a replayed bundle?", r.ID, r.CreatedAt)
		}
	}
	return ow, nil
}

// signOffline runs the execution stage of one checked work request in its
// directory of the bundle (laid out as the worker's work directory), with
// every audit row naming the work request and the bundle.
func (w *worker) signOffline(ow *offlineWork, bundle, dir string) resultWorkRequest {
	start, cpu0 := time.Now(), cpuTime()
	res := resultWorkRequest{ID: ow.wr.ID, Logs: map[string]string{}}
	log := w.log.With("work_request", ow.wr.ID, "task", ow.wr.TaskName)
	tr := &taskRun{wr: ow.wr, log: log, dir: dir, logs: map[string]*bytes.Buffer{}, auditExtra: map[string]any{"relay_bundle": bundle}}
	err := ow.failure
	if err == nil {
		tr.root, err = os.OpenRoot(dir)
	}
	if err == nil {
		defer tr.root.Close()
		tr.enter("execution")
		res.Success, res.Results, err = w.executeOffline(tr, ow)
	}
	if err != nil {
		stage := tr.stage
		if stage == "" {
			stage = "fetch_input"
		}
		log.Error("work request failed", "error", err)
		tr.logf(stage+".log", "%s\n", strings.ReplaceAll(err.Error(), dir+"/", ""))
		res.Success = false
	}
	for name, b := range tr.logs {
		res.Logs[name] = b.String()
	}
	res.DurationMS, res.CPUTimeMS = time.Since(start).Milliseconds(), (cpuTime() - cpu0).Milliseconds()
	return res
}

// executeOffline is the task's own execution stage.
func (w *worker) executeOffline(tr *taskRun, ow *offlineWork) (bool, [][]signResult, error) {
	switch {
	case ow.sign != nil:
		signFile, err := w.fileSigner(ow.keys[0])
		if err != nil {
			return false, nil, err
		}
		signed, failed := 0, 0
		results := make([][]signResult, len(ow.inputs))
		for i, in := range ow.inputs {
			for _, name := range in.files {
				r, bad := w.signOne(context.Background(), tr, signFile, ow.sign, i, in, name)
				if bad {
					failed++
				} else if r.OutputFile != nil {
					signed++
				}
				results[i] = append(results[i], r)
			}
		}
		return signed > 0 && failed == 0, results, nil
	case ow.deb != nil:
		return true, nil, w.debsign(tr, ow.keys[0], ow.inputs[0])
	default:
		return true, nil, w.signRepositoryIndex(tr, ow.index, ow.keys, ow.inputs[0])
	}
}

// leaveOutCopies removes from a re-signed upload in dir/out/ the files
// identical to the upload's own in dir/in/ (the packages, the source
// tarballs), so that they do not travel back, and returns their names.
func leaveOutCopies(dir string) ([]string, error) {
	outs, err := describeFiles(dir, "out")
	if err != nil {
		return nil, err
	}
	ins, err := describeFiles(dir, "in")
	if err != nil {
		return nil, err
	}
	inputs := map[string]archiveFile{}
	for _, f := range ins {
		inputs[strings.TrimPrefix(f.Path, "in/")] = f
	}
	var copies []string
	for _, f := range outs {
		name := strings.TrimPrefix(f.Path, "out/")
		if in, ok := inputs[name]; ok && in.SHA256 == f.SHA256 && in.Size == f.Size {
			if err := os.Remove(filepath.Join(dir, filepath.FromSlash(f.Path))); err != nil {
				return nil, err
			}
			copies = append(copies, name)
		}
	}
	return copies, nil
}
