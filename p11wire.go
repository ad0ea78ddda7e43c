package main

// The PKCS#11 RPC protocol's messages, as p11rpc.go's client writes and
// reads them (docs/pkcs11.md), the transport addresses and the PKCS#11
// constants the project uses.

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net/url"
	"strings"
	"sync"
)

// p11ParseResponse checks an answer's call id and signature: the call's
// own, or the error call and its CK_RV.
func p11ParseResponse(call p11Call, body []byte) (*p11Dec, error) {
	r := &p11Dec{call: call, buf: body}
	id := r.uint32()
	sig, _ := r.bytes()
	if r.err != nil {
		return nil, r.err
	}
	switch id {
	case p11CallError.id:
		if string(sig) != p11CallError.resp {
			return nil, fmt.Errorf("error answer with signature %q", sig)
		}
		rv := r.ulong()
		if err := r.end(); err != nil {
			return nil, err
		}
		if rv == ckrOK {
			return nil, errors.New("error answer with CKR_OK")
		}
		return nil, &p11Error{call.name, rv}
	case call.id:
		if string(sig) != call.resp {
			return nil, fmt.Errorf("answer with signature %q, not %q", sig, call.resp)
		}
		return r, nil
	}
	return nil, fmt.Errorf("answer to call id %d", id)
}

// p11Enc builds one request, header space first.
type p11Enc struct {
	call   p11Call
	buf    []byte
	err    error
	secret bool // wipe once sent
}

func (c *p11Client) newCall(call p11Call) *p11Enc {
	d := &p11Enc{call: call, buf: make([]byte, 12, 256)}
	d.uint32(call.id)
	d.rawArray([]byte(call.req))
	return d
}

func (d *p11Enc) byte(b byte)       { d.buf = append(d.buf, b) }
func (d *p11Enc) uint32(v uint32)   { d.buf = binary.BigEndian.AppendUint32(d.buf, v) }
func (d *p11Enc) ulong(v uint64)    { d.buf = binary.BigEndian.AppendUint64(d.buf, v) }
func (d *p11Enc) rawArray(b []byte) { d.uint32(uint32(len(b))); d.buf = append(d.buf, b...) }

// byteArray is an "ay" argument: a byte saying the array is there, then
// its length and bytes.
func (d *p11Enc) byteArray(b []byte) {
	d.byte(1)
	d.rawArray(b)
}

// attrs is an "aA" argument: the count, then each attribute's type,
// validity byte, length and value encoded by the attribute's type, as
// p11-kit's server decodes it.
func (d *p11Enc) attrs(attrs []p11Attr) error {
	if len(attrs) > p11MaxAttributes {
		d.err = fmt.Errorf("%s: %d attributes in a template", d.call.name, len(attrs))
		return d.err
	}
	d.uint32(uint32(len(attrs)))
	for _, a := range attrs {
		kind := p11AttrKind(a.Type)
		bad := ""
		switch {
		case a.Missing:
			bad = "missing"
		case kind == p11KindNested || kind == p11KindVendor:
			bad = "its encoding is not supported"
		case kind == p11KindByte && len(a.Value) != 1:
			bad = "not a CK_BBOOL"
		case kind == p11KindUlong && len(a.Value) != 8:
			bad = "not a CK_ULONG"
		case kind == p11KindDate && len(a.Value) != 0 && len(a.Value) != 8:
			bad = "not a CK_DATE"
		case len(a.Value) > p11MaxMessage:
			bad = "too long"
		}
		if bad != "" {
			d.err = fmt.Errorf("%s: attribute %#x in a template: %s", d.call.name, a.Type, bad)
			return d.err
		}
		d.uint32(uint32(a.Type))
		d.byte(1)
		d.uint32(uint32(len(a.Value)))
		switch kind {
		case p11KindByte, p11KindUlong:
			d.buf = append(d.buf, a.Value...)
		default:
			d.rawArray(a.Value)
		}
	}
	return nil
}

