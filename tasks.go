package main

// The signing tasks the worker runs (docs/protocol.md §6), and the frame around
// them: task lookup, configuration, debug logs, runtime statistics and the
// completion result.

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"os"
	"path"
	"path/filepath"
	"slices"
	"strings"
	"sync"
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
	logsMu  sync.Mutex // the sign task's pipeline logs from several goroutines
	logs    map[string]*bytes.Buffer
	sources []int64

	checked time.Time // when the work request's status was last read
}

// enter starts a stage (fetch_input, configure_for_execution, execution,
// post_execution): stages.log records it and errors go to <stage>.log.
func (tr *taskRun) enter(stage string) {
	tr.stage = stage
	tr.logf("stages.log", "%s %s\n", time.Now().UTC().Format(time.RFC3339Nano), stage)
}

func (tr *taskRun) logf(file, format string, args ...any) {
	tr.logsMu.Lock()
	defer tr.logsMu.Unlock()
	b := tr.logs[file]
	if b == nil {
		b = new(bytes.Buffer)
		tr.logs[file] = b
	}
	fmt.Fprintf(b, format, args...)
}

// decodeTaskData reads task_data or dynamic_task_data into v. Unknown keys
// are tolerated: the server may add some (docs/protocol.md §5).
func decodeTaskData(raw json.RawMessage, v any) error {
	if len(raw) == 0 || string(raw) == "null" {
		return nil
	}
	return json.Unmarshal(raw, v)
}

// stageError is a failure of a stage other than the current one: the sign
// task's pipeline fetches inputs and uploads outputs while it signs, and
// a failed download still belongs in fetch_input.log.
type stageError struct {
	stage string
	err   error
}

func (e *stageError) Error() string { return e.err.Error() }
func (e *stageError) Unwrap() error { return e.err }

// notOursError: the work request is no longer this worker's to run (an
// administrator aborted it, or the server gave it to another worker). The
// task stops at once: nothing more is signed or uploaded, and no result is
// sent, as the server would refuse it.
type notOursError struct {
	reason string
}

func (e *notOursError) Error() string {
	return "the work request is no longer assigned to this worker: " + e.reason
}

// stillOurs reads the work request's status from the server, unless it was
// read less than every ago, and fails with a notOursError when the work
// request is not running on this worker any more. Debusine does not notify
// a worker of an abort (it sets the status to aborted and unassigns the
// worker), so the sign tasks call this before each input they sign.
func (w *worker) stillOurs(ctx context.Context, tr *taskRun, every time.Duration) error {
	if !tr.checked.IsZero() && time.Since(tr.checked) < every {
		return nil
	}
	st, err := w.api.workRequestState(ctx, tr.wr.ID)
	switch {
	case httpStatus(err) == http.StatusNotFound:
		return &notOursError{"the server no longer knows it"}
	case err != nil:
		return fmt.Errorf("reading the work request's status: %w", err)
	case st.Status != "running":
		return &notOursError{"its status is " + st.Status}
	case tr.wr.Worker != nil && (st.Worker == nil || *st.Worker != *tr.wr.Worker):
		return &notOursError{"it is assigned to another worker, or none"}
	}
	tr.checked = time.Now()
	return nil
}

func errorCompletion(code, msg string) completion {
	return completion{Result: "error", OutputData: &outputData{Errors: []taskError{{Message: msg, Code: code}}}}
}

