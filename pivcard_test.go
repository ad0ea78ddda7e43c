package main

import (
	"bytes"
	"crypto/aes"
	"crypto/cipher"
	"crypto/des"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/asn1"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"math/big"
	"net"
	"os"
	"sync"
	"syscall"
	"testing"
	"time"
)

// virtualYubiKey is a PIV card that behaves like a YubiKey 5 as far as
// piv.go and yubico-piv-tool can tell. It plugs into vsmartcard's virtual
// reader driver (vpcd), which pcscd loads from /etc/reader.conf.d/vpcd, so
// the code under test runs its real path: piv.go -> pcsc.go -> pcscd ->
// vpcd -> this card. The card holds real RSA keys and answers real
// cryptography; only touch is not simulated. PIVCARD_DEBUG=1 in the
// environment prints what vpcd sends the card.
//
// vpcd's wire format: the card is the TCP client; every message is a 2-byte
// big-endian length and a payload. A 1-byte payload from vpcd is a control
// message (0 power off, 1 power on, 2 reset, 4 "send your ATR"); anything
// longer is a command APDU, answered with the response APDU.
type virtualYubiKey struct {
	mu sync.Mutex

	serial     uint32
	version    [3]byte
	pin        []byte // padded to 8 bytes with 0xff, as sent in VERIFY
	pinRetries int
	notPIV     bool // refuses the PIV application, as another kind of card
	puk        []byte
	mgmtAlg    byte
	mgmtKey    []byte
	keys       map[byte]*virtualSlotKey
	objects    map[uint32][]byte

	attestKey  *ecdsa.PrivateKey
	attestCert *x509.Certificate
	rootCert   *x509.Certificate

	// Volatile state, cleared when the card is powered off or reset.
	selected    bool
	pinVerified bool
	mgmtAuthed  bool
	witness     []byte
	chained     []byte
	pending     []byte

	// Counters the tests read.
	selects int
	signs   int
	verifys int

	port    int
	conn    net.Conn
	served  chan struct{}
	powered chan struct{}
}

type virtualSlotKey struct {
	priv        *rsa.PrivateKey
	pinPolicy   byte // 1 never, 2 once, 3 always
	touchPolicy byte // 1 never, 2 always, 3 cached
	origin      byte // 1 generated, 2 imported
}

const (
	pivPINMaxRetries = 3
	vpcdFirstPort    = 35963 // vpcd's reader "Virtual PCD 00 00"; 00 01 is the next port
)

var (
	pivAID = []byte{0xa0, 0x00, 0x00, 0x03, 0x08}
	// The ATR of a YubiKey 5 (T=1, historical bytes spelling "YubiKey@").
	yubiKeyATR = []byte{0x3b, 0xfd, 0x13, 0x00, 0x00, 0x81, 0x31, 0xfe, 0x15, 0x80, 0x73, 0xc0,
		0x21, 0xc0, 0x57, 0x59, 0x75, 0x62, 0x69, 0x4b, 0x65, 0x79, 0x40}
	pivDefaultMgmtKey = bytes.Repeat([]byte{1, 2, 3, 4, 5, 6, 7, 8}, 3)
)

// pivSlotObjects maps a key slot to the data object holding its certificate.
var pivSlotObjects = func() map[byte]uint32 {
	m := map[byte]uint32{0x9a: 0x5fc105, 0x9c: 0x5fc10a, 0x9d: 0x5fc10b, 0x9e: 0x5fc101}
	for s := byte(0x82); s <= 0x95; s++ {
		m[s] = 0x5fc10d + uint32(s-0x82)
	}
	return m
}()

const pivAttestationObject = 0x5fff01

func padPIN(pin string) []byte {
	b := []byte(pin)
	for len(b) < 8 {
		b = append(b, 0xff)
	}
	return b
}

// attestationCATemplate is a template for one of the two CA certificates of
// the virtual card's attestation chain (the root and the attestation key).
func attestationCATemplate(serial int64, cn string) *x509.Certificate {
	return &x509.Certificate{
		SerialNumber:          big.NewInt(serial),
		Subject:               pkix.Name{CommonName: cn},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().Add(24 * time.Hour),
		IsCA:                  true,
		BasicConstraintsValid: true,
		KeyUsage:              x509.KeyUsageCertSign,
	}
}

