package main

// A client of pcscd, the PC/SC daemon of pcsc-lite, speaking its socket
// protocol directly, so that the YubiKey signer needs no libpcsclite and the
// binary stays static (CGO_ENABLED=0). The protocol is pcsc-lite's own
// (winscard_msg.h, winscard_clnt.c, winscard_svc.c): a request is a header
// (body size, command), both uint32 in the host's byte order, then a fixed
// C struct; the answer is the same struct with its fields filled in, without
// a header. pcsc-lite 1.8.24 to 2.2 (Debian 12's 1.9.9) speak protocol 4:4,
// 2.3 and 2.4 (Debian 13's 2.3.3) speak 4:5, 2.5 speaks 4:6 and accepts
// both; the messages used here are the same in all, and pcscd before 2.4.1
// refuses a client of another version, so the client asks for 4:5 first
// and 4:4 next.

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"sync/atomic"
	"syscall"
	"time"
)

// pcscd commands (enum pcsc_msg_commands).
const (
	pcscEstablishContext = 0x01
	pcscReleaseContext   = 0x02
	pcscConnect          = 0x04
	pcscDisconnect       = 0x06
	pcscBeginTransaction = 0x07
	pcscEndTransaction   = 0x08
	pcscTransmit         = 0x09
	pcscStatus           = 0x0b
	pcscVersion          = 0x11
	pcscGetReadersState  = 0x12
)

// Constants of pcsclite.h.
const (
	pcscScopeSystem    = 2
	pcscShareExclusive = 1
	pcscProtocolT0     = 1
	pcscProtocolT1     = 2
	pcscLeaveCard      = 0
	pcscResetCard      = 1
	pcscMaxReaders     = 16  // PCSCLITE_MAX_READERS_CONTEXTS
	pcscMaxReaderName  = 128 // MAX_READERNAME
	pcscMaxATR         = 33  // MAX_ATR_SIZE
	// MAX_BUFFER_SIZE_EXTENDED: the largest APDU or response pcscd passes.
	pcscMaxBuffer = 4 + 3 + (1 << 16) + 3 + 2
	// sizeof(READER_STATE): name, event counter, state, sharing, ATR (33
	// bytes, padded to 36), ATR length, protocol.
	pcscReaderStateSize = pcscMaxReaderName + 3*4 + 36 + 2*4
	pcscSCardPresent    = 0x0004 // SCARD_PRESENT in a reader's state
)

// pcscProtocols are the protocol versions (major 4) this client speaks,
// newest first.
var pcscProtocols = []int32{5, 4}

// pcscAgreed is the minor version pcscd last accepted, tried first next
// time: a session opened on Debian 12 then costs one connection, not two.
var pcscAgreed atomic.Int32

// pcscError is an error code (LONG) of the PC/SC API, as pcscd returns it.
type pcscError uint32

const (
	pcscErrNoSmartcard      pcscError = 0x8010000c
	pcscErrSharingViolation pcscError = 0x8010000b
	pcscErrServiceStopped   pcscError = 0x8010001e
	pcscErrNoReaders        pcscError = 0x8010002e
	pcscErrReaderUnavail    pcscError = 0x80100017
	pcscErrInvalidHandle    pcscError = 0x80100003
	pcscErrRemovedCard      pcscError = 0x80100069
	pcscErrResetCard        pcscError = 0x80100068
	pcscErrUnpoweredCard    pcscError = 0x80100067
	pcscErrUnresponsiveCard pcscError = 0x80100066
	pcscErrNotTransacted    pcscError = 0x80100016
	pcscErrCommError        pcscError = 0x80100013
)

var pcscErrorNames = map[pcscError]string{
	0x80100001:              "internal error",
	0x80100008:              "insufficient buffer",
	0x80100009:              "unknown reader",
	0x8010000a:              "timeout",
	0x80100011:              "invalid value",
	0x8010000f:              "protocol mismatch with the card",
	pcscErrInvalidHandle:    "invalid handle (the reader is gone)",
	pcscErrSharingViolation: "sharing violation (another program holds the card)",
	pcscErrNoSmartcard:      "no card in the reader",
	pcscErrCommError:        "communication error",
	pcscErrNotTransacted:    "no transaction",
	pcscErrReaderUnavail:    "reader unavailable",
	pcscErrServiceStopped:   "service stopped",
	pcscErrNoReaders:        "no reader",
	pcscErrUnresponsiveCard: "card not responding",
	pcscErrUnpoweredCard:    "card unpowered",
	pcscErrResetCard:        "card was reset",
	pcscErrRemovedCard:      "card removed",
}

func (e pcscError) Error() string {
	if name, ok := pcscErrorNames[e]; ok {
		return fmt.Sprintf("PC/SC error %#08x: %s", uint32(e), name)
	}
	return fmt.Sprintf("PC/SC error %#08x", uint32(e))
}

