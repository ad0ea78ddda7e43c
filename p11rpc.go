package main

// A client of p11-kit's PKCS#11 RPC protocol, so that the static binary
// (CGO_ENABLED=0) can use any PKCS#11 module: the module runs in another
// process, "p11-kit remote MODULE" on a pipe that this client starts, or
// "p11-kit server" on a Unix socket. The protocol is written down in the
// Internet-Draft "Simple PKCS #11 Remote Procedure Call (RPC) Protocol"
// (draft-ueno-pkcs11-rpc); p11-kit's rpc-message.[ch], rpc-client.c and
// rpc-transport.c are the reference, and where the two differ this follows
// p11-kit. docs/pkcs11.md describes the subset used here.
//
// After the transport is up the client sends one byte, the highest protocol
// version it speaks (2), and the server answers the version they will use,
// min(its own highest, 2): p11-kit 0.24 (Debian 12) answers 0, 0.25.0 to
// 0.25.5 (Debian 13) answer 1, 0.25.6 and later answer 2. A message is a
// 12-byte header (call code, options length, body length; big-endian
// uint32s), the options (empty here; p11-kit's server ignores them) and the
// body: call id (uint32), the call's type signature as a byte array, then
// the arguments in the order the signature gives. CK_ULONGs are 8 bytes,
// big-endian, whatever the hosts' CK_ULONG. The answer echoes the call code
// and carries the same call id with the response signature, or call id 0
// (error) with a CK_RV.

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"strings"
	"sync"
	"syscall"
	"time"
)

// Protocol limits. A message larger than p11MaxMessage is refused either
// way: no signature, attribute or object list of a real token comes near.
const (
	p11MaxVersion    = 2
	p11MaxMessage    = 16 << 20
	p11MaxOptions    = 4096
	p11MaxObjects    = 4096 // handles one FindObjects gathers at most
	p11MaxAttributes = 64   // attributes in one template or query
	p11FindBatch     = 64   // handles asked for per C_FindObjects
	p11DefaultWait   = 60 * time.Second
)

// The calls used (their index in p11-kit's call table) and their
// request and response signatures.
type p11Call struct {
	id        uint32
	name      string
	req, resp string
}

var (
	p11CallError             = p11Call{0, "ERROR", "", "u"}
	p11CallInitialize        = p11Call{1, "C_Initialize", "ayyay", ""}
	p11CallFinalize          = p11Call{2, "C_Finalize", "", ""}
	p11CallGetInfo           = p11Call{3, "C_GetInfo", "", "vsusv"}
	p11CallGetSlotList       = p11Call{4, "C_GetSlotList", "yfu", "au"}
	p11CallGetSlotInfo       = p11Call{5, "C_GetSlotInfo", "u", "ssuvv"}
	p11CallGetTokenInfo      = p11Call{6, "C_GetTokenInfo", "u", "ssssuuuuuuuuuuuvvs"}
	p11CallGetMechanismList  = p11Call{7, "C_GetMechanismList", "ufu", "au"}
	p11CallGetMechanismInfo  = p11Call{8, "C_GetMechanismInfo", "uu", "uuu"}
	p11CallOpenSession       = p11Call{10, "C_OpenSession", "uu", "u"}
	p11CallCloseSession      = p11Call{11, "C_CloseSession", "u", ""}
	p11CallGetSessionInfo    = p11Call{13, "C_GetSessionInfo", "u", "uuuu"}
	p11CallLogin             = p11Call{18, "C_Login", "uuay", ""}
	p11CallLogout            = p11Call{19, "C_Logout", "u", ""}
	p11CallDestroyObject     = p11Call{22, "C_DestroyObject", "uu", ""}
	p11CallGetAttributeValue = p11Call{24, "C_GetAttributeValue", "uufA", "aAu"}
	p11CallFindObjectsInit   = p11Call{26, "C_FindObjectsInit", "uaA", ""}
	p11CallFindObjects       = p11Call{27, "C_FindObjects", "ufu", "au"}
	p11CallFindObjectsFinal  = p11Call{28, "C_FindObjectsFinal", "u", ""}
	p11CallSignInit          = p11Call{42, "C_SignInit", "uMu", ""}
	p11CallSign              = p11Call{43, "C_Sign", "uayfy", "ay"}
	p11CallGenerateKeyPair   = p11Call{59, "C_GenerateKeyPair", "uMaAaA", "uu"}
)