// newVirtualYubiKey makes a factory-fresh card (PIN 123456, PUK 12345678,
// default 3DES management key) with an attestation key certified by a
// throw-away "Yubico" root, so attestation chains verify against rootCert.
func newVirtualYubiKey(t testing.TB, serial uint32, port int) *virtualYubiKey {
	t.Helper()
	c := &virtualYubiKey{
		serial:     serial,
		version:    [3]byte{5, 4, 3},
		pin:        padPIN("123456"),
		pinRetries: pivPINMaxRetries,
		puk:        padPIN("12345678"),
		mgmtAlg:    0x03,
		mgmtKey:    pivDefaultMgmtKey,
		keys:       map[byte]*virtualSlotKey{},
		objects:    map[uint32][]byte{},
		port:       port,
	}
	rootKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	rootTmpl := attestationCATemplate(1, "Virtual Yubico PIV Root CA")
	rootDER, err := x509.CreateCertificate(rand.Reader, rootTmpl, rootTmpl, rootKey.Public(), rootKey)
	if err != nil {
		t.Fatal(err)
	}
	c.rootCert, _ = x509.ParseCertificate(rootDER)
	c.attestKey, err = ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	attTmpl := attestationCATemplate(2, "Yubico PIV Attestation")
	attDER, err := x509.CreateCertificate(rand.Reader, attTmpl, c.rootCert, c.attestKey.Public(), rootKey)
	if err != nil {
		t.Fatal(err)
	}
	c.attestCert, _ = x509.ParseCertificate(attDER)
	return c
}

// putKey loads a key into a slot as if it had been imported.
func (c *virtualYubiKey) putKey(slot byte, priv *rsa.PrivateKey, pinPolicy byte) {
	c.mu.Lock()
	defer c.mu.Unlock()
	priv.Precompute()
	c.keys[slot] = &virtualSlotKey{priv: priv, pinPolicy: pinPolicy, touchPolicy: 1, origin: 2}
}

// putCertificate stores a certificate object the way PUT DATA would.
func (c *virtualYubiKey) putCertificate(slot byte, der []byte) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.objects[pivSlotObjects[slot]] = certObject(der)
}

func (c *virtualYubiKey) counters() (selects, signs, verifys int) {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.selects, c.signs, c.verifys
}

func certObject(der []byte) []byte {
	return bytes.Join([][]byte{tlv(0x70, der), tlv(0x71, []byte{0}), tlv(0xfe, nil)}, nil)
}

// insert connects the card to vpcd and waits until pcscd has powered it.
func (c *virtualYubiKey) insert(t testing.TB) {
	t.Helper()
	conn, err := net.Dial("tcp", fmt.Sprintf("127.0.0.1:%d", c.port))
	if err != nil {
		t.Fatalf("virtual card: connecting to vpcd: %v (is pcscd running? see .ci/start-pcscd)", err)
	}
	c.mu.Lock()
	c.conn = conn
	c.served = make(chan struct{})
	c.powered = make(chan struct{})
	c.mu.Unlock()
	go c.serve(conn, c.served, c.powered)
	select {
	case <-c.powered:
	case <-time.After(15 * time.Second):
		t.Fatalf("virtual card: pcscd did not power the card on port %d", c.port)
	}
	// vpcd powers the card before pcscd has asked for its ATR; a program
	// connecting in between (yubico-piv-tool) would be refused. Ready is
	// when pcscd lists the card powered, with its ATR.
	reader := fmt.Sprintf("Virtual PCD 00 %02d", c.port-vpcdFirstPort)
	for deadline := time.Now().Add(15 * time.Second); !cardListed(reader); time.Sleep(20 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("virtual card: pcscd does not list the card in %q", reader)
		}
	}
}

// cardListed says whether pcscd lists a powered card in reader.
func cardListed(reader string) bool {
	c, err := pcscEstablish(time.Time{})
	if err != nil {
		return false
	}
	defer c.Close()
	readers, err := c.Readers()
	if err != nil {
		return false
	}
	for _, r := range readers {
		if r.Name == reader {
			return r.State&0x0010 != 0 && len(r.ATR) > 0 // SCARD_POWERED
		}
	}
	return false
}

