package main

// The signing tasks the worker runs (protocol.md §6), and the frame around
// them: task lookup, configuration, debug logs, runtime statistics and the
// completion result.

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"maps"
	"os"
	"path"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"time"
)

// signingTask is one task this build can run.
type signingTask struct {
	version   any             // the server's TASK_VERSION: 1, or nil (generatekey)
	available map[string]bool // advertised as signing:<task>:available:<key>
	configure func(wr *workRequest) (taskRunner, error)
}

// taskRunner runs a configured task: true for success, false for failure;
// an error is a failure whose message goes to the current stage's log.
type taskRunner func(ctx context.Context, tr *taskRun) (bool, error)

// tasks lists the tasks by the lower-case name the server uses. What is
// not in it is neither advertised nor run.
func (w *worker) tasks() map[string]signingTask {
	return map[string]signingTask{
		"noop":                {version: 1, configure: configureNoop},
		"generatekey":         {version: nil, configure: w.configureGenerateKey},
		"sign":                {version: 1, available: map[string]bool{purposeUEFI: true}, configure: w.configureSign},
		"debsign":             {version: 1, available: map[string]bool{"": true}, configure: w.configureDebsign},
		"signrepositoryindex": {version: 1, configure: w.configureSignRepositoryIndex},
	}
}

// taskRun is the state of one run: its work directory, its debug logs and
// the artifacts it read (which the debug-log artifact relates to).
type taskRun struct {
	wr      *workRequest
	log     *slog.Logger
	dir     string   // the work directory
	root    *os.Root // the same, for names that come from the network
	stage   string
	logs    map[string]*bytes.Buffer
	sources []int64
	// auditExtra is added to the data of every sign audit row (the relay
	// names its bundle there).
	auditExtra map[string]any
}

// audit is the audit context of a signature over in: the work request and
// the server's answer to the permission check.
func (tr *taskRun) audit(in *input) auditContext {
	extra := in.perm.auditExtra()
	maps.Copy(extra, tr.auditExtra)
	return auditContext{WorkRequest: &tr.wr.ID, Extra: extra}
}

// enter starts a stage (fetch_input, configure_for_execution, execution,
// post_execution): stages.log records it and errors go to <stage>.log.
func (tr *taskRun) enter(stage string) {
	tr.stage = stage
	tr.logf("stages.log", "%s %s\n", time.Now().UTC().Format(time.RFC3339Nano), stage)
}

func (tr *taskRun) logf(file, format string, args ...any) {
	b := tr.logs[file]
	if b == nil {
		b = new(bytes.Buffer)
		tr.logs[file] = b
	}
	fmt.Fprintf(b, format, args...)
}

// decodeTaskData reads task_data or dynamic_task_data into v. Unknown keys
// are tolerated: the server may add some (protocol.md §5).
func decodeTaskData(raw json.RawMessage, v any) error {
	if len(raw) == 0 || string(raw) == "null" {
		return nil
	}
	return json.Unmarshal(raw, v)
}

func errorCompletion(code, msg string) completion {
	return completion{Result: "error", OutputData: &outputData{Errors: []taskError{{Message: msg, Code: code}}}}
}

// execute runs one work request and delivers its result. A run cut short by
// ctx (SIGTERM) is abandoned without a word: the server retries it.
func (w *worker) execute(ctx context.Context, wr *workRequest) error {
	log := w.log.With("work_request", wr.ID, "task", wr.TaskName)
	log.Info("work request started")
	c, ok := w.runTask(ctx, wr, log)
	if !ok || ctx.Err() != nil {
		log.Warn("work request abandoned on signal; the server will retry it")
		return ctx.Err()
	}
	log.Info("work request finished", "result", c.Result)
	body, err := json.Marshal(c)
	if err != nil {
		return fmt.Errorf("work request %d: %w", wr.ID, err)
	}
	return w.deliver(ctx, wr.ID, body)
}

