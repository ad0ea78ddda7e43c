package main

// The PIV commands this service sends a YubiKey, over pcsc.go: NIST SP
// 800-73-4 part 2 (select, verify, general authenticate, generate, get and
// put data) and Yubico's extensions (version, serial, metadata, attest).
// Only what signing with RSA-2048 keys needs is here; the padding of a
// signature is made on the host, the card does the raw RSA operation.

import (
	"bytes"
	"crypto"
	"crypto/aes"
	"crypto/cipher"
	"crypto/des"
	"crypto/rand"
	"crypto/rsa"
	"crypto/subtle"
	"crypto/x509"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"math/big"
)

// PIV instructions.
const (
	insVerify        = 0x20
	insAuthenticate  = 0x87
	insGenerate      = 0x47
	insGetData       = 0xcb
	insPutData       = 0xdb
	insSelect        = 0xa4
	insGetResponse   = 0xc0
	insGetVersion    = 0xfd // Yubico
	insGetSerial     = 0xf8 // Yubico, firmware 5
	insGetMetadata   = 0xf7 // Yubico, firmware 5.3
	insAttest        = 0xf9 // Yubico, firmware 4.3
	pivAlgRSA2048    = 0x07
	pivAlg3DES       = 0x03
	pivAlgAES128     = 0x08
	pivAlgAES192     = 0x0a
	pivAlgAES256     = 0x0c
	pivManagementKey = 0x9b
	pivPINReference  = 0x80
)

// PIN policies (pin_policy) and touch policies (touch_policy) as the
// YubiKey encodes them; 0 means "the slot's default" or "unknown".
const (
	pivPINPolicyNever    = 1
	pivPINPolicyOnce     = 2
	pivPINPolicyAlways   = 3
	pivTouchPolicyNever  = 1
	pivTouchPolicyAlways = 2
	pivTouchPolicyCached = 3
)

var pivApplicationID = []byte{0xa0, 0x00, 0x00, 0x03, 0x08}

// pivSlot is a key reference: 9a, 9c, 9d, 9e or a retired slot 82..95.
type pivSlot byte

func (s pivSlot) String() string { return fmt.Sprintf("%02x", byte(s)) }

// object is the data object holding the slot's certificate.
func (s pivSlot) object() uint32 {
	switch s {
	case 0x9a:
		return 0x5fc105
	case 0x9c:
		return 0x5fc10a
	case 0x9d:
		return 0x5fc10b
	case 0x9e:
		return 0x5fc101
	case 0xf9: // Yubico's attestation key
		return 0x5fff01
	}
	return 0x5fc10d + uint32(s-0x82)
}

func pivSlotOf(b byte) (pivSlot, error) {
	if b == 0x9a || b == 0x9c || b == 0x9d || b == 0x9e || (b >= 0x82 && b <= 0x95) {
		return pivSlot(b), nil
	}
	return 0, fmt.Errorf("PIV slot %02x: not a key slot", b)
}

// apduError is a card's refusal: the status word of its response.
type apduError struct {
	ins byte
	sw  uint16
}

var errPIVNotFound = errors.New("not found")

func (e *apduError) Error() string {
	msg := map[uint16]string{
		0x6700: "wrong length",
		0x6982: "security status not satisfied",
		0x6983: "authentication method blocked",
		0x6985: "conditions of use not satisfied",
		0x6a80: "incorrect data",
		0x6a82: "not found",
		0x6a84: "not enough memory",
		0x6a86: "incorrect P1 or P2",
		0x6a88: "referenced data not found",
		0x6d00: "instruction not supported",
		0x6e00: "class not supported",
	}[e.sw]
	if msg == "" {
		return fmt.Sprintf("the card answered %04x to instruction %02x", e.sw, e.ins)
	}
	return fmt.Sprintf("the card answered %04x (%s) to instruction %02x", e.sw, msg, e.ins)
}

func (e *apduError) Is(target error) bool {
	return target == errPIVNotFound && (e.sw == 0x6a82 || e.sw == 0x6a88)
}

// pivPINError is the card refusing a PIN, with the retries it has left.
type pivPINError struct{ retries int }

func (e *pivPINError) Error() string {
	if e.retries == 0 {
		return "wrong PIN, the PIN is blocked"
	}
	return fmt.Sprintf("wrong PIN, %d retries left", e.retries)
}

// splitResponse splits a response APDU into its data and status word.
func splitResponse(resp []byte) ([]byte, uint16, error) {
	if len(resp) < 2 {
		return nil, 0, fmt.Errorf("a response of %d bytes, without a status word", len(resp))
	}
	n := len(resp) - 2
	return resp[:n], binary.BigEndian.Uint16(resp[n:]), nil
}

