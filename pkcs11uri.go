package main

// PKCS#11 URIs (RFC 7512): read as libp11 reads them, matched against the
// tokens and keys a provider reports, and routed either to a YubiKey's PIV
// applet (yubikey.go, piv.go) or to a PKCS#11 provider (pkcs11.go).

import (
	"errors"
	"fmt"
	"net/url"
	"os"
	"path"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
)

// tokenKeyRef is a pkcs11-static key reference mapped onto a YubiKey's PIV
// applet: which token (by serial number), which PIV slot, and where the PIN is.
//
// The reference is a PKCS#11 URI (RFC 7512) as Debusine's own
// register_pkcs11_static_key stores it for a key on a YubiKey driven by
// ykcs11, so keys registered there work here unchanged.
type tokenKeyRef struct {
	Serial uint32
	// Slot is the PIV key reference: 0x9a, 0x9c, 0x9d, 0x9e or a retired
	// key-management slot 0x82..0x95.
	Slot byte
	// PINSource is the pin-source attribute as written in the URI, or "".
	PINSource string
}

// ykcs11 numbers the PIV key slots with CKA_ID 1..24: the four standard slots
// first, then the twenty retired key-management slots in order.
func ykcs11IDToSlot(id int) (byte, bool) {
	switch {
	case id >= 1 && id <= 4:
		return [...]byte{0x9a, 0x9c, 0x9d, 0x9e}[id-1], true
	case id >= 5 && id <= 24:
		return byte(0x82 + id - 5), true
	}
	return 0, false
}

func slotToYKCS11ID(slot byte) (int, bool) {
	switch {
	case slot == 0x9a:
		return 1, true
	case slot == 0x9c:
		return 2, true
	case slot == 0x9d:
		return 3, true
	case slot == 0x9e:
		return 4, true
	case slot >= 0x82 && slot <= 0x95:
		return int(slot-0x82) + 5, true
	}
	return 0, false
}

// parseSlotName reads a PIV slot as yubico-piv-tool and ykman name it
// ("9c", "82").
func parseSlotName(s string) (byte, error) {
	v, err := strconv.ParseUint(s, 16, 8)
	if err != nil {
		return 0, fmt.Errorf("PIV slot %q: not a hexadecimal slot number such as 9c", s)
	}
	if _, ok := slotToYKCS11ID(byte(v)); !ok {
		return 0, fmt.Errorf("PIV slot %q: not a key slot (use 9a, 9c, 9d, 9e or 82..95)", s)
	}
	return byte(v), nil
}

// tokenKeyURI is the URI stored for a key in PIV slot on the YubiKey with the
// given serial, in ykcs11's terms so that Debusine and p11tool read it too.
func tokenKeyURI(serial uint32, slot byte) (string, error) {
	id, ok := slotToYKCS11ID(slot)
	if !ok {
		return "", fmt.Errorf("PIV slot %02x: not a key slot", slot)
	}
	return fmt.Sprintf("pkcs11:serial=%d;id=%%%02x;type=private", serial, id), nil
}

// ykcs11 labels each YubiKey token "YubiKey PIV #<serial>", its model
// "YubiKey " and the series ("YubiKey YK5"), its manufacturer Yubico's.
const (
	ykcs11TokenLabelPrefix = "YubiKey PIV #"
	ykcs11ModelPrefix      = "YubiKey"
	ykcs11Manufacturer     = "Yubico (www.yubico.com)"
)