// p11Handshake is C_Initialize's first argument, which p11-kit's server
// checks.
const p11Handshake = "PRIVATE-GNOME-KEYRING-PKCS11-PROTOCOL-V-1"

// errP11Closed is in every error that leaves the connection unusable: the
// server or the child went away, stalled past the deadline, or said
// something this client cannot read. The caller dials again.
var errP11Closed = errors.New("p11-kit connection closed")

// errP11HungUp is the server closing the connection during version
// negotiation.
var errP11HungUp = errors.New("hung up")

// p11Error is a CK_RV other than CKR_OK that a call returned.
type p11Error struct {
	Call string
	RV   uint64
}

func (e *p11Error) Error() string {
	return fmt.Sprintf("%s: %s (%#x)", e.Call, p11RVName(e.RV), e.RV)
}

// p11RV returns the CK_RV in err, if err is a p11Error.
func p11RV(err error) (uint64, bool) {
	var pe *p11Error
	if errors.As(err, &pe) {
		return pe.RV, true
	}
	return 0, false
}

// p11Attr is one attribute: its value as the protocol carries it (a
// CK_BBOOL as one byte, a CK_ULONG as 8 big-endian bytes: p11Bool and
// p11Ulong make them), or Missing when the token has none or will not tell.
type p11Attr struct {
	Type    uint64
	Value   []byte
	Missing bool
}

// p11Mechanism is a mechanism and its parameter as raw bytes. Only the
// mechanisms in p11Mechanisms are sent; others are refused.
type p11Mechanism struct {
	Type  uint64
	Param []byte
}

type p11Version struct{ Major, Minor byte }

type p11Info struct {
	CryptokiVersion p11Version
	Manufacturer    string
	Flags           uint64
	Description     string
	LibraryVersion  p11Version
}

type p11SlotInfo struct {
	Description     string
	Manufacturer    string
	Flags           uint64
	HardwareVersion p11Version
	FirmwareVersion p11Version
}

type p11TokenInfo struct {
	Label, Manufacturer, Model, Serial string
	Flags                              uint64
	MaxPinLen, MinPinLen               uint64
	HardwareVersion, FirmwareVersion   p11Version
}

type p11MechanismInfo struct {
	MinKeySize, MaxKeySize, Flags uint64
}

type p11SessionInfo struct {
	Slot, State, Flags, DeviceError uint64
}

// p11Bool is the value of a CK_BBOOL attribute.
func p11Bool(b bool) []byte {
	if b {
		return []byte{1}
	}
	return []byte{0}
}

// p11Ulong is the value of a CK_ULONG attribute as the protocol carries
// it: 8 bytes, big-endian (p11-kit's server converts it to its CK_ULONG).
func p11Ulong(v uint64) []byte { return binary.BigEndian.AppendUint64(nil, v) }

// p11AttrUlong reads a CK_ULONG attribute's value.
func p11AttrUlong(a p11Attr) (uint64, error) {
	if a.Missing || len(a.Value) != 8 {
		return 0, fmt.Errorf("attribute %#x: not a CK_ULONG", a.Type)
	}
	return binary.BigEndian.Uint64(a.Value), nil
}

// p11Client is one connection to a p11-kit RPC server, on which the module
// has been initialized. Its methods may be called from several goroutines:
// each runs alone (a Sign's three calls are not interleaved with another
// goroutine's), and each call has a deadline.
type p11Client struct {
	mu      sync.Mutex
	conn    net.Conn
	cmd     *exec.Cmd
	stderr  *p11Tail
	version byte
	code    uint32
	wait    time.Duration // deadline of one call
	broken  error         // set once the connection is unusable
}

// dialP11 connects to a p11-kit RPC server. address is p11-kit's form:
//
//	unix:path=/run/p11-kit/pkcs11                  a p11-kit server
//	exec:command="p11-kit remote /usr/lib/.../module.so"  started, owned, killed on Close
//
// It does the handshake, negotiates the protocol version and calls
// C_Initialize.
func dialP11(address string) (*p11Client, error) {
	return dialP11Wait(address, p11DefaultWait)
}