// pivMaxResponse bounds a response reassembled from 61xx chunks: the
// largest PIV data object a YubiKey stores is under 3 KB. pivMaxChunks
// bounds their number, so that a card announcing more data and sending
// none (61xx with nothing before it) cannot keep the client asking.
const (
	pivMaxResponse = 16 << 10
	pivMaxChunks   = pivMaxResponse / 256
)

// pivCard is an open PIV session with a card: connected exclusively to its
// reader, inside a transaction, the PIV application selected.
type pivCard struct {
	ctx     *pcscContext
	card    *pcscCard
	version [3]byte
}

// openPIV connects to the card in reader and selects its PIV application.
func openPIV(ctx *pcscContext, reader string) (*pivCard, error) {
	card, err := ctx.Connect(reader)
	if err != nil {
		return nil, err
	}
	p := &pivCard{ctx: ctx, card: card}
	if err := card.Begin(); err != nil {
		card.Disconnect()
		return nil, fmt.Errorf("reader %q: beginning a transaction: %w", reader, err)
	}
	if _, err := p.command(insSelect, 0x04, 0x00, pivApplicationID); err != nil {
		p.close()
		var ae *apduError
		if errors.As(err, &ae) {
			return nil, fmt.Errorf("the card in reader %q is not a PIV card (selecting the PIV application: %v)", reader, err)
		}
		return nil, fmt.Errorf("reader %q: selecting the PIV application: %w", reader, err)
	}
	v, err := p.command(insGetVersion, 0, 0, nil)
	if err != nil || len(v) != 3 {
		p.close()
		return nil, fmt.Errorf("the card in reader %q is not a YubiKey (version: %d bytes, %v)", reader, len(v), err)
	}
	copy(p.version[:], v)
	return p, nil
}

// close ends the session; the connection to pcscd stays for the caller.
func (p *pivCard) close() {
	p.card.End()
	p.card.Disconnect()
}

// atLeast says whether the firmware is at least major.minor.
func (p *pivCard) atLeast(major, minor byte) bool {
	return p.version[0] > major || (p.version[0] == major && p.version[1] >= minor)
}

// command sends one command, split into chained APDUs (ISO 7816-4 CLA bit
// 0x10) when the data is longer than 255 bytes, and collects the response
// across 61xx status words with GET RESPONSE.
func (p *pivCard) command(ins, p1, p2 byte, data []byte) ([]byte, error) {
	for len(data) > 255 {
		apdu := append([]byte{0x10, ins, p1, p2, 255}, data[:255]...)
		resp, err := p.card.Transmit(apdu)
		if err != nil {
			return nil, err
		}
		if _, sw, err := splitResponse(resp); err != nil {
			return nil, err
		} else if sw != 0x9000 {
			return nil, &apduError{ins, sw}
		}
		data = data[255:]
	}
	apdu := append([]byte{0x00, ins, p1, p2, byte(len(data))}, data...)
	var out []byte
	for chunks := 1; ; chunks++ {
		resp, err := p.card.Transmit(apdu)
		if err != nil {
			return nil, err
		}
		chunk, sw, err := splitResponse(resp)
		if err != nil {
			return nil, err
		}
		out = append(out, chunk...)
		if len(out) > pivMaxResponse {
			return nil, fmt.Errorf("instruction %02x: a response of more than %d bytes", ins, pivMaxResponse)
		}
		switch {
		case sw == 0x9000:
			return out, nil
		case sw>>8 == 0x61 && chunks > pivMaxChunks:
			return nil, fmt.Errorf("instruction %02x: the card still announced more data after %d chunks (%d bytes): refused", ins, chunks, len(out))
		case sw>>8 == 0x61:
			apdu = []byte{0x00, insGetResponse, 0x00, 0x00, byte(sw)}
		default:
			return nil, &apduError{ins, sw}
		}
	}
}

// serial reads the YubiKey's serial number (firmware 5).
func (p *pivCard) serial() (uint32, error) {
	b, err := p.command(insGetSerial, 0, 0, nil)
	if err != nil {
		return 0, err
	}
	if len(b) != 4 {
		return 0, fmt.Errorf("serial number of %d bytes", len(b))
	}
	return binary.BigEndian.Uint32(b), nil
}

// pinVerified says whether the PIN has been verified in this session.
func (p *pivCard) pinVerified() bool {
	_, err := p.command(insVerify, 0, pivPINReference, nil)
	return err == nil
}