// configure returns wr's configured task, or the error completion of a
// work request this worker cannot run: wrong type, unknown task (on a
// relay: one the offline host does not run), bad task data.
func (w *worker) configure(wr *workRequest) (taskRunner, *completion) {
	fail := func(code, msg string) (taskRunner, *completion) {
		c := errorCompletion(code, msg)
		return nil, &c
	}
	if !strings.EqualFold(wr.TaskType, "Signing") {
		return fail("wrong-task-type", fmt.Sprintf("Task: %s is of type %s, not %s", wr.TaskName, wr.TaskType, "Signing"))
	}
	name := strings.ToLower(wr.TaskName)
	t, ok := w.tasks()[name]
	if !ok || (w.relayKeys != nil && !relayTasks[name]) {
		return fail("setup-failed", fmt.Sprintf("Task: %s is not a task this signing worker can run", wr.TaskName))
	}
	run, err := t.configure(wr)
	if err != nil {
		return fail("configure-failed", fmt.Sprintf("Task: %s Error configure: %v", wr.TaskName, err))
	}
	return run, nil
}

// runTask returns the completion of wr, or false when ctx ended first.
func (w *worker) runTask(ctx context.Context, wr *workRequest, log *slog.Logger) (completion, bool) {
	run, bad := w.configure(wr)
	if bad != nil {
		return *bad, true
	}

	start, cpu0 := time.Now(), cpuTime()
	executeFailed := func(err error) (completion, bool) {
		log.Error("task failed to execute", "error", err)
		return errorCompletion("execute-failed", fmt.Sprintf("Task: %s Error execute: %v", wr.TaskName, err)), ctx.Err() == nil
	}
	dir, err := os.MkdirTemp(w.workDir, fmt.Sprintf("work-request-%d-", wr.ID))
	if err != nil {
		return executeFailed(err)
	}
	defer os.RemoveAll(dir)
	root, err := os.OpenRoot(dir)
	if err != nil {
		return executeFailed(err)
	}
	defer root.Close()

	tr := &taskRun{wr: wr, log: log, dir: dir, root: root, logs: map[string]*bytes.Buffer{}}
	tr.enter("fetch_input")
	success, err := run(ctx, tr)
	if ctx.Err() != nil {
		return completion{}, false
	}
	c := w.finish(ctx, tr, success, err, time.Since(start), cpuTime()-cpu0)
	return c, c.Result != "error" || ctx.Err() == nil
}

// finish ends a run: an error goes to the current stage's log, the logs
// are uploaded, and the completion says success or failure with the run's
// statistics, or error when the logs could not be uploaded.
func (w *worker) finish(ctx context.Context, tr *taskRun, success bool, err error, duration, cpu time.Duration) completion {
	if err != nil {
		tr.log.Warn("task failed", "stage", tr.stage, "error", err)
		tr.logf(tr.stage+".log", "%v\n", err)
		success = false
	}
	if success {
		delete(tr.logs, "stages.log")
	}
	if err := w.uploadDebugLogs(ctx, tr); err != nil {
		tr.log.Error("task failed to execute", "error", err)
		return errorCompletion("execute-failed", fmt.Sprintf("Task: %s Error execute: %v", tr.wr.TaskName, err))
	}
	result := "failure"
	if success {
		result = "success"
	}
	return completion{Result: result, OutputData: &outputData{RuntimeStatistics: &runtimeStatistics{
		Duration: int64(duration.Round(time.Second) / time.Second),
		CPUTime:  int64(cpu.Round(time.Second) / time.Second),
	}}}
}

// uploadDebugLogs stores the run's logs as debusine:work-request-debug-logs
// (protocol.md §6.6), related to every artifact the run read.
func (w *worker) uploadDebugLogs(ctx context.Context, tr *taskRun) error {
	names := make([]string, 0, len(tr.logs))
	for n := range tr.logs {
		names = append(names, n)
	}
	slices.Sort(names)
	files := make([]outFile, 0, len(names))
	for _, n := range names {
		files = append(files, outFile{Name: n, ContentType: "text/plain; charset=utf-8", Data: tr.logs[n].Bytes()})
	}
	_, err := w.api.createArtifact(ctx, "debusine:work-request-debug-logs", tr.wr.Workspace, tr.wr.ID, map[string]any{}, files, tr.sources)
	return err
}

