package main

import (
	"bytes"
	"encoding/binary"
	"io"
	"net"
	"testing"
	"time"
)

// p11rpcFuzzConn is a connection whose server's side is fixed bytes:
// what is written goes nowhere.
type p11rpcFuzzConn struct{ r *bytes.Reader }

func (c p11rpcFuzzConn) Read(p []byte) (int, error)       { return c.r.Read(p) }
func (c p11rpcFuzzConn) Write(p []byte) (int, error)      { return len(p), nil }
func (c p11rpcFuzzConn) Close() error                     { return nil }
func (c p11rpcFuzzConn) LocalAddr() net.Addr              { return &net.UnixAddr{} }
func (c p11rpcFuzzConn) RemoteAddr() net.Addr             { return &net.UnixAddr{} }
func (c p11rpcFuzzConn) SetDeadline(time.Time) error      { return nil }
func (c p11rpcFuzzConn) SetReadDeadline(time.Time) error  { return nil }
func (c p11rpcFuzzConn) SetWriteDeadline(time.Time) error { return nil }

// p11rpcFuzzOps are the client's calls, each reading one or more answers.
var p11rpcFuzzOps = []func(c *p11Client) error{
	func(c *p11Client) error { _, err := c.Info(); return err },
	func(c *p11Client) error {
		slots, err := c.Slots(true)
		if err == nil && len(slots) > p11MaxMessage/8 {
			panic("more slots than an answer holds")
		}
		return err
	},
	func(c *p11Client) error { _, err := c.SlotInfo(1); return err },
	func(c *p11Client) error { _, err := c.TokenInfo(1); return err },
	func(c *p11Client) error { _, err := c.Mechanisms(1); return err },
	func(c *p11Client) error { _, err := c.MechanismInfo(1, ckmRSAPKCS); return err },
	func(c *p11Client) error { _, err := c.OpenSession(1, true); return err },
	func(c *p11Client) error { return c.Login(1, ckuUser, []byte("1234")) },
	func(c *p11Client) error {
		found, err := c.FindObjects(1, []p11Attr{{Type: ckaID, Value: []byte{1}}}, 10)
		if err == nil && len(found) > 10 {
			panic("more objects than asked for")
		}
		return err
	},
	func(c *p11Client) error {
		attrs, err := c.Attributes(1, 2, ckaClass, ckaSign, ckaModulus)
		if err == nil {
			for i, a := range attrs {
				if a.Type != []uint64{ckaClass, ckaSign, ckaModulus}[i] || a.Missing != (a.Value == nil) {
					panic("attributes out of order or half missing")
				}
			}
		}
		return err
	},
	func(c *p11Client) error {
		sig, err := c.Sign(1, p11Mechanism{Type: ckmSHA256RSAPKCS}, 2, []byte("data"), nil)
		if err == nil && len(sig) == 0 {
			panic("an empty signature")
		}
		return err
	},
	func(c *p11Client) error {
		_, _, err := c.GenerateKeyPair(1, p11Mechanism{Type: ckmECEdwardsKeyPairGen}, nil, nil)
		return err
	},
	func(c *p11Client) error { _, err := c.SessionInfo(1); return err },
}

// p11rpcFrames makes an answer stream: the version byte, the operation's
// index, then one framed answer per body, with the call codes the client
// uses.
func p11rpcFrames(version, op byte, bodies ...[]byte) []byte {
	out := []byte{version, op}
	for i, b := range bodies {
		out = binary.BigEndian.AppendUint32(out, uint32(0x11+i))
		out = binary.BigEndian.AppendUint32(out, 0)
		out = binary.BigEndian.AppendUint32(out, uint32(len(b)))
		out = append(out, b...)
	}
	return out
}