// mechanism is an "M" argument. Protocol version 2 (p11-kit 0.25.6)
// changed it: before, the type and the parameter as a byte array (length
// 0xffffffff for none); since, the type alone for the mechanisms p11-kit
// lists as taking no parameter, else a byte saying whether a parameter
// follows, then the parameter.
func (d *p11Enc) mechanism(m p11Mechanism, version byte) error {
	noParam, known := p11Mechanisms[m.Type]
	switch {
	case !known:
		d.err = fmt.Errorf("%s: mechanism %#x is not one this client can send", d.call.name, m.Type)
	case noParam && len(m.Param) != 0:
		d.err = fmt.Errorf("%s: mechanism %#x takes no parameter", d.call.name, m.Type)
	case len(m.Param) > p11MaxMessage/2:
		d.err = fmt.Errorf("%s: mechanism parameter of %d bytes", d.call.name, len(m.Param))
	}
	if d.err != nil {
		return d.err
	}
	d.uint32(uint32(m.Type))
	switch {
	case version < 2 && len(m.Param) == 0:
		d.uint32(0xffffffff)
	case version < 2:
		d.rawArray(m.Param)
	case noParam:
	case len(m.Param) == 0:
		d.byte(0)
	default:
		d.byte(1)
		d.rawArray(m.Param)
	}
	return nil
}

// p11Dec reads one answer's arguments. The first error sticks; end
// reports it, and that nothing is left over.
type p11Dec struct {
	client *p11Client
	call   p11Call
	buf    []byte
	err    error
	count  uint32 // length of the last length-only array
}

func (r *p11Dec) fail(format string, args ...any) {
	if r.err == nil {
		r.err = fmt.Errorf(format, args...)
	}
}

func (r *p11Dec) take(n int) []byte {
	if r.err != nil {
		return nil
	}
	if n < 0 || n > len(r.buf) {
		r.fail("%s: answer truncated", r.call.name)
		return nil
	}
	b := r.buf[:n:n]
	r.buf = r.buf[n:]
	return b
}

func (r *p11Dec) byte() byte {
	if b := r.take(1); b != nil {
		return b[0]
	}
	return 0
}

func (r *p11Dec) uint32() uint32 {
	if b := r.take(4); b != nil {
		return binary.BigEndian.Uint32(b)
	}
	return 0
}

func (r *p11Dec) ulong() uint64 {
	if b := r.take(8); b != nil {
		return binary.BigEndian.Uint64(b)
	}
	return 0
}

// bytes reads a length and that many bytes; length 0xffffffff is a NULL
// array, reported as nil, false.
func (r *p11Dec) bytes() ([]byte, bool) {
	n := r.uint32()
	if n == 0xffffffff {
		return nil, false
	}
	if n >= 0x7fffffff {
		r.fail("%s: byte array of %d bytes", r.call.name, n)
		return nil, false
	}
	b := r.take(int(n))
	return b, r.err == nil
}

func (r *p11Dec) version() p11Version { return p11Version{r.byte(), r.byte()} }

// spaceString reads a fixed-length, blank-padded string.
func (r *p11Dec) spaceString(n int) string {
	b, ok := r.bytes()
	if r.err == nil && (!ok || len(b) != n) {
		r.fail("%s: a string of %d bytes where %d are due", r.call.name, len(b), n)
	}
	return strings.TrimRight(string(b), " \x00")
}

// byteArrayOut reads an "ay" answer: the bytes, or nil and the length the
// buffer needs.
func (r *p11Dec) byteArrayOut() ([]byte, uint32) {
	if r.byte() == 0 {
		return nil, r.uint32()
	}
	b, ok := r.bytes()
	if !ok {
		return nil, 0
	}
	return b, uint32(len(b))
}

// ulongArray reads an "au" answer: the list, or nil with the length in
// r.count when only the length was asked for.
func (r *p11Dec) ulongArray() []uint64 {
	valid := r.byte()
	n := r.uint32()
	r.count = n
	if valid == 0 || r.err != nil {
		return nil
	}
	if int64(n)*8 > int64(len(r.buf)) {
		r.fail("%s: a list of %d longer than the answer", r.call.name, n)
		return nil
	}
	list := make([]uint64, n)
	for i := range list {
		list[i] = r.ulong()
	}
	return list
}