// remove pulls the card out of the reader.
func (c *virtualYubiKey) remove() {
	c.mu.Lock()
	conn, served := c.conn, c.served
	c.conn = nil
	c.mu.Unlock()
	if conn == nil {
		return
	}
	conn.Close()
	<-served
	c.mu.Lock()
	c.resetVolatile()
	c.mu.Unlock()
	// pcscd polls vpcd for the card every 400 ms. A real YubiKey takes its
	// reader away when unplugged, which pcscd sees at once; waiting for the
	// poll makes this removal look the same. (Otherwise a client may connect
	// to the card pcscd still believes present, and fail.)
	time.Sleep(time.Second)
}

func (c *virtualYubiKey) serve(conn net.Conn, served, powered chan struct{}) {
	defer close(served)
	var once sync.Once
	for {
		quickACK(conn)
		var hdr [2]byte
		if _, err := io.ReadFull(conn, hdr[:]); err != nil {
			return
		}
		msg := make([]byte, binary.BigEndian.Uint16(hdr[:]))
		if _, err := io.ReadFull(conn, msg); err != nil {
			return
		}
		var reply []byte
		if os.Getenv("PIVCARD_DEBUG") != "" {
			fmt.Fprintf(os.Stderr, "pivcard %d %s: <- % x\n", c.port, time.Now().Format("05.000000"), msg)
		}
		if len(msg) == 1 {
			switch msg[0] {
			case 0, 1, 2: // power off, power on, reset: no answer
				c.mu.Lock()
				c.resetVolatile()
				c.mu.Unlock()
				if msg[0] != 0 {
					once.Do(func() { close(powered) })
				}
				continue
			case 4:
				reply = yubiKeyATR
			default:
				continue
			}
		} else {
			c.mu.Lock()
			reply = c.apdu(msg)
			c.mu.Unlock()
		}
		out := binary.BigEndian.AppendUint16(nil, uint16(len(reply)))
		if _, err := conn.Write(append(out, reply...)); err != nil {
			return
		}
	}
}

// quickACK turns off delayed ACKs until the next read. vpcd writes a
// message's length and its payload separately; with Nagle on its side and
// delayed ACKs on ours, every APDU would wait 40 ms for the ACK of its
// length prefix. Linux clears the flag as it works, so it is set per read.
func quickACK(conn net.Conn) {
	tc, ok := conn.(*net.TCPConn)
	if !ok {
		return
	}
	if raw, err := tc.SyscallConn(); err == nil {
		raw.Control(func(fd uintptr) {
			syscall.SetsockoptInt(int(fd), syscall.IPPROTO_TCP, syscall.TCP_QUICKACK, 1)
		})
	}
}

func (c *virtualYubiKey) resetVolatile() {
	c.selected, c.pinVerified, c.mgmtAuthed = false, false, false
	c.witness, c.chained, c.pending = nil, nil, nil
}

const (
	swOK               = 0x9000
	swWrongLength      = 0x6700
	swSecurityStatus   = 0x6982
	swAuthBlocked      = 0x6983
	swWrongData        = 0x6a80
	swNotFound         = 0x6a82
	swWrongP1P2        = 0x6a86
	swRefDataNotFound  = 0x6a88
	swINSNotSupported  = 0x6d00
	swCLANotSupported  = 0x6e00
	swConditionsNotMet = 0x6985
)

func status(sw uint16) []byte { return []byte{byte(sw >> 8), byte(sw)} }

// respond sends data in chunks of at most 256 bytes, announcing the rest with
// SW 61xx for GET RESPONSE, as a YubiKey does for certificates and RSA keys.
func (c *virtualYubiKey) respond(data []byte) []byte {
	if len(data) <= 256 {
		return append(append([]byte{}, data...), 0x90, 0x00)
	}
	c.pending = data[256:]
	more := byte(0)
	if len(c.pending) < 256 {
		more = byte(len(c.pending))
	}
	return append(append([]byte{}, data[:256]...), 0x61, more)
}