// pcscGone says whether err means the card or its reader went away (pulled
// out, reset by another program, pcscd restarted), so that a new session
// may find it again.
func pcscGone(err error) bool {
	var pe pcscError
	if errors.As(err, &pe) {
		switch pe {
		case pcscErrRemovedCard, pcscErrResetCard, pcscErrUnpoweredCard, pcscErrNoSmartcard,
			pcscErrReaderUnavail, pcscErrInvalidHandle, pcscErrUnresponsiveCard, pcscErrCommError:
			return true
		}
		return false
	}
	var ce *pcscConnError
	return errors.As(err, &ce)
}

// pcscConnError is the connection to pcscd failing in the middle of an
// exchange: pcscd stopped, or answered something this client cannot read.
type pcscConnError struct {
	op  string
	err error
}

func (e *pcscConnError) Error() string { return "pcscd: " + e.op + ": " + e.err.Error() }
func (e *pcscConnError) Unwrap() error { return e.err }

// pcscSocketPath is where pcscd listens: $PCSCLITE_CSOCK_NAME, as
// libpcsclite reads it, or Debian's default.
func pcscSocketPath() string {
	if p := os.Getenv("PCSCLITE_CSOCK_NAME"); p != "" {
		return p
	}
	return "/run/pcscd/pcscd.comm"
}

// pcscTimeout bounds one exchange with pcscd, and the wait for a card
// another program holds. It is long because a transmit waits for the card,
// which may be waiting for a touch. A variable for the tests.
var pcscTimeout = 2 * time.Minute

// errPCSCStalled is an exchange that got no answer in time: pcscd, the
// reader or the card stalled. The connection is then out of step and is
// not used again.
var errPCSCStalled = fmt.Errorf("no answer in time (pcscd, the reader or the card stalled): %w", os.ErrDeadlineExceeded)

// pcscContext is one connection to pcscd with one PC/SC context on it.
// Not safe for concurrent use: callers serialize (the token's mutex).
type pcscContext struct {
	conn  net.Conn
	path  string
	minor int32 // the protocol version agreed: 4:minor
	ctx   uint32
	// deadline, when set, bounds every exchange and wait (SetDeadline).
	deadline time.Time
	// broken is the error that left the connection out of step; every
	// later exchange fails with it at once.
	broken error
}

// SetDeadline bounds every later exchange, and the wait for a card another
// program holds, to t as well as to pcscTimeout each; the zero time
// removes the bound.
func (c *pcscContext) SetDeadline(t time.Time) { c.deadline = t }

// until is when the exchange or wait starting now must end.
func (c *pcscContext) until() time.Time {
	d := time.Now().Add(pcscTimeout)
	if !c.deadline.IsZero() && c.deadline.Before(d) {
		return c.deadline
	}
	return d
}

// pcscEstablish connects to pcscd, agrees on a protocol version and
// establishes a context, all by deadline (the zero time: pcscTimeout per
// exchange), which then bounds the context's exchanges (SetDeadline).
func pcscEstablish(deadline time.Time) (*pcscContext, error) {
	path := pcscSocketPath()
	var serverMinor int32 = -1
	versions := pcscProtocols
	if last := pcscAgreed.Load(); last != 0 {
		versions = append([]int32{last}, versions...)
	}
	for i, minor := range versions {
		if i > 0 && minor == versions[0] {
			continue
		}
		c, err := pcscDial(path, deadline)
		if err != nil {
			return nil, err
		}
		body := make([]byte, 12)
		binary.NativeEndian.PutUint32(body[0:], 4)
		binary.NativeEndian.PutUint32(body[4:], uint32(minor))
		resp, err := c.call(pcscVersion, body, 12)
		if err != nil {
			c.conn.Close()
			return nil, err
		}
		// pcscd answers with its own version and, if it refuses ours,
		// SCARD_E_SERVICE_STOPPED ("Communication protocol mismatch!").
		serverMinor = int32(binary.NativeEndian.Uint32(resp[4:]))
		if rv := pcscError(binary.NativeEndian.Uint32(resp[8:])); rv != 0 {
			c.conn.Close()
			if rv == pcscErrServiceStopped {
				continue
			}
			return nil, fmt.Errorf("pcscd at %s: protocol version 4:%d: %w", path, minor, rv)
		}
		c.minor = minor
		pcscAgreed.Store(minor)
		body = make([]byte, 12)
		binary.NativeEndian.PutUint32(body[0:], pcscScopeSystem)
		resp, err = c.call(pcscEstablishContext, body, 12)
		if err == nil {
			err = pcscRV(resp[8:])
		}
		if err != nil {
			c.conn.Close()
			return nil, fmt.Errorf("pcscd at %s: establishing a context: %w", path, err)
		}
		c.ctx = binary.NativeEndian.Uint32(resp[4:])
		return c, nil
	}
	return nil, fmt.Errorf("pcscd at %s speaks PC/SC protocol 4:%d, and this program speaks 4:5 (pcsc-lite 2.3 and later) and 4:4 (pcsc-lite 1.8.24 to 2.2) only", path, serverMinor)
}