// attrArray reads an "aA" answer to C_GetAttributeValue: the attributes
// asked for, in order, and the lengths the token reported. The value of an
// attribute asked for without a buffer (size 0) is left out, unless empty.
func (r *p11Dec) attrArray(types []uint64, sizes []uint32) ([]p11Attr, []uint32) {
	if n := r.uint32(); r.err == nil && n != uint32(len(types)) {
		r.fail("%s: %d attributes for %d asked", r.call.name, n, len(types))
	}
	attrs := make([]p11Attr, len(types))
	lengths := make([]uint32, len(types))
	for i, t := range types {
		got := uint64(r.uint32())
		if r.err == nil && got != t {
			r.fail("%s: attribute %#x where %#x is due", r.call.name, got, t)
		}
		attrs[i].Type = t
		if r.byte() == 0 {
			attrs[i].Missing = true
			continue
		}
		length := r.uint32()
		var value []byte
		switch p11AttrKind(t) {
		case p11KindByte:
			value = r.take(1)
		case p11KindUlong:
			value = r.take(8)
		default:
			// Without a buffer, the server sends no bytes (length
			// 0xffffffff); with one, the bytes of the length it said.
			var ok bool
			value, ok = r.bytes()
			if r.err == nil && (ok || sizes[i] != 0) && uint32(len(value)) != length {
				r.fail("%s: attribute %#x of %d bytes said to be %d", r.call.name, t, len(value), length)
			}
		}
		switch {
		case r.err != nil:
			return attrs, lengths
		case length > p11MaxMessage:
			r.fail("%s: attribute %#x of %d bytes", r.call.name, t, length)
		case sizes[i] != 0 && length > sizes[i]:
			r.fail("%s: attribute %#x of %d bytes in a buffer of %d", r.call.name, t, length, sizes[i])
		case sizes[i] != 0 || length == 0:
			attrs[i].Value = append([]byte{}, value...)
		}
		lengths[i] = length
	}
	return attrs, lengths
}

// end reports the first error, or bytes left over, and gives up the
// connection if there is one (the caller holds its lock).
func (r *p11Dec) end() error {
	if r.err == nil && len(r.buf) != 0 {
		r.fail("%s: %d bytes left over in the answer", r.call.name, len(r.buf))
	}
	if r.err != nil && r.client != nil {
		if r.client.broken == nil {
			return r.client.fail(r.call.name, r.err)
		}
	}
	return r.err
}

// How p11-kit encodes an attribute's value (rpc-message.c,
// map_attribute_to_value_type): CK_BBOOLs as a byte, CK_ULONGs as 8
// bytes, dates and everything else as a byte array. Nested templates and
// mechanism lists, and vendor attributes (whose kind differs between
// p11-kit versions), are not supported.
const (
	p11KindBytes = iota
	p11KindByte
	p11KindUlong
	p11KindDate
	p11KindNested
	p11KindVendor
)

func p11AttrKind(t uint64) int {
	switch t {
	case ckaToken, ckaPrivate, ckaTrusted, ckaSensitive, ckaEncrypt, ckaDecrypt, ckaWrap, ckaUnwrap,
		ckaSign, ckaSignRecover, ckaVerify, ckaVerifyRecover, ckaDerive, ckaExtractable, ckaLocal,
		ckaNeverExtractable, ckaAlwaysSensitive, ckaModifiable, ckaCopyable, 0x200, /* SECONDARY_AUTH */
		ckaAlwaysAuthenticate, 0x210 /* WRAP_WITH_TRUSTED */, 0x301 /* RESET_ON_INIT */, 0x302, /* HAS_RESET */
		0x405 /* COLOR */ :
		return p11KindByte
	case ckaClass, ckaCertificateType, 0x87 /* CERTIFICATE_CATEGORY */, 0x88, /* JAVA_MIDP_SECURITY_DOMAIN */
		ckaKeyType, ckaModulusBits, 0x133 /* PRIME_BITS */, 0x134 /* SUB_PRIME_BITS */, 0x160, /* VALUE_BITS */
		0x161 /* VALUE_LEN */, ckaKeyGenMechanism, 0x201 /* AUTH_PIN_FLAGS */, 0x300, /* HW_FEATURE_TYPE */
		0x400, 0x401, 0x402, 0x403, 0x404, 0x406 /* PIXEL_X..BITS_PER_PIXEL */, 0x500 /* MECHANISM_TYPE */ :
		return p11KindUlong
	case 0x110, 0x111: // START_DATE, END_DATE
		return p11KindDate
	case 0x40000211, 0x40000212, 0x40000213, 0x40000600: // WRAP/UNWRAP/DERIVE_TEMPLATE, ALLOWED_MECHANISMS
		return p11KindNested
	}
	if t > 0xffffffff || t&0x80000000 != 0 {
		return p11KindVendor
	}
	return p11KindBytes
}