// cpuTime is the CPU time the process has used so far.
func cpuTime() time.Duration {
	var ru syscall.Rusage
	if syscall.Getrusage(syscall.RUSAGE_SELF, &ru) != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

func configureNoop(wr *workRequest) (taskRunner, error) {
	var d struct {
		Result bool `json:"result"`
	}
	if err := decodeTaskData(wr.TaskData, &d); err != nil {
		return nil, err
	}
	return func(context.Context, *taskRun) (bool, error) { return d.Result, nil }, nil
}

// normalFingerprint is the form fingerprints are stored in.
func normalFingerprint(f string) string {
	return strings.ToUpper(strings.ReplaceAll(strings.TrimSpace(f), ":", ""))
}

// lookupKey finds a key for a task: present in the store and usable on
// this worker.
func (w *worker) lookupKey(purpose, fingerprint string) (*Key, error) {
	k, err := w.st.Key(purpose, fingerprint)
	if err != nil {
		return nil, err
	}
	if err := w.keyUsable(k); err != nil {
		return nil, err
	}
	return k, nil
}

// configureGenerateKey: generate a key, store and audit it, then record it
// on the server as a debusine:signing-key asset (protocol.md §6.2).
func (w *worker) configureGenerateKey(wr *workRequest) (taskRunner, error) {
	var d struct {
		Purpose     string `json:"purpose"`
		Description string `json:"description"`
	}
	if err := decodeTaskData(wr.TaskData, &d); err != nil {
		return nil, err
	}
	generate := map[string]func(*Store, string, *int64) (string, error){
		purposeUEFI:    generateUEFIKey,
		purposeOpenPGP: generateOpenPGPKey,
	}[d.Purpose]
	if generate == nil {
		return nil, fmt.Errorf("purpose %q: want %s or %s", d.Purpose, purposeUEFI, purposeOpenPGP)
	}
	return func(ctx context.Context, tr *taskRun) (bool, error) {
		tr.enter("execution")
		fpr, err := generate(w.st, d.Description, &wr.ID)
		if err != nil {
			return false, err
		}
		tr.logf("cmd-output.log", "generated %s key %s\n", d.Purpose, fpr)
		k, err := w.st.Key(d.Purpose, fpr)
		if err != nil {
			return false, err
		}
		tr.enter("post_execution")
		return true, w.api.createSigningKeyAsset(ctx, d.Purpose, fpr, k.PublicKey, d.Description, wr.Workspace, wr.ID)
	}, nil
}

// input is one downloaded input artifact.
type input struct {
	id    int64
	art   *artifact
	dir   string   // its files, relative to the work directory
	files []string // sorted
	perm  *permission
}

// fetch downloads artifact id into the work directory under dir, checking
// its category when want is not empty, and remembers it as a source.
func (w *worker) fetch(ctx context.Context, tr *taskRun, id int64, want, dir string) (*input, error) {
	a, err := w.api.getArtifact(ctx, id)
	if err != nil {
		return nil, err
	}
	if want != "" && a.Category != want {
		return nil, fmt.Errorf("artifact %d is a %s, not a %s", id, a.Category, want)
	}
	in := &input{id: id, art: a, dir: dir}
	for name := range a.Files {
		if err := checkName(name); err != nil {
			return nil, fmt.Errorf("artifact %d: %w", id, err)
		}
		in.files = append(in.files, name)
	}
	slices.Sort(in.files)
	if err := tr.root.MkdirAll(dir, 0o700); err != nil {
		return nil, err
	}
	sub, err := tr.root.OpenRoot(dir)
	if err != nil {
		return nil, err
	}
	defer sub.Close()
	for _, name := range in.files {
		if err := w.api.download(ctx, sub, name, a.Files[name]); err != nil {
			return nil, fmt.Errorf("artifact %d: %w", id, err)
		}
	}
	tr.sources = append(tr.sources, id)
	tr.logf("fetch_input.log", "downloaded artifact %d (%s): %d file(s)\n", id, a.Category, len(in.files))
	return in, nil
}

// permit runs the sign_with check of key on an input and fails unless the
// server grants it: the server is the final authority.
func (w *worker) permit(ctx context.Context, tr *taskRun, purpose, fpr string, in *input) error {
	p, err := w.api.checkPermission(ctx, purpose, fpr, in.id, tr.wr.ID, tr.wr.Workspace)
	if err != nil {
		return err
	}
	if !p.HasPermission {
		who := "the work request's creator"
		if p.Username != nil {
			who = "user " + *p.Username
		}
		return fmt.Errorf("%s may not sign artifact %d with %s key %s (no sign_with permission)", who, in.id, purpose, fpr)
	}
	in.perm = p
	return nil
}

// signResult is one entry of a debusine:signing-output's results.
type signResult struct {
	File         string  `json:"file"`
	OutputFile   *string `json:"output_file"`
	ErrorMessage *string `json:"error_message"`
}

// signTask is the task data of a sign work request (protocol.md §6.3).
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
		return nil, fmt.Errorf("no key")
	case len(t.UnsignedIDs) == 0:
		return nil, fmt.Errorf("dynamic_task_data has no unsigned_ids")
	case len(t.PackageNames) != 0 && len(t.PackageNames) != len(t.UnsignedIDs):
		return nil, fmt.Errorf("dynamic_task_data: %d unsigned_binary_package_names for %d unsigned_ids", len(t.PackageNames), len(t.UnsignedIDs))
	}
	return t, nil
}