// dialP11Wait is dialP11 with another deadline for each call.
func dialP11Wait(address string, wait time.Duration) (*p11Client, error) {
	kind, attrs, err := p11ParseAddress(address)
	if err != nil {
		return nil, err
	}
	c, err := p11Connect(kind, attrs, address, wait, p11MaxVersion)
	if errors.Is(err, errP11HungUp) {
		// A server from before version negotiation may hang up on a
		// version other than 0: the draft's fallback is to try again
		// with 0.
		c, err = p11Connect(kind, attrs, address, wait, 0)
	}
	if err != nil {
		return nil, err
	}
	d := c.newCall(p11CallInitialize)
	d.byteArray([]byte(p11Handshake))
	d.byte(0) // no reserved string: pReserved is NULL
	d.byteArray([]byte{0})
	if _, err := c.do(d); err != nil {
		if rv, ok := p11RV(err); !ok || rv != ckrCryptokiAlreadyInitialized {
			c.shut(false)
			return nil, fmt.Errorf("%s: %w", address, err)
		}
	}
	return c, nil
}

// p11Connect opens the transport and agrees on the protocol version.
func p11Connect(kind string, attrs map[string]string, address string, wait time.Duration, version byte) (*p11Client, error) {
	c := &p11Client{wait: wait, code: 0x10}
	switch kind {
	case "unix":
		conn, err := net.DialTimeout("unix", attrs["path"], wait)
		if err != nil {
			return nil, fmt.Errorf("p11-kit server at %s: %w", address, err)
		}
		c.conn = conn
	case "exec":
		if err := c.start(attrs["command"]); err != nil {
			return nil, fmt.Errorf("p11-kit: %s: %w", address, err)
		}
	}
	c.conn.SetDeadline(time.Now().Add(wait))
	var got [1]byte
	_, err := c.conn.Write([]byte{version})
	if err == nil {
		_, err = io.ReadFull(c.conn, got[:])
	}
	if err != nil {
		if errors.Is(err, io.EOF) || errors.Is(err, syscall.ECONNRESET) || errors.Is(err, syscall.EPIPE) {
			err = fmt.Errorf("%w: %w", errP11HungUp, err)
		}
		return nil, c.fail("version negotiation", err)
	}
	if got[0] > version {
		c.shut(false)
		return nil, fmt.Errorf("p11-kit at %s: asked for protocol version %d, answered %d: %w", address, version, got[0], errP11Closed)
	}
	c.version = got[0]
	return c, nil
}

// start runs the command with one end of a socket pair as its standard
// input and output: p11-kit remote reads and writes them like a pipe, and
// this end gets deadlines like a socket.
func (c *p11Client) start(command string) error {
	argv, err := p11SplitCommand(command)
	if err != nil {
		return err
	}
	fds, err := syscall.Socketpair(syscall.AF_UNIX, syscall.SOCK_STREAM|syscall.SOCK_CLOEXEC, 0)
	if err != nil {
		return err
	}
	mine, theirs := os.NewFile(uintptr(fds[0]), "p11-kit"), os.NewFile(uintptr(fds[1]), "p11-kit remote")
	defer theirs.Close()
	conn, err := net.FileConn(mine)
	mine.Close()
	if err != nil {
		return err
	}
	c.stderr = &p11Tail{}
	cmd := exec.Command(argv[0], argv[1:]...)
	cmd.Stdin, cmd.Stdout, cmd.Stderr = theirs, theirs, c.stderr
	if err := cmd.Start(); err != nil {
		conn.Close()
		return err
	}
	c.conn, c.cmd = conn, cmd
	return nil
}

// Close calls C_Finalize (best effort, with a short deadline), closes the
// connection and, for exec:, waits for the child, killing it if it does not
// exit on its own.
func (c *p11Client) Close() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.broken == nil {
		wait := c.wait
		c.wait = min(wait, 5*time.Second)
		c.do(c.newCall(p11CallFinalize))
		c.wait = wait
	}
	c.shut(false)
	if c.broken == nil {
		c.broken = fmt.Errorf("closed: %w", errP11Closed)
	}
	return nil
}

