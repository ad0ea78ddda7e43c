package main

import (
	"bytes"
	"crypto"
	"crypto/rsa"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"
)

// fakePCSCD plays pcscd on a Unix socket, as pcsc-lite's winscard_svc.c
// does, with virtual cards (pivcard_test.go) in its readers, so that the
// PC/SC client and the YubiKey code run in plain `go test`, without pcscd,
// and so that what a real pcscd never does on demand (answer garbage, die
// in the middle of a command, speak another protocol version) is tested.
type fakePCSCD struct {
	path  string
	minor int32 // the protocol version it accepts: 4:minor

	mu      sync.Mutex
	readers []*fakeReader
	// onTransmit, when set, sees each APDU and the card's response, and
	// may replace the answer (nil: the card's).
	onTransmit func(apdu, resp []byte) *fakeAnswer
	// onCommand, when set, sees each command and the reader it is for
	// ("" for none), and may make pcscd answer it with an error, or not
	// at all (stall, until the test ends).
	onCommand func(cmd uint32, reader string) (rv pcscError, stall bool)
	done      chan struct{} // closed when the test ends
	versions  []int32       // the versions clients asked for
}

// fakeAnswer is what fakePCSCD sends for a transmit instead of the card's
// response: data announced as n bytes (0: its length), or an error, or
// nothing; hangUp closes the connection after it.
type fakeAnswer struct {
	data   []byte
	n      int
	rv     pcscError
	hangUp bool
}

type fakeReader struct {
	name string
	card *virtualYubiKey // nil: no card
}

func newFakePCSCD(t testing.TB, minor int32) *fakePCSCD {
	t.Helper()
	d := &fakePCSCD{path: filepath.Join(t.TempDir(), "pcscd.comm"), minor: minor, done: make(chan struct{})}
	l, err := net.Listen("unix", d.path)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	t.Setenv("PCSCLITE_CSOCK_NAME", d.path)
	pcscAgreed.Store(0)
	t.Cleanup(func() { pcscAgreed.Store(0) })
	resetTokenPool()
	t.Cleanup(resetTokenPool)
	// Before the pool is reset: stalled exchanges end first.
	t.Cleanup(func() {
		d.mu.Lock()
		d.onCommand, d.onTransmit = nil, nil
		d.mu.Unlock()
		close(d.done)
	})
	go func() {
		for {
			conn, err := l.Accept()
			if err != nil {
				return
			}
			go d.serve(conn)
		}
	}()
	return d
}

// setTransmit makes hook answer the APDUs the cards are sent (nil: the
// cards answer).
func (d *fakePCSCD) setTransmit(hook func(apdu, resp []byte) *fakeAnswer) {
	d.mu.Lock()
	d.onTransmit = hook
	d.mu.Unlock()
}

// addCard puts a fresh virtual YubiKey (or, with serial 0, an empty reader)
// in a new reader.
func (d *fakePCSCD) addCard(t testing.TB, serial uint32) *virtualYubiKey {
	d.mu.Lock()
	defer d.mu.Unlock()
	r := &fakeReader{name: fmt.Sprintf("Fake Reader %02d 00", len(d.readers))}
	if serial != 0 {
		r.card = newVirtualYubiKey(t, serial, 0)
	}
	d.readers = append(d.readers, r)
	return r.card
}

func (d *fakePCSCD) reader(name string) *fakeReader {
	d.mu.Lock()
	defer d.mu.Unlock()
	for _, r := range d.readers {
		if r.name == name {
			return r
		}
	}
	return nil
}

