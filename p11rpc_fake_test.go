package main

// The PKCS#11 RPC client against fake peers on a Unix socket: servers that
// stall, speak garbage, announce huge lengths or answer the wrong call must
// give a clear error promptly, never a hang or a panic; and the requests'
// bytes are checked where no real server of that protocol version is at
// hand (version 2 is p11-kit 0.25.6 and later, newer than Debian 13).

import (
	"bytes"
	"encoding/binary"
	"errors"
	"io"
	"net"
	"os"
	"slices"
	"strings"
	"testing"
	"time"
)

// p11rpcFakeConn is one connection to the fake server.
type p11rpcFakeConn struct {
	t    *testing.T
	conn net.Conn
	code uint32 // of the last request read
	seen []uint32
}

// read reads one request and returns its call id and arguments (after the
// signature).
func (f *p11rpcFakeConn) read() (uint32, []byte) {
	var hdr [12]byte
	if _, err := io.ReadFull(f.conn, hdr[:]); err != nil {
		return 0, nil
	}
	f.code = binary.BigEndian.Uint32(hdr[0:])
	body := make([]byte, binary.BigEndian.Uint32(hdr[4:])+binary.BigEndian.Uint32(hdr[8:]))
	if _, err := io.ReadFull(f.conn, body); err != nil {
		return 0, nil
	}
	body = body[binary.BigEndian.Uint32(hdr[4:]):]
	id := binary.BigEndian.Uint32(body)
	f.seen = append(f.seen, id)
	siglen := binary.BigEndian.Uint32(body[4:])
	return id, body[8+siglen:]
}

// send answers the last request with a body.
func (f *p11rpcFakeConn) send(body []byte) {
	f.sendCode(f.code, body)
}

func (f *p11rpcFakeConn) sendCode(code uint32, body []byte) {
	hdr := binary.BigEndian.AppendUint32(nil, code)
	hdr = binary.BigEndian.AppendUint32(hdr, 0)
	hdr = binary.BigEndian.AppendUint32(hdr, uint32(len(body)))
	f.conn.Write(append(hdr, body...))
}

// answer is the body of an answer to call: its id and response signature,
// then what fill writes.
func p11rpcAnswer(call p11Call, fill func(e *p11Enc)) []byte {
	e := &p11Enc{call: call}
	e.uint32(call.id)
	e.rawArray([]byte(call.resp))
	if fill != nil {
		fill(e)
	}
	return e.buf
}

// hello agrees on a version and answers C_Initialize.
func (f *p11rpcFakeConn) hello(version byte) {
	var b [1]byte
	io.ReadFull(f.conn, b[:])
	f.conn.Write([]byte{min(b[0], version)})
	if id, _ := f.read(); id != p11CallInitialize.id {
		f.t.Errorf("first call %d, not C_Initialize", id)
	}
	f.send(p11rpcAnswer(p11CallInitialize, nil))
}

// p11rpcFake serves each connection with serve (n counts them from 0) and
// returns the address to dial.
func p11rpcFake(t *testing.T, serve func(f *p11rpcFakeConn, n int)) string {
	dir, err := os.MkdirTemp("/tmp", "p11fake")
	if err != nil {
		t.Fatal(err)
	}
	l, err := net.Listen("unix", dir+"/s")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		l.Close()
		os.RemoveAll(dir)
	})
	go func() {
		for n := 0; ; n++ {
			conn, err := l.Accept()
			if err != nil {
				return
			}
			go func() {
				defer conn.Close()
				f := &p11rpcFakeConn{t: t, conn: conn}
				serve(f, n)
				// Then C_Finalize, and nothing else, succeeds.
				for {
					switch id, _ := f.read(); id {
					case 0:
						return
					case p11CallFinalize.id:
						f.send(p11rpcAnswer(p11CallFinalize, nil))
					default:
						f.send(p11rpcAnswer(p11CallError, func(e *p11Enc) { e.ulong(ckrGeneralError) }))
					}
				}
			}()
		}
	}()
	return "unix:path=" + dir + "/s"
}