// execute runs one work request and delivers its result. A run cut short by
// ctx (SIGTERM) is abandoned without a word: the server retries it. A work
// request that stopped being this worker's gets no result either.
func (w *worker) execute(ctx context.Context, wr *workRequest) error {
	log := w.log.With("work_request", wr.ID, "task", wr.TaskName)
	log.Info("work request started")
	c, err := w.runTask(ctx, wr, log)
	var notOurs *notOursError
	switch {
	case errors.As(err, &notOurs):
		log.Warn("work request stopped: it is no longer this worker's; nothing more is signed or uploaded, and no result is sent", "reason", notOurs.reason)
		return nil
	case err != nil || ctx.Err() != nil:
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

// runTask returns the completion of wr; an error when ctx ended first
// (ctx's), or when the work request stopped being this worker's (a
// notOursError).
func (w *worker) runTask(ctx context.Context, wr *workRequest, log *slog.Logger) (completion, error) {
	if !strings.EqualFold(wr.TaskType, "Signing") {
		return errorCompletion("wrong-task-type", fmt.Sprintf("Task: %s is of type %s, not %s", wr.TaskName, wr.TaskType, "Signing")), nil
	}
	t, ok := w.tasks()[strings.ToLower(wr.TaskName)]
	if !ok {
		return errorCompletion("setup-failed", fmt.Sprintf("Task: %s is not a task this signing worker can run", wr.TaskName)), nil
	}
	run, err := t.configure(wr)
	if err != nil {
		return errorCompletion("configure-failed", fmt.Sprintf("Task: %s Error configure: %v", wr.TaskName, err)), nil
	}

	start, cpu0 := time.Now(), cpuTime()
	executeFailed := func(err error) (completion, error) {
		if ctx.Err() != nil {
			return completion{}, ctx.Err()
		}
		if e := notOurs(err); e != nil {
			return completion{}, e
		}
		log.Error("task failed to execute", "error", err)
		return errorCompletion("execute-failed", fmt.Sprintf("Task: %s Error execute: %v", wr.TaskName, err)), nil
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
		return completion{}, ctx.Err()
	}
	if e := notOurs(err); e != nil {
		return completion{}, e
	}
	if err != nil {
		stage := tr.stage
		var se *stageError
		if errors.As(err, &se) {
			stage = se.stage
		}
		log.Warn("task failed", "stage", stage, "error", err)
		tr.logf(stage+".log", "%v\n", err)
		success = false
	}
	if success {
		delete(tr.logs, "stages.log")
	}
	if err := w.uploadDebugLogs(ctx, tr); err != nil {
		return executeFailed(err)
	}
	result := "failure"
	if success {
		result = "success"
	}
	return completion{Result: result, OutputData: &outputData{RuntimeStatistics: &runtimeStatistics{
		Duration: int64(time.Since(start).Round(time.Second) / time.Second),
		CPUTime:  cpuSeconds(cpuTime() - cpu0),
	}}}, nil
}

// notOurs returns err as a notOursError when it is one, or when it is the
// server answering 401 to one of the task's calls, which it does (Invalid
// worker to update the work request) for a work request that is not this
// worker's; nil otherwise.
func notOurs(err error) *notOursError {
	var e *notOursError
	if errors.As(err, &e) {
		return e
	}
	if httpStatus(err) == http.StatusUnauthorized {
		return &notOursError{err.Error()}
	}
	return nil
}

// cpuSeconds is the CPU time in the whole seconds runtime_statistics
// carries, rounded up: the signing happens in this process and takes well
// under a second for most tasks, which rounding down would report as 0.
func cpuSeconds(d time.Duration) int64 {
	return int64((d + time.Second - 1) / time.Second)
}

// uploadDebugLogs stores the run's logs as debusine:work-request-debug-logs
// (docs/protocol.md §6.6), related to every artifact the run read.
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
// on the server as a debusine:signing-key asset (docs/protocol.md §6.2).
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
	in, err := w.describe(ctx, tr, id, want, dir)
	if err != nil {
		return nil, err
	}
	for _, name := range in.files {
		if err := w.downloadFile(ctx, tr, in, name); err != nil {
			return nil, err
		}
	}
	tr.sources = append(tr.sources, id)
	tr.logf("fetch_input.log", "downloaded artifact %d (%s): %d file(s)\n", id, in.art.Category, len(in.files))
	return in, nil
}

// describe reads artifact id's description, checks its category when want
// is not empty and its file names, and makes the directories its files
// will be downloaded to, under dir in the work directory.
func (w *worker) describe(ctx context.Context, tr *taskRun, id int64, want, dir string) (*input, error) {
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
	for _, name := range in.files {
		if err := tr.root.MkdirAll(path.Join(dir, path.Dir(name)), 0o700); err != nil {
			return nil, err
		}
	}
	return in, nil
}

// downloadFile downloads one file of in to its place in the work directory.
func (w *worker) downloadFile(ctx context.Context, tr *taskRun, in *input, name string) error {
	sub, err := tr.root.OpenRoot(in.dir)
	if err != nil {
		return err
	}
	defer sub.Close()
	if err := w.api.download(ctx, sub, name, in.art.Files[name]); err != nil {
		return fmt.Errorf("artifact %d: %w", in.id, err)
	}
	return nil
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

// configureSign: the sign task (docs/protocol.md §6.3).
func (w *worker) configureSign(wr *workRequest) (taskRunner, error) {
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
	fpr := normalFingerprint(d.Key)
	switch {
	case d.Purpose != purposeUEFI && d.Purpose != purposeOpenPGP:
		return nil, fmt.Errorf("purpose %q: want %s or %s", d.Purpose, purposeUEFI, purposeOpenPGP)
	case fpr == "":
		return nil, fmt.Errorf("no key")
	case len(dyn.UnsignedIDs) == 0:
		return nil, fmt.Errorf("dynamic_task_data has no unsigned_ids")
	case len(dyn.PackageNames) != 0 && len(dyn.PackageNames) != len(dyn.UnsignedIDs):
		return nil, fmt.Errorf("dynamic_task_data: %d unsigned_binary_package_names for %d unsigned_ids", len(dyn.PackageNames), len(dyn.UnsignedIDs))
	}
	return func(ctx context.Context, tr *taskRun) (bool, error) {
		// Every check on every input passes before anything is signed.
		inputs := make([]*input, len(dyn.UnsignedIDs))
		err := parallel(ctx, len(inputs), maxInFlight, func(ctx context.Context, i int) error {
			in, err := w.describe(ctx, tr, dyn.UnsignedIDs[i], "debusine:signing-input", fmt.Sprintf("in/%d", i))
			if err != nil {
				return err
			}
			if err := w.checkTrustedCerts(in); err != nil {
				return err
			}
			if err := w.permit(ctx, tr, d.Purpose, fpr, in); err != nil {
				return err
			}
			inputs[i] = in
			return nil
		})
		if err != nil {
			return false, err
		}
		for _, in := range inputs {
			tr.sources = append(tr.sources, in.id)
		}
		k, err := w.lookupKey(d.Purpose, fpr)
		if err != nil {
			return false, err
		}

		tr.enter("execution")
		signFile, err := w.fileSigner(k)
		if err != nil {
			return false, err
		}
		p := newSignPipeline(ctx, w, tr, inputs)
		defer p.close()
		signed, failed := 0, 0
		results := make([][]signResult, len(inputs))
		for i, in := range inputs {
			if err := p.stillOurs(); err != nil {
				return false, err
			}
			for j, name := range in.files {
				if err := p.downloaded(i, j); err != nil {
					return false, err
				}
				r := signResult{File: name}
				if strings.HasSuffix(name, kmodSuffix) && (w.skipKernelModules || d.Purpose != purposeUEFI) {
					msg := "Skipped kernel module (not yet supported)"
					r.ErrorMessage = &msg
				} else {
					out := name + ".sig"
					ac := auditContext{WorkRequest: &tr.wr.ID, Extra: in.perm.auditExtra()}
					err := signFile(p.ctx, tr, path.Join(in.dir, name), path.Join(fmt.Sprintf("out/%d", i), out), ac)
					if p.ctx.Err() != nil {
						return false, p.err()
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
			tr.logf("fetch_input.log", "downloaded artifact %d (%s): %d file(s)\n", in.id, in.art.Category, len(in.files))

			var files []outFile
			for _, r := range results[i] {
				if r.OutputFile != nil {
					files = append(files, outFile{Name: *r.OutputFile, ContentType: "application/octet-stream", Path: path.Join(fmt.Sprintf("out/%d", i), *r.OutputFile)})
				}
			}
			var pkg *string
			if len(dyn.PackageNames) > 0 {
				pkg = dyn.PackageNames[i]
			}
			data := map[string]any{"purpose": d.Purpose, "fingerprint": fpr, "results": results[i], "binary_package_name": pkg}
			p.upload(i, data, tr.outFiles(files))
		}

		tr.enter("post_execution")
		if err := p.wait(); err != nil {
			return false, err
		}
		return signed > 0 && failed == 0, nil
	}, nil
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

// configureDebsign: re-sign a debian:upload (docs/protocol.md §6.4).
func (w *worker) configureDebsign(wr *workRequest) (taskRunner, error) {
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
	fpr := normalFingerprint(d.Key)
	if fpr == "" || dyn.UnsignedID == 0 {
		return nil, fmt.Errorf("debsign needs task_data key and dynamic_task_data unsigned_id")
	}
	return func(ctx context.Context, tr *taskRun) (bool, error) {
		in, err := w.fetch(ctx, tr, dyn.UnsignedID, "debian:upload", "in")
		if err != nil {
			return false, err
		}
		if err := w.permit(ctx, tr, purposeOpenPGP, fpr, in); err != nil {
			return false, err
		}
		k, err := w.lookupKey(purposeOpenPGP, fpr)
		if err != nil {
			return false, err
		}
		var changes []string
		for _, name := range in.files {
			if strings.HasSuffix(name, ".changes") {
				changes = append(changes, name)
			}
		}
		if len(changes) != 1 {
			return false, fmt.Errorf("artifact %d holds %d .changes files, want 1", in.id, len(changes))
		}

		tr.enter("execution")
		if err := w.stillOurs(ctx, tr, 0); err != nil {
			return false, err
		}
		ac := auditContext{WorkRequest: &tr.wr.ID, Extra: in.perm.auditExtra()}
		signedPath, err := debsignUpload(w.st, k, filepath.Join(tr.dir, "in", changes[0]), filepath.Join(tr.dir, "out"), ac)
		if err != nil {
			return false, err
		}
		tr.logf("cmd-output.log", "re-signed %s with %s\n", changes[0], fpr)
		signed, err := os.ReadFile(signedPath)
		if err != nil {
			return false, err
		}
		fields, err := parseChanges(changes[0], signed)
		if err != nil {
			return false, err
		}

		tr.enter("post_execution")
		files := []outFile{{Name: changes[0], ContentType: uploadContentType(changes[0]), Path: "out/" + changes[0]}}
		listed, _ := fields["Checksums-Sha256"].([]map[string]string)
		for _, f := range listed {
			if err := validSignedName(f["name"]); err != nil {
				return false, err
			}
			files = append(files, outFile{Name: f["name"], ContentType: uploadContentType(f["name"]), Path: "out/" + f["name"]})
		}
		data := map[string]any{"type": "dpkg", "changes_fields": fields}
		_, err = w.api.createArtifact(ctx, "debian:upload", tr.wr.Workspace, tr.wr.ID, data, tr.outFiles(files), []int64{in.id})
		return err == nil, err
	}, nil
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

// configureSignRepositoryIndex: sign one repository index with every key
// into one file (docs/protocol.md §6.5).
func (w *worker) configureSignRepositoryIndex(wr *workRequest) (taskRunner, error) {
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
	return func(ctx context.Context, tr *taskRun) (bool, error) {
		if len(dyn.SigningKeys) == 0 {
			return false, fmt.Errorf("no signing_keys: nothing to sign with")
		}
		in, err := w.fetch(ctx, tr, dyn.UnsignedID, "", "in")
		if err != nil {
			return false, err
		}
		if len(in.files) != 1 {
			return false, fmt.Errorf("artifact %d holds %d files, want exactly 1", in.id, len(in.files))
		}
		// One check per key; they must all say the same, or the audit
		// rows could not name one requester and resource.
		var first []byte
		for _, f := range dyn.SigningKeys {
			if err := w.permit(ctx, tr, purposeOpenPGP, normalFingerprint(f), in); err != nil {
				return false, err
			}
			b, _ := json.Marshal(in.perm)
			if first == nil {
				first = b
			} else if !bytes.Equal(first, b) {
				return false, fmt.Errorf("the permission checks of the signing keys disagree: %s and %s", first, b)
			}
		}
		keys := make([]*Key, len(dyn.SigningKeys))
		for i, f := range dyn.SigningKeys {
			if keys[i], err = w.lookupKey(purposeOpenPGP, normalFingerprint(f)); err != nil {
				return false, err
			}
		}

		tr.enter("execution")
		if err := w.stillOurs(ctx, tr, 0); err != nil {
			return false, err
		}
		data, err := tr.root.ReadFile(path.Join(in.dir, in.files[0]))
		if err != nil {
			return false, err
		}
		ac := auditContext{WorkRequest: &tr.wr.ID, Extra: in.perm.auditExtra()}
		sig, err := signOpenPGPData(w.st, keys, data, d.Mode, ac)
		if err != nil {
			return false, err
		}
		tr.logf("cmd-output.log", "signed %s (%s) with %d key(s)\n", in.files[0], d.Mode, len(keys))

		tr.enter("post_execution")
		ct := "application/pgp-signature"
		if d.Mode == openpgpModeClear {
			ct = "text/plain; charset=utf-8"
		}
		files := []outFile{{Name: d.SignedName, ContentType: ct, Data: sig}}
		_, err = w.api.createArtifact(ctx, "debian:repository-index", tr.wr.Workspace, tr.wr.ID, map[string]any{"path": d.SignedName}, files, []int64{in.id})
		return err == nil, err
	}, nil
}
