package main

import (
	"errors"
	"fmt"
	"io"
	"os"
	"syscall"
)

// openInput opens a file to be read as input: signed data, a key, a
// certificate. It never blocks: the open is non-blocking, so a FIFO
// without a writer does not hang it, and anything that is not a regular
// file (FIFO, device, directory, socket) is refused before a byte is read.
func openInput(path string) (*os.File, os.FileInfo, error) {
	return regularInput(os.OpenFile(path, os.O_RDONLY|syscall.O_NONBLOCK, 0))
}

// openRootInput is openInput for a file under a task's work directory.
func openRootInput(root *os.Root, name string) (*os.File, os.FileInfo, error) {
	return regularInput(root.OpenFile(name, os.O_RDONLY|syscall.O_NONBLOCK, 0))
}

// regularInput returns the file just opened, and its information, if it
// is a regular file; otherwise it closes it.
func regularInput(f *os.File, err error) (*os.File, os.FileInfo, error) {
	if err != nil {
		return nil, nil, err
	}
	fi, err := checkRegular(f)
	if err != nil {
		f.Close()
		return nil, nil, err
	}
	return f, fi, nil
}

func checkRegular(f *os.File) (os.FileInfo, error) {
	fi, err := f.Stat()
	if err != nil {
		return nil, err
	}
	if !fi.Mode().IsRegular() {
		return nil, fmt.Errorf("%s: not a regular file (%s)", f.Name(), fileKind(fi.Mode()))
	}
	return fi, nil
}

func fileKind(m os.FileMode) string {
	switch {
	case m.IsDir():
		return "a directory"
	case m&os.ModeNamedPipe != 0:
		return "a FIFO"
	case m&os.ModeSocket != 0:
		return "a socket"
	case m&os.ModeDevice != 0:
		return "a device"
	case m&os.ModeSymlink != 0:
		return "a symbolic link"
	}
	return "mode " + m.String()
}

// Size limits of small inputs read whole: keys, certificates, passphrases,
// .changes files; secrets of one line (tokens, passwords, PINs). Far above
// any real one, far below what could hurt.
const (
	maxKeyFileSize = 1 << 20
	maxTextSize    = 16 << 20
	maxSecretSize  = 4096
)

// readInput reads a whole regular file of at most limit bytes; what names
// it in errors ("private key", "certificate").
func readInput(path, what string, limit int64) ([]byte, error) {
	f, fi, err := openInput(path)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", what, err)
	}
	defer f.Close()
	return readOpened(f, fi, path, what, limit)
}

// readSecretInput is readInput for a file holding a secret (a token, a
// password, a PIN, a signing key): it is also refused when group or others
// may read it, before a byte of it is read.
func readSecretInput(path, what string, limit int64) ([]byte, error) {
	f, fi, err := openInput(path)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", what, err)
	}
	defer f.Close()
	if err := checkSecretMode(path, what, fi); err != nil {
		return nil, err
	}
	return readOpened(f, fi, path, what, limit)
}

// checkSecretMode refuses a secret's file that group or others can read.
func checkSecretMode(path, what string, fi os.FileInfo) error {
	if fi.Mode().Perm()&0o077 != 0 {
		return fmt.Errorf("%s %s: permissions %04o are too open (readable by group or others); run chmod 600 %s", what, path, fi.Mode().Perm(), path)
	}
	return nil
}

func readOpened(f *os.File, fi os.FileInfo, path, what string, limit int64) ([]byte, error) {
	if fi.Size() > limit {
		return nil, fmt.Errorf("%s %s: %d bytes, more than the %d this accepts", what, path, fi.Size(), limit)
	}
	data, err := io.ReadAll(io.LimitReader(f, limit+1))
	if err != nil {
		return nil, fmt.Errorf("%s %s: %w", what, path, err)
	}
	if int64(len(data)) > limit {
		clear(data)
		return nil, errors.New(what + " " + path + ": grew past the size limit while being read")
	}
	return data, nil
}