// shut closes the connection and reaps the child: p11-kit remote exits
// when its input ends; one that does not within two seconds, or that
// already stalled past a deadline (kill), is killed.
func (c *p11Client) shut(kill bool) {
	c.conn.Close()
	if c.cmd == nil || c.cmd.ProcessState != nil {
		return
	}
	if kill {
		c.cmd.Process.Kill()
	}
	done := make(chan struct{})
	go func() {
		c.cmd.Wait()
		close(done)
	}()
	select {
	case <-done:
	case <-time.After(2 * time.Second):
		c.cmd.Process.Kill()
		<-done
	}
}

// fail marks the connection unusable after a transport or protocol error
// and returns the error, which wraps errP11Closed (and the cause, such as
// os.ErrDeadlineExceeded).
func (c *p11Client) fail(what string, err error) error {
	stalled := errors.Is(err, os.ErrDeadlineExceeded)
	if stalled {
		err = fmt.Errorf("no answer within %v: %w", c.wait, err)
	}
	c.shut(stalled)
	if c.cmd != nil {
		// The child's fate says more than the socket's "connection reset".
		name := strings.Join(c.cmd.Args[:min(2, len(c.cmd.Args))], " ")
		if !stalled && c.cmd.ProcessState != nil {
			err = fmt.Errorf("%s exited (%s)", name, c.cmd.ProcessState)
		}
		if tail := c.stderr.String(); tail != "" {
			err = fmt.Errorf("%w; it said: %s", err, tail)
		}
	}
	c.broken = fmt.Errorf("%s: %w: %w", what, errP11Closed, err)
	return c.broken
}

// Version is the protocol version agreed with the server.
func (c *p11Client) Version() int { return int(c.version) }

// Info calls C_GetInfo.
func (c *p11Client) Info() (p11Info, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	r, err := c.do(c.newCall(p11CallGetInfo))
	if err != nil {
		return p11Info{}, err
	}
	return p11Info{
		CryptokiVersion: r.version(),
		Manufacturer:    r.spaceString(32),
		Flags:           r.ulong(),
		Description:     r.spaceString(32),
		LibraryVersion:  r.version(),
	}, r.end()
}

// Slots lists the slots (with a token in them, if tokenPresent).
func (c *p11Client) Slots(tokenPresent bool) ([]uint64, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	flag := byte(0)
	if tokenPresent {
		flag = 1
	}
	return c.list(p11CallGetSlotList, func(d *p11Enc) { d.byte(flag) })
}

// Mechanisms lists the mechanisms of the token in slot.
func (c *p11Client) Mechanisms(slot uint64) ([]uint64, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.list(p11CallGetMechanismList, func(d *p11Enc) { d.ulong(slot) })
}

// list asks for the length of a CK_ULONG list, then for the list; a list
// that grew in between is asked for again.
func (c *p11Client) list(call p11Call, args func(*p11Enc)) ([]uint64, error) {
	var n uint32
	for range 3 {
		d := c.newCall(call)
		args(d)
		d.uint32(n)
		r, err := c.do(d)
		if err != nil {
			return nil, err
		}
		list, count, err := r.ulongArray(), r.count, r.end()
		if err != nil {
			return nil, err
		}
		if list != nil || count == 0 {
			return list, nil
		}
		if n != 0 && count <= n {
			return nil, c.protocolError(call, "a list of %d shorter than its buffer of %d but not sent", count, n)
		}
		n = count
	}
	return nil, fmt.Errorf("%s: the list keeps changing", call.name)
}

// SlotInfo calls C_GetSlotInfo.
func (c *p11Client) SlotInfo(slot uint64) (p11SlotInfo, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	d := c.newCall(p11CallGetSlotInfo)
	d.ulong(slot)
	r, err := c.do(d)
	if err != nil {
		return p11SlotInfo{}, err
	}
	return p11SlotInfo{
		Description:     r.spaceString(64),
		Manufacturer:    r.spaceString(32),
		Flags:           r.ulong(),
		HardwareVersion: r.version(),
		FirmwareVersion: r.version(),
	}, r.end()
}