func (d *fakePCSCD) serve(conn net.Conn) {
	defer conn.Close()
	ne := binary.NativeEndian
	handles := map[uint32]string{}
	for {
		var hdr [8]byte
		if _, err := io.ReadFull(conn, hdr[:]); err != nil {
			return
		}
		body := make([]byte, ne.Uint32(hdr[:]))
		if _, err := io.ReadFull(conn, body); err != nil {
			return
		}
		cmd := ne.Uint32(hdr[4:])
		rv := func(e pcscError) { ne.PutUint32(body[len(body)-4:], uint32(e)) }
		var apdu []byte
		if cmd == pcscTransmit {
			apdu = make([]byte, ne.Uint32(body[12:]))
			if _, err := io.ReadFull(conn, apdu); err != nil {
				return
			}
		}
		d.mu.Lock()
		onCommand := d.onCommand
		d.mu.Unlock()
		if onCommand != nil {
			var reader string
			if len(body) >= 4 {
				reader = handles[ne.Uint32(body)]
			}
			if cmd == pcscConnect {
				name, _, _ := bytes.Cut(body[4:4+pcscMaxReaderName], []byte{0})
				reader = string(name)
			}
			if e, stall := onCommand(cmd, reader); stall {
				<-d.done
				return
			} else if e != 0 {
				rv(e)
				if _, err := conn.Write(body); err != nil {
					return
				}
				continue
			}
		}
		switch cmd {
		case pcscVersion:
			d.mu.Lock()
			d.versions = append(d.versions, int32(ne.Uint32(body[4:])))
			d.mu.Unlock()
			if ne.Uint32(body) != 4 || int32(ne.Uint32(body[4:])) != d.minor {
				rv(pcscErrServiceStopped)
			}
			ne.PutUint32(body[4:], uint32(d.minor))
		case pcscEstablishContext:
			ne.PutUint32(body[4:], 0x1234)
		case pcscReleaseContext, pcscBeginTransaction, pcscEndTransaction, pcscStatus:
		case pcscDisconnect:
			delete(handles, ne.Uint32(body))
		case pcscGetReadersState:
			states := make([]byte, pcscMaxReaders*pcscReaderStateSize)
			d.mu.Lock()
			for i, r := range d.readers {
				s := states[i*pcscReaderStateSize:]
				copy(s, r.name)
				state := uint32(0x0002) // SCARD_ABSENT
				if r.card != nil {
					state = pcscSCardPresent | 0x0010
					copy(s[pcscMaxReaderName+12:], yubiKeyATR)
					ne.PutUint32(s[pcscMaxReaderName+12+36:], uint32(len(yubiKeyATR)))
				}
				ne.PutUint32(s[pcscMaxReaderName+4:], state)
			}
			d.mu.Unlock()
			body = states
		case pcscConnect:
			name, _, _ := bytes.Cut(body[4:4+pcscMaxReaderName], []byte{0})
			r := d.reader(string(name))
			o := 4 + pcscMaxReaderName
			switch {
			case r == nil:
				rv(0x80100009) // unknown reader
			case r.card == nil:
				rv(pcscErrNoSmartcard)
			default:
				h := uint32(len(handles) + 100)
				handles[h] = r.name
				ne.PutUint32(body[o+8:], h)
				ne.PutUint32(body[o+12:], pcscProtocolT1)
			}
		case pcscTransmit:
			r := d.reader(handles[ne.Uint32(body)])
			if r == nil || r.card == nil {
				rv(pcscErrRemovedCard)
				break
			}
			r.card.mu.Lock()
			resp := r.card.apdu(apdu)
			r.card.mu.Unlock()
			d.mu.Lock()
			hook := d.onTransmit
			d.mu.Unlock()
			ans := &fakeAnswer{data: resp}
			if hook != nil {
				if a := hook(apdu, resp); a != nil {
					ans = a
				}
			}
			if ans.hangUp && ans.data == nil {
				return
			}
			if ans.n == 0 {
				ans.n = len(ans.data)
			}
			ne.PutUint32(body[24:], uint32(ans.n))
			rv(ans.rv)
			if ans.rv == 0 {
				body = append(body, ans.data...)
			}
			if ans.hangUp {
				conn.Write(body)
				return
			}
		default:
			return
		}
		if _, err := conn.Write(body); err != nil {
			return
		}
	}
}

func fakeKeyURI(t testing.TB, card *virtualYubiKey, policy byte) (string, *rsa.PublicKey) {
	t.Helper()
	priv, _ := loadTokenKey(t, card, 0x9c, policy, true)
	uri, err := tokenKeyURI(card.serial, 0x9c)
	if err != nil {
		t.Fatal(err)
	}
	return uri, &priv.PublicKey
}

// fakeTokenSigner puts a virtual YubiKey with a key in slot 9c in a new
// reader of d, and opens a signer on that key.
func fakeTokenSigner(t testing.TB, d *fakePCSCD) (*virtualYubiKey, crypto.Signer, *rsa.PublicKey) {
	t.Helper()
	card := d.addCard(t, testTokenSerial)
	uri, pub := fakeKeyURI(t, card, 1)
	signer, err := tokenSigner(YubiKeyConfig{}, uri)
	if err != nil {
		t.Fatal(err)
	}
	return card, signer, pub
}