// p11URI is a PKCS#11 URI (RFC 7512) read as libp11 reads it, since
// libp11's engine is what Debusine's worker hands the same URI to
// (sbsign --engine pkcs11 --key URI): libp11 0.4.12 (Debian 12) to 0.4.20,
// src/eng_parse.c and later src/util_uri.c, parse_pkcs11_uri.
//
//   - The attributes are split at every ';', '?' and '&' alike, so an
//     attribute may be given in the path or in the query; one separator may
//     end the URI, an empty attribute anywhere else is an error.
//   - Values are percent-decoded and otherwise taken byte for byte: "id=1234"
//     is the four bytes "1234" (31 32 33 34), not the two bytes 12 34. A
//     YubiHSM 2 object 0x1234 has the CKA_ID 12 34 and is "id=%12%34".
//   - type= (or object-type=) must be cert, public or private and is
//     otherwise ignored: the engine loads the private key either way.
//   - pin-value and pin-source exclude each other; pin-source is a file
//     (after an optional "file:") whose first line is the PIN.
//
// libp11 refuses the other RFC 7512 attributes; the ones p11-kit's uri.c
// reads (slot-id, slot-description, slot-manufacturer, library-*,
// module-name, module-path) are read here as p11-kit reads them, so that a
// URI p11tool or p11-kit prints works too. Where libp11 would quietly
// choose (a repeated attribute, several keys that match), this is refused.
type p11URI struct {
	// text holds the decoded textual attributes by name: token,
	// manufacturer, model, serial, object, slot-description,
	// slot-manufacturer, library-manufacturer, library-description,
	// library-version, module-name, module-path, pin-source.
	text map[string]string
	// id is the CKA_ID, nil without id=.
	id     []byte
	typ    string
	slotID *uint64
	// pinValue is the pin-value attribute; it never appears in a message.
	pinValue []byte
	hasPIN   bool
	// inQuery names the attributes given after the first '?'.
	inQuery map[string]bool
}

// p11TextAttributes are the attributes whose value is text.
var p11TextAttributes = map[string]bool{
	"token": true, "manufacturer": true, "model": true, "serial": true, "object": true,
	"slot-description": true, "slot-manufacturer": true, "library-manufacturer": true,
	"library-description": true, "library-version": true, "module-name": true,
	"module-path": true, "pin-source": true,
}

// maxPKCS11URI bounds what is parsed: a URI is stored in the database and
// read on every signature.
const maxPKCS11URI = 4096

func (u *p11URI) get(name string) (string, bool) {
	v, ok := u.text[name]
	return v, ok
}

// parseP11URI parses uri. Errors name the attribute at fault but never
// quote a pin-value, nor the URI (which may hold one).
func parseP11URI(uri string) (*p11URI, error) {
	rest, ok := strings.CutPrefix(uri, "pkcs11:")
	if !ok {
		// Not quoted: whatever it is may hold a PIN.
		return nil, errors.New("PKCS#11 URI: does not start with \"pkcs11:\"")
	}
	if len(uri) > maxPKCS11URI {
		return nil, fmt.Errorf("PKCS#11 URI: longer than %d bytes", maxPKCS11URI)
	}
	u := &p11URI{text: map[string]string{}, inQuery: map[string]bool{}}
	if rest == "" {
		return u, nil
	}
	// libp11 stops at a separator that ends the string.
	if strings.ContainsRune(";?&", rune(rest[len(rest)-1])) {
		rest = rest[:len(rest)-1]
	}
	seen := map[string]bool{}
	query := false
	for n := 1; ; n++ {
		i := strings.IndexAny(rest, ";?&")
		attr := rest
		if i >= 0 {
			attr = rest[:i]
		}
		where := "path attribute"
		if query {
			where = "query attribute"
		}
		if attr == "" {
			return nil, fmt.Errorf("PKCS#11 URI: %s %d is empty", where, n)
		}
		name, raw, ok := strings.Cut(attr, "=")
		if !ok {
			return nil, fmt.Errorf("PKCS#11 URI: %s %d has no \"=\"", where, n)
		}
		if name == "object-type" {
			name = "type"
		}
		if seen[name] || (name == "pin-source" && seen["pin-value"]) || (name == "pin-value" && seen["pin-source"]) {
			return nil, fmt.Errorf("PKCS#11 URI: attribute %q given twice (or pin-value with pin-source)", name)
		}
		seen[name] = true
		if err := u.set(name, raw, where); err != nil {
			return nil, err
		}
		if query {
			u.inQuery[name] = true
		}
		if i < 0 {
			return u, nil
		}
		if rest[i] == '?' {
			query = true
		}
		rest = rest[i+1:]
	}
}