// The mechanisms this client sends, and how. Protocol version 2 sends a
// mechanism that p11-kit lists as taking no parameter
// (rpc-message.c, mechanism_has_no_parameters, unchanged since 0.25.6) as
// its type alone, and any other with a byte saying whether a parameter
// follows; p11-kit decodes some parameters field by field (PSS, OAEP,
// IVs...). Sending a mechanism of the wrong group would shift every
// argument after it, so only mechanisms known to be in one group are sent:
// true: in p11-kit's list; false: p11-kit passes their parameter as
// parameter of as plain bytes (false).
var p11Mechanisms = map[uint64]bool{
	ckmRSAPKCSKeyPairGen: true, ckmRSAPKCS: true, ckmRSAX509: true, ckmSHA1RSAPKCS: true,
	ckmSHA224RSAPKCS: true, ckmSHA256RSAPKCS: true, ckmSHA384RSAPKCS: true, ckmSHA512RSAPKCS: true,
	ckmECKeyPairGen: true, ckmECDSA: true, ckmECDSASHA1: true, ckmECDSASHA224: true,
	ckmECDSASHA256: true, ckmECDSASHA384: true, ckmECDSASHA512: true,
	ckmSHA1: true, ckmSHA224: true, ckmSHA256: true, ckmSHA384: true, ckmSHA512: true,
	ckmECEdwardsKeyPairGen: false, ckmEDDSA: false,
}

// p11ParseAddress splits a transport address ("unix:path=...",
// "exec:command=...") into its type and attributes. A value may be
// double-quoted, with backslash escapes; a unix path is percent-decoded,
// as p11-kit does.
func p11ParseAddress(address string) (string, map[string]string, error) {
	kind, rest, ok := strings.Cut(address, ":")
	if !ok {
		return "", nil, fmt.Errorf("p11-kit address %q: no transport type", address)
	}
	attrs := map[string]string{}
	for rest != "" {
		name, after, ok := strings.Cut(rest, "=")
		if !ok || name == "" || strings.ContainsAny(name, "; \"") {
			return "", nil, fmt.Errorf("p11-kit address %q: bad attribute", address)
		}
		var value strings.Builder
		i := 0
		if strings.HasPrefix(after, `"`) {
			for i = 1; i < len(after) && after[i] != '"'; i++ {
				if after[i] == '\\' && i+1 < len(after) {
					i++
				}
				value.WriteByte(after[i])
			}
			if i == len(after) {
				return "", nil, fmt.Errorf("p11-kit address %q: unterminated quote", address)
			}
			i++
		} else {
			for ; i < len(after) && after[i] != ';'; i++ {
				value.WriteByte(after[i])
			}
		}
		attrs[name] = value.String()
		rest = after[i:]
		if rest != "" {
			if rest[0] != ';' {
				return "", nil, fmt.Errorf("p11-kit address %q: junk after %s", address, name)
			}
			rest = rest[1:]
		}
	}
	switch kind {
	case "unix":
		p, err := url.PathUnescape(attrs["path"])
		if err != nil || !strings.HasPrefix(p, "/") {
			return "", nil, fmt.Errorf("p11-kit address %q: path must be absolute", address)
		}
		attrs["path"] = p
	case "exec":
		if strings.TrimSpace(attrs["command"]) == "" {
			return "", nil, fmt.Errorf("p11-kit address %q: no command", address)
		}
	default:
		return "", nil, fmt.Errorf("p11-kit address %q: transport %q not supported (unix: or exec:)", address, kind)
	}
	return kind, attrs, nil
}

