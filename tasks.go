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
	"io"
	"log/slog"
	"maps"
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

// runTask returns the completion of wr; an error when ctx ended first
// (ctx's), or when the work request stopped being this worker's (a
// notOursError).
func (w *worker) runTask(ctx context.Context, wr *workRequest, log *slog.Logger) (completion, error) {
	run, bad := w.configure(wr)
	if bad != nil {
		return *bad, nil
	}

	start, cpu0 := time.Now(), cpuTime()
	// From here on the work request's status is watched: an abort
	// cancels tctx, with a notOursError as its cause.
	tctx, stopWatch := w.watch(ctx, wr)
	defer stopWatch()
	stopped := func() error {
		if ctx.Err() != nil {
			return ctx.Err()
		}
		if e := notOurs(context.Cause(tctx)); e != nil {
			return e
		}
		return nil
	}
	executeFailed := func(err error) (completion, error) {
		if err := stopped(); err != nil {
			return completion{}, err
		}
		if e := notOurs(err); e != nil {
			return completion{}, e
		}
		log.Error("task failed to execute", "error", err)
		return executeFailedCompletion(wr, err), nil
	}
	dir, lock, err := w.makeWorkDir(wr.ID)
	if err != nil {
		return executeFailed(err)
	}
	defer func() {
		os.RemoveAll(dir)
		lock.Close()
	}()
	root, err := os.OpenRoot(dir)
	if err != nil {
		return executeFailed(err)
	}
	defer root.Close()

	tr := &taskRun{wr: wr, log: log, dir: dir, root: root, logs: map[string]*bytes.Buffer{}}
	tr.enter("fetch_input")
	success, err := run(tctx, tr)
	if err := stopped(); err != nil {
		return completion{}, err
	}
	if e := notOurs(err); e != nil {
		return completion{}, e
	}
	c, err := w.finish(tctx, tr, success, err, time.Since(start), cpuTime()-cpu0)
	// The watch ends here: an abort it saw at any time up to now, even
	// once the task was done, sends no result.
	stopWatch()
	if err != nil {
		return executeFailed(err)
	}
	if err := stopped(); err != nil {
		return completion{}, err
	}
	return c, nil
}

// makeWorkDir makes the work directory of work request id in w.workDir:
// ".work-request-ID.debusine-signing-tmp-RANDOM", flock(2)ed for as long as
// the task runs (close lock once it is removed). A worker killed mid-task
// leaves it behind; the next worker starting on the same directory removes
// it (sweepTemps), as its lock is free.
func (w *worker) makeWorkDir(id int64) (string, io.Closer, error) {
	dir, lock, err := createOutputTempDir(filepath.Join(w.workDir, fmt.Sprintf("work-request-%d", id)))
	if err != nil {
		return "", nil, fmt.Errorf("making the work directory: %w", err)
	}
	return dir, lock, nil
}

// finish ends a run: an error goes to its stage's log, the logs are
// uploaded, and the completion says success or failure with the run's
// statistics. It fails when the logs could not be uploaded.
func (w *worker) finish(ctx context.Context, tr *taskRun, success bool, err error, duration, cpu time.Duration) (completion, error) {
	if err != nil {
		stage := tr.stage
		var se *stageError
		if errors.As(err, &se) {
			stage = se.stage
		}
		tr.log.Warn("task failed", "stage", stage, "error", err)
		tr.logf(stage+".log", "%v\n", err)
		success = false
	}
	if success {
		delete(tr.logs, "stages.log")
	}
	if err := w.uploadDebugLogs(ctx, tr); err != nil {
		return completion{}, err
	}
	result := "failure"
	if success {
		result = "success"
	}
	return completion{Result: result, OutputData: &outputData{RuntimeStatistics: &runtimeStatistics{
		Duration: int64(duration.Round(time.Second) / time.Second),
		CPUTime:  cpuSeconds(cpu),
	}}}, nil
}

