package main

// The sign task's pipeline: its inputs' files download a few at a time
// ahead of the signing, and each input's outputs upload while the next
// input downloads and is signed, so that a task of many files costs a few
// round trips per file in parallel rather than in sequence. The guarantees
// of the sequential task hold: every input's trusted_certs and sign_with
// checks pass before the pipeline starts, a file is signed only once its
// SHA-256 matched, an output is uploaded only after its audit row is
// stored, once, and outputs are created in the order of the inputs. A
// download that fails stops the pipeline: the outputs of the inputs before
// it may be on the server already, and the task fails.

import (
	"context"
	"sync"
)

type signPipeline struct {
	w      *worker
	tr     *taskRun
	inputs []*input
	parent context.Context
	// ctx ends the pipeline: the task's context, cancelled with the first
	// failure of any stage as its cause.
	ctx    context.Context
	cancel context.CancelCauseFunc

	done      [][]chan error // done[i][j]: the download of inputs[i].files[j]
	ready     chan signOutput
	readyOnce sync.Once
	wg        sync.WaitGroup
}

// signOutput is the debusine:signing-output of input i, signed and
// audited, to upload.
type signOutput struct {
	i     int
	data  any
	files []outFile
}

// newSignPipeline starts the downloads of every file of inputs, in order,
// maxInFlight at a time, and the uploader. The caller signs, calling
// downloaded before each file and upload after each input, then wait; and
// close whatever happens.
func newSignPipeline(ctx context.Context, w *worker, tr *taskRun, inputs []*input) *signPipeline {
	p := &signPipeline{w: w, tr: tr, inputs: inputs, parent: ctx,
		ready: make(chan signOutput, len(inputs))}
	p.ctx, p.cancel = context.WithCancelCause(ctx)
	type file struct{ i, j int }
	var files []file
	p.done = make([][]chan error, len(inputs))
	for i, in := range inputs {
		p.done[i] = make([]chan error, len(in.files))
		for j := range in.files {
			p.done[i][j] = make(chan error, 1)
			files = append(files, file{i, j})
		}
	}
	p.wg.Go(func() {
		err := parallel(p.ctx, len(files), maxInFlight, func(ctx context.Context, n int) error {
			f := files[n]
			err := w.downloadFile(ctx, tr, inputs[f.i], inputs[f.i].files[f.j])
			p.done[f.i][f.j] <- err
			return err
		})
		if err != nil {
			p.fail(&stageError{"fetch_input", err})
		}
	})
	p.wg.Go(p.uploader)
	return p
}

// fail stops the pipeline with err, unless it stopped already.
func (p *signPipeline) fail(err error) {
	p.cancel(err)
}

// err is why the pipeline stopped: the task's context ending, or the
// first failure.
func (p *signPipeline) err() error {
	if err := p.parent.Err(); err != nil {
		return err
	}
	return context.Cause(p.ctx)
}

// stillOurs checks, before an input is signed, that the work request is
// still this worker's (see worker.stillOurs).
func (p *signPipeline) stillOurs() error {
	if err := p.w.stillOurs(p.ctx, p.tr, p.w.statusEvery); err != nil {
		if p.ctx.Err() != nil {
			return p.err()
		}
		p.fail(err)
		return err
	}
	return nil
}

// downloaded waits until file j of input i is downloaded and its SHA-256
// checked, and fails once the pipeline has stopped, even when the file is
// there: nothing is signed after that.
func (p *signPipeline) downloaded(i, j int) error {
	select {
	case err := <-p.done[i][j]:
		if err != nil {
			err = &stageError{"fetch_input", err}
			p.fail(err)
			return p.err()
		}
		if p.ctx.Err() != nil {
			return p.err()
		}
		return nil
	case <-p.ctx.Done():
		return p.err()
	}
}

// upload queues the outputs of input i, every one of them signed and
// audited.
func (p *signPipeline) upload(i int, data any, files []outFile) {
	p.ready <- signOutput{i, data, files}
}

// uploader creates the outputs' artifacts one after the other, in the
// order of the inputs, and uploads their files and relations a few
// artifacts at a time, while the downloads go on.
func (p *signPipeline) uploader() {
	sem := make(chan struct{}, maxInFlight)
	var wg sync.WaitGroup
	defer wg.Wait()
	for o := range p.ready {
		a, err := p.w.api.newArtifact(p.ctx, "debusine:signing-output", p.tr.wr.Workspace, p.tr.wr.ID, o.data, o.files)
		if err != nil {
			p.fail(&stageError{"post_execution", err})
			return
		}
		select {
		case sem <- struct{}{}:
		case <-p.ctx.Done():
			return
		}
		wg.Go(func() {
			defer func() { <-sem }()
			if err := p.w.api.finishArtifact(p.ctx, a, o.files, []int64{p.inputs[o.i].id}); err != nil {
				p.fail(&stageError{"post_execution", err})
			}
		})
	}
}

// wait waits for the uploads once every input was signed.
func (p *signPipeline) wait() error {
	p.readyOnce.Do(func() { close(p.ready) })
	p.wg.Wait()
	if p.ctx.Err() != nil {
		return p.err()
	}
	return nil
}

// close stops whatever still runs and waits for it.
func (p *signPipeline) close() {
	p.fail(context.Canceled)
	p.readyOnce.Do(func() { close(p.ready) })
	p.wg.Wait()
}