// p11SplitCommand splits a command line as p11-kit does (argv.c): on
// blanks outside quotes; quotes group; a backslash escapes the next
// character (inside quotes, only the quote itself).
func p11SplitCommand(s string) ([]string, error) {
	var argv []string
	var arg strings.Builder
	inArg := false
	var quote byte
	for i := 0; i < len(s); i++ {
		ch := s[i]
		switch {
		case quote != 0 && ch == quote:
			quote = 0
		case quote != 0 && ch == '\\' && i+1 < len(s) && s[i+1] == quote:
			i++
			arg.WriteByte(quote)
		case quote != 0:
			arg.WriteByte(ch)
		case ch == ' ' || ch == '\t' || ch == '\n':
			if inArg {
				argv = append(argv, arg.String())
				arg.Reset()
				inArg = false
			}
			continue
		case ch == '"' || ch == '\'':
			quote = ch
		case ch == '\\':
			if i+1 == len(s) {
				return nil, fmt.Errorf("command %q ends in a backslash", s)
			}
			i++
			arg.WriteByte(s[i])
		default:
			arg.WriteByte(ch)
		}
		inArg = true
	}
	if quote != 0 {
		return nil, fmt.Errorf("command %q: unterminated quote", s)
	}
	if inArg {
		argv = append(argv, arg.String())
	}
	if len(argv) == 0 {
		return nil, fmt.Errorf("empty command")
	}
	return argv, nil
}

// p11Tail keeps the last 2 KiB a child wrote on its standard error, for
// errors.
type p11Tail struct {
	mu  sync.Mutex
	buf []byte
}

func (t *p11Tail) Write(p []byte) (int, error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.buf = append(t.buf, p...)
	if len(t.buf) > 2048 {
		t.buf = t.buf[len(t.buf)-2048:]
	}
	return len(p), nil
}

func (t *p11Tail) String() string {
	t.mu.Lock()
	defer t.mu.Unlock()
	return strings.TrimSpace(string(t.buf))
}

// CK_RV values the project tests for.
const (
	ckrOK                         = 0
	ckrGeneralError               = 5
	ckrFunctionFailed             = 6
	ckrAttributeSensitive         = 0x11
	ckrAttributeTypeInvalid       = 0x12
	ckrAttributeValueInvalid      = 0x13
	ckrDeviceError                = 0x30
	ckrDeviceRemoved              = 0x32
	ckrKeyHandleInvalid           = 0x60
	ckrKeySizeRange               = 0x62
	ckrMechanismInvalid           = 0x70
	ckrObjectHandleInvalid        = 0x82
	ckrPINIncorrect               = 0xa0
	ckrPINInvalid                 = 0xa1
	ckrPINLenRange                = 0xa2
	ckrPINExpired                 = 0xa3
	ckrPINLocked                  = 0xa4
	ckrSessionClosed              = 0xb0
	ckrSessionHandleInvalid       = 0xb3
	ckrTemplateInconsistent       = 0xd1
	ckrTokenNotPresent            = 0xe0
	ckrUserAlreadyLoggedIn        = 0x100
	ckrUserNotLoggedIn            = 0x101
	ckrBufferTooSmall             = 0x150
	ckrCryptokiNotInitialized     = 0x190
	ckrCryptokiAlreadyInitialized = 0x191
)

