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
	"os"
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
		"noop": {version: 1, configure: configureNoop},
	}
}

// taskRun is the state of one run: its work directory, its debug logs and
// the artifacts it read (which the debug-log artifact relates to).
type taskRun struct {
	wr      *workRequest
	log     *slog.Logger
	root    *os.Root // the work directory
	stage   string
	logs    map[string]*bytes.Buffer
	sources []int64
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

// runTask returns the completion of wr, or false when ctx ended first.
func (w *worker) runTask(ctx context.Context, wr *workRequest, log *slog.Logger) (completion, bool) {
	if !strings.EqualFold(wr.TaskType, "Signing") {
		return errorCompletion("wrong-task-type", fmt.Sprintf("Task: %s is of type %s, not %s", wr.TaskName, wr.TaskType, "Signing")), true
	}
	t, ok := w.tasks()[strings.ToLower(wr.TaskName)]
	if !ok {
		return errorCompletion("setup-failed", fmt.Sprintf("Task: %s is not a task this signing worker can run", wr.TaskName)), true
	}
	run, err := t.configure(wr)
	if err != nil {
		return errorCompletion("configure-failed", fmt.Sprintf("Task: %s Error configure: %v", wr.TaskName, err)), true
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

	tr := &taskRun{wr: wr, log: log, root: root, logs: map[string]*bytes.Buffer{}}
	tr.enter("fetch_input")
	success, err := run(ctx, tr)
	if ctx.Err() != nil {
		return completion{}, false
	}
	if err != nil {
		log.Warn("task failed", "stage", tr.stage, "error", err)
		tr.logf(tr.stage+".log", "%v\n", err)
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
		CPUTime:  int64((cpuTime() - cpu0).Round(time.Second) / time.Second),
	}}}, true
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