func (c *virtualYubiKey) apdu(cmd []byte) []byte {
	if len(cmd) < 4 {
		return status(swWrongLength)
	}
	cla, ins, p1, p2 := cmd[0], cmd[1], cmd[2], cmd[3]
	var data []byte
	switch {
	case len(cmd) <= 5: // no command data (a 5th byte is Le)
	case cmd[4] == 0 && len(cmd) >= 7: // extended length
		n := int(binary.BigEndian.Uint16(cmd[5:7]))
		if len(cmd) < 7+n {
			return status(swWrongLength)
		}
		data = cmd[7 : 7+n]
	default:
		n := int(cmd[4])
		if len(cmd) < 5+n {
			return status(swWrongLength)
		}
		data = cmd[5 : 5+n]
	}
	if ins == 0xc0 {
		if c.pending == nil {
			return status(swConditionsNotMet)
		}
		rest := c.pending
		c.pending = nil
		return c.respond(rest)
	}
	c.pending = nil
	if cla&^0x10 != 0 {
		return status(swCLANotSupported)
	}
	if cla&0x10 != 0 {
		c.chained = append(c.chained, data...)
		return status(swOK)
	}
	if c.chained != nil {
		data = append(c.chained, data...)
		c.chained = nil
	}
	if ins == 0xa4 {
		return c.selectApp(p1, data)
	}
	if !c.selected {
		return status(swINSNotSupported)
	}
	switch ins {
	case 0xfd: // GET VERSION
		return c.respond(c.version[:])
	case 0xf8: // GET SERIAL
		return c.respond(binary.BigEndian.AppendUint32(nil, c.serial))
	case 0x20:
		return c.verify(p1, p2, data)
	case 0x24:
		return c.changePIN(p2, data)
	case 0x87:
		return c.generalAuthenticate(p1, p2, data)
	case 0x47:
		return c.generate(p1, p2, data)
	case 0xdb:
		return c.putData(p1, p2, data)
	case 0xcb:
		return c.getData(p1, p2, data)
	case 0xf7:
		return c.metadata(p2)
	case 0xf9:
		return c.attest(p1)
	case 0xff:
		return c.setManagementKey(data)
	}
	return status(swINSNotSupported)
}

func (c *virtualYubiKey) selectApp(p1 byte, aid []byte) []byte {
	if c.notPIV || p1 != 0x04 || !bytes.HasPrefix(aid, pivAID) || len(aid) < len(pivAID) {
		c.selected = false
		return status(swNotFound)
	}
	c.selected = true
	c.selects++
	// Application property template: PIV AID and its coexistent tag allocation.
	return c.respond(tlv(0x61, bytes.Join([][]byte{
		tlv(0x4f, []byte{0x00, 0x00, 0x10, 0x00, 0x01, 0x00}),
		tlv(0x79, tlv(0x4f, pivAID)),
	}, nil)))
}

func (c *virtualYubiKey) retriesStatus() []byte {
	if c.pinRetries == 0 {
		return status(swAuthBlocked)
	}
	return status(0x63c0 | uint16(c.pinRetries))
}

func (c *virtualYubiKey) verify(p1, p2 byte, data []byte) []byte {
	if p2 != 0x80 {
		return status(swRefDataNotFound)
	}
	if p1 == 0xff { // reset the security status
		c.pinVerified = false
		return status(swOK)
	}
	if len(data) == 0 {
		if c.pinVerified {
			return status(swOK)
		}
		return c.retriesStatus()
	}
	if len(data) != 8 {
		return status(swWrongData)
	}
	if c.pinRetries == 0 {
		return status(swAuthBlocked)
	}
	c.verifys++
	if !bytes.Equal(data, c.pin) {
		c.pinVerified = false
		c.pinRetries--
		return status(0x63c0 | uint16(c.pinRetries))
	}
	c.pinRetries = pivPINMaxRetries
	c.pinVerified = true
	return status(swOK)
}

func (c *virtualYubiKey) changePIN(p2 byte, data []byte) []byte {
	if p2 != 0x80 {
		return status(swRefDataNotFound)
	}
	if len(data) != 16 {
		return status(swWrongData)
	}
	if r := c.verify(0, 0x80, data[:8]); !bytes.Equal(r, status(swOK)) {
		return r
	}
	c.pin = append([]byte{}, data[8:]...)
	return status(swOK)
}