func (u *p11URI) set(name, raw, where string) error {
	value, err := url.PathUnescape(raw)
	if err != nil {
		return fmt.Errorf("PKCS#11 URI: attribute %s: bad percent-encoding", name)
	}
	switch {
	case p11TextAttributes[name]:
		u.text[name] = value
	case name == "id":
		u.id = []byte(value)
	case name == "type":
		switch value {
		case "private", "public", "cert":
		default:
			return fmt.Errorf("PKCS#11 URI: type=%s: libp11 knows only private, public and cert", value)
		}
		u.typ = value
	case name == "slot-id":
		v, err := strconv.ParseUint(value, 10, 64)
		if err != nil {
			return fmt.Errorf("PKCS#11 URI: slot-id %q is not a decimal slot number", value)
		}
		u.slotID = &v
	case name == "pin-value":
		u.pinValue, u.hasPIN = []byte(value), true
	case where == "query attribute":
		return fmt.Errorf("PKCS#11 URI: unsupported query attribute %q", name)
	default:
		return fmt.Errorf("PKCS#11 URI: unsupported attribute %q", name)
	}
	if name == "pin-source" && value == "" {
		return fmt.Errorf("PKCS#11 URI: empty pin-source")
	}
	if name == "pin-source" {
		// Only the syntax is checked here: the credentials directory is
		// known when the service runs, not when the key is registered.
		if _, err := resolvePINSource(value, "$CREDENTIALS_DIRECTORY"); err != nil {
			return err
		}
	}
	if name == "library-version" && !libraryVersionRE.MatchString(value) {
		return fmt.Errorf("PKCS#11 URI: library-version %q is not MAJOR or MAJOR.MINOR", value)
	}
	return nil
}

var libraryVersionRE = regexp.MustCompile(`^[0-9]{1,3}(\.[0-9]{1,3})?$`)

// parsePKCS11URI maps a pkcs11: URI onto a YubiKey PIV key, or says why it
// cannot. Attributes that only describe the token or the module are checked
// against what ykcs11 reports for a YubiKey where they can be; anything that
// would select a key we cannot identify is refused rather than guessed.
func parsePKCS11URI(uri string) (*tokenKeyRef, error) {
	u, err := parseP11URI(uri)
	if err != nil {
		return nil, err
	}
	ref := &tokenKeyRef{}
	haveSerial := false
	if s, ok := u.get("serial"); ok {
		// A PKCS#11 serialNumber is a space-padded 16-character field.
		v, err := strconv.ParseUint(strings.TrimSpace(s), 10, 32)
		if err != nil {
			return nil, fmt.Errorf("PKCS#11 URI: serial %q is not a YubiKey serial number (decimal)", s)
		}
		ref.Serial, haveSerial = uint32(v), true
	}
	if label, ok := u.get("token"); ok {
		s, ok := strings.CutPrefix(label, ykcs11TokenLabelPrefix)
		v, err := strconv.ParseUint(s, 10, 32)
		if !ok || err != nil {
			return nil, fmt.Errorf("PKCS#11 URI: token %q is not a ykcs11 YubiKey label (%q followed by the serial)", label, ykcs11TokenLabelPrefix)
		}
		if haveSerial && uint32(v) != ref.Serial {
			return nil, fmt.Errorf("PKCS#11 URI: token %q and serial=%d disagree", label, ref.Serial)
		}
		ref.Serial, haveSerial = uint32(v), true
	}
	if m, ok := u.get("model"); ok && !strings.HasPrefix(m, ykcs11ModelPrefix) {
		return nil, fmt.Errorf("PKCS#11 URI: model %q is not a YubiKey's (ykcs11 reports %q followed by the series)", m, ykcs11ModelPrefix)
	}
	if m, ok := u.get("manufacturer"); ok && m != ykcs11Manufacturer {
		return nil, fmt.Errorf("PKCS#11 URI: manufacturer %q is not a YubiKey's (ykcs11 reports %q)", m, ykcs11Manufacturer)
	}
	if !haveSerial {
		return nil, fmt.Errorf("PKCS#11 URI: no serial= (or ykcs11 token= label): cannot tell which YubiKey holds the key")
	}
	if u.id == nil {
		return nil, fmt.Errorf("PKCS#11 URI: no id=: cannot tell which PIV slot holds the key")
	}
	slot, ok := byte(0), len(u.id) == 1
	if ok {
		slot, ok = ykcs11IDToSlot(int(u.id[0]))
	}
	if !ok {
		return nil, fmt.Errorf("PKCS#11 URI: id %q is not a ykcs11 key id (%%01..%%18)", url.PathEscape(string(u.id)))
	}
	ref.Slot = slot
	if u.typ != "" && u.typ != "private" {
		return nil, fmt.Errorf("PKCS#11 URI: type=%s does not name a private key", u.typ)
	}
	if u.hasPIN {
		// The URI is stored in the database and shown in listings.
		return nil, fmt.Errorf("PKCS#11 URI: pin-value is refused (it would store the PIN in the database): use pin-source=FILE")
	}
	ref.PINSource = u.text["pin-source"]
	return ref, nil
}

