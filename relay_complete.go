package main

// `relay complete` on the connected host: check a result against the
// bundle it answers (same work requests, every output present and made by
// the right key over the right input) before anything is uploaded, then
// deliver each work request's outputs, debug logs and completion exactly as
// the worker does, once.

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io/fs"
	"log/slog"
	"net/http"
	"os"
	"os/signal"
	"path"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"time"

	"github.com/ProtonMail/go-crypto/openpgp"
	"golang.org/x/mod/sumdb/note"
)

// relayComplete is the state of one relay complete.
type relayComplete struct {
	cfg     *Config
	keys    map[string]*relayKey
	log     *slog.Logger
	state   *relayState
	bundle  *bundleManifest
	results map[int64]*resultWorkRequest
	dir     string // the work directories, wr-<id>/ with in/ and out/
}

func cmdRelayComplete(e *env, args []string) error {
	fs := flag.NewFlagSet("relay complete", flag.ContinueOnError)
	pos, err := parseInterspersed(fs, e, args)
	if err != nil {
		return err
	}
	if len(pos) != 1 {
		return usagef("relay complete takes one argument: the RESULT file")
	}
	cfg, err := relayConfig(e, "state_dir", "result_public_key", "api_url", "token_file")
	if err != nil {
		return err
	}
	verifier, err := note.NewVerifier(cfg.Relay.ResultPublicKey)
	if err != nil {
		return fmt.Errorf("configuration %s: [relay] result_public_key: %w", cfg.path, err)
	}
	keys, err := readRelayKeys(cfg)
	if err != nil {
		return err
	}
	log, done, err := relayLogAndLock(cfg, e.stderr)
	if err != nil {
		return err
	}
	defer done()
	tmp, err := os.MkdirTemp(cfg.Relay.StateDir, "complete-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(tmp)

	c := &relayComplete{cfg: cfg, keys: keys, log: log, dir: filepath.Join(tmp, "bundle"), results: map[int64]*resultWorkRequest{}}
	if err := c.open(pos[0], verifier, tmp); err != nil {
		return fmt.Errorf("%w: nothing uploaded", err)
	}
	for _, bw := range c.bundle.WorkRequests {
		if err := c.verify(&bw); err != nil {
			return fmt.Errorf("%s: work request %d: %w: refused, nothing uploaded", pos[0], bw.WorkRequest.ID, err)
		}
	}

	workers, err := relayWorkers(cfg, keys, log)
	if err != nil {
		return err
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	for i, bw := range c.bundle.WorkRequests {
		ws := c.state.WorkRequests[i]
		if ws.Completed != "" {
			fmt.Fprintf(e.stdout, "work request %d: already completed on %s\n", ws.ID, ws.Completed)
			continue
		}
		if ws.Slot < 1 || ws.Slot > len(workers) {
			return fmt.Errorf("work request %d is held by worker identity %d, but [relay] workers is %d", ws.ID, ws.Slot, len(workers))
		}
		w := workers[ws.Slot-1]
		tok, err := readSecret(w.tokenFile)
		if err != nil {
			return fmt.Errorf("worker identity %d: %w", ws.Slot, err)
		}
		w.api.token = tok
		outcome, err := c.completeOne(ctx, w, &bw, ws)
		if err != nil {
			return fmt.Errorf("work request %d: %w (run relay complete again to resume)", ws.ID, err)
		}
		fmt.Fprintf(e.stdout, "work request %d: %s\n", ws.ID, outcome)
	}
	return c.finish(pos[0], e)
}

// open reads the result and the relay's copy of the bundle it answers,
// refusing a result for a bundle this relay did not send or has already
// completed, and lays out each work request's directory with the bundle's
// inputs and the result's outputs.
func (c *relayComplete) open(p string, verifier note.Verifier, tmp string) error {
	var rm resultManifest
	res, err := readArchive(p, "relay result", signedBy(verifier, "relay result"), filepath.Join(tmp, "result"), &rm, func() []archiveFile { return rm.Files })
	if err != nil {
		return err
	}
	if rm.Format != resultFormat {
		return fmt.Errorf("%s: format %q, this program reads %q: refused", p, rm.Format, resultFormat)
	}
	if len(rm.Bundle) != 32 || strings.Trim(rm.Bundle, "0123456789abcdef") != "" {
		return fmt.Errorf("%s: bundle id %q is malformed: refused", p, rm.Bundle)
	}
	if done, err := loadState(filepath.Join(completedDir(c.cfg.Relay.StateDir), rm.Bundle+".json")); err == nil {
		return fmt.Errorf("%s: bundle %s was completed on %s; this result was delivered already (replayed?): refused", p, rm.Bundle, done.CompletedAt)
	}
	c.state, err = loadState(filepath.Join(outstandingDir(c.cfg.Relay.StateDir), rm.Bundle+".json"))
	if errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("%s: answers bundle %s, which this relay did not send (or whose state in %s is lost): refused", p, rm.Bundle, c.cfg.Relay.StateDir)
	}
	if err != nil {
		return err
	}
	if rm.BundleSHA256 != c.state.ManifestSHA256 {
		return fmt.Errorf("%s: answers a bundle %s whose manifest is not the one this relay sent: refused", p, rm.Bundle)
	}
	var bm bundleManifest
	kept := filepath.Join(outstandingDir(c.cfg.Relay.StateDir), rm.Bundle+".tar")
	if _, err := readArchive(kept, "relay bundle", sameManifest(c.state.ManifestSHA256), c.dir, &bm, func() []archiveFile { return bm.Files }); err != nil {
		return fmt.Errorf("the relay's copy of the bundle: %w", err)
	}
	c.bundle = &bm
	if len(bm.WorkRequests) != len(c.state.WorkRequests) {
		return fmt.Errorf("relay state of bundle %s does not match its copy", rm.Bundle)
	}
	outDirs := map[string]bool{}
	for i, bw := range bm.WorkRequests {
		if c.state.WorkRequests[i].ID != bw.WorkRequest.ID {
			return fmt.Errorf("relay state of bundle %s does not match its copy", rm.Bundle)
		}
		outDirs[path.Join(wrDir(bw.WorkRequest.ID), "out")+"/"] = true
	}
	for i := range rm.WorkRequests {
		r := &rm.WorkRequests[i]
		if c.results[r.ID] != nil {
			return fmt.Errorf("%s: work request %d appears twice: refused", p, r.ID)
		}
		c.results[r.ID] = r
	}
	var want, got []int64
	for _, bw := range bm.WorkRequests {
		want = append(want, bw.WorkRequest.ID)
	}
	for id := range c.results {
		got = append(got, id)
	}
	slices.Sort(want)
	slices.Sort(got)
	if !slices.Equal(want, got) {
		return fmt.Errorf("%s: holds work requests %v, the bundle sent %v: refused", p, got, want)
	}
	for _, f := range rm.Files {
		dir, _, _ := strings.Cut(f.Path, "/out/")
		if f.Path != checkpointName && !outDirs[dir+"/out/"] {
			return fmt.Errorf("%s: member %s is not an output of the bundle's work requests: refused", p, f.Path)
		}
	}
	for _, bw := range bm.WorkRequests {
		d := wrDir(bw.WorkRequest.ID)
		err := os.Rename(filepath.Join(res.Dir, d, "out"), filepath.Join(c.dir, d, "out"))
		if err != nil && !errors.Is(err, fs.ErrNotExist) {
			return err
		}
		if err := c.restoreCopies(&bw, filepath.Join(c.dir, d)); err != nil {
			return fmt.Errorf("%s: work request %d: %w: refused", p, bw.WorkRequest.ID, err)
		}
	}
	if err := os.Rename(filepath.Join(res.Dir, checkpointName), filepath.Join(c.dir, checkpointName)); err != nil {
		return fmt.Errorf("%s: no %s: refused", p, checkpointName)
	}
	return c.checkCheckpoint(p, rm.AuditProofs)
}

// restoreCopies puts back in out/ the files of a re-signed upload the
// result left out as unchanged copies of the upload's own.
func (c *relayComplete) restoreCopies(bw *bundleWorkRequest, dir string) error {
	copies := c.results[bw.WorkRequest.ID].Copies
	if len(copies) > 0 && strings.ToLower(bw.WorkRequest.TaskName) != "debsign" {
		return errors.New("copies listed for a task that makes none")
	}
	root, err := os.OpenRoot(dir)
	if err != nil {
		return err
	}
	defer root.Close()
	for _, name := range copies {
		if err := validSignedName(name); err != nil {
			return err
		}
		data, err := root.ReadFile(path.Join("in", name))
		if err != nil {
			return fmt.Errorf("copy %s: not a file of the upload", name)
		}
		f, err := root.OpenFile(path.Join("out", name), os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
		if err != nil {
			return fmt.Errorf("copy %s: %w", name, err)
		}
		_, err = f.Write(data)
		if cerr := f.Close(); err == nil {
			err = cerr
		}
		if err != nil {
			return err
		}
	}
	return nil
}

// checkCheckpoint checks the offline host's audit checkpoint with its
// verifier key, when the relay has it, and that the offline log only grew
// since the checkpoints the relay saw (checkConsistency).
func (c *relayComplete) checkCheckpoint(p string, proofs []auditProof) error {
	if c.cfg.Relay.AuditPublicKey == "" {
		return nil
	}
	msg, err := readInput(filepath.Join(c.dir, checkpointName), "checkpoint", maxKeyFileSize)
	if err != nil {
		return err
	}
	cp, err := OpenCheckpoint(msg, c.cfg.Relay.AuditPublicKey)
	if err != nil {
		return fmt.Errorf("%s: the offline audit %w: refused", p, err)
	}
	if cp.Legacy {
		return fmt.Errorf("%s: the offline audit checkpoint has no tree (written by an older debusine-signing): refused", p)
	}
	return c.checkConsistency(p, cp, proofs)
}

// verify checks one work request's outputs before anything is uploaded:
// each was made with the work request's key over its input, and the
// result's outcome is the one its outputs give.
func (c *relayComplete) verify(bw *bundleWorkRequest) error {
	wr := &bw.WorkRequest
	res := c.results[wr.ID]
	dir := filepath.Join(c.dir, wrDir(wr.ID))
	root, err := os.OpenRoot(dir)
	if err != nil {
		return err
	}
	defer root.Close()
	read := func(name string) ([]byte, error) {
		b, err := root.ReadFile(name)
		if err != nil {
			return nil, fmt.Errorf("output %s is missing", name)
		}
		return b, nil
	}
	for name := range res.Logs {
		if strings.ContainsAny(name, "/\\\x00") || !strings.HasSuffix(name, ".log") || name == ".log" {
			return fmt.Errorf("debug log name %q: refused", name)
		}
	}
	expected := map[string]bool{}
	switch strings.ToLower(wr.TaskName) {
	case "sign":
		t, err := parseSignTask(wr)
		if err != nil {
			return err
		}
		if err := c.verifySign(t, bw, res, root, read, expected); err != nil {
			return err
		}
	case "debsign":
		t, err := parseDebsignTask(wr)
		if err != nil {
			return err
		}
		if res.Success {
			if err := c.verifyDebsign(t, bw, read, expected); err != nil {
				return err
			}
		}
	case "signrepositoryindex":
		t, err := parseRepositoryIndexTask(wr)
		if err != nil {
			return err
		}
		if res.Success {
			keyring, err := c.keyring(t.SigningKeys...)
			if err != nil {
				return err
			}
			sig, err := read(path.Join("out", t.SignedName))
			if err != nil {
				return err
			}
			data, err := read(path.Join("in", bw.Inputs[0].Files[0]))
			if err != nil {
				return err
			}
			if err := verifyOpenPGP(sig, data, t.Mode, keyring, t.SigningKeys); err != nil {
				return fmt.Errorf("output %s: %w", t.SignedName, err)
			}
			expected[path.Join("out", t.SignedName)] = true
		}
	default:
		return fmt.Errorf("task %s is not one the relay carries", wr.TaskName)
	}
	outs, err := describeFiles(dir, "out")
	if err != nil {
		return err
	}
	for _, f := range outs {
		if !expected[f.Path] {
			return fmt.Errorf("the result holds %s, which the work request did not ask for", f.Path)
		}
	}
	return nil
}

// keyring reads the public keys of OpenPGP keys held offline.
func (c *relayComplete) keyring(fprs ...string) (openpgp.EntityList, error) {
	var armoured [][]byte
	for _, f := range fprs {
		k := c.keys[purposeOpenPGP+":"+f]
		if k == nil {
			return nil, fmt.Errorf("key %s:%s is not among the relay's [[relay.keys]]", purposeOpenPGP, f)
		}
		armoured = append(armoured, k.publicKey)
	}
	return readOpenPGPKeys(armoured...)
}

func (c *relayComplete) verifySign(t *signTask, bw *bundleWorkRequest, res *resultWorkRequest, root *os.Root, read func(string) ([]byte, error), expected map[string]bool) error {
	if res.Results == nil {
		if res.Success {
			return errors.New("reported success without results")
		}
		return nil
	}
	if len(res.Results) != len(bw.Inputs) {
		return fmt.Errorf("results for %d inputs, the work request has %d", len(res.Results), len(bw.Inputs))
	}
	k := c.keys[t.Purpose+":"+t.Fingerprint]
	if k == nil {
		return fmt.Errorf("key %s:%s is not among the relay's [[relay.keys]]", t.Purpose, t.Fingerprint)
	}
	signed, failed := 0, 0
	for i, bi := range bw.Inputs {
		var names []string
		for _, r := range res.Results[i] {
			names = append(names, r.File)
		}
		if !slices.Equal(names, bi.Files) {
			return fmt.Errorf("input %d: results for %v, the input holds %v", bi.Artifact, names, bi.Files)
		}
		for _, r := range res.Results[i] {
			switch {
			case r.OutputFile == nil && r.ErrorMessage == nil:
				return fmt.Errorf("%s: neither output nor error", r.File)
			case r.OutputFile == nil:
				if *r.ErrorMessage != kmodSkipped {
					failed++
				}
				continue
			case *r.OutputFile != r.File+".sig":
				return fmt.Errorf("%s: output named %q", r.File, *r.OutputFile)
			}
			name := path.Join(fmt.Sprintf("out/%d", i), *r.OutputFile)
			sig, err := read(name)
			if err != nil {
				return err
			}
			if err := verifyFileSignature(k, sig, root, path.Join(bi.Dir, r.File)); err != nil {
				return fmt.Errorf("output %s: %w", name, err)
			}
			expected[name] = true
			signed++
		}
	}
	if ok := signed > 0 && failed == 0; ok != res.Success {
		return fmt.Errorf("reported success %v, its results say %v", res.Success, ok)
	}
	return nil
}

// verifyFileSignature checks what the worker's sign task writes for one
// file: a detached Authenticode or kernel module signature, or a
// clear-signed copy.
func verifyFileSignature(k *relayKey, sig []byte, root *os.Root, in string) error {
	if k.Purpose == purposeUEFI {
		cert, err := parseCertificatePEM(k.publicKey)
		if err != nil {
			return err
		}
		f, fi, err := openRootInput(root, in)
		if err != nil {
			return err
		}
		defer f.Close()
		if strings.HasSuffix(in, kmodSuffix) {
			return verifyKmodSignature(sig, f, fi.Size(), cert)
		}
		return verifyAuthenticode(sig, f, fi.Size(), cert)
	}
	keyring, err := readOpenPGPKeys(k.publicKey)
	if err != nil {
		return err
	}
	data, err := root.ReadFile(in)
	if err != nil {
		return err
	}
	return verifyOpenPGP(sig, data, openpgpModeClear, keyring, []string{k.Fingerprint})
}

// verifyDebsign checks a re-signed upload: the .changes, .dsc and
// .buildinfo clear-signed by the key, every listed file present with its
// listed SHA-256, the re-signed files saying what the inputs said and the
// others identical to the inputs.
func (c *relayComplete) verifyDebsign(t *debsignTask, bw *bundleWorkRequest, read func(string) ([]byte, error), expected map[string]bool) error {
	keyring, err := c.keyring(t.Fingerprint)
	if err != nil {
		return err
	}
	in := &input{id: bw.Inputs[0].Artifact, files: bw.Inputs[0].Files}
	changes, err := uploadChanges(in)
	if err != nil {
		return err
	}
	signed, err := read(path.Join("out", changes))
	if err != nil {
		return err
	}
	if err := verifyOpenPGP(signed, nil, openpgpModeClear, keyring, []string{t.Fingerprint}); err != nil {
		return fmt.Errorf("output %s: %w", changes, err)
	}
	expected[path.Join("out", changes)] = true
	fields, err := parseChanges(changes, signed)
	if err != nil {
		return err
	}
	listed, _ := fields["Checksums-Sha256"].([]map[string]string)
	for _, f := range listed {
		name := f["name"]
		if err := validSignedName(name); err != nil {
			return err
		}
		out, err := read(path.Join("out", name))
		if err != nil {
			return err
		}
		if got := fmt.Sprintf("%x", sha256.Sum256(out)); got != f["sha256"] {
			return fmt.Errorf("output %s: sha256 %s, the .changes lists %s", name, got, f["sha256"])
		}
		orig, err := read(path.Join("in", name))
		if err != nil {
			return fmt.Errorf("%s is not a file of the upload", name)
		}
		switch path.Ext(name) {
		case ".dsc", ".buildinfo":
			text, err := stripClearSignature(name, orig)
			if err != nil {
				return err
			}
			if err := verifyOpenPGP(out, text, openpgpModeClear, keyring, []string{t.Fingerprint}); err != nil {
				return fmt.Errorf("output %s: %w", name, err)
			}
		default:
			if !bytes.Equal(out, orig) {
				return fmt.Errorf("output %s differs from the upload's file", name)
			}
		}
		expected[path.Join("out", name)] = true
	}
	return nil
}

// completeOne delivers one work request: its outputs (post_execution), its
// debug logs and its completion, as the worker's run ends. The completion
// body is saved before it is sent and sent as saved, so that a relay
// restarted half-way neither loses it nor makes another.
func (c *relayComplete) completeOne(ctx context.Context, w *worker, bw *bundleWorkRequest, ws *relayWorkState) (string, error) {
	start, cpu0 := time.Now(), cpuTime()
	wr := &bw.WorkRequest
	res := c.results[wr.ID]
	if ws.Completion == nil {
		dir := filepath.Join(c.dir, wrDir(wr.ID))
		root, err := os.OpenRoot(dir)
		if err != nil {
			return "", err
		}
		defer root.Close()
		tr := &taskRun{wr: wr, log: w.log.With("work_request", wr.ID, "task", wr.TaskName), dir: dir, root: root,
			logs: map[string]*bytes.Buffer{}, sources: ws.Sources, stage: "execution"}
		// As the worker checks before each input it signs: a work
		// request aborted or given to another worker while it was out
		// gets nothing, neither outputs nor completion.
		if e := notOurs(w.stillOurs(ctx, tr, 0)); e != nil {
			ws.Completed = nowRFC3339()
			return "not completed, nothing uploaded: " + e.Error(), saveState(outstandingDir(c.cfg.Relay.StateDir), c.state)
		}
		for _, logs := range []map[string]string{ws.Logs, res.Logs} {
			for _, name := range slices.Sorted(func(yield func(string) bool) {
				for n := range logs {
					if !yield(n) {
						return
					}
				}
			}) {
				tr.logf(name, "%s", logs[name])
			}
		}
		err = c.uploadOutputs(ctx, w, tr, bw, res)
		if ctx.Err() != nil {
			return "", ctx.Err()
		}
		duration := time.Duration(ws.FetchMS+res.DurationMS)*time.Millisecond + time.Since(start)
		cpu := time.Duration(ws.FetchCPU+res.CPUTimeMS)*time.Millisecond + cpuTime() - cpu0
		comp, err := w.finish(ctx, tr, res.Success, err, duration, cpu)
		if ctx.Err() != nil {
			return "", ctx.Err()
		}
		if err != nil {
			comp = executeFailedCompletion(wr, err)
		}
		if ws.Completion, err = json.Marshal(comp); err != nil {
			return "", err
		}
		if err := saveState(outstandingDir(c.cfg.Relay.StateDir), c.state); err != nil {
			return "", err
		}
	}
	var comp completion
	json.Unmarshal(ws.Completion, &comp)
	outcome := "completed: " + comp.Result
	err := w.api.complete(ctx, wr.ID, ws.Completion)
	switch status := httpStatus(err); {
	case err == nil:
	case status == http.StatusForbidden || status == 0:
		return "", err
	default:
		// The server will never take it (the work request was given to
		// another worker, or is gone): say so, and do not retry.
		outcome = fmt.Sprintf("the server refused the completion: %v", err)
		w.log.Error("the server refused the completion", "work_request", wr.ID, "error", err)
	}
	ws.Completed = nowRFC3339()
	return outcome, saveState(outstandingDir(c.cfg.Relay.StateDir), c.state)
}

// uploadOutputs is the post_execution stage of the worker's tasks.
func (c *relayComplete) uploadOutputs(ctx context.Context, w *worker, tr *taskRun, bw *bundleWorkRequest, res *resultWorkRequest) error {
	wr := &bw.WorkRequest
	if !res.Success && res.Results == nil {
		return nil
	}
	tr.enter("post_execution")
	inputs := make([]*input, len(bw.Inputs))
	for i, bi := range bw.Inputs {
		inputs[i] = &input{id: bi.Artifact, art: &artifact{ID: bi.Artifact, Category: bi.Category, Data: bi.Data}, dir: bi.Dir, files: bi.Files, perm: bi.Permission}
	}
	switch strings.ToLower(wr.TaskName) {
	case "sign":
		t, _ := parseSignTask(wr)
		for i, in := range inputs {
			data, files := t.output(i, res.Results[i])
			if _, err := w.api.createArtifact(ctx, "debusine:signing-output", wr.Workspace, wr.ID, data, tr.outFiles(files), []int64{in.id}); err != nil {
				return err
			}
		}
	case "debsign":
		data, files, err := debsignOutput(tr, inputs[0])
		if err != nil {
			return err
		}
		_, err = w.api.createArtifact(ctx, "debian:upload", wr.Workspace, wr.ID, data, tr.outFiles(files), []int64{inputs[0].id})
		return err
	case "signrepositoryindex":
		t, _ := parseRepositoryIndexTask(wr)
		data, files := t.output()
		_, err := w.api.createArtifact(ctx, "debian:repository-index", wr.Workspace, wr.ID, data, tr.outFiles(files), []int64{inputs[0].id})
		return err
	}
	return nil
}

// finish files the completed bundle: its state and the offline host's
// audit checkpoint move to completed/, the copy of the bundle goes.
func (c *relayComplete) finish(result string, e *env) error {
	done := completedDir(c.cfg.Relay.StateDir)
	if err := os.MkdirAll(done, 0o700); err != nil {
		return err
	}
	checkpoint, err := readInput(filepath.Join(c.dir, checkpointName), "checkpoint", maxKeyFileSize)
	if err != nil {
		return err
	}
	cp := filepath.Join(done, c.state.ID+".checkpoint")
	if err := writeFileSync(cp, checkpoint, 0o600); err != nil {
		return err
	}
	if err := c.keepNewest(checkpoint); err != nil {
		return err
	}
	c.state.CompletedAt = nowRFC3339()
	if err := saveState(done, c.state); err != nil {
		return err
	}
	outstanding := outstandingDir(c.cfg.Relay.StateDir)
	os.Remove(filepath.Join(outstanding, c.state.ID+".json"))
	os.Remove(filepath.Join(outstanding, c.state.ID+".tar"))
	syncDir(outstanding)
	fmt.Fprintf(e.stdout, "bundle %s completed from %s; the offline audit checkpoint is kept in %s\n", c.state.ID, result, cp)
	return nil
}

// keepNewest keeps in <state_dir>/newest.checkpoint the checkpoint covering
// the most rows, for `audit verify --checkpoint` on the offline host.
// Without the verifier key, the newest received is kept.
func (c *relayComplete) keepNewest(checkpoint []byte) error {
	newest := filepath.Join(c.cfg.Relay.StateDir, newestCheckpointName)
	if vkey := c.cfg.Relay.AuditPublicKey; vkey != "" {
		if prev, err := readInput(newest, "checkpoint", maxKeyFileSize); err == nil {
			old, oerr := OpenCheckpoint(prev, vkey)
			cp, cerr := OpenCheckpoint(checkpoint, vkey)
			if oerr == nil && cerr == nil && cp.Size < old.Size {
				return nil
			}
		}
	}
	if err := writeFileSync(newest+".tmp", checkpoint, 0o600); err != nil {
		return err
	}
	return os.Rename(newest+".tmp", newest)
}