func pinConfig(t testing.TB, pin string) YubiKeyConfig {
	t.Helper()
	f := filepath.Join(t.TempDir(), "pin")
	if err := os.WriteFile(f, []byte(pin), 0o600); err != nil {
		t.Fatal(err)
	}
	return YubiKeyConfig{PINFile: f}
}

// oneLine fails unless err is a one-line error containing every want.
func oneLine(t testing.TB, what string, err error, want ...string) {
	t.Helper()
	if err == nil {
		t.Errorf("%s: no error, want %q", what, want)
		return
	}
	for _, w := range want {
		if !strings.Contains(err.Error(), w) {
			t.Errorf("%s: %v; want %q in it", what, err, w)
		}
	}
	if strings.Contains(err.Error(), "\n") {
		t.Errorf("%s: error of several lines: %q", what, err)
	}
}

// TestPCSCProtocolVersions: the client asks for 4:5, falls back to 4:4,
// and names both, and the server's, when neither fits.
func TestPCSCProtocolVersions(t *testing.T) {
	for _, minor := range []int32{5, 4} {
		t.Run(fmt.Sprintf("4:%d", minor), func(t *testing.T) {
			d := newFakePCSCD(t, minor)
			card := d.addCard(t, testTokenSerial)
			uri, pub := fakeKeyURI(t, card, 1)
			signer, err := tokenSigner(YubiKeyConfig{}, uri)
			if err != nil {
				t.Fatal(err)
			}
			signVerified(t, signer, pub, "through a fake pcscd")
			resetTokenPool()
			if _, err := tokenSigner(YubiKeyConfig{}, uri); err != nil {
				t.Fatal(err)
			}
			// The second session goes straight to the version agreed.
			d.mu.Lock()
			got := fmt.Sprint(d.versions)
			d.mu.Unlock()
			want := map[int32]string{5: "[5 5]", 4: "[5 4 4]"}[minor]
			if got != want {
				t.Errorf("versions asked %s, want %s", got, want)
			}
		})
	}
	newFakePCSCD(t, 6)
	_, err := pcscEstablish(time.Time{})
	oneLine(t, "pcscd 4:6", err, "speaks PC/SC protocol 4:6", "4:5", "4:4")
}