func pcscDial(path string, deadline time.Time) (*pcscContext, error) {
	c := &pcscContext{path: path, deadline: deadline}
	conn, err := net.DialTimeout("unix", path, time.Until(c.until()))
	if err != nil {
		if errors.Is(err, os.ErrNotExist) || errors.Is(err, syscall.ECONNREFUSED) {
			return nil, fmt.Errorf("pcscd is not running (nothing listens on %s): start it with systemctl start pcscd.socket (Debian: apt install pcscd), or set PCSCLITE_CSOCK_NAME to its socket", path)
		}
		return nil, fmt.Errorf("connecting to pcscd at %s: %w", path, err)
	}
	c.conn = conn
	return c, nil
}

// pcscRV reads the rv field (the last of every struct) as an error.
func pcscRV(b []byte) error {
	if rv := pcscError(binary.NativeEndian.Uint32(b)); rv != 0 {
		return rv
	}
	return nil
}

// call sends a command with its body and reads the fixed-size answer.
func (c *pcscContext) call(cmd uint32, body []byte, answer int) ([]byte, error) {
	if err := c.send(cmd, body); err != nil {
		return nil, err
	}
	return c.receive(answer)
}

func (c *pcscContext) send(cmd uint32, body []byte, extra ...[]byte) error {
	if c.broken != nil {
		return c.broken
	}
	msg := make([]byte, 8, 8+len(body))
	binary.NativeEndian.PutUint32(msg[0:], uint32(len(body)))
	binary.NativeEndian.PutUint32(msg[4:], cmd)
	msg = append(msg, body...)
	for _, e := range extra {
		msg = append(msg, e...)
	}
	c.conn.SetDeadline(c.until())
	if _, err := c.conn.Write(msg); err != nil {
		return c.fail("sending", err)
	}
	return nil
}

func (c *pcscContext) receive(n int) ([]byte, error) {
	buf := make([]byte, n)
	if _, err := io.ReadFull(c.conn, buf); err != nil {
		if errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) {
			err = errors.New("connection closed (pcscd stopped or refused this client; its log says why)")
		}
		return nil, c.fail("reading its answer", err)
	}
	return buf, nil
}

// fail marks the connection out of step: a later answer could be taken
// for the answer to another request.
func (c *pcscContext) fail(op string, err error) error {
	if errors.Is(err, os.ErrDeadlineExceeded) {
		err = errPCSCStalled
	}
	c.broken = &pcscConnError{op, err}
	return c.broken
}

// Close releases the context and closes the connection.
func (c *pcscContext) Close() error {
	if c.broken != nil {
		return c.conn.Close()
	}
	body := make([]byte, 8)
	binary.NativeEndian.PutUint32(body, c.ctx)
	_, err := c.call(pcscReleaseContext, body, 8)
	c.conn.Close()
	return err
}

// pcscReader is one reader of pcscd's reader list.
type pcscReader struct {
	Name  string
	State uint32 // SCARD_ABSENT, SCARD_PRESENT, ... bits
	ATR   []byte
}

// Readers lists the readers pcscd knows.
func (c *pcscContext) Readers() ([]pcscReader, error) {
	resp, err := c.call(pcscGetReadersState, nil, pcscMaxReaders*pcscReaderStateSize)
	if err != nil {
		return nil, err
	}
	return parseReaderStates(resp)
}

// parseReaderStates reads pcscd's array of READER_STATE structs.
func parseReaderStates(b []byte) ([]pcscReader, error) {
	if len(b) != pcscMaxReaders*pcscReaderStateSize {
		return nil, fmt.Errorf("pcscd: reader states of %d bytes, want %d", len(b), pcscMaxReaders*pcscReaderStateSize)
	}
	var readers []pcscReader
	for i := range pcscMaxReaders {
		s := b[i*pcscReaderStateSize : (i+1)*pcscReaderStateSize]
		name, _, ok := bytes.Cut(s[:pcscMaxReaderName], []byte{0})
		if !ok {
			return nil, errors.New("pcscd: a reader name is not NUL-terminated")
		}
		if len(name) == 0 {
			continue
		}
		r := pcscReader{Name: string(name), State: binary.NativeEndian.Uint32(s[pcscMaxReaderName+4:])}
		atr := s[pcscMaxReaderName+12:]
		n := binary.NativeEndian.Uint32(atr[36:])
		if n > pcscMaxATR {
			return nil, fmt.Errorf("pcscd: reader %q: ATR of %d bytes", name, n)
		}
		r.ATR = bytes.Clone(atr[:n])
		readers = append(readers, r)
	}
	return readers, nil
}