func (c *virtualYubiKey) mgmtCipher() (cipher.Block, error) {
	if c.mgmtAlg == 0x03 {
		return des.NewTripleDESCipher(c.mgmtKey)
	}
	return aes.NewCipher(c.mgmtKey)
}

func (c *virtualYubiKey) generalAuthenticate(p1, p2 byte, data []byte) []byte {
	tmpl, ok := parseTLVs(data)[0x7c]
	if !ok {
		return status(swWrongData)
	}
	fields := parseTLVs(tmpl)
	if p2 == 0x9b {
		return c.mgmtAuthenticate(p1, fields)
	}
	k := c.keys[p2]
	if k == nil {
		return status(swNotFound)
	}
	if p1 != 0x07 || k.priv.N.BitLen() != 2048 {
		return status(swWrongP1P2)
	}
	if k.pinPolicy != 1 && !c.pinVerified {
		return status(swSecurityStatus)
	}
	in, ok := fields[0x81]
	if _, resp := fields[0x82]; !ok || !resp || len(in) != k.priv.Size() {
		return status(swWrongData)
	}
	m := new(big.Int).SetBytes(in)
	if m.Cmp(k.priv.N) >= 0 {
		return status(swWrongData)
	}
	// The raw RSA private-key operation: the host did the padding.
	out := rsaRaw(k.priv, m).FillBytes(make([]byte, k.priv.Size()))
	if k.pinPolicy == 3 {
		c.pinVerified = false
	}
	c.signs++
	return c.respond(tlv(0x7c, tlv(0x82, out)))
}

func rsaRaw(priv *rsa.PrivateKey, c *big.Int) *big.Int {
	p, q := priv.Primes[0], priv.Primes[1]
	m1 := new(big.Int).Exp(c, priv.Precomputed.Dp, p)
	m2 := new(big.Int).Exp(c, priv.Precomputed.Dq, q)
	h := new(big.Int).Sub(m1, m2)
	h.Mul(h, priv.Precomputed.Qinv).Mod(h, p)
	return h.Mul(h, q).Add(h, m2)
}

func (c *virtualYubiKey) mgmtAuthenticate(p1 byte, fields map[int][]byte) []byte {
	if p1 != c.mgmtAlg {
		return status(swWrongP1P2)
	}
	block, err := c.mgmtCipher()
	if err != nil {
		return status(swWrongData)
	}
	n := block.BlockSize()
	witness, hasWitness := fields[0x80]
	challenge, hasChallenge := fields[0x81]
	switch {
	case hasWitness && len(witness) == 0: // step 1: the card sends an encrypted witness
		c.witness = make([]byte, n)
		rand.Read(c.witness)
		enc := make([]byte, n)
		block.Encrypt(enc, c.witness)
		c.mgmtAuthed = false
		return c.respond(tlv(0x7c, tlv(0x80, enc)))
	case hasWitness && hasChallenge && len(challenge) == n: // step 2: witness decrypted, host challenge
		ok := c.witness != nil && bytes.Equal(witness, c.witness)
		c.witness = nil
		if !ok {
			return status(swSecurityStatus)
		}
		c.mgmtAuthed = true
		enc := make([]byte, n)
		block.Encrypt(enc, challenge)
		return c.respond(tlv(0x7c, tlv(0x82, enc)))
	}
	return status(swWrongData)
}

func (c *virtualYubiKey) generate(p1, p2 byte, data []byte) []byte {
	if !c.mgmtAuthed {
		return status(swSecurityStatus)
	}
	if _, ok := pivSlotObjects[p2]; !ok || p1 != 0 {
		return status(swWrongP1P2)
	}
	params := parseTLVs(parseTLVs(data)[0xac])
	if !bytes.Equal(params[0x80], []byte{0x07}) {
		return status(swWrongData) // this card makes RSA-2048 keys only
	}
	pinPolicy := byte(2)
	switch p2 {
	case 0x9c:
		pinPolicy = 3
	case 0x9e:
		pinPolicy = 1
	}
	if v := params[0xaa]; len(v) == 1 && v[0] != 0 {
		pinPolicy = v[0]
	}
	touchPolicy := byte(1)
	if v := params[0xab]; len(v) == 1 && v[0] != 0 {
		touchPolicy = v[0]
	}
	priv, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		return status(swConditionsNotMet)
	}
	priv.Precompute()
	c.keys[p2] = &virtualSlotKey{priv: priv, pinPolicy: pinPolicy, touchPolicy: touchPolicy, origin: 1}
	return c.respond(tlv(0x7f49, rsaPublicTLVs(&priv.PublicKey)))
}