func TestPCSCNotRunning(t *testing.T) {
	path := filepath.Join(t.TempDir(), "pcscd.comm")
	t.Setenv("PCSCLITE_CSOCK_NAME", path)
	resetTokenPool()
	uri, _ := tokenKeyURI(testTokenSerial, 0x9c)
	_, err := tokenSigner(YubiKeyConfig{}, uri)
	oneLine(t, "no pcscd", err, fmt.Sprintf("YubiKey %d: pcscd is not running", testTokenSerial), path, "systemctl start pcscd.socket")
	if tokenKeyAvailable(YubiKeyConfig{}, uri) == nil {
		t.Error("token available without pcscd")
	}
	// A socket nobody listens on any more.
	l, err := net.Listen("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	l.(*net.UnixListener).SetUnlinkOnClose(false)
	l.Close()
	_, err = pcscEstablish(time.Time{})
	oneLine(t, "stale socket", err, "pcscd is not running")
}

// TestPCSCWhatIsFound: no reader, an empty reader, another YubiKey, a card
// that is not a PIV card: each said in the one line.
func TestPCSCWhatIsFound(t *testing.T) {
	d := newFakePCSCD(t, 4)
	uri, _ := tokenKeyURI(testTokenSerial, 0x9c)
	_, err := tokenSigner(YubiKeyConfig{}, uri)
	oneLine(t, "no reader", err, fmt.Sprintf("YubiKey %d is not connected to this host (pcscd has no reader)", testTokenSerial))

	d.addCard(t, 0)
	_, err = tokenSigner(YubiKeyConfig{}, uri)
	oneLine(t, "empty reader", err, "1 PC/SC readers, no card in them")

	d.addCard(t, 11111111)
	notPIV := d.addCard(t, 22222222)
	notPIV.mu.Lock()
	notPIV.notPIV = true
	notPIV.mu.Unlock()
	_, err = tokenSigner(YubiKeyConfig{}, uri)
	oneLine(t, "other cards", err, "is not connected to this host", `YubiKey 11111111 in reader "Fake Reader 01 00"`,
		`the card in reader "Fake Reader 02 00" is not a PIV card`)
}

// TestPCSCMalformed: whatever pcscd or the card answers, the error is one
// line, and the session is not kept on a wrong footing.
func TestPCSCMalformed(t *testing.T) {
	d := newFakePCSCD(t, 4)
	_, signer, pub := fakeTokenSigner(t, d)
	// The last APDU of a signature (the first is chained), or a GET
	// RESPONSE that follows it.
	isSign := func(apdu []byte) bool {
		return apdu[0] == 0 && (apdu[1] == insAuthenticate || apdu[1] == insGetResponse)
	}
	for _, tc := range []struct {
		name string
		hook func(apdu, resp []byte) *fakeAnswer
		want string
	}{
		{"no status word", func(a, r []byte) *fakeAnswer { return &fakeAnswer{data: []byte{0x90}} }, "a response of 1 bytes"},
		{"too long", func(a, r []byte) *fakeAnswer { return &fakeAnswer{n: pcscMaxBuffer + 1} }, "a response of 65549 bytes"},
		{"truncated", func(a, r []byte) *fakeAnswer { return &fakeAnswer{data: r[:len(r)/2], n: len(r), hangUp: true} }, "connection closed"},
		{"malformed TLV", func(a, r []byte) *fakeAnswer {
			if !isSign(a) {
				return nil
			}
			return &fakeAnswer{data: []byte{0x7c, 0x82, 0x01, 0x04, 0x90, 0x00}}
		}, "signature: TLV 7c: 260 bytes announced, 0 present"},
		{"short signature", func(a, r []byte) *fakeAnswer {
			if !isSign(a) {
				return nil
			}
			return &fakeAnswer{data: []byte{0x7c, 0x03, 0x82, 0x01, 0x00, 0x90, 0x00}}
		}, "signature of 1 bytes, want 256"},
		{"endless chaining", func(a, r []byte) *fakeAnswer {
			if !isSign(a) {
				return nil
			}
			return &fakeAnswer{data: append(make([]byte, 256), 0x61, 0x00)}
		}, "a response of more than 16384 bytes"},
		{"unknown status", func(a, r []byte) *fakeAnswer {
			if !isSign(a) {
				return nil
			}
			return &fakeAnswer{data: []byte{0x6f, 0x00}}
		}, "the card answered 6f00 to instruction 87"},
	} {
		d.setTransmit(tc.hook)
		_, _, err := signDigest(t, signer, "x")
		oneLine(t, tc.name, err, fmt.Sprintf("YubiKey %d", testTokenSerial), tc.want)
	}
	d.setTransmit(nil)
	signVerified(t, signer, pub, "after the garbage")
}

// TestPCSCReaderVanishes: the reader goes away, or pcscd dies, in the
// middle of a signature: one line saying the token is not there, then
// signing again once it is back.
func TestPCSCReaderVanishes(t *testing.T) {
	d := newFakePCSCD(t, 5)
	card, signer, pub := fakeTokenSigner(t, d)
	for _, pcscdDies := range []bool{false, true} {
		d.mu.Lock()
		readers := d.readers
		d.onTransmit = func(apdu, resp []byte) *fakeAnswer {
			d.mu.Lock()
			d.readers = nil
			d.mu.Unlock()
			if pcscdDies {
				return &fakeAnswer{hangUp: true}
			}
			return &fakeAnswer{rv: pcscErrReaderUnavail}
		}
		d.mu.Unlock()
		_, _, err := signDigest(t, signer, "x")
		oneLine(t, fmt.Sprintf("pcscd dies: %v", pcscdDies), err, fmt.Sprintf("YubiKey %d is not connected to this host (pcscd has no reader)", testTokenSerial))
		// Plugged back in: powered up afresh.
		card.mu.Lock()
		card.resetVolatile()
		card.mu.Unlock()
		d.mu.Lock()
		d.readers, d.onTransmit = readers, nil
		d.mu.Unlock()
		signVerified(t, signer, pub, "back")
	}
}

// TestPIVCardErrors covers refusals a card gives through the whole path:
// a key of another algorithm, PIN blocked, and a PSS request.
func TestPIVCardErrors(t *testing.T) {
	d := newFakePCSCD(t, 4)
	card := d.addCard(t, testTokenSerial)
	uri, _ := fakeKeyURI(t, card, 3)
	signer, err := tokenSigner(pinConfig(t, "123456"), uri)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := signer.Sign(nil, make([]byte, 32), &rsa.PSSOptions{Hash: crypto.SHA256}); err == nil {
		t.Error("PSS signature made")
	}
	if _, err := signer.Sign(nil, make([]byte, 20), crypto.SHA1); err == nil {
		t.Error("SHA-1 signature made")
	}
	card.mu.Lock()
	card.pinRetries = 0
	card.mu.Unlock()
	_, _, err = signDigest(t, signer, "x")
	oneLine(t, "blocked", err, "PIN is now blocked")
	if !errors.As(err, new(*pivPINError)) && strings.Contains(err.Error(), "123456") {
		t.Error("PIN in the error")
	}
}

// FuzzPIVResponses feeds arbitrary card answers to the parsers of
// responses: none may panic, and what they accept must be well formed.
func FuzzPIVResponses(f *testing.F) {
	f.Add([]byte{0x7c, 0x03, 0x82, 0x01, 0x00, 0x90, 0x00})
	f.Add([]byte{0x01, 0x01, 0x07, 0x02, 0x02, 0x03, 0x01, 0x03, 0x01, 0x01, 0x04, 0x03, 0x81, 0x01, 0x01})
	f.Add([]byte{0x53, 0x82, 0x00, 0x04, 0x70, 0x02, 0x30, 0x00})
	f.Add([]byte{0x7f, 0x49, 0x81, 0x02, 0x82, 0x00})
	f.Add(append(appendTLV(nil, 0x7f49, appendTLV(appendTLV(nil, 0x81, bytes.Repeat([]byte{0xff}, 256)), 0x82, []byte{1, 0, 1})), 0x90, 0x00))
	f.Fuzz(func(t *testing.T, b []byte) {
		if data, sw, err := splitResponse(b); err == nil && (len(data) != len(b)-2 || sw != binary.BigEndian.Uint16(b[len(b)-2:])) {
			t.Fatal("splitResponse lost bytes")
		}
		for rest := b; len(rest) > 0; {
			tag, v, r, err := parseTLV(rest)
			if err != nil {
				break
			}
			if len(v)+len(r) >= len(rest) || tag < 0 {
				t.Fatalf("parseTLV made no progress on % x", rest)
			}
			rest = r
		}
		if ki, err := parseMetadata(b); err == nil && ki.public != nil && ki.public.N.BitLen() != 2048 {
			t.Fatal("parseMetadata accepted a key that is not RSA-2048")
		}
		if v, err := findTLV(b, 0x7f49); err == nil {
			if pub, err := parseRSAPublic(v); err == nil && (pub.N.BitLen() != 2048 || pub.E&1 == 0) {
				t.Fatal("parseRSAPublic accepted a bad key")
			}
		}
		findNestedTLV(b, 0x7c, 0x82)
	})
}

// FuzzReaderStates feeds arbitrary reader state arrays to their parser.
func FuzzReaderStates(f *testing.F) {
	states := make([]byte, pcscMaxReaders*pcscReaderStateSize)
	copy(states, "Virtual PCD 00 00")
	binary.NativeEndian.PutUint32(states[pcscMaxReaderName+12+36:], uint32(len(yubiKeyATR)))
	f.Add(states)
	f.Add(states[:100])
	f.Fuzz(func(t *testing.T, b []byte) {
		if len(b) < pcscMaxReaders*pcscReaderStateSize && len(b) > 0 {
			// Most inputs are short: spread them over a whole array.
			b = append(bytes.Repeat(b, pcscMaxReaders*pcscReaderStateSize/len(b)), make([]byte, pcscMaxReaders*pcscReaderStateSize%len(b))...)
		}
		readers, err := parseReaderStates(b)
		if err != nil {
			return
		}
		for _, r := range readers {
			if r.Name == "" || len(r.ATR) > pcscMaxATR || strings.ContainsRune(r.Name, 0) {
				t.Fatalf("reader %+v", r)
			}
		}
	})
}