// TokenInfo calls C_GetTokenInfo; the strings lose their padding.
func (c *p11Client) TokenInfo(slot uint64) (p11TokenInfo, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	d := c.newCall(p11CallGetTokenInfo)
	d.ulong(slot)
	r, err := c.do(d)
	if err != nil {
		return p11TokenInfo{}, err
	}
	t := p11TokenInfo{
		Label:        r.spaceString(32),
		Manufacturer: r.spaceString(32),
		Model:        r.spaceString(16),
		Serial:       r.spaceString(16),
		Flags:        r.ulong(),
	}
	for range 4 { // session counts
		r.ulong()
	}
	t.MaxPinLen, t.MinPinLen = r.ulong(), r.ulong()
	for range 4 { // memory
		r.ulong()
	}
	t.HardwareVersion, t.FirmwareVersion = r.version(), r.version()
	r.spaceString(16) // utcTime
	return t, r.end()
}

// MechanismInfo calls C_GetMechanismInfo.
func (c *p11Client) MechanismInfo(slot, mech uint64) (p11MechanismInfo, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	d := c.newCall(p11CallGetMechanismInfo)
	d.ulong(slot)
	d.ulong(mech)
	r, err := c.do(d)
	if err != nil {
		return p11MechanismInfo{}, err
	}
	return p11MechanismInfo{MinKeySize: r.ulong(), MaxKeySize: r.ulong(), Flags: r.ulong()}, r.end()
}

// OpenSession opens a serial session, read-write if rw.
func (c *p11Client) OpenSession(slot uint64, rw bool) (uint64, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	flags := uint64(ckfSerialSession)
	if rw {
		flags |= ckfRWSession
	}
	d := c.newCall(p11CallOpenSession)
	d.ulong(slot)
	d.ulong(flags)
	r, err := c.do(d)
	if err != nil {
		return 0, err
	}
	h := r.ulong()
	return h, r.end()
}

// CloseSession calls C_CloseSession.
func (c *p11Client) CloseSession(h uint64) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.simple(p11CallCloseSession, h)
}

// Logout calls C_Logout.
func (c *p11Client) Logout(h uint64) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.simple(p11CallLogout, h)
}

// DestroyObject calls C_DestroyObject.
func (c *p11Client) DestroyObject(h, obj uint64) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.simple(p11CallDestroyObject, h, obj)
}

// SessionInfo calls C_GetSessionInfo: whether the session is still there
// and logged in (State is CKS_*).
func (c *p11Client) SessionInfo(h uint64) (p11SessionInfo, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	d := c.newCall(p11CallGetSessionInfo)
	d.ulong(h)
	r, err := c.do(d)
	if err != nil {
		return p11SessionInfo{}, err
	}
	return p11SessionInfo{Slot: r.ulong(), State: r.ulong(), Flags: r.ulong(), DeviceError: r.ulong()}, r.end()
}

func (c *p11Client) simple(call p11Call, args ...uint64) error {
	d := c.newCall(call)
	for _, a := range args {
		d.ulong(a)
	}
	r, err := c.do(d)
	if err != nil {
		return err
	}
	return r.end()
}

// Login calls C_Login. The PIN is in no error, and its copy in the request
// is wiped once sent.
func (c *p11Client) Login(h uint64, userType uint64, pin []byte) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	r, err := c.do(c.loginRequest(h, userType, pin))
	if err != nil {
		return err
	}
	return r.end()
}

func (c *p11Client) loginRequest(h uint64, userType uint64, pin []byte) *p11Enc {
	d := c.newCall(p11CallLogin)
	d.ulong(h)
	d.ulong(userType)
	d.byteArray(pin)
	d.secret = true
	return d
}