// pinSourcePath turns a pin-source (or the configured pin_file) into a file
// name: "file:" URIs and absolute paths name the file; a bare name is a
// systemd credential, looked up under $CREDENTIALS_DIRECTORY at use, which
// is how LoadCredential=/SetCredentialEncrypted= hand secrets to a service.
func pinSourcePath(source string) (string, error) {
	return resolvePINSource(source, os.Getenv("CREDENTIALS_DIRECTORY"))
}

func resolvePINSource(source, credentialsDir string) (string, error) {
	if rest, ok := strings.CutPrefix(source, "file:"); ok {
		u, err := url.Parse(source)
		if err != nil || (u.Host != "" && u.Host != "localhost") {
			return "", fmt.Errorf("PIN source %q: not a local file: URI", source)
		}
		if u.Path == "" {
			u.Path = rest
		}
		if !filepath.IsAbs(u.Path) {
			return "", fmt.Errorf("PIN source %q: file: URI with a relative path", source)
		}
		return filepath.Clean(u.Path), nil
	}
	if filepath.IsAbs(source) {
		return filepath.Clean(source), nil
	}
	if strings.ContainsRune(source, '/') || source == "." || source == ".." || strings.Contains(source, ":") {
		return "", fmt.Errorf("PIN source %q: neither an absolute path, a file: URI nor a credential name", source)
	}
	if credentialsDir == "" {
		return "", fmt.Errorf("PIN source %q: a credential name, but $CREDENTIALS_DIRECTORY is not set", source)
	}
	return filepath.Join(credentialsDir, source), nil
}

// PKCS11Config is the [pkcs11] table: the p11-kit servers that give access
// to PKCS#11 modules.
type PKCS11Config struct {
	Providers []PKCS11Provider `toml:"provider"`
}

// PKCS11Provider is one [[pkcs11.provider]]: a p11-kit RPC address and the
// module-name / module-path URI attribute values it answers for.
type PKCS11Provider struct {
	// Address is "unix:path=SOCKET" (p11-kit server) or
	// "exec:command=\"p11-kit remote MODULE\"".
	Address    string `toml:"address"`
	ModuleName string `toml:"module_name"`
	ModulePath string `toml:"module_path"`
}

// check refuses a provider without an address, or with one p11-kit's
// client could not use either.
func (c PKCS11Config) check() error {
	for i, p := range c.Providers {
		if p.Address == "" {
			return fmt.Errorf("[[pkcs11.provider]] %d: no address", i+1)
		}
		if _, _, err := p11ParseAddress(p.Address); err != nil {
			return fmt.Errorf("[[pkcs11.provider]] %d: %w", i+1, err)
		}
	}
	return nil
}

// providers are the configured providers or, without any, the p11-kit
// server named by P11_KIT_SERVER_ADDRESS, as p11-kit's own client module
// finds it.
func (c PKCS11Config) providers() []PKCS11Provider {
	if len(c.Providers) > 0 {
		return c.Providers
	}
	if a := os.Getenv("P11_KIT_SERVER_ADDRESS"); a != "" {
		return []PKCS11Provider{{Address: a}}
	}
	return nil
}