// p11RVNames names the CK_RVs an error may show.
var p11RVNames = map[uint64]string{
	0:     "CKR_OK",
	1:     "CKR_CANCEL",
	2:     "CKR_HOST_MEMORY",
	3:     "CKR_SLOT_ID_INVALID",
	5:     "CKR_GENERAL_ERROR",
	6:     "CKR_FUNCTION_FAILED",
	7:     "CKR_ARGUMENTS_BAD",
	8:     "CKR_NO_EVENT",
	9:     "CKR_NEED_TO_CREATE_THREADS",
	0xa:   "CKR_CANT_LOCK",
	0x10:  "CKR_ATTRIBUTE_READ_ONLY",
	0x11:  "CKR_ATTRIBUTE_SENSITIVE",
	0x12:  "CKR_ATTRIBUTE_TYPE_INVALID",
	0x13:  "CKR_ATTRIBUTE_VALUE_INVALID",
	0x1b:  "CKR_ACTION_PROHIBITED",
	0x20:  "CKR_DATA_INVALID",
	0x21:  "CKR_DATA_LEN_RANGE",
	0x30:  "CKR_DEVICE_ERROR",
	0x31:  "CKR_DEVICE_MEMORY",
	0x32:  "CKR_DEVICE_REMOVED",
	0x50:  "CKR_FUNCTION_CANCELED",
	0x51:  "CKR_FUNCTION_NOT_PARALLEL",
	0x54:  "CKR_FUNCTION_NOT_SUPPORTED",
	0x60:  "CKR_KEY_HANDLE_INVALID",
	0x62:  "CKR_KEY_SIZE_RANGE",
	0x63:  "CKR_KEY_TYPE_INCONSISTENT",
	0x68:  "CKR_KEY_FUNCTION_NOT_PERMITTED",
	0x70:  "CKR_MECHANISM_INVALID",
	0x71:  "CKR_MECHANISM_PARAM_INVALID",
	0x82:  "CKR_OBJECT_HANDLE_INVALID",
	0x90:  "CKR_OPERATION_ACTIVE",
	0x91:  "CKR_OPERATION_NOT_INITIALIZED",
	0xa0:  "CKR_PIN_INCORRECT",
	0xa1:  "CKR_PIN_INVALID",
	0xa2:  "CKR_PIN_LEN_RANGE",
	0xa3:  "CKR_PIN_EXPIRED",
	0xa4:  "CKR_PIN_LOCKED",
	0xb0:  "CKR_SESSION_CLOSED",
	0xb1:  "CKR_SESSION_COUNT",
	0xb3:  "CKR_SESSION_HANDLE_INVALID",
	0xb4:  "CKR_SESSION_PARALLEL_NOT_SUPPORTED",
	0xb5:  "CKR_SESSION_READ_ONLY",
	0xb6:  "CKR_SESSION_EXISTS",
	0xb7:  "CKR_SESSION_READ_ONLY_EXISTS",
	0xb8:  "CKR_SESSION_READ_WRITE_SO_EXISTS",
	0xc0:  "CKR_SIGNATURE_INVALID",
	0xc1:  "CKR_SIGNATURE_LEN_RANGE",
	0xd0:  "CKR_TEMPLATE_INCOMPLETE",
	0xd1:  "CKR_TEMPLATE_INCONSISTENT",
	0xe0:  "CKR_TOKEN_NOT_PRESENT",
	0xe1:  "CKR_TOKEN_NOT_RECOGNIZED",
	0xe2:  "CKR_TOKEN_WRITE_PROTECTED",
	0x100: "CKR_USER_ALREADY_LOGGED_IN",
	0x101: "CKR_USER_NOT_LOGGED_IN",
	0x102: "CKR_USER_PIN_NOT_INITIALIZED",
	0x103: "CKR_USER_TYPE_INVALID",
	0x104: "CKR_USER_ANOTHER_ALREADY_LOGGED_IN",
	0x105: "CKR_USER_TOO_MANY_TYPES",
	0x121: "CKR_RANDOM_NO_RNG",
	0x130: "CKR_DOMAIN_PARAMS_INVALID",
	0x140: "CKR_CURVE_NOT_SUPPORTED",
	0x150: "CKR_BUFFER_TOO_SMALL",
	0x190: "CKR_CRYPTOKI_NOT_INITIALIZED",
	0x191: "CKR_CRYPTOKI_ALREADY_INITIALIZED",
	0x200: "CKR_FUNCTION_REJECTED",
}

// p11RVName is the CKR_ name of a CK_RV, or its number.
func p11RVName(rv uint64) string {
	if name, ok := p11RVNames[rv]; ok {
		return name
	}
	if rv&0x80000000 != 0 {
		return "vendor-defined CK_RV"
	}
	return "unknown CK_RV"
}