// verifyPIN presents the PIN. A refusal is a *pivPINError.
func (p *pivCard) verifyPIN(pin string) error {
	if len(pin) < 1 || len(pin) > 8 {
		return fmt.Errorf("a PIV PIN has 1 to 8 characters, not %d", len(pin))
	}
	data := bytes.Repeat([]byte{0xff}, 8)
	copy(data, pin)
	defer clear(data)
	_, err := p.command(insVerify, 0, pivPINReference, data)
	var ae *apduError
	if errors.As(err, &ae) {
		switch {
		case ae.sw&0xfff0 == 0x63c0:
			return &pivPINError{int(ae.sw & 0xf)}
		case ae.sw == 0x6983:
			return &pivPINError{0}
		}
	}
	return err
}

// pivKeyInfo is what GET METADATA says of a key slot.
type pivKeyInfo struct {
	algorithm   byte
	pinPolicy   byte
	touchPolicy byte
	generated   bool
	public      *rsa.PublicKey // nil unless an RSA key
}

// metadata reads a slot's metadata (firmware 5.3); errPIVNotFound when the
// slot holds no key.
func (p *pivCard) metadata(slot byte) (pivKeyInfo, error) {
	b, err := p.command(insGetMetadata, 0, slot, nil)
	if err != nil {
		return pivKeyInfo{}, err
	}
	return parseMetadata(b)
}

func parseMetadata(b []byte) (pivKeyInfo, error) {
	var ki pivKeyInfo
	for len(b) > 0 {
		tag, v, rest, err := parseTLV(b)
		if err != nil {
			return ki, fmt.Errorf("metadata: %w", err)
		}
		b = rest
		switch tag {
		case 0x01:
			if len(v) != 1 {
				return ki, errors.New("metadata: malformed algorithm")
			}
			ki.algorithm = v[0]
		case 0x02:
			if len(v) != 2 {
				return ki, errors.New("metadata: malformed policy")
			}
			ki.pinPolicy, ki.touchPolicy = v[0], v[1]
		case 0x03:
			ki.generated = len(v) == 1 && v[0] == 1
		case 0x04:
			if ki.algorithm == pivAlgRSA2048 {
				if ki.public, err = parseRSAPublic(v); err != nil {
					return ki, fmt.Errorf("metadata: %w", err)
				}
			}
		}
	}
	return ki, nil
}

// parseRSAPublic reads a modulus (tag 81) and exponent (tag 82).
func parseRSAPublic(b []byte) (*rsa.PublicKey, error) {
	n, err := findTLV(b, 0x81)
	if err != nil {
		return nil, fmt.Errorf("RSA modulus: %w", err)
	}
	e, err := findTLV(b, 0x82)
	if err != nil {
		return nil, fmt.Errorf("RSA exponent: %w", err)
	}
	if len(e) == 0 || len(e) > 4 {
		return nil, fmt.Errorf("RSA exponent of %d bytes", len(e))
	}
	pub := &rsa.PublicKey{N: new(big.Int).SetBytes(n), E: int(new(big.Int).SetBytes(e).Int64())}
	if pub.N.BitLen() != 2048 || pub.E < 3 || pub.E&1 == 0 {
		return nil, fmt.Errorf("not an RSA-2048 public key (%d-bit modulus, exponent %d)", pub.N.BitLen(), pub.E)
	}
	return pub, nil
}

