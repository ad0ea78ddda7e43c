package main

// Temporary outputs. Every output appears under its final name by a rename
// from a temporary file (or directory) next to it, so that no half-written
// output ever carries a final name. A run killed before the rename (kill
// -9, power loss) leaves its temporary behind; they are named
// ".NAME.debusine-signing-tmp-RANDOM" and each is flock(2)ed by the process
// writing it for as long as it is in use, so the next run writing into the
// same directory removes those whose lock it can take: their writer is
// gone. The random part keeps a leftover from ever blocking a rerun.

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
)

const tempMarker = ".debusine-signing-tmp-"

// sweptDirs holds the directories already swept by this process.
var sweptDirs sync.Map

// sweepTemps removes the temporaries in dir left by processes that died.
// It runs once per directory and process; a long-running worker writes
// into a new directory for each task.
func sweepTemps(dir string) {
	if _, done := sweptDirs.LoadOrStore(filepath.Clean(dir), true); done {
		return
	}
	entries, err := os.ReadDir(dir)
	if err != nil {
		return
	}
	for _, e := range entries {
		name := e.Name()
		if !strings.HasPrefix(name, ".") || !strings.Contains(name, tempMarker) || (!e.Type().IsRegular() && !e.IsDir()) {
			continue
		}
		p := filepath.Join(dir, name)
		f, err := os.OpenFile(p, os.O_RDONLY|syscall.O_NONBLOCK|syscall.O_NOFOLLOW, 0)
		if err != nil {
			continue
		}
		if syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB) == nil {
			os.RemoveAll(p)
		}
		f.Close()
	}
}

// lockTemp locks the temporary f just created at path, and reports whether
// it is still there: a sweep in another process may have taken it for a
// leftover between its creation and the lock.
func lockTemp(f *os.File, path string) (bool, error) {
	for {
		err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX)
		if err == nil {
			break
		}
		if !errors.Is(err, syscall.EINTR) {
			return false, err
		}
	}
	a, err := f.Stat()
	if err != nil {
		return false, err
	}
	b, err := os.Lstat(path)
	return err == nil && os.SameFile(a, b), nil
}

// createOutputTemp creates the locked temporary file for the output path,
// in its directory, after sweeping that directory. Closing the file
// releases the lock.
func createOutputTemp(path string) (*os.File, error) {
	dir := filepath.Dir(path)
	sweepTemps(dir)
	for {
		f, err := os.CreateTemp(dir, "."+filepath.Base(path)+tempMarker+"*")
		if err != nil {
			return nil, err
		}
		ok, err := lockTemp(f, f.Name())
		if err != nil {
			f.Close()
			os.Remove(f.Name())
			return nil, fmt.Errorf("locking %s: %w", f.Name(), err)
		}
		if ok {
			return f, nil
		}
		f.Close()
	}
}

// createOutputTempDir is createOutputTemp for a directory that will be
// renamed to path: it returns its name and an open, locked handle to close
// once it has been renamed or removed.
func createOutputTempDir(path string) (string, *os.File, error) {
	dir := filepath.Dir(path)
	sweepTemps(dir)
	for {
		name, err := os.MkdirTemp(dir, "."+filepath.Base(path)+tempMarker+"*")
		if err != nil {
			return "", nil, err
		}
		d, err := os.Open(name)
		if err != nil {
			os.RemoveAll(name)
			return "", nil, err
		}
		ok, err := lockTemp(d, name)
		if err != nil {
			d.Close()
			os.RemoveAll(name)
			return "", nil, fmt.Errorf("locking %s: %w", name, err)
		}
		if ok {
			return name, d, nil
		}
		d.Close()
	}
}

// writeFileAtomic creates path (mode 0644) through a locked temporary
// file in the same directory, which is removed if fill or anything else
// fails.
func writeFileAtomic(path string, fill func(*os.File) error) (err error) {
	tmp, err := createOutputTemp(path)
	if err != nil {
		return err
	}
	defer func() {
		if err != nil {
			os.Remove(tmp.Name())
			tmp.Close()
		}
	}()
	if err := fill(tmp); err != nil {
		return err
	}
	return commitOutputTemp(tmp, path)
}

// commitOutputTemp gives a filled temporary its final mode and name. No
// fsync: the audit row is the durable record, and an output lost in a
// crash is made again by signing again; an fsync per output was the
// largest single cost of signing many small files.
func commitOutputTemp(tmp *os.File, path string) error {
	if err := tmp.Chmod(0o644); err != nil {
		return err
	}
	// Renamed while still open, so that the lock covers it until it has
	// its final name.
	if err := os.Rename(tmp.Name(), path); err != nil {
		return err
	}
	if err := tmp.Close(); err != nil {
		return fmt.Errorf("%s: %w", path, err)
	}
	return nil
}