// FuzzP11Message feeds arbitrary answers to each call: the client may
// fail, but must not panic, hang or return what was not asked for.
func FuzzP11Message(f *testing.F) {
	ans := p11rpcAnswer
	ulongs := func(call p11Call, vs ...uint64) []byte {
		return ans(call, func(e *p11Enc) {
			e.byte(1)
			e.uint32(uint32(len(vs)))
			for _, v := range vs {
				e.ulong(v)
			}
		})
	}
	pad := func(e *p11Enc, s string, n int) { e.rawArray([]byte((s + string(bytes.Repeat([]byte(" "), n)))[:n])) }
	f.Add(p11rpcFrames(2, 0, ans(p11CallGetInfo, func(e *p11Enc) {
		e.byte(2)
		e.byte(40)
		pad(e, "SoftHSM", 32)
		e.ulong(0)
		pad(e, "Implementation of PKCS11", 32)
		e.byte(2)
		e.byte(6)
	})))
	f.Add(p11rpcFrames(0, 1, ans(p11CallGetSlotList, func(e *p11Enc) { e.byte(0); e.uint32(2) }), ulongs(p11CallGetSlotList, 1, 2)))
	f.Add(p11rpcFrames(1, 2, ans(p11CallGetSlotInfo, func(e *p11Enc) {
		pad(e, "slot", 64)
		pad(e, "maker", 32)
		e.ulong(ckfTokenPresent)
		e.buf = append(e.buf, 1, 0, 1, 0)
	})))
	f.Add(p11rpcFrames(2, 3, ans(p11CallGetTokenInfo, func(e *p11Enc) {
		pad(e, "test", 32)
		pad(e, "SoftHSM project", 32)
		pad(e, "SoftHSM v2", 16)
		pad(e, "1234", 16)
		for range 11 {
			e.ulong(4)
		}
		e.buf = append(e.buf, 2, 6, 2, 6)
		pad(e, "", 16)
	})))
	f.Add(p11rpcFrames(2, 4, ans(p11CallGetMechanismList, func(e *p11Enc) { e.byte(0); e.uint32(1) }), ulongs(p11CallGetMechanismList, ckmRSAPKCS)))
	f.Add(p11rpcFrames(2, 5, ans(p11CallGetMechanismInfo, func(e *p11Enc) { e.ulong(512); e.ulong(16384); e.ulong(ckfSign) })))
	f.Add(p11rpcFrames(2, 6, ans(p11CallOpenSession, func(e *p11Enc) { e.ulong(7) })))
	f.Add(p11rpcFrames(2, 7, ans(p11CallError, func(e *p11Enc) { e.ulong(ckrPINIncorrect) })))
	f.Add(p11rpcFrames(2, 8, ans(p11CallFindObjectsInit, nil), ulongs(p11CallFindObjects, 3, 4), ans(p11CallFindObjectsFinal, nil)))
	f.Add(p11rpcFrames(2, 9,
		ans(p11CallGetAttributeValue, func(e *p11Enc) {
			e.uint32(3)
			e.uint32(ckaClass)
			e.byte(1)
			e.uint32(8)
			e.ulong(0)
			e.uint32(ckaSign)
			e.byte(1)
			e.uint32(1)
			e.byte(0)
			e.uint32(ckaModulus)
			e.byte(1)
			e.uint32(4)
			e.uint32(0xffffffff)
			e.ulong(ckrOK)
		}),
		ans(p11CallGetAttributeValue, func(e *p11Enc) {
			e.uint32(3)
			e.uint32(ckaClass)
			e.byte(1)
			e.uint32(8)
			e.ulong(ckoPrivateKey)
			e.uint32(ckaSign)
			e.byte(1)
			e.uint32(1)
			e.byte(1)
			e.uint32(ckaModulus)
			e.byte(0)
			e.ulong(ckrAttributeSensitive)
		})))
	f.Add(p11rpcFrames(1, 10, ans(p11CallSignInit, nil),
		ans(p11CallSign, func(e *p11Enc) { e.byte(0); e.uint32(4) }),
		ans(p11CallSign, func(e *p11Enc) { e.byteArray([]byte("sig!")) })))
	f.Add(p11rpcFrames(2, 11, ans(p11CallGenerateKeyPair, func(e *p11Enc) { e.ulong(1); e.ulong(2) })))
	f.Add(p11rpcFrames(2, 12, ans(p11CallGetSessionInfo, func(e *p11Enc) { e.ulong(1); e.ulong(3); e.ulong(6); e.ulong(0) })))

	f.Fuzz(func(t *testing.T, data []byte) {
		if len(data) < 2 {
			return
		}
		op := p11rpcFuzzOps[int(data[1])%len(p11rpcFuzzOps)]
		c := &p11Client{conn: p11rpcFuzzConn{bytes.NewReader(data[2:])}, version: data[0] % 3, code: 0x10, wait: time.Second}
		if err := op(c); err == nil && c.broken != nil {
			t.Fatalf("success on a broken connection: %v", c.broken)
		}
		// Whatever happened, the stream is either read in step or given up.
		if _, err := io.ReadAll(c.conn); err != nil {
			t.Fatal(err)
		}
	})
}