// answers says whether the provider is the one the URI's module-name or
// module-path attribute asks for. A module-name is compared with the
// provider's module_name or, without one, with its module_path's file name
// without "lib" and ".so" (RFC 7512, 2.3: "mypkcs11" for libmypkcs11.so).
func (p PKCS11Provider) answers(u *p11URI) bool {
	if mp, ok := u.get("module-path"); ok && mp != p.ModulePath {
		return false
	}
	if mn, ok := u.get("module-name"); ok {
		name := p.ModuleName
		if name == "" && p.ModulePath != "" {
			name = moduleNameOf(p.ModulePath)
		}
		if mn != name && mn != "lib"+name {
			return false
		}
	}
	return true
}

func moduleNameOf(modulePath string) string {
	base := path.Base(modulePath)
	if i := strings.Index(base, ".so"); i > 0 {
		base = base[:i]
	}
	return strings.TrimPrefix(base, "lib")
}

// ykcs11Module says whether the URI's module attributes name ykcs11.
func (u *p11URI) ykcs11Module() bool {
	if mp, ok := u.get("module-path"); ok && moduleNameOf(mp) == "ykcs11" {
		return true
	}
	mn, ok := u.get("module-name")
	return ok && (mn == "ykcs11" || mn == "libykcs11")
}

// namesYubiKeyPIV says how the URI names a YubiKey's PIV applet as ykcs11
// presents it, or "" when it does not.
func (u *p11URI) namesYubiKeyPIV() string {
	label, hasLabel := u.get("token")
	model, hasModel := u.get("model")
	_, hasManufacturer := u.get("manufacturer")
	switch {
	case hasLabel && strings.HasPrefix(label, ykcs11TokenLabelPrefix):
		return fmt.Sprintf("token=%q is a ykcs11 YubiKey label", label)
	case hasModel && strings.HasPrefix(model, ykcs11ModelPrefix):
		return fmt.Sprintf("model=%q is a YubiKey's", model)
	case u.ykcs11Module():
		return "its module is ykcs11"
	case hasLabel || hasModel || hasManufacturer:
		return ""
	}
	// The form register-yubikey-key writes: a YubiKey serial and a ykcs11
	// key id, nothing naming another kind of token.
	s, ok := u.get("serial")
	if !ok || len(u.id) != 1 {
		return ""
	}
	if _, err := strconv.ParseUint(strings.TrimSpace(s), 10, 32); err != nil {
		return ""
	}
	if _, ok := ykcs11IDToSlot(int(u.id[0])); !ok {
		return ""
	}
	return "serial= and id= in the form register-yubikey-key writes"
}

// routeKeyURI decides which path signs with the key uri names: the YubiKey
// PIV applet (yubikey true), or the PKCS#11 providers returned. A URI that
// both could claim is refused with the reason.
func routeKeyURI(cfg PKCS11Config, uri string) (yubikey bool, providers []PKCS11Provider, u *p11URI, err error) {
	if u, err = parseP11URI(uri); err != nil {
		return false, nil, nil, err
	}
	why := u.namesYubiKeyPIV()
	_, hasName := u.get("module-name")
	_, hasPath := u.get("module-path")
	all := cfg.providers()
	if hasName || hasPath {
		for _, p := range all {
			if p.answers(u) {
				providers = append(providers, p)
			}
		}
		switch {
		case len(providers) > 0 && why != "":
			return false, nil, nil, fmt.Errorf("PKCS#11 URI: both the YubiKey PIV path (%s) and the [pkcs11] provider at %s (its module_name/module_path match) could sign with this key; not choosing: drop module-name/module-path to use the YubiKey directly, or the YubiKey attributes to go through the provider", why, providers[0].Address)
		case len(providers) > 0:
			return false, providers, u, nil
		case why != "":
			return true, nil, u, nil
		}
		return false, nil, nil, errors.New("PKCS#11 URI: no [pkcs11] provider has the module_name or module_path this URI asks for")
	}
	if why != "" {
		return true, nil, u, nil
	}
	if len(all) == 0 {
		return false, nil, nil, errors.New("PKCS#11 URI: this key is on a PKCS#11 token, and no provider is configured: add a [pkcs11] provider, or set P11_KIT_SERVER_ADDRESS to the address p11-kit server prints")
	}
	return false, all, u, nil
}