const p11rpcFakeWait = 500 * time.Millisecond

// TestP11RPCFakeHandshake: what goes wrong before the client is ready.
func TestP11RPCFakeHandshake(t *testing.T) {
	initErr := func(rv uint64) func(f *p11rpcFakeConn, n int) {
		return func(f *p11rpcFakeConn, n int) {
			f.conn.Read(make([]byte, 1))
			f.conn.Write([]byte{0})
			f.read()
			f.send(p11rpcAnswer(p11CallError, func(e *p11Enc) { e.ulong(rv) }))
		}
	}
	for _, tc := range []struct {
		name  string
		serve func(f *p11rpcFakeConn, n int)
		want  string // in the error; "" for success
		stall bool
	}{
		{"silent", func(f *p11rpcFakeConn, n int) { time.Sleep(3 * p11rpcFakeWait) }, "version negotiation", true},
		{"stalls on C_Initialize", func(f *p11rpcFakeConn, n int) {
			f.conn.Read(make([]byte, 1))
			f.conn.Write([]byte{2})
			time.Sleep(3 * p11rpcFakeWait)
		}, "C_Initialize: p11-kit connection closed: no answer within", true},
		{"answers a higher version", func(f *p11rpcFakeConn, n int) {
			f.conn.Read(make([]byte, 1))
			f.conn.Write([]byte{9})
		}, "asked for protocol version 2, answered 9", false},
		{"hangs up on version 2 (legacy)", func(f *p11rpcFakeConn, n int) {
			if n == 0 {
				f.conn.Close()
				return
			}
			f.hello(0)
		}, "", false},
		{"garbage", func(f *p11rpcFakeConn, n int) {
			f.conn.Read(make([]byte, 1))
			f.conn.Write([]byte{2})
			f.read()
			f.conn.Write([]byte("HTTP/1.1 400 Bad Request\r\n\r\n"))
		}, "answer to call 0x48545450, not 0x11", false},
		{"huge answer", func(f *p11rpcFakeConn, n int) {
			f.conn.Read(make([]byte, 1))
			f.conn.Write([]byte{2})
			f.read()
			f.conn.Write([]byte{0, 0, 0, 0x11, 0, 0, 0, 0, 0xff, 0xff, 0xff, 0xf0})
		}, "answer of 0+4294967280 bytes, more than the limit", false},
		{"huge options", func(f *p11rpcFakeConn, n int) {
			f.conn.Read(make([]byte, 1))
			f.conn.Write([]byte{2})
			f.read()
			f.conn.Write([]byte{0, 0, 0, 0x11, 0x7f, 0, 0, 0, 0, 0, 0, 0})
		}, "more than the limit", false},
		{"wrong call id", func(f *p11rpcFakeConn, n int) {
			f.conn.Read(make([]byte, 1))
			f.conn.Write([]byte{2})
			f.read()
			f.send(p11rpcAnswer(p11CallFinalize, nil))
		}, "answer to call id 2", false},
		{"wrong signature", func(f *p11rpcFakeConn, n int) {
			f.conn.Read(make([]byte, 1))
			f.conn.Write([]byte{2})
			f.read()
			f.send(p11rpcAnswer(p11Call{1, "C_Initialize", "", "u"}, func(e *p11Enc) { e.ulong(0) }))
		}, `answer with signature "u", not ""`, false},
		{"truncated", func(f *p11rpcFakeConn, n int) {
			f.conn.Read(make([]byte, 1))
			f.conn.Write([]byte{2})
			f.read()
			f.conn.Write([]byte{0, 0, 0, 0x11, 0, 0, 0, 0, 0, 0, 0, 100, 1, 2, 3})
			f.conn.Close()
		}, "EOF", false},
		{"error without an error", initErr(ckrOK), "error answer with CKR_OK", false},
		{"device error", initErr(ckrDeviceError), "C_Initialize: CKR_DEVICE_ERROR (0x30)", false},
		{"already initialized", initErr(ckrCryptokiAlreadyInitialized), "", false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			start := time.Now()
			c, err := dialP11Wait(p11rpcFake(t, tc.serve), p11rpcFakeWait)
			if time.Since(start) > 4*p11rpcFakeWait {
				t.Errorf("took %v", time.Since(start))
			}
			if tc.want == "" {
				if err != nil {
					t.Fatal(err)
				}
				c.Close()
				return
			}
			if err == nil {
				c.Close()
				t.Fatal("no error")
			}
			if !strings.Contains(err.Error(), tc.want) || errors.Is(err, os.ErrDeadlineExceeded) != tc.stall {
				t.Fatalf("error %q, want %q", err, tc.want)
			}
		})
	}
}

