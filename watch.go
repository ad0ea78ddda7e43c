package main

// Watching a work request while it runs. Debusine never tells a worker
// that a work request it runs was aborted: it sets the status to aborted
// and unassigns the worker. So the worker reads the status itself
// (docs/protocol.md §2.3), from a goroutine every few seconds for the whole
// run, and cancels the run's context the moment the work request is no
// longer its own, wherever the task is: downloading, signing, uploading.
// From then on nothing more is signed, uploaded or attached, and no result
// is sent.

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"sync"
	"time"
)

// defaultWatchEvery is how often a running work request's status is read:
// an abort is noticed within seconds, for one small GET every few seconds.
const defaultWatchEvery = 2 * time.Second

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

// ours reads wr's status from the server and fails with a notOursError
// when wr is not running on this worker any more.
func (w *worker) ours(ctx context.Context, wr *workRequest) error {
	st, err := w.api.workRequestState(ctx, wr.ID)
	switch {
	case httpStatus(err) == http.StatusNotFound:
		return &notOursError{"the server no longer knows it"}
	case err != nil:
		return fmt.Errorf("reading the work request's status: %w", err)
	case st.Status != "running":
		return &notOursError{"its status is " + st.Status}
	case wr.Worker != nil && (st.Worker == nil || *st.Worker != *wr.Worker):
		return &notOursError{"it is assigned to another worker, or none"}
	}
	return nil
}

// stillOurs is ours, unless the status was read by it less than every
// ago: the tasks call it before they sign, in addition to the watch.
func (w *worker) stillOurs(ctx context.Context, tr *taskRun, every time.Duration) error {
	if !tr.checked.IsZero() && time.Since(tr.checked) < every {
		return nil
	}
	if err := w.ours(ctx, tr.wr); err != nil {
		return err
	}
	tr.checked = time.Now()
	return nil
}

// watch returns ctx for running wr, cancelled with a notOursError as its
// cause as soon as a reading of the status (every w.watchEvery) says wr is
// not this worker's any more; and stop, which ends the watch and waits for
// it, and cancels ctx (with context.Canceled) if nothing did before. A
// reading that fails is logged, and the next one tried.
func (w *worker) watch(ctx context.Context, wr *workRequest) (context.Context, func()) {
	every := w.watchEvery
	if every <= 0 {
		every = defaultWatchEvery
	}
	run, abort := context.WithCancelCause(ctx)
	wctx, quit := context.WithCancel(run)
	var wg sync.WaitGroup
	wg.Go(func() {
		t := time.NewTicker(every)
		defer t.Stop()
		for {
			select {
			case <-wctx.Done():
				return
			case <-t.C:
			}
			err := w.ours(wctx, wr)
			if e := notOurs(err); e != nil {
				w.log.Warn("the work request was taken away while it ran; stopping it", "work_request", wr.ID, "reason", e.reason)
				abort(e)
				return
			}
			if err != nil && wctx.Err() == nil {
				w.log.Warn("cannot read the status of the running work request", "work_request", wr.ID, "error", err)
			}
		}
	})
	return run, func() {
		quit()
		wg.Wait()
		abort(context.Canceled)
	}
}