// executeFailedCompletion is the completion of a run that failed outside
// its task, such as its debug logs not reaching the server.
func executeFailedCompletion(wr *workRequest, err error) completion {
	return errorCompletion("execute-failed", fmt.Sprintf("Task: %s Error execute: %v", wr.TaskName, err))
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

// configureSign: the sign task (docs/protocol.md §6.3).
func (w *worker) configureSign(wr *workRequest) (taskRunner, error) {
	t, err := parseSignTask(wr)
	if err != nil {
		return nil, err
	}
	return func(ctx context.Context, tr *taskRun) (bool, error) {
		// Every check on every input passes before anything is signed.
		inputs := make([]*input, len(t.UnsignedIDs))
		err := parallel(ctx, len(inputs), maxInFlight, func(ctx context.Context, i int) error {
			in, err := w.describeSignInput(ctx, tr, t, i)
			inputs[i] = in
			return err
		})
		if err != nil {
			return false, err
		}
		for _, in := range inputs {
			tr.sources = append(tr.sources, in.id)
		}
		k, err := w.lookupKey(t.Purpose, t.Fingerprint)
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
				r, bad := w.signOne(p.ctx, tr, signFile, t, i, in, name)
				if p.ctx.Err() != nil {
					return false, p.err()
				}
				if bad {
					failed++
				} else if r.OutputFile != nil {
					signed++
				}
				results[i] = append(results[i], r)
			}
			tr.logf("fetch_input.log", "downloaded artifact %d (%s): %d file(s)\n", in.id, in.art.Category, len(in.files))
			data, files := t.output(i, results[i])
			p.upload(i, data, tr.outFiles(files))
		}

		tr.enter("post_execution")
		if err := p.wait(); err != nil {
			return false, err
		}
		return signed > 0 && failed == 0, nil
	}, nil
}

// describeSignInput reads and checks input i of a sign task: its
// description, trusted_certs and the server's permission.
func (w *worker) describeSignInput(ctx context.Context, tr *taskRun, t *signTask, i int) (*input, error) {
	in, err := w.describe(ctx, tr, t.UnsignedIDs[i], "debusine:signing-input", fmt.Sprintf("in/%d", i))
	if err != nil {
		return nil, err
	}
	if err := w.checkTrustedCerts(in); err != nil {
		return nil, err
	}
	if err := w.permit(ctx, tr, t.Purpose, t.Fingerprint, in); err != nil {
		return nil, err
	}
	return in, nil
}

// kmodSkipped is the result of a kernel module left unsigned, as Debusine
// words it.
const kmodSkipped = "Skipped kernel module (not yet supported)"

// signOne signs file name of input i into out/<i>/<name>.sig, or skips it
// (a kernel module, as configured); bad says that signing it failed.
func (w *worker) signOne(ctx context.Context, tr *taskRun, signFile fileSignFunc, t *signTask, i int, in *input, name string) (r signResult, bad bool) {
	r = signResult{File: name}
	if strings.HasSuffix(name, kmodSuffix) && (w.skipKernelModules || t.Purpose != purposeUEFI) {
		msg := kmodSkipped
		r.ErrorMessage = &msg
		return r, false
	}
	out := name + ".sig"
	if err := signFile(ctx, tr, path.Join(in.dir, name), path.Join(fmt.Sprintf("out/%d", i), out), tr.audit(in)); err != nil {
		msg := strings.ReplaceAll(err.Error(), tr.dir+"/", "")
		r.ErrorMessage = &msg
		tr.logf("cmd-output.log", "%s: %v\n", name, err)
		return r, true
	}
	r.OutputFile = &out
	tr.logf("cmd-output.log", "%s: signed\n", name)
	return r, false
}

// fileSignFunc signs one file of the work directory into another.
type fileSignFunc func(ctx context.Context, tr *taskRun, in, out string, ac auditContext) error

// fileSigner prepares key k once for the whole task and returns the
// function signing one file of the work directory into another.
func (w *worker) fileSigner(k *Key) (fileSignFunc, error) {
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
			return signOpenPGPRootFile(w.st, []*Key{k}, tr.root, in, out, openpgpModeClear, ac)
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
		if err := w.stillOurs(ctx, tr, 0); err != nil {
			return false, err
		}
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

// configureSignRepositoryIndex: sign one repository index with every key
// into one file (docs/protocol.md §6.5).
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
		if err := w.stillOurs(ctx, tr, 0); err != nil {
			return false, err
		}
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
	if err := signOpenPGPRootFile(w.st, keys, tr.root, path.Join(in.dir, in.files[0]), path.Join("out", t.SignedName), t.Mode, tr.audit(in)); err != nil {
		return err
	}
	tr.logf("cmd-output.log", "signed %s (%s) with %d key(s)\n", in.files[0], t.Mode, len(keys))
	return nil
}