// TestP11RPCFakeAnswers: nonsense in the answers to the calls after
// C_Initialize.
func TestP11RPCFakeAnswers(t *testing.T) {
	for _, tc := range []struct {
		name   string
		answer func(f *p11rpcFakeConn)
		call   func(c *p11Client) error
		want   string
	}{
		{"more handles than asked", func(f *p11rpcFakeConn) {
			f.read()
			f.send(p11rpcAnswer(p11CallFindObjectsInit, nil))
			f.read()
			f.send(p11rpcAnswer(p11CallFindObjects, func(e *p11Enc) {
				e.byte(1)
				e.uint32(3)
				e.ulong(1)
				e.ulong(2)
				e.ulong(3)
			}))
		}, func(c *p11Client) error { _, err := c.FindObjects(1, nil, 2); return err }, "3 handles for 2 asked"},
		{"a list longer than the answer", func(f *p11rpcFakeConn) {
			f.read()
			f.send(p11rpcAnswer(p11CallGetSlotList, func(e *p11Enc) {
				e.byte(1)
				e.uint32(1 << 30)
			}))
		}, func(c *p11Client) error { _, err := c.Slots(true); return err }, "a list of 1073741824 longer than the answer"},
		{"an attribute not asked for", func(f *p11rpcFakeConn) {
			f.read()
			f.send(p11rpcAnswer(p11CallGetAttributeValue, func(e *p11Enc) {
				e.uint32(1)
				e.uint32(ckaLabel)
				e.byte(1)
				e.uint32(3)
				e.rawArray([]byte("abc"))
				e.ulong(ckrOK)
			}))
		}, func(c *p11Client) error { _, err := c.Attributes(1, 2, ckaID); return err }, "attribute 0x3 where 0x102 is due"},
		{"a huge attribute", func(f *p11rpcFakeConn) {
			f.read()
			f.send(p11rpcAnswer(p11CallGetAttributeValue, func(e *p11Enc) {
				e.uint32(1)
				e.uint32(ckaID)
				e.byte(1)
				e.uint32(0x7ffffff0)
				e.uint32(0xffffffff)
				e.ulong(ckrOK)
			}))
		}, func(c *p11Client) error { _, err := c.Attributes(1, 2, ckaID); return err }, "attribute 0x102 of 2147483632 bytes"},
		{"a signature longer than its buffer", func(f *p11rpcFakeConn) {
			f.read()
			f.send(p11rpcAnswer(p11CallSignInit, nil))
			f.read()
			f.send(p11rpcAnswer(p11CallSign, func(e *p11Enc) { e.byte(0); e.uint32(4) }))
			f.read()
			f.send(p11rpcAnswer(p11CallSign, func(e *p11Enc) { e.byteArray([]byte("12345")) }))
		}, func(c *p11Client) error {
			_, err := c.Sign(1, p11Mechanism{Type: ckmRSAPKCS}, 2, []byte("x"), nil)
			return err
		}, "a signature of 5 bytes for a buffer of 4"},
		{"bytes left over", func(f *p11rpcFakeConn) {
			f.read()
			f.send(p11rpcAnswer(p11CallOpenSession, func(e *p11Enc) { e.ulong(1); e.byte(0) }))
		}, func(c *p11Client) error { _, err := c.OpenSession(0, false); return err }, "1 bytes left over"},
		{"a short label", func(f *p11rpcFakeConn) {
			f.read()
			f.send(p11rpcAnswer(p11CallGetTokenInfo, func(e *p11Enc) { e.rawArray([]byte("short")) }))
		}, func(c *p11Client) error { _, err := c.TokenInfo(0); return err }, "a string of 5 bytes where 32 are due"},
		{"stalls on C_Sign", func(f *p11rpcFakeConn) {
			f.read()
			f.send(p11rpcAnswer(p11CallSignInit, nil))
			f.read()
			time.Sleep(3 * p11rpcFakeWait)
		}, func(c *p11Client) error {
			_, err := c.Sign(1, p11Mechanism{Type: ckmRSAPKCS}, 2, []byte("x"), nil)
			return err
		}, "C_Sign: p11-kit connection closed: no answer within"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c, err := dialP11Wait(p11rpcFake(t, func(f *p11rpcFakeConn, n int) {
				f.hello(2)
				tc.answer(f)
			}), p11rpcFakeWait)
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			err = tc.call(c)
			if err == nil || !strings.Contains(err.Error(), tc.want) || !errors.Is(err, errP11Closed) {
				t.Fatalf("error %v, want %q and errP11Closed", err, tc.want)
			}
			// The connection is given up, not read out of step.
			if _, err := c.Info(); !errors.Is(err, errP11Closed) {
				t.Fatalf("next call: %v", err)
			}
		})
	}
}