// matchTokens lists the slots whose token the URI's token, slot and
// library attributes match, as libp11 compares them (exact, without the
// blank padding), skipping uninitialized tokens as libp11 0.4.12 does. It
// also describes every token it saw, for messages.
func (u *p11URI) matchTokens(c *p11Client) (slots []uint64, tokens []p11TokenInfo, seen []string, err error) {
	if err := u.matchLibrary(c); err != nil {
		return nil, nil, nil, err
	}
	ids, err := c.Slots(true)
	if err != nil {
		return nil, nil, nil, err
	}
	for _, slot := range ids {
		ti, err := c.TokenInfo(slot)
		if rv, _ := p11RV(err); rv == ckrTokenNotPresent {
			continue
		}
		if err != nil {
			return nil, nil, nil, err
		}
		seen = append(seen, fmt.Sprintf("slot %d: %s", slot, tokenName(ti)))
		if ti.Flags&ckfTokenInitialized == 0 || !u.matchToken(slot, ti) {
			continue
		}
		if ok, err := u.matchSlot(c, slot); err != nil || !ok {
			if err != nil {
				return nil, nil, nil, err
			}
			continue
		}
		slots, tokens = append(slots, slot), append(tokens, ti)
	}
	return slots, tokens, seen, nil
}

func (u *p11URI) matchToken(slot uint64, ti p11TokenInfo) bool {
	for name, have := range map[string]string{"token": ti.Label, "manufacturer": ti.Manufacturer, "model": ti.Model, "serial": ti.Serial} {
		if want, ok := u.get(name); ok && want != strings.TrimRight(have, " ") {
			return false
		}
	}
	return u.slotID == nil || *u.slotID == slot
}

func (u *p11URI) matchSlot(c *p11Client, slot uint64) (bool, error) {
	_, d := u.get("slot-description")
	_, m := u.get("slot-manufacturer")
	if !d && !m {
		return true, nil
	}
	si, err := c.SlotInfo(slot)
	if err != nil {
		return false, err
	}
	for name, have := range map[string]string{"slot-description": si.Description, "slot-manufacturer": si.Manufacturer} {
		if want, ok := u.get(name); ok && want != strings.TrimRight(have, " ") {
			return false, nil
		}
	}
	return true, nil
}

// matchLibrary checks the library-* attributes against C_GetInfo: a
// provider whose module does not match has no token for the URI.
func (u *p11URI) matchLibrary(c *p11Client) error {
	_, m := u.get("library-manufacturer")
	_, d := u.get("library-description")
	v, hasV := u.get("library-version")
	if !m && !d && !hasV {
		return nil
	}
	info, err := c.Info()
	if err != nil {
		return err
	}
	ok := true
	for name, have := range map[string]string{"library-manufacturer": info.Manufacturer, "library-description": info.Description} {
		if want, given := u.get(name); given && want != strings.TrimRight(have, " ") {
			ok = false
		}
	}
	if hasV {
		major, minor, _ := strings.Cut(v, ".")
		if minor == "" {
			minor = "0"
		}
		if fmt.Sprintf("%s.%s", major, minor) != fmt.Sprintf("%d.%d", info.LibraryVersion.Major, info.LibraryVersion.Minor) {
			ok = false
		}
	}
	if !ok {
		return fmt.Errorf("PKCS#11: the module %q (%s, version %d.%d) is not the library the URI names", info.Description, info.Manufacturer, info.LibraryVersion.Major, info.LibraryVersion.Minor)
	}
	return nil
}

// keyName describes the key selection of a URI for messages.
func (u *p11URI) keyName() string {
	var parts []string
	if u.id != nil {
		parts = append(parts, "id="+p11EscapeID(u.id))
	}
	if l, ok := u.get("object"); ok {
		parts = append(parts, fmt.Sprintf("object=%q", l))
	}
	if len(parts) == 0 {
		return "any id or label"
	}
	return strings.Join(parts, " ")
}

// p11EscapeID writes a CKA_ID as the URI does: every byte %-encoded.
func p11EscapeID(id []byte) string {
	var b strings.Builder
	for _, c := range id {
		fmt.Fprintf(&b, "%%%02x", c)
	}
	return b.String()
}