func rsaPublicTLVs(pub *rsa.PublicKey) []byte {
	return append(tlv(0x81, pub.N.Bytes()), tlv(0x82, big.NewInt(int64(pub.E)).Bytes())...)
}

func objectID(data []byte) (uint32, bool) {
	id, ok := parseTLVs(data)[0x5c]
	if !ok || len(id) == 0 || len(id) > 3 {
		return 0, false
	}
	var v uint32
	for _, b := range id {
		v = v<<8 | uint32(b)
	}
	return v, true
}

func (c *virtualYubiKey) putData(p1, p2 byte, data []byte) []byte {
	if p1 != 0x3f || p2 != 0xff {
		return status(swWrongP1P2)
	}
	if !c.mgmtAuthed {
		return status(swSecurityStatus)
	}
	id, ok := objectID(data)
	content, has := parseTLVs(data)[0x53]
	if !ok || !has {
		return status(swWrongData)
	}
	if len(content) == 0 {
		delete(c.objects, id)
	} else {
		c.objects[id] = append([]byte{}, content...)
	}
	return status(swOK)
}

func (c *virtualYubiKey) getData(p1, p2 byte, data []byte) []byte {
	if p1 != 0x3f || p2 != 0xff {
		return status(swWrongP1P2)
	}
	id, ok := objectID(data)
	if !ok {
		return status(swWrongData)
	}
	content, ok := c.objects[id]
	if id == pivAttestationObject {
		content, ok = certObject(c.attestCert.Raw), true
	}
	if !ok {
		return status(swNotFound)
	}
	return c.respond(tlv(0x53, content))
}

func (c *virtualYubiKey) metadata(p2 byte) []byte {
	switch p2 {
	case 0x9b:
		isDefault := byte(0)
		if bytes.Equal(c.mgmtKey, pivDefaultMgmtKey) {
			isDefault = 1
		}
		return c.respond(bytes.Join([][]byte{
			tlv(0x01, []byte{c.mgmtAlg}), tlv(0x02, []byte{0, 1}), tlv(0x05, []byte{isDefault}),
		}, nil))
	case 0x80:
		isDefault := byte(0)
		if bytes.Equal(c.pin, padPIN("123456")) {
			isDefault = 1
		}
		return c.respond(bytes.Join([][]byte{
			tlv(0x01, []byte{0xff}), tlv(0x05, []byte{isDefault}),
			tlv(0x06, []byte{pivPINMaxRetries, byte(c.pinRetries)}),
		}, nil))
	}
	k := c.keys[p2]
	if k == nil {
		return status(swRefDataNotFound)
	}
	return c.respond(bytes.Join([][]byte{
		tlv(0x01, []byte{0x07}), tlv(0x02, []byte{k.pinPolicy, k.touchPolicy}),
		tlv(0x03, []byte{k.origin}), tlv(0x04, rsaPublicTLVs(&k.priv.PublicKey)),
	}, nil))
}

var (
	oidYubicoFirmware   = asn1.ObjectIdentifier{1, 3, 6, 1, 4, 1, 41482, 3, 3}
	oidYubicoSerial     = asn1.ObjectIdentifier{1, 3, 6, 1, 4, 1, 41482, 3, 7}
	oidYubicoPolicy     = asn1.ObjectIdentifier{1, 3, 6, 1, 4, 1, 41482, 3, 8}
	oidYubicoFormFactor = asn1.ObjectIdentifier{1, 3, 6, 1, 4, 1, 41482, 3, 9}
)