// configureSign: the sign task (protocol.md §6.3).
func (w *worker) configureSign(wr *workRequest) (taskRunner, error) {
	t, err := parseSignTask(wr)
	if err != nil {
		return nil, err
	}
	return func(ctx context.Context, tr *taskRun) (bool, error) {
		inputs, err := w.fetchSignInputs(ctx, tr, t)
		if err != nil {
			return false, err
		}
		k, err := w.lookupKey(t.Purpose, t.Fingerprint)
		if err != nil {
			return false, err
		}
		tr.enter("execution")
		results, ok, err := w.signInputs(ctx, tr, t, k, inputs)
		if err != nil {
			return false, err
		}
		tr.enter("post_execution")
		for i, in := range inputs {
			data, files := t.output(i, results[i])
			if _, err := w.api.createArtifact(ctx, "debusine:signing-output", tr.wr.Workspace, tr.wr.ID, data, tr.outFiles(files), []int64{in.id}); err != nil {
				return false, err
			}
		}
		return ok, nil
	}, nil
}

// fetchSignInputs downloads and checks every input of a sign task: every
// check on every input passes before anything is signed.
func (w *worker) fetchSignInputs(ctx context.Context, tr *taskRun, t *signTask) ([]*input, error) {
	inputs := make([]*input, len(t.UnsignedIDs))
	for i, id := range t.UnsignedIDs {
		in, err := w.fetch(ctx, tr, id, "debusine:signing-input", fmt.Sprintf("in/%d", i))
		if err != nil {
			return nil, err
		}
		if err := w.checkTrustedCerts(in); err != nil {
			return nil, err
		}
		if err := w.permit(ctx, tr, t.Purpose, t.Fingerprint, in); err != nil {
			return nil, err
		}
		inputs[i] = in
	}
	return inputs, nil
}

// kmodSkipped is the result of a kernel module left unsigned, as Debusine
// words it.
const kmodSkipped = "Skipped kernel module (not yet supported)"

