package main

import (
	"fmt"
	"net/url"
	"os"
	"path/filepath"
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

// ykcs11 labels each YubiKey token "YubiKey PIV #<serial>".
const ykcs11TokenLabelPrefix = "YubiKey PIV #"

// parsePKCS11URI maps a pkcs11: URI onto a YubiKey PIV key, or says why it
// cannot. Attributes that only describe the token or the module (model,
// manufacturer, library, module-name...) are accepted and ignored; anything
// that would select a key we cannot identify is refused rather than guessed.
func parsePKCS11URI(uri string) (*tokenKeyRef, error) {
	rest, ok := strings.CutPrefix(uri, "pkcs11:")
	if !ok {
		return nil, fmt.Errorf("PKCS#11 URI %q: does not start with \"pkcs11:\"", uri)
	}
	path, query, _ := strings.Cut(rest, "?")
	ref := &tokenKeyRef{}
	var (
		haveSerial, haveID bool
		label              string
	)
	seen := map[string]bool{}
	for _, attr := range splitNonEmpty(path, ";") {
		name, raw, ok := strings.Cut(attr, "=")
		if !ok {
			return nil, fmt.Errorf("PKCS#11 URI: path attribute %q has no \"=\"", attr)
		}
		if seen[name] {
			return nil, fmt.Errorf("PKCS#11 URI: attribute %q given twice", name)
		}
		seen[name] = true
		value, err := url.PathUnescape(raw)
		if err != nil {
			return nil, fmt.Errorf("PKCS#11 URI: attribute %s: bad percent-encoding", name)
		}
		switch name {
		case "serial":
			// A PKCS#11 serialNumber is a space-padded 16-character field.
			v, err := strconv.ParseUint(strings.TrimSpace(value), 10, 32)
			if err != nil {
				return nil, fmt.Errorf("PKCS#11 URI: serial %q is not a YubiKey serial number (decimal)", value)
			}
			ref.Serial, haveSerial = uint32(v), true
		case "token":
			label = value
		case "id":
			if len(value) != 1 {
				return nil, fmt.Errorf("PKCS#11 URI: id %q is not a ykcs11 key id (%%01..%%18)", raw)
			}
			slot, ok := ykcs11IDToSlot(int(value[0]))
			if !ok {
				return nil, fmt.Errorf("PKCS#11 URI: id %q is not a ykcs11 key id (%%01..%%18)", raw)
			}
			ref.Slot, haveID = slot, true
		case "type":
			if value != "private" {
				return nil, fmt.Errorf("PKCS#11 URI: type=%s does not name a private key", value)
			}
		case "object", "manufacturer", "model", "library-manufacturer",
			"library-description", "library-version", "slot-description",
			"slot-manufacturer", "slot-id":
			// Descriptive; the serial and the id already select the key.
		default:
			return nil, fmt.Errorf("PKCS#11 URI: unsupported attribute %q", name)
		}
	}
	if label != "" {
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
	if !haveSerial {
		return nil, fmt.Errorf("PKCS#11 URI: no serial= (or ykcs11 token= label): cannot tell which YubiKey holds the key")
	}
	if !haveID {
		return nil, fmt.Errorf("PKCS#11 URI: no id=: cannot tell which PIV slot holds the key")
	}
	for _, attr := range splitNonEmpty(query, "&") {
		name, raw, _ := strings.Cut(attr, "=")
		value, err := url.PathUnescape(raw)
		if err != nil {
			return nil, fmt.Errorf("PKCS#11 URI: attribute %s: bad percent-encoding", name)
		}
		switch name {
		case "pin-source":
			if ref.PINSource != "" {
				return nil, fmt.Errorf("PKCS#11 URI: attribute %q given twice", name)
			}
			if value == "" {
				return nil, fmt.Errorf("PKCS#11 URI: empty pin-source")
			}
			// Only the syntax is checked here: the credentials directory
			// is known when the service runs, not when the key is registered.
			if _, err := resolvePINSource(value, "$CREDENTIALS_DIRECTORY"); err != nil {
				return nil, err
			}
			ref.PINSource = value
		case "pin-value":
			// The URI is stored in the database and shown in listings.
			return nil, fmt.Errorf("PKCS#11 URI: pin-value is refused (it would store the PIN in the database): use pin-source=FILE")
		case "module-name", "module-path":
			// This service speaks PIV to the token itself, without a module.
		default:
			return nil, fmt.Errorf("PKCS#11 URI: unsupported query attribute %q", name)
		}
	}
	return ref, nil
}

func splitNonEmpty(s, sep string) []string {
	var out []string
	for _, p := range strings.Split(s, sep) {
		if p != "" {
			out = append(out, p)
		}
	}
	return out
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