// attest certifies that the key in a slot was generated on this card, with
// the Yubico extensions (firmware, serial, policies, form factor).
func (c *virtualYubiKey) attest(slot byte) []byte {
	k := c.keys[slot]
	if k == nil || k.origin != 1 {
		return status(swWrongData)
	}
	serial, _ := asn1.Marshal(int64(c.serial))
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(time.Now().UnixNano()),
		Subject:      pkix.Name{CommonName: fmt.Sprintf("YubiKey PIV Attestation %02x", slot)},
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().Add(24 * time.Hour),
		ExtraExtensions: []pkix.Extension{
			{Id: oidYubicoFirmware, Value: c.version[:]},
			{Id: oidYubicoSerial, Value: serial},
			{Id: oidYubicoPolicy, Value: []byte{k.pinPolicy, k.touchPolicy}},
			{Id: oidYubicoFormFactor, Value: []byte{0x01}},
		},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, c.attestCert, &k.priv.PublicKey, c.attestKey)
	if err != nil {
		return status(swConditionsNotMet)
	}
	return c.respond(der)
}

func (c *virtualYubiKey) setManagementKey(data []byte) []byte {
	if !c.mgmtAuthed {
		return status(swSecurityStatus)
	}
	if len(data) < 3 || data[1] != 0x9b || int(data[2]) != len(data)-3 {
		return status(swWrongData)
	}
	want := map[byte]int{0x03: 24, 0x08: 16, 0x0a: 24, 0x0c: 32}[data[0]]
	if want == 0 || want != len(data)-3 {
		return status(swWrongData)
	}
	c.mgmtAlg, c.mgmtKey = data[0], append([]byte{}, data[3:]...)
	return status(swOK)
}

// tlv encodes a BER-TLV with a one- or two-byte tag.
func tlv(tag int, value []byte) []byte {
	var out []byte
	if tag > 0xff {
		out = append(out, byte(tag>>8))
	}
	out = append(out, byte(tag))
	switch n := len(value); {
	case n < 0x80:
		out = append(out, byte(n))
	case n < 0x100:
		out = append(out, 0x81, byte(n))
	default:
		out = append(out, 0x82, byte(n>>8), byte(n))
	}
	return append(out, value...)
}

// parseTLVs reads a flat sequence of BER-TLVs into tag -> value; malformed
// input yields what was read before the fault, which the handlers then find
// incomplete.
func parseTLVs(b []byte) map[int][]byte {
	out := map[int][]byte{}
	for len(b) >= 2 {
		tag := int(b[0])
		b = b[1:]
		if tag&0x1f == 0x1f {
			tag = tag<<8 | int(b[0])
			b = b[1:]
		}
		if len(b) == 0 {
			break
		}
		n := int(b[0])
		b = b[1:]
		if n > 0x80 {
			k := n & 0x7f
			if k > 2 || len(b) < k {
				break
			}
			n = 0
			for _, x := range b[:k] {
				n = n<<8 | int(x)
			}
			b = b[k:]
		}
		if n > len(b) {
			break
		}
		out[tag] = b[:n]
		b = b[n:]
	}
	return out
}

// needVirtualReader skips the test when the PC/SC stack with vsmartcard's
// reader driver is not installed (CI installs pcscd and vsmartcard-vpcd)
// and serializes the tests of all
// processes on this machine, since vpcd has one card slot per reader.
func needVirtualReader(t testing.TB) {
	t.Helper()
	for _, f := range []string{"/usr/sbin/pcscd", "/usr/lib/pcsc/drivers/serial/libifdvpcd.so"} {
		if _, err := os.Stat(f); errors.Is(err, os.ErrNotExist) {
			t.Skipf("%s absent: install pcscd and vsmartcard-vpcd to run the PC/SC tests", f)
		}
	}
	// Read-only and readable by all: flock needs no more, and a lock file
	// left by root's test run must not stop another user's.
	lock, err := os.OpenFile(os.TempDir()+"/debusine-signing-vpcd.lock", os.O_CREATE|os.O_RDONLY, 0o644)
	if err != nil {
		t.Fatal(err)
	}
	if err := syscall.Flock(int(lock.Fd()), syscall.LOCK_EX); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { lock.Close() })
}