// TestP11RPCFakeFindBounded: a token that always has more objects is
// asked for no more than max, and the search is closed.
func TestP11RPCFakeFindBounded(t *testing.T) {
	seen := make(chan []uint32, 1)
	c, err := dialP11(p11rpcFake(t, func(f *p11rpcFakeConn, n int) {
		f.hello(2)
		for {
			id, args := f.read()
			switch id {
			case p11CallFindObjectsInit.id:
				f.send(p11rpcAnswer(p11CallFindObjectsInit, nil))
			case p11CallFindObjects.id:
				want := binary.BigEndian.Uint32(args[8:])
				f.send(p11rpcAnswer(p11CallFindObjects, func(e *p11Enc) {
					e.byte(1)
					e.uint32(want)
					for i := range want {
						e.ulong(uint64(i))
					}
				}))
			case p11CallFindObjectsFinal.id:
				f.send(p11rpcAnswer(p11CallFindObjectsFinal, nil))
				seen <- f.seen
				return
			}
		}
	}))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	found, err := c.FindObjects(1, nil, 100)
	if err != nil || len(found) != 100 {
		t.Fatalf("%d objects, %v", len(found), err)
	}
	// Init, 64 + 36, Final.
	if calls := <-seen; len(calls) != 5 {
		t.Errorf("calls %v", calls)
	}
}