// certificate reads the certificate stored for a slot; errPIVNotFound when
// there is none.
func (p *pivCard) certificate(slot pivSlot) (*x509.Certificate, error) {
	o := slot.object()
	b, err := p.command(insGetData, 0x3f, 0xff, []byte{0x5c, 0x03, byte(o >> 16), byte(o >> 8), byte(o)})
	if err != nil {
		return nil, err
	}
	obj, err := findTLV(b, 0x53)
	if err != nil {
		return nil, fmt.Errorf("certificate object: %w", err)
	}
	der, err := findTLV(obj, 0x70)
	if err != nil {
		return nil, fmt.Errorf("certificate object: %w", err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, fmt.Errorf("certificate object: %w", err)
	}
	return cert, nil
}

// putCertificate stores a certificate for a slot (the management key must
// have been authenticated).
func (p *pivCard) putCertificate(slot pivSlot, der []byte) error {
	o := slot.object()
	obj := appendTLV(nil, 0x70, der)
	obj = appendTLV(obj, 0x71, []byte{0}) // CertInfo: not compressed
	obj = appendTLV(obj, 0xfe, nil)       // error detection code
	data := appendTLV([]byte{0x5c, 0x03, byte(o >> 16), byte(o >> 8), byte(o)}, 0x53, obj)
	_, err := p.command(insPutData, 0x3f, 0xff, data)
	return err
}

// authenticate proves knowledge of the management key by mutual
// authentication (SP 800-73-4 part 2, appendix A.1): the card sends an
// encrypted witness, the host returns it decrypted with a challenge of its
// own, the card returns the challenge encrypted.
func (p *pivCard) authenticate(key []byte) error {
	alg := byte(pivAlg3DES)
	if p.atLeast(5, 3) {
		b, err := p.command(insGetMetadata, 0, pivManagementKey, nil)
		if err != nil {
			return fmt.Errorf("management key metadata: %w", err)
		}
		v, err := findTLV(b, 0x01)
		if err != nil || len(v) != 1 {
			return errors.New("management key metadata: no algorithm")
		}
		alg = v[0]
	}
	want := map[byte]int{pivAlg3DES: 24, pivAlgAES128: 16, pivAlgAES192: 24, pivAlgAES256: 32}[alg]
	if want == 0 {
		return fmt.Errorf("management key of unknown algorithm %02x", alg)
	}
	if len(key) != want {
		return fmt.Errorf("the management key file holds a %d-byte key, the token's management key (algorithm %02x) has %d bytes", len(key), alg, want)
	}
	var block cipher.Block
	var err error
	if alg == pivAlg3DES {
		block, err = des.NewTripleDESCipher(key)
	} else {
		block, err = aes.NewCipher(key)
	}
	if err != nil {
		return err
	}
	n := block.BlockSize()
	resp, err := p.command(insAuthenticate, alg, pivManagementKey, []byte{0x7c, 0x02, 0x80, 0x00})
	if err != nil {
		return fmt.Errorf("management key authentication: %w", err)
	}
	witness, err := findNestedTLV(resp, 0x7c, 0x80)
	if err != nil || len(witness) != n {
		return fmt.Errorf("management key authentication: malformed witness (%v)", err)
	}
	decrypted := make([]byte, n)
	block.Decrypt(decrypted, witness)
	challenge := make([]byte, n)
	if _, err := io.ReadFull(rand.Reader, challenge); err != nil {
		return err
	}
	inner := appendTLV(appendTLV(nil, 0x80, decrypted), 0x81, challenge)
	resp, err = p.command(insAuthenticate, alg, pivManagementKey, appendTLV(nil, 0x7c, inner))
	var ae *apduError
	if errors.As(err, &ae) && ae.sw == 0x6982 {
		return errors.New("wrong management key (the token refused it)")
	}
	if err != nil {
		return fmt.Errorf("management key authentication: %w", err)
	}
	got, err := findNestedTLV(resp, 0x7c, 0x82)
	if err != nil {
		return fmt.Errorf("management key authentication: %w", err)
	}
	expected := make([]byte, n)
	block.Encrypt(expected, challenge)
	if subtle.ConstantTimeCompare(got, expected) != 1 {
		return errors.New("management key authentication: the token's answer to our challenge is wrong (not the token we think?)")
	}
	return nil
}

// generateRSA generates an RSA-2048 key in a slot (the management key must
// have been authenticated) and returns its public key.
func (p *pivCard) generateRSA(slot pivSlot, pinPolicy, touchPolicy byte) (*rsa.PublicKey, error) {
	params := []byte{0x80, 0x01, pivAlgRSA2048}
	if pinPolicy != 0 {
		params = append(params, 0xaa, 0x01, pinPolicy)
	}
	if touchPolicy != 0 {
		params = append(params, 0xab, 0x01, touchPolicy)
	}
	resp, err := p.command(insGenerate, 0, byte(slot), appendTLV(nil, 0xac, params))
	if err != nil {
		return nil, err
	}
	v, err := findTLV(resp, 0x7f49)
	if err != nil {
		return nil, fmt.Errorf("generated public key: %w", err)
	}
	return parseRSAPublic(v)
}

// pkcs1Prefixes are the DigestInfo prefixes of PKCS #1 v1.5 signatures
// (RFC 8017, section 9.2, note 1).
var pkcs1Prefixes = map[crypto.Hash][]byte{
	crypto.SHA256: {0x30, 0x31, 0x30, 0x0d, 0x06, 0x09, 0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x02, 0x01, 0x05, 0x00, 0x04, 0x20},
	crypto.SHA384: {0x30, 0x41, 0x30, 0x0d, 0x06, 0x09, 0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x02, 0x02, 0x05, 0x00, 0x04, 0x30},
	crypto.SHA512: {0x30, 0x51, 0x30, 0x0d, 0x06, 0x09, 0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x02, 0x03, 0x05, 0x00, 0x04, 0x40},
}

// signRSA makes a PKCS #1 v1.5 signature of a digest with the RSA-2048 key
// in a slot: the host pads, the card applies the private key.
func (p *pivCard) signRSA(slot pivSlot, pub *rsa.PublicKey, digest []byte, hash crypto.Hash) ([]byte, error) {
	prefix, ok := pkcs1Prefixes[hash]
	if !ok || len(digest) != hash.Size() {
		return nil, fmt.Errorf("cannot sign a %d-byte digest of hash %v", len(digest), hash)
	}
	k := pub.Size()
	em := make([]byte, k)
	em[1] = 0x01
	ps := k - 3 - len(prefix) - len(digest)
	for i := range ps {
		em[2+i] = 0xff
	}
	copy(em[3+ps:], prefix)
	copy(em[3+ps+len(prefix):], digest)
	data := appendTLV(nil, 0x7c, appendTLV([]byte{0x82, 0x00}, 0x81, em))
	resp, err := p.command(insAuthenticate, pivAlgRSA2048, byte(slot), data)
	if err != nil {
		return nil, err
	}
	sig, err := findNestedTLV(resp, 0x7c, 0x82)
	if err != nil {
		return nil, fmt.Errorf("signature: %w", err)
	}
	if len(sig) != k {
		return nil, fmt.Errorf("signature of %d bytes, want %d", len(sig), k)
	}
	return sig, nil
}

// attest returns the certificate by which the token's attestation key
// says the key in slot was generated on the token (firmware 4.3).
func (p *pivCard) attest(slot pivSlot) (*x509.Certificate, error) {
	b, err := p.command(insAttest, byte(slot), 0, nil)
	if err != nil {
		return nil, err
	}
	if len(b) > 0 && b[0] == 0x70 {
		if b, err = findTLV(b, 0x70); err != nil {
			return nil, fmt.Errorf("attestation: %w", err)
		}
	}
	return x509.ParseCertificate(b)
}

// parseTLV reads one BER-TLV as PIV uses them: a tag of one byte, or two
// when the low five bits of the first are all set; a length of one byte
// below 0x80, or 0x81 or 0x82 followed by one or two bytes.
func parseTLV(b []byte) (tag int, value, rest []byte, err error) {
	if len(b) < 2 {
		return 0, nil, nil, errors.New("truncated TLV")
	}
	tag, b = int(b[0]), b[1:]
	if tag&0x1f == 0x1f {
		if len(b) < 2 || b[0]&0x80 != 0 {
			return 0, nil, nil, errors.New("truncated or unsupported TLV tag")
		}
		tag, b = tag<<8|int(b[0]), b[1:]
	}
	n := int(b[0])
	b = b[1:]
	switch {
	case n < 0x80:
	case n == 0x81 && len(b) >= 1:
		n, b = int(b[0]), b[1:]
	case n == 0x82 && len(b) >= 2:
		n, b = int(binary.BigEndian.Uint16(b)), b[2:]
	default:
		return 0, nil, nil, fmt.Errorf("TLV %x: malformed length", tag)
	}
	if n > len(b) {
		return 0, nil, nil, fmt.Errorf("TLV %x: %d bytes announced, %d present", tag, n, len(b))
	}
	return tag, b[:n], b[n:], nil
}

// findTLV returns the value of the first TLV with tag in a sequence.
func findTLV(b []byte, tag int) ([]byte, error) {
	for len(b) > 0 {
		t, v, rest, err := parseTLV(b)
		if err != nil {
			return nil, err
		}
		if t == tag {
			return v, nil
		}
		b = rest
	}
	return nil, fmt.Errorf("no TLV %x", tag)
}

// findNestedTLV returns the value of tag inside the first outer TLV.
func findNestedTLV(b []byte, outer, tag int) ([]byte, error) {
	v, err := findTLV(b, outer)
	if err != nil {
		return nil, err
	}
	return findTLV(v, tag)
}

// appendTLV appends a TLV with a one- or two-byte tag.
func appendTLV(dst []byte, tag int, value []byte) []byte {
	if tag > 0xff {
		dst = append(dst, byte(tag>>8))
	}
	dst = append(dst, byte(tag))
	switch n := len(value); {
	case n < 0x80:
		dst = append(dst, byte(n))
	case n < 0x100:
		dst = append(dst, 0x81, byte(n))
	default:
		dst = append(dst, 0x82, byte(n>>8), byte(n))
	}
	return append(dst, value...)
}