// signInputs is the sign task's execution stage: each file of input i is
// signed into out/<i>/<file>.sig. It returns the results of each input and
// whether the task succeeded (something signed, nothing failed).
func (w *worker) signInputs(ctx context.Context, tr *taskRun, t *signTask, k *Key, inputs []*input) ([][]signResult, bool, error) {
	signFile, err := w.fileSigner(k)
	if err != nil {
		return nil, false, err
	}
	signed, failed := 0, 0
	results := make([][]signResult, len(inputs))
	for i, in := range inputs {
		for _, name := range in.files {
			r := signResult{File: name}
			if strings.HasSuffix(name, kmodSuffix) && (w.skipKernelModules || t.Purpose != purposeUEFI) {
				msg := kmodSkipped
				r.ErrorMessage = &msg
			} else {
				out := name + ".sig"
				err := signFile(ctx, tr, path.Join(in.dir, name), path.Join(fmt.Sprintf("out/%d", i), out), tr.audit(in))
				if ctx.Err() != nil {
					return nil, false, ctx.Err()
				}
				if err != nil {
					msg := strings.ReplaceAll(err.Error(), tr.dir+"/", "")
					r.ErrorMessage = &msg
					failed++
					tr.logf("cmd-output.log", "%s: %v\n", name, err)
				} else {
					r.OutputFile = &out
					signed++
					tr.logf("cmd-output.log", "%s: signed\n", name)
				}
			}
			results[i] = append(results[i], r)
		}
	}
	return results, signed > 0 && failed == 0, nil
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

// fileSigner prepares key k once for the whole task and returns the
// function signing one file of the work directory into another.
func (w *worker) fileSigner(k *Key) (func(ctx context.Context, tr *taskRun, in, out string, ac auditContext) error, error) {
	switch k.Purpose {
	case purposeUEFI:
		signer, cert, err := uefiSigner(w.st, k)
		if err != nil {
			return nil, err
		}
		return func(ctx context.Context, tr *taskRun, in, out string, ac auditContext) error {
			// Read through the work directory's root, like every other
			// file of a task, so a name can never reach outside it.
			f, fi, err := openRootInput(tr.root, in)
			if err != nil {
				return err
			}
			defer f.Close()
			sign := signUEFIDetached
			if strings.HasSuffix(in, kmodSuffix) {
				sign = signKmodDetached
			}
			sig, err := sign(w.st, k, signer, cert, in, f, fi.Size(), ac)
			if err != nil {
				return err
			}
			return tr.writeFile(out, sig)
		}, nil
	case purposeOpenPGP:
		return func(ctx context.Context, tr *taskRun, in, out string, ac auditContext) error {
			data, err := tr.root.ReadFile(in)
			if err != nil {
				return err
			}
			sig, err := signOpenPGPData(w.st, []*Key{k}, data, openpgpModeClear, ac)
			if err != nil {
				return err
			}
			return tr.writeFile(out, sig)
		}, nil
	}
	return nil, fmt.Errorf("key %s: purpose %s cannot sign files here", k, k.Purpose)
}

// writeFile writes data to name in the work directory, making its parents.
func (tr *taskRun) writeFile(name string, data []byte) error {
	if dir := path.Dir(name); dir != "." {
		if err := tr.root.MkdirAll(dir, 0o700); err != nil {
			return err
		}
	}
	return tr.root.WriteFile(name, data, 0o600)
}

// outFiles points output files (Path relative to the work directory) at
// the work directory's root.
func (tr *taskRun) outFiles(files []outFile) []outFile {
	for i := range files {
		if files[i].Path != "" {
			files[i].Root = tr.root
		}
	}
	return files
}

// checkTrustedCerts: every certificate a signing input names must be one
// this installation trusts.
func (w *worker) checkTrustedCerts(in *input) error {
	var d struct {
		TrustedCerts []string `json:"trusted_certs"`
	}
	if err := decodeTaskData(in.art.Data, &d); err != nil {
		return fmt.Errorf("artifact %d: data: %w", in.id, err)
	}
	for _, c := range d.TrustedCerts {
		if !w.trusted[normalFingerprint(c)] {
			return fmt.Errorf("artifact %d names certificate %s, which is not in this worker's trusted_certs", in.id, c)
		}
	}
	return nil
}

// debsignTask is the task data of a debsign work request (protocol.md §6.4).
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

// configureDebsign: re-sign a debian:upload (protocol.md §6.4).
func (w *worker) configureDebsign(wr *workRequest) (taskRunner, error) {
	t, err := parseDebsignTask(wr)
	if err != nil {
		return nil, err
	}
	return func(ctx context.Context, tr *taskRun) (bool, error) {
		in, err := w.fetchDebsignInput(ctx, tr, t)
		if err != nil {
			return false, err
		}
		k, err := w.lookupKey(purposeOpenPGP, t.Fingerprint)
		if err != nil {
			return false, err
		}
		tr.enter("execution")
		if err := w.debsign(tr, k, in); err != nil {
			return false, err
		}
		tr.enter("post_execution")
		data, files, err := debsignOutput(tr, in)
		if err != nil {
			return false, err
		}
		_, err = w.api.createArtifact(ctx, "debian:upload", tr.wr.Workspace, tr.wr.ID, data, tr.outFiles(files), []int64{in.id})
		return err == nil, err
	}, nil
}

// fetchDebsignInput downloads the upload into in/ and checks it.
func (w *worker) fetchDebsignInput(ctx context.Context, tr *taskRun, t *debsignTask) (*input, error) {
	in, err := w.fetch(ctx, tr, t.UnsignedID, "debian:upload", "in")
	if err != nil {
		return nil, err
	}
	if err := w.permit(ctx, tr, purposeOpenPGP, t.Fingerprint, in); err != nil {
		return nil, err
	}
	if _, err := uploadChanges(in); err != nil {
		return nil, err
	}
	return in, nil
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

// debsign is the debsign task's execution stage: the re-signed upload goes
// to out/.
func (w *worker) debsign(tr *taskRun, k *Key, in *input) error {
	changes, err := uploadChanges(in)
	if err != nil {
		return err
	}
	if _, err := debsignUpload(w.st, k, filepath.Join(tr.dir, in.dir, changes), filepath.Join(tr.dir, "out"), tr.audit(in)); err != nil {
		return err
	}
	tr.logf("cmd-output.log", "re-signed %s with %s\n", changes, k.Fingerprint)
	return nil
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
// request (protocol.md §6.5).
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

// configureSignRepositoryIndex: sign one repository index with every key
// into one file (protocol.md §6.5).
func (w *worker) configureSignRepositoryIndex(wr *workRequest) (taskRunner, error) {
	t, err := parseRepositoryIndexTask(wr)
	if err != nil {
		return nil, err
	}
	return func(ctx context.Context, tr *taskRun) (bool, error) {
		in, err := w.fetchRepositoryIndexInput(ctx, tr, t)
		if err != nil {
			return false, err
		}
		keys := make([]*Key, len(t.SigningKeys))
		for i, f := range t.SigningKeys {
			if keys[i], err = w.lookupKey(purposeOpenPGP, f); err != nil {
				return false, err
			}
		}
		tr.enter("execution")
		if err := w.signRepositoryIndex(tr, t, keys, in); err != nil {
			return false, err
		}
		tr.enter("post_execution")
		data, files := t.output()
		_, err = w.api.createArtifact(ctx, "debian:repository-index", tr.wr.Workspace, tr.wr.ID, data, tr.outFiles(files), []int64{in.id})
		return err == nil, err
	}, nil
}

// fetchRepositoryIndexInput downloads the index into in/ and runs one
// permission check per key; they must all say the same, or the audit rows
// could not name one requester and resource.
func (w *worker) fetchRepositoryIndexInput(ctx context.Context, tr *taskRun, t *repositoryIndexTask) (*input, error) {
	if len(t.SigningKeys) == 0 {
		return nil, fmt.Errorf("no signing_keys: nothing to sign with")
	}
	in, err := w.fetch(ctx, tr, t.UnsignedID, "", "in")
	if err != nil {
		return nil, err
	}
	if len(in.files) != 1 {
		return nil, fmt.Errorf("artifact %d holds %d files, want exactly 1", in.id, len(in.files))
	}
	var first []byte
	for _, f := range t.SigningKeys {
		if err := w.permit(ctx, tr, purposeOpenPGP, f, in); err != nil {
			return nil, err
		}
		b, _ := json.Marshal(in.perm)
		if first == nil {
			first = b
		} else if !bytes.Equal(first, b) {
			return nil, fmt.Errorf("the permission checks of the signing keys disagree: %s and %s", first, b)
		}
	}
	return in, nil
}

// signRepositoryIndex is the execution stage: the signature goes to
// out/<signed_name>.
func (w *worker) signRepositoryIndex(tr *taskRun, t *repositoryIndexTask, keys []*Key, in *input) error {
	data, err := tr.root.ReadFile(path.Join(in.dir, in.files[0]))
	if err != nil {
		return err
	}
	sig, err := signOpenPGPData(w.st, keys, data, t.Mode, tr.audit(in))
	if err != nil {
		return err
	}
	tr.logf("cmd-output.log", "signed %s (%s) with %d key(s)\n", in.files[0], t.Mode, len(keys))
	return tr.writeFile(path.Join("out", t.SignedName), sig)
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