// TestP11RPCFakeRequests checks requests byte for byte as p11-kit's
// server reads them (rpc-message.c): a mechanism in each protocol
// version, an attribute template, C_GetAttributeValue's buffers.
func TestP11RPCFakeRequests(t *testing.T) {
	for _, tc := range []struct {
		version byte
		mech    p11Mechanism
		want    []byte // the mechanism's bytes
	}{
		{0, p11Mechanism{Type: ckmRSAPKCS}, []byte{0, 0, 0, 1, 0xff, 0xff, 0xff, 0xff}},
		{1, p11Mechanism{Type: ckmSHA256RSAPKCS}, []byte{0, 0, 0, 0x40, 0xff, 0xff, 0xff, 0xff}},
		{1, p11Mechanism{Type: ckmEDDSA, Param: []byte{7}}, []byte{0, 0, 0x10, 0x57, 0, 0, 0, 1, 7}},
		{2, p11Mechanism{Type: ckmRSAPKCS}, []byte{0, 0, 0, 1}},
		{2, p11Mechanism{Type: ckmEDDSA}, []byte{0, 0, 0x10, 0x57, 0}},
		{2, p11Mechanism{Type: ckmEDDSA, Param: []byte{7}}, []byte{0, 0, 0x10, 0x57, 1, 0, 0, 0, 1, 7}},
	} {
		got := make(chan []byte, 1)
		c, err := dialP11(p11rpcFake(t, func(f *p11rpcFakeConn, n int) {
			f.hello(tc.version)
			_, args := f.read()
			got <- args
			f.send(p11rpcAnswer(p11CallSignInit, nil))
			f.read()
			f.send(p11rpcAnswer(p11CallSign, func(e *p11Enc) { e.byteArray([]byte("sig")) }))
		}))
		if err != nil {
			t.Fatal(err)
		}
		c.Sign(5, tc.mech, 6, nil, nil)
		c.Close()
		want := append(append(p11Ulong(5), tc.want...), p11Ulong(6)...)
		if args := <-got; !bytes.Equal(args, want) {
			t.Errorf("version %d, %#x: C_SignInit arguments %x, want %x", tc.version, tc.mech.Type, args, want)
		}
	}

	var d p11Enc
	d.attrs([]p11Attr{{Type: ckaClass, Value: p11Ulong(ckoPrivateKey)}, {Type: ckaSign, Value: p11Bool(true)}, {Type: ckaID, Value: []byte{1, 2}}})
	want := []byte{0, 0, 0, 3,
		0, 0, 0, 0, 1, 0, 0, 0, 8, 0, 0, 0, 0, 0, 0, 0, 3, // CKA_CLASS: a CK_ULONG as 8 bytes
		0, 0, 1, 8, 1, 0, 0, 0, 1, 1, // CKA_SIGN: a CK_BBOOL as 1 byte
		0, 0, 1, 2, 1, 0, 0, 0, 2, 0, 0, 0, 2, 1, 2, // CKA_ID: a byte array
	}
	if d.err != nil || !bytes.Equal(d.buf, want) {
		t.Errorf("template %x (%v), want %x", d.buf, d.err, want)
	}
	for _, bad := range []p11Attr{
		{Type: ckaSign, Value: []byte{1, 0}},
		{Type: ckaClass, Value: []byte{3}},
		{Type: 0x40000211}, // CKA_WRAP_TEMPLATE
		{Type: 0x80000001, Value: []byte{1}},
		{Type: ckaID, Missing: true},
	} {
		var d p11Enc
		if d.attrs([]p11Attr{bad}) == nil {
			t.Errorf("template with %+v accepted", bad)
		}
	}
	var m p11Enc
	if m.mechanism(p11Mechanism{Type: 0x0d}, 2) == nil || m.mechanism(p11Mechanism{Type: ckmRSAPKCS, Param: []byte{1}}, 0) == nil {
		t.Error("a mechanism with a parameter p11-kit encodes field by field, or a parameter where none is taken, accepted")
	}
}

// TestP11RPCFakeLoginWipesPIN: the PIN is in no error and not left in the
// request buffer.
func TestP11RPCFakeLoginWipesPIN(t *testing.T) {
	c, err := dialP11(p11rpcFake(t, func(f *p11rpcFakeConn, n int) {
		f.hello(2)
		f.read()
		f.send(p11rpcAnswer(p11CallError, func(e *p11Enc) { e.ulong(ckrPINIncorrect) }))
	}))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	d := c.loginRequest(1, ckuUser, []byte("s3cret-pin"))
	c.mu.Lock()
	_, err = c.do(d)
	c.mu.Unlock()
	if !p11rpcIsRV(err, ckrPINIncorrect) || strings.Contains(err.Error(), "s3cret") || errors.Is(err, errP11Closed) {
		t.Fatalf("wrong PIN: %v", err)
	}
	if bytes.Contains(d.buf, []byte("s3cret")) {
		t.Error("the PIN is still in the request buffer")
	}
}