// pcscCard is a connection to the card in one reader.
type pcscCard struct {
	c        *pcscContext
	reader   string
	handle   uint32
	protocol uint32 // T=0 or T=1
}

// Connect connects to the card in reader, exclusively: no other program
// can use the card until Disconnect.
func (c *pcscContext) Connect(reader string) (*pcscCard, error) {
	if len(reader) >= pcscMaxReaderName {
		return nil, fmt.Errorf("reader name %q is too long", reader)
	}
	body := make([]byte, 4+pcscMaxReaderName+5*4)
	binary.NativeEndian.PutUint32(body[0:], c.ctx)
	copy(body[4:], reader)
	o := 4 + pcscMaxReaderName
	binary.NativeEndian.PutUint32(body[o:], pcscShareExclusive)
	binary.NativeEndian.PutUint32(body[o+4:], pcscProtocolT0|pcscProtocolT1)
	resp, err := c.call(pcscConnect, body, len(body))
	if err == nil {
		err = pcscRV(resp[o+16:])
	}
	if err != nil {
		return nil, fmt.Errorf("connecting to the card in %q: %w", reader, err)
	}
	return &pcscCard{c: c, reader: reader,
		handle:   binary.NativeEndian.Uint32(resp[o+8:]),
		protocol: binary.NativeEndian.Uint32(resp[o+12:])}, nil
}

// handleCall sends a struct that starts with the card handle and has
// extra uint32 fields (zero here unless given), then rv.
func (k *pcscCard) handleCall(cmd uint32, fields ...uint32) error {
	body := make([]byte, 4*(len(fields)+2))
	binary.NativeEndian.PutUint32(body, k.handle)
	for i, f := range fields {
		binary.NativeEndian.PutUint32(body[4*(i+1):], f)
	}
	resp, err := k.c.call(cmd, body, len(body))
	if err != nil {
		return err
	}
	return pcscRV(resp[len(resp)-4:])
}

// Disconnect ends the connection to the card, resetting it so that no
// PIN verification or management key authentication outlives the session.
func (k *pcscCard) Disconnect() error {
	return k.handleCall(pcscDisconnect, pcscResetCard)
}

// Begin starts a transaction: pcscd lets no other connection use the card
// until End. While another program holds the card, it waits, polling as
// libpcsclite does, up to pcscTimeout or the context's deadline.
func (k *pcscCard) Begin() error {
	deadline := k.c.until()
	for {
		err := k.handleCall(pcscBeginTransaction)
		if err != pcscErrSharingViolation || time.Now().Add(100*time.Millisecond).After(deadline) {
			return err
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// End ends the transaction, leaving the card as it is.
func (k *pcscCard) End() error {
	return k.handleCall(pcscEndTransaction, pcscLeaveCard)
}

// Status checks that the connection to the card still works and returns
// its reader's state and the card's ATR.
func (k *pcscCard) Status() (pcscReader, error) {
	if err := k.handleCall(pcscStatus); err != nil {
		return pcscReader{}, err
	}
	readers, err := k.c.Readers()
	if err != nil {
		return pcscReader{}, err
	}
	for _, r := range readers {
		if r.Name == k.reader {
			return r, nil
		}
	}
	return pcscReader{}, pcscErrReaderUnavail
}

// Transmit sends one APDU and returns the card's response (data and the
// two status bytes).
func (k *pcscCard) Transmit(apdu []byte) ([]byte, error) {
	if len(apdu) > pcscMaxBuffer {
		return nil, fmt.Errorf("APDU of %d bytes is too long for pcscd", len(apdu))
	}
	const pciLength = 8 // sizeof(SCARD_IO_REQUEST)
	body := make([]byte, 32)
	for i, f := range []uint32{k.handle, k.protocol, pciLength, uint32(len(apdu)), k.protocol, pciLength, pcscMaxBuffer} {
		binary.NativeEndian.PutUint32(body[4*i:], f)
	}
	if err := k.c.send(pcscTransmit, body, apdu); err != nil {
		return nil, err
	}
	resp, err := k.c.receive(32)
	if err != nil {
		return nil, err
	}
	if err := pcscRV(resp[28:]); err != nil {
		return nil, err
	}
	n := binary.NativeEndian.Uint32(resp[24:])
	if n > pcscMaxBuffer || n < 2 {
		return nil, k.c.fail("transmit", fmt.Errorf("a response of %d bytes", n))
	}
	return k.c.receive(int(n))
}