// FindObjects returns the handles of up to max objects matching template
// (C_FindObjectsInit, C_FindObjects until the token has no more,
// C_FindObjectsFinal).
func (c *p11Client) FindObjects(h uint64, template []p11Attr, max int) ([]uint64, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if max <= 0 || max > p11MaxObjects {
		max = p11MaxObjects
	}
	d := c.newCall(p11CallFindObjectsInit)
	d.ulong(h)
	if err := d.attrs(template); err != nil {
		return nil, err
	}
	r, err := c.do(d)
	if err == nil {
		err = r.end()
	}
	if err != nil {
		return nil, err
	}
	var found []uint64
	for len(found) < max {
		want := uint32(min(max-len(found), p11FindBatch))
		d := c.newCall(p11CallFindObjects)
		d.ulong(h)
		d.uint32(want)
		r, err := c.do(d)
		if _, ok := p11RV(err); ok {
			// End the search, or the session refuses the next one.
			c.simple(p11CallFindObjectsFinal, h)
		}
		if err != nil {
			return nil, err
		}
		batch := r.ulongArray()
		if err := r.end(); err != nil {
			return nil, err
		}
		if len(batch) > int(want) {
			return nil, c.protocolError(p11CallFindObjects, "%d handles for %d asked", len(batch), want)
		}
		found = append(found, batch...)
		if len(batch) < int(want) {
			break
		}
	}
	if err := c.simple(p11CallFindObjectsFinal, h); err != nil {
		return nil, err
	}
	return found, nil
}

// Attributes reads attributes of an object: their lengths first, then
// their values. An attribute that the object lacks or keeps secret comes
// back with Missing set and a nil Value.
func (c *p11Client) Attributes(h, obj uint64, types ...uint64) ([]p11Attr, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if len(types) == 0 || len(types) > p11MaxAttributes {
		return nil, fmt.Errorf("C_GetAttributeValue: %d attributes asked for", len(types))
	}
	for _, t := range types {
		if k := p11AttrKind(t); k == p11KindNested || k == p11KindVendor {
			return nil, fmt.Errorf("C_GetAttributeValue: attribute %#x: its encoding is not supported", t)
		}
	}
	sizes := make([]uint32, len(types))
	_, lengths, err := c.getAttributes(h, obj, types, sizes)
	if err != nil {
		return nil, err
	}
	total := 0
	for _, n := range lengths {
		total += int(n)
	}
	if total > p11MaxMessage/2 {
		return nil, fmt.Errorf("C_GetAttributeValue: %d bytes of attributes", total)
	}
	attrs, _, err := c.getAttributes(h, obj, types, lengths)
	return attrs, err
}

// getAttributes is one C_GetAttributeValue with buffers of the given
// sizes (0: the length only), and returns the attributes and the lengths
// the token reported (0 for a missing one).
func (c *p11Client) getAttributes(h, obj uint64, types []uint64, sizes []uint32) ([]p11Attr, []uint32, error) {
	d := c.newCall(p11CallGetAttributeValue)
	d.ulong(h)
	d.ulong(obj)
	d.uint32(uint32(len(types)))
	for i, t := range types {
		d.uint32(uint32(t))
		d.uint32(sizes[i])
	}
	r, err := c.do(d)
	if err != nil {
		return nil, nil, err
	}
	attrs, lengths := r.attrArray(types, sizes)
	rv := r.ulong()
	if err := r.end(); err != nil {
		return nil, nil, err
	}
	switch rv {
	case ckrOK, ckrAttributeSensitive, ckrAttributeTypeInvalid:
		return attrs, lengths, nil
	}
	return nil, nil, &p11Error{p11CallGetAttributeValue.name, rv}
}

// Sign signs data with key: C_SignInit, C_Sign for the length, C_Sign.
// With contextPIN (a key with CKA_ALWAYS_AUTHENTICATE), C_Login as
// CKU_CONTEXT_SPECIFIC comes between C_SignInit and C_Sign, as PKCS #11
// wants for such a key; all of it under one lock, so no other call comes
// between.
func (c *p11Client) Sign(h uint64, mech p11Mechanism, key uint64, data, contextPIN []byte) ([]byte, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if len(data) > p11MaxMessage/2 {
		return nil, fmt.Errorf("C_Sign: %d bytes to sign", len(data))
	}
	d := c.newCall(p11CallSignInit)
	d.ulong(h)
	if err := d.mechanism(mech, c.version); err != nil {
		return nil, err
	}
	d.ulong(key)
	r, err := c.do(d)
	if err == nil {
		err = r.end()
	}
	if err == nil && contextPIN != nil {
		if r, err = c.do(c.loginRequest(h, ckuContextSpecific, contextPIN)); err == nil {
			err = r.end()
		}
	}
	if err != nil {
		return nil, err
	}
	var size uint32
	for {
		d := c.newCall(p11CallSign)
		d.ulong(h)
		d.byteArray(data)
		d.uint32(size)
		r, err := c.do(d)
		if err != nil {
			return nil, err
		}
		sig, n := r.byteArrayOut()
		if err := r.end(); err != nil {
			return nil, err
		}
		if sig != nil {
			if size == 0 || len(sig) > int(size) {
				return nil, c.protocolError(p11CallSign, "a signature of %d bytes for a buffer of %d", len(sig), size)
			}
			return sig, nil
		}
		if size != 0 || n == 0 {
			return nil, c.protocolError(p11CallSign, "no signature (length %d)", n)
		}
		size = n
	}
}