// TestP11RPCFakeContextLogin: a key with CKA_ALWAYS_AUTHENTICATE gets its
// C_Login as CKU_CONTEXT_SPECIFIC after C_SignInit and before C_Sign, and
// the PIN is not left in the request.
func TestP11RPCFakeContextLogin(t *testing.T) {
	var calls []uint32
	var login []byte
	c, err := dialP11(p11rpcFake(t, func(f *p11rpcFakeConn, n int) {
		f.hello(0)
		answers := []func(*p11Enc){
			nil, nil,
			func(e *p11Enc) { e.byte(0); e.uint32(3) }, // the length
			func(e *p11Enc) { e.byteArray([]byte("sig")) },
		}
		for i, call := range []p11Call{p11CallSignInit, p11CallLogin, p11CallSign, p11CallSign} {
			id, args := f.read()
			calls = append(calls, id)
			if call == p11CallLogin {
				login = args
			}
			f.send(p11rpcAnswer(call, answers[i]))
		}
	}))
	if err != nil {
		t.Fatal(err)
	}
	pin := []byte("123456")
	if sig, err := c.Sign(5, p11Mechanism{Type: ckmRSAPKCS}, 6, []byte("x"), pin); err != nil || string(sig) != "sig" {
		t.Fatalf("sign: %q, %v", sig, err)
	}
	c.Close()
	want := []uint32{p11CallSignInit.id, p11CallLogin.id, p11CallSign.id, p11CallSign.id}
	if !slices.Equal(calls, want) {
		t.Errorf("calls %v, want %v", calls, want)
	}
	wantLogin := append(append(p11Ulong(5), p11Ulong(ckuContextSpecific)...), 1, 0, 0, 0, 6)
	if !bytes.Equal(login, append(wantLogin, pin...)) {
		t.Errorf("C_Login arguments %x, want session 5, CKU_CONTEXT_SPECIFIC and the PIN", login)
	}
}

func TestP11RPCAddress(t *testing.T) {
	for _, tc := range []struct {
		in, kind, attr, value string
	}{
		{"unix:path=/run/p11-kit/pkcs11", "unix", "path", "/run/p11-kit/pkcs11"},
		{"unix:path=/run/user/0/p11-kit/a%20b", "unix", "path", "/run/user/0/p11-kit/a b"},
		{`unix:path="/tmp/x;y"`, "unix", "path", "/tmp/x;y"},
		{`exec:command="p11-kit remote /usr/lib/softhsm/libsofthsm2.so"`, "exec", "command", "p11-kit remote /usr/lib/softhsm/libsofthsm2.so"},
		{`exec:command="sh -c \"exec p11-kit remote x.so\""`, "exec", "command", `sh -c "exec p11-kit remote x.so"`},
	} {
		kind, attrs, err := p11ParseAddress(tc.in)
		if err != nil || kind != tc.kind || attrs[tc.attr] != tc.value {
			t.Errorf("%s: %s %q %v", tc.in, kind, attrs, err)
		}
	}
	for _, bad := range []string{"", "/run/p11-kit/pkcs11", "unix:path=relative", "vsock:cid=2;port=1", `exec:command="unterminated`, "exec:command=", "unix:path=/a;junk"} {
		if _, _, err := p11ParseAddress(bad); err == nil {
			t.Errorf("%q accepted", bad)
		}
	}
	argv, err := p11SplitCommand(`chroot /srv/root  p11-kit remote "/usr/lib/a b.so" 'c\d' e\ f`)
	if err != nil || strings.Join(argv, "|") != `chroot|/srv/root|p11-kit|remote|/usr/lib/a b.so|c\d|e f` {
		t.Errorf("argv %q, %v", argv, err)
	}
	for _, bad := range []string{"", "  ", `a "b`, `a\`} {
		if _, err := p11SplitCommand(bad); err == nil {
			t.Errorf("command %q accepted", bad)
		}
	}
}