// Attribute types (CKA_*).
const (
	ckaClass              = 0
	ckaToken              = 1
	ckaPrivate            = 2
	ckaLabel              = 3
	ckaApplication        = 0x10
	ckaValue              = 0x11
	ckaObjectID           = 0x12
	ckaCertificateType    = 0x80
	ckaIssuer             = 0x81
	ckaSerialNumber       = 0x82
	ckaTrusted            = 0x86
	ckaKeyType            = 0x100
	ckaSubject            = 0x101
	ckaID                 = 0x102
	ckaSensitive          = 0x103
	ckaEncrypt            = 0x104
	ckaDecrypt            = 0x105
	ckaWrap               = 0x106
	ckaUnwrap             = 0x107
	ckaSign               = 0x108
	ckaSignRecover        = 0x109
	ckaVerify             = 0x10a
	ckaVerifyRecover      = 0x10b
	ckaDerive             = 0x10c
	ckaModulus            = 0x120
	ckaModulusBits        = 0x121
	ckaPublicExponent     = 0x122
	ckaPrivateExponent    = 0x123
	ckaExtractable        = 0x162
	ckaLocal              = 0x163
	ckaNeverExtractable   = 0x164
	ckaAlwaysSensitive    = 0x165
	ckaKeyGenMechanism    = 0x166
	ckaModifiable         = 0x170
	ckaCopyable           = 0x171
	ckaECParams           = 0x180
	ckaECPoint            = 0x181
	ckaAlwaysAuthenticate = 0x202
)

// Object classes (CKO_*).
const (
	ckoData        = 0
	ckoCertificate = 1
	ckoPublicKey   = 2
	ckoPrivateKey  = 3
	ckoSecretKey   = 4
)

// Key types (CKK_*) and certificate types (CKC_*).
const (
	ckkRSA       = 0
	ckkEC        = 3
	ckkECEdwards = 0x40
	ckcX509      = 0
)

// Mechanisms (CKM_*).
const (
	ckmRSAPKCSKeyPairGen   = 0
	ckmRSAPKCS             = 1
	ckmRSAX509             = 3
	ckmSHA1RSAPKCS         = 6
	ckmSHA224RSAPKCS       = 0x46
	ckmSHA256RSAPKCS       = 0x40
	ckmSHA384RSAPKCS       = 0x41
	ckmSHA512RSAPKCS       = 0x42
	ckmECKeyPairGen        = 0x1040
	ckmECDSA               = 0x1041
	ckmECDSASHA1           = 0x1042
	ckmECDSASHA224         = 0x1043
	ckmECDSASHA256         = 0x1044
	ckmECDSASHA384         = 0x1045
	ckmECDSASHA512         = 0x1046
	ckmECEdwardsKeyPairGen = 0x1055
	ckmEDDSA               = 0x1057
	ckmSHA1                = 0x220
	ckmSHA224              = 0x255
	ckmSHA256              = 0x250
	ckmSHA384              = 0x260
	ckmSHA512              = 0x270
)

// User types (CKU_*).
const (
	ckuSO              = 0
	ckuUser            = 1
	ckuContextSpecific = 2
)

// Session states (CKS_*).
const (
	cksROPublicSession = 0
	cksROUserFunctions = 1
	cksRWPublicSession = 2
	cksRWUserFunctions = 3
	cksRWSOFunctions   = 4
)

// Flags (CKF_*) of sessions, slots, tokens and mechanisms.
const (
	ckfRWSession                   = 1 << 1
	ckfSerialSession               = 1 << 2
	ckfTokenPresent                = 1 << 0
	ckfRemovableDevice             = 1 << 1
	ckfHWSlot                      = 1 << 2
	ckfRNG                         = 1 << 0
	ckfWriteProtected              = 1 << 1
	ckfLoginRequired               = 1 << 2
	ckfUserPINInitialized          = 1 << 3
	ckfProtectedAuthenticationPath = 1 << 8
	ckfTokenInitialized            = 1 << 10
	ckfUserPINCountLow             = 1 << 16
	ckfUserPINFinalTry             = 1 << 17
	ckfUserPINLocked               = 1 << 18
	ckfHW                          = 1 << 0
	ckfSign                        = 1 << 11
	ckfVerify                      = 1 << 13
	ckfGenerateKeyPair             = 1 << 16
)