// GenerateKeyPair calls C_GenerateKeyPair and returns the public and
// private keys' handles.
func (c *p11Client) GenerateKeyPair(h uint64, mech p11Mechanism, pub, priv []p11Attr) (pubObj, privObj uint64, err error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	d := c.newCall(p11CallGenerateKeyPair)
	d.ulong(h)
	if err := d.mechanism(mech, c.version); err != nil {
		return 0, 0, err
	}
	if err := d.attrs(pub); err != nil {
		return 0, 0, err
	}
	if err := d.attrs(priv); err != nil {
		return 0, 0, err
	}
	r, err := c.do(d)
	if err != nil {
		return 0, 0, err
	}
	pubObj, privObj = r.ulong(), r.ulong()
	return pubObj, privObj, r.end()
}

// do sends one request and reads its answer. The caller holds c.mu,
// for the whole of a method: a Sign's or FindObjects' calls are not
// interleaved with another goroutine's on the same session.
func (c *p11Client) do(d *p11Enc) (*p11Dec, error) {
	if d.secret {
		defer clear(d.buf)
	}
	if d.err != nil {
		return nil, d.err
	}
	if c.broken != nil {
		return nil, fmt.Errorf("%s: %w", d.call.name, c.broken)
	}
	if len(d.buf)-12 > p11MaxMessage {
		return nil, fmt.Errorf("%s: request of %d bytes", d.call.name, len(d.buf)-12)
	}
	c.code++
	if c.code == 0 {
		c.code = 1
	}
	binary.BigEndian.PutUint32(d.buf[0:], c.code)
	binary.BigEndian.PutUint32(d.buf[4:], 0)
	binary.BigEndian.PutUint32(d.buf[8:], uint32(len(d.buf)-12))
	c.conn.SetDeadline(time.Now().Add(c.wait))
	if _, err := c.conn.Write(d.buf); err != nil {
		return nil, c.fail(d.call.name, err)
	}
	var hdr [12]byte
	if _, err := io.ReadFull(c.conn, hdr[:]); err != nil {
		return nil, c.fail(d.call.name, err)
	}
	code, olen, blen := binary.BigEndian.Uint32(hdr[0:]), binary.BigEndian.Uint32(hdr[4:]), binary.BigEndian.Uint32(hdr[8:])
	if code != c.code {
		return nil, c.fail(d.call.name, fmt.Errorf("answer to call %#x, not %#x", code, c.code))
	}
	if olen > p11MaxOptions || blen > p11MaxMessage {
		return nil, c.fail(d.call.name, fmt.Errorf("answer of %d+%d bytes, more than the limit", olen, blen))
	}
	// Read what comes rather than allocate what is announced.
	body, err := io.ReadAll(io.LimitReader(c.conn, int64(olen)+int64(blen)))
	if err == nil && len(body) < int(olen)+int(blen) {
		err = io.ErrUnexpectedEOF
	}
	if err != nil {
		return nil, c.fail(d.call.name, err)
	}
	r, err := p11ParseResponse(d.call, body[olen:])
	if err != nil {
		var pe *p11Error
		if errors.As(err, &pe) {
			return nil, err
		}
		return nil, c.fail(d.call.name, err)
	}
	r.client = c
	return r, nil
}

// protocolError closes the connection after an answer that parsed but
// makes no sense.
func (c *p11Client) protocolError(call p11Call, format string, args ...any) error {
	return c.fail(call.name, fmt.Errorf(format, args...))
}
