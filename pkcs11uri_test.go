package main

import (
	"bytes"
	"maps"
	"slices"
	"strings"
	"testing"
)

func TestParsePKCS11URI(t *testing.T) {
	t.Setenv("CREDENTIALS_DIRECTORY", "/run/credentials/debusine-signing.service")
	for _, tc := range []struct {
		uri       string
		serial    uint32
		slot      byte
		pinSource string
	}{
		{"pkcs11:serial=12345678;id=%02", 12345678, 0x9c, ""},
		{"pkcs11:serial=12345678;id=%01;type=private", 12345678, 0x9a, ""},
		{"pkcs11:id=%03;serial=0000000000000042", 42, 0x9d, ""},
		{"pkcs11:serial=7;id=%04", 7, 0x9e, ""},
		{"pkcs11:serial=7;id=%05", 7, 0x82, ""},
		{"pkcs11:serial=7;id=%18", 7, 0x95, ""},
		// What p11tool prints for a ykcs11 token, plus RFC 7512 query attributes.
		{"pkcs11:model=YubiKey%20YK5;manufacturer=Yubico%20%28www.yubico.com%29;serial=9876543;token=YubiKey%20PIV%20%239876543;id=%02;object=Private%20key%20for%20Digital%20Signature;type=private?module-path=/usr/lib/x86_64-linux-gnu/libykcs11.so&pin-source=file:///etc/debusine/signing/pin",
			9876543, 0x9c, "file:///etc/debusine/signing/pin"},
		{"pkcs11:token=YubiKey%20PIV%20%2311;id=%02?pin-source=yubikey-pin", 11, 0x9c, "yubikey-pin"},
		{"pkcs11:serial=11;id=%02?pin-source=/etc/pin", 11, 0x9c, "/etc/pin"},
	} {
		ref, err := parsePKCS11URI(tc.uri)
		if err != nil {
			t.Errorf("%s: %v", tc.uri, err)
			continue
		}
		if ref.Serial != tc.serial || ref.Slot != tc.slot || ref.PINSource != tc.pinSource {
			t.Errorf("%s: got %+v", tc.uri, ref)
		}
	}
}

func TestParsePKCS11URIRejects(t *testing.T) {
	for _, tc := range []struct{ uri, reason string }{
		{"serial=1;id=%02", `does not start with "pkcs11:"`},
		{"pkcs11:id=%02", "no serial="},
		{"pkcs11:serial=1", "no id="},
		{"pkcs11:serial=1;id=%00", "not a ykcs11 key id"},
		{"pkcs11:serial=1;id=%19", "not a ykcs11 key id"},
		{"pkcs11:serial=1;id=%02%03", "not a ykcs11 key id"},
		{"pkcs11:serial=1;id=%zz", "bad percent-encoding"},
		{"pkcs11:serial=abc;id=%02", "not a YubiKey serial number"},
		{"pkcs11:serial=99999999999;id=%02", "not a YubiKey serial number"},
		{"pkcs11:serial=1;serial=2;id=%02", "given twice"},
		{"pkcs11:serial=1;id=%02;type=cert", "does not name a private key"},
		{"pkcs11:token=SoftHSM;id=%02", "not a ykcs11 YubiKey label"},
		{"pkcs11:serial=1;token=YubiKey%20PIV%20%232;id=%02", "disagree"},
		{"pkcs11:serial=1;id=%02;x-vendor=1", "unsupported attribute"},
		{"pkcs11:serial=1;id=%02;broken", `has no "="`},
		{"pkcs11:serial=1;id=%02?pin-value=123456", "pin-value is refused"},
		{"pkcs11:serial=1;id=%02?pin-source=", "empty pin-source"},
		{"pkcs11:serial=1;id=%02?pin-source=relative/pin", "neither an absolute path"},
		{"pkcs11:serial=1;id=%02?pin-source=file:relative", "relative path"},
		{"pkcs11:serial=1;id=%02?pin-source=file://host/etc/pin", "not a local file"},
		{"pkcs11:serial=1;id=%02?pin-source=/a&pin-source=/b", "given twice"},
		{"pkcs11:serial=1;id=%02?max-sessions=2", "unsupported query attribute"},
	} {
		_, err := parsePKCS11URI(tc.uri)
		if err == nil || !strings.Contains(err.Error(), tc.reason) {
			t.Errorf("%s: error %v, want one containing %q", tc.uri, err, tc.reason)
		}
	}
}

func TestTokenKeyURIRoundTrip(t *testing.T) {
	for id := 1; id <= 24; id++ {
		slot, ok := ykcs11IDToSlot(id)
		if !ok {
			t.Fatalf("id %d not mapped", id)
		}
		uri, err := tokenKeyURI(31337, slot)
		if err != nil {
			t.Fatal(err)
		}
		ref, err := parsePKCS11URI(uri)
		if err != nil {
			t.Fatalf("%s: %v", uri, err)
		}
		if ref.Serial != 31337 || ref.Slot != slot {
			t.Errorf("%s: got %+v", uri, ref)
		}
	}
	if uri, _ := tokenKeyURI(5, 0x9c); uri != "pkcs11:serial=5;id=%02;type=private" {
		t.Errorf("slot 9c: %s", uri)
	}
	if _, err := tokenKeyURI(5, 0xf9); err == nil {
		t.Error("attestation slot f9 accepted as a key slot")
	}
}

func TestParseSlotName(t *testing.T) {
	for in, want := range map[string]byte{"9a": 0x9a, "9C": 0x9c, "9d": 0x9d, "9e": 0x9e, "82": 0x82, "95": 0x95} {
		got, err := parseSlotName(in)
		if err != nil || got != want {
			t.Errorf("%s: %x %v", in, got, err)
		}
	}
	for _, in := range []string{"", "9b", "f9", "96", "81", "zz", "109c"} {
		if _, err := parseSlotName(in); err == nil {
			t.Errorf("%q accepted", in)
		}
	}
}

func TestPINSourcePath(t *testing.T) {
	t.Setenv("CREDENTIALS_DIRECTORY", "/run/credentials/x.service")
	for in, want := range map[string]string{
		"/etc/pin":             "/etc/pin",
		"file:///etc/pin":      "/etc/pin",
		"file:/etc/pin":        "/etc/pin",
		"file://localhost/pin": "/pin",
		"yubikey-pin":          "/run/credentials/x.service/yubikey-pin",
	} {
		got, err := pinSourcePath(in)
		if err != nil || got != want {
			t.Errorf("%s: %q %v", in, got, err)
		}
	}
	t.Setenv("CREDENTIALS_DIRECTORY", "")
	if _, err := pinSourcePath("yubikey-pin"); err == nil || !strings.Contains(err.Error(), "CREDENTIALS_DIRECTORY is not set") {
		t.Errorf("credential without $CREDENTIALS_DIRECTORY: %v", err)
	}
}

// FuzzParsePKCS11URI checks that no input panics and that whatever is
// accepted names a real key slot and survives a round trip.
func FuzzParsePKCS11URI(f *testing.F) {
	for _, s := range []string{
		"pkcs11:serial=12345678;id=%02",
		"pkcs11:token=YubiKey%20PIV%20%2311;id=%05?pin-source=file:///etc/pin",
		"pkcs11:serial=1;id=%02?pin-value=1",
		"pkcs11:",
		"pkcs11:;;?&&",
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, uri string) {
		ref, err := parsePKCS11URI(uri)
		if err != nil {
			return
		}
		back, err := tokenKeyURI(ref.Serial, ref.Slot)
		if err != nil {
			t.Fatalf("%q accepted with slot %02x that has no URI: %v", uri, ref.Slot, err)
		}
		again, err := parsePKCS11URI(back)
		if err != nil || again.Serial != ref.Serial || again.Slot != ref.Slot {
			t.Fatalf("%q -> %q -> %+v, %v", uri, back, again, err)
		}
	})
}

// TestParseP11URI: URIs are read as libp11's parse_pkcs11_uri reads them.
func TestParseP11URI(t *testing.T) {
	t.Setenv("CREDENTIALS_DIRECTORY", "/run/credentials/debusine-signing.service")
	for _, tc := range []struct {
		uri  string
		id   []byte
		text map[string]string
	}{
		// Debusine's YubiHSM guide: id=1234 is the four bytes "1234".
		{"pkcs11:model=YubiHSM;serial=12345678;pin-source=/run/credentials/debusine-signing.service/yubihsm-pin;id=1234",
			[]byte("1234"), map[string]string{"model": "YubiHSM", "serial": "12345678", "pin-source": "/run/credentials/debusine-signing.service/yubihsm-pin"}},
		{"pkcs11:token=test;id=%12%34;type=private", []byte{0x12, 0x34}, map[string]string{"token": "test"}},
		// The attributes split at ';', '?' and '&' alike; one may end it.
		{"pkcs11:id=%01?token=My%20token&object=k;", []byte{1}, map[string]string{"token": "My token", "object": "k"}},
		{"pkcs11:object-type=cert;object=a%3Bb", nil, map[string]string{"object": "a;b"}},
		{"pkcs11:slot-id=7;library-version=2.40;module-name=softhsm2?module-path=/usr/lib/softhsm/libsofthsm2.so", nil,
			map[string]string{"library-version": "2.40", "module-name": "softhsm2", "module-path": "/usr/lib/softhsm/libsofthsm2.so"}},
		{"pkcs11:", nil, map[string]string{}},
	} {
		u, err := parseP11URI(tc.uri)
		if err != nil {
			t.Errorf("%s: %v", tc.uri, err)
			continue
		}
		if !bytes.Equal(u.id, tc.id) || (u.id == nil) != (tc.id == nil) {
			t.Errorf("%s: id %x, want %x", tc.uri, u.id, tc.id)
		}
		if !maps.Equal(u.text, tc.text) {
			t.Errorf("%s: attributes %v, want %v", tc.uri, u.text, tc.text)
		}
	}
	u, err := parseP11URI("pkcs11:token=t;pin-value=12%2034")
	if err != nil || string(u.pinValue) != "12 34" || !u.hasPIN {
		t.Errorf("pin-value: %q %v", u.pinValue, err)
	}
}

func TestParseP11URIRejects(t *testing.T) {
	for _, tc := range []struct{ uri, reason string }{
		{"pkcs11:;id=1", "path attribute 1 is empty"},
		{"pkcs11:id=1;;token=a", "path attribute 2 is empty"},
		{"pkcs11:id=1;;", "path attribute 2 is empty"},
		{"pkcs11:id=1?&token=a", "query attribute 2 is empty"},
		{"pkcs11:type=secret-key", "knows only private, public and cert"},
		{"pkcs11:type=data", "knows only private, public and cert"},
		{"pkcs11:slot-id=0x10", "not a decimal slot number"},
		{"pkcs11:library-version=two", "not MAJOR or MAJOR.MINOR"},
		{"pkcs11:token=a;token=b", "given twice"},
		{"pkcs11:type=cert;object-type=private", "given twice"},
		{"pkcs11:pin-value=1?pin-source=/p", "given twice"},
		{"pkcs11:token=%4", "bad percent-encoding"},
		{"pkcs11:x-foo=1", "unsupported attribute"},
		{"pkcs11:id=1?x-foo=1", "unsupported query attribute"},
		{"pkcs11:id=1;pin-source=rel/ative", "neither an absolute path"},
		{"pkcs11:id=" + strings.Repeat("a", maxPKCS11URI), "longer than"},
		{"PKCS11:id=1", `does not start with "pkcs11:"`},
	} {
		_, err := parseP11URI(tc.uri)
		if err == nil || !strings.Contains(err.Error(), tc.reason) {
			t.Errorf("%.60s: error %v, want one containing %q", tc.uri, err, tc.reason)
		}
	}
	_, err := parseP11URI("pkcs11x;pin-value=secret99")
	if err == nil || strings.Contains(err.Error(), "secret99") {
		t.Errorf("pin-value in an error: %v", err)
	}
}

// TestRouteKeyURI: which path signs with a key: the YubiKey PIV applet for
// URIs that name a YubiKey (and the form register-yubikey-key writes),
// PKCS#11 for every other, and a refusal when both could.
func TestRouteKeyURI(t *testing.T) {
	t.Setenv("P11_KIT_SERVER_ADDRESS", "")
	ykcs11 := PKCS11Provider{Address: "unix:path=/run/yk", ModulePath: "/usr/lib/x86_64-linux-gnu/libykcs11.so"}
	hsm := PKCS11Provider{Address: "unix:path=/run/hsm", ModuleName: "yubihsm_pkcs11"}
	soft := PKCS11Provider{Address: "unix:path=/run/soft", ModulePath: "/usr/lib/softhsm/libsofthsm2.so"}
	both := PKCS11Config{Providers: []PKCS11Provider{ykcs11, hsm, soft}}
	for _, tc := range []struct {
		cfg       PKCS11Config
		uri       string
		yubikey   bool
		providers []string
		reason    string
	}{
		{both, "pkcs11:serial=12345678;id=%02;type=private", true, nil, ""},
		{both, "pkcs11:token=YubiKey%20PIV%20%2311;id=%02", true, nil, ""},
		{both, "pkcs11:model=YubiKey%20YK5;serial=11;id=%02", true, nil, ""},
		// The YubiHSM URI is no YubiKey.
		{both, "pkcs11:model=YubiHSM;serial=12345678;pin-source=/p;id=1234", false, []string{ykcs11.Address, hsm.Address, soft.Address}, ""},
		{both, "pkcs11:model=YubiHSM;serial=12345678;id=1234?module-name=yubihsm_pkcs11", false, []string{hsm.Address}, ""},
		{both, "pkcs11:token=test;id=%01?module-name=softhsm2", false, []string{soft.Address}, ""},
		{both, "pkcs11:token=test;id=%01?module-path=/usr/lib/softhsm/libsofthsm2.so", false, []string{soft.Address}, ""},
		{both, "pkcs11:token=test;id=%01?module-name=opensc-pkcs11", false, nil, "no [pkcs11] provider"},
		// ykcs11 through p11-kit, or the applet directly: not choosing.
		{both, "pkcs11:serial=11;id=%02?module-path=/usr/lib/x86_64-linux-gnu/libykcs11.so", false, nil, "not choosing"},
		{PKCS11Config{}, "pkcs11:serial=11;id=%02?module-path=/usr/lib/x86_64-linux-gnu/libykcs11.so", true, nil, ""},
		{PKCS11Config{}, "pkcs11:token=test;id=%01", false, nil, "P11_KIT_SERVER_ADDRESS"},
		{PKCS11Config{}, "pkcs11:serial=abc;id=%02", false, nil, "P11_KIT_SERVER_ADDRESS"},
	} {
		yubikey, providers, _, err := routeKeyURI(tc.cfg, tc.uri)
		var addrs []string
		for _, p := range providers {
			addrs = append(addrs, p.Address)
		}
		switch {
		case tc.reason != "":
			if err == nil || !strings.Contains(err.Error(), tc.reason) {
				t.Errorf("%s: error %v, want one containing %q", tc.uri, err, tc.reason)
			}
		case err != nil:
			t.Errorf("%s: %v", tc.uri, err)
		case yubikey != tc.yubikey || !slices.Equal(addrs, tc.providers):
			t.Errorf("%s: yubikey %v providers %v, want %v %v", tc.uri, yubikey, addrs, tc.yubikey, tc.providers)
		}
	}
	t.Setenv("P11_KIT_SERVER_ADDRESS", "unix:path=/tmp/pkcs11-42")
	if _, providers, _, err := routeKeyURI(PKCS11Config{}, "pkcs11:token=test;id=%01"); err != nil || len(providers) != 1 || providers[0].Address != "unix:path=/tmp/pkcs11-42" {
		t.Errorf("P11_KIT_SERVER_ADDRESS: %v %v", providers, err)
	}
}

// FuzzParseP11URI checks that no input panics, that a pin-value never
// shows in an error, and that what is accepted reads the same once its
// attributes are written back percent-encoded.
func FuzzParseP11URI(f *testing.F) {
	for _, s := range []string{
		"pkcs11:model=YubiHSM;serial=12345678;pin-source=/run/pin;id=1234",
		"pkcs11:token=test;id=%01?module-name=softhsm2&pin-value=1234",
		"pkcs11:slot-id=3;type=cert;object=a%3Bb;",
		"pkcs11:library-version=1.2?module-path=/x.so",
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, uri string) {
		u, err := parseP11URI(uri)
		if err != nil {
			if i := strings.Index(uri, "pin-value="); i >= 0 {
				v, _, _ := strings.Cut(uri[i+len("pin-value="):], ";")
				if len(v) >= 4 && !strings.ContainsAny(v, "?&") && strings.Contains(err.Error(), v) {
					t.Fatalf("%q: pin-value in the error %q", uri, err)
				}
			}
			return
		}
		var b strings.Builder
		b.WriteString("pkcs11:")
		sep := ""
		for _, name := range slices.Sorted(maps.Keys(u.text)) {
			b.WriteString(sep + name + "=" + p11EscapeID([]byte(u.text[name])))
			sep = ";"
		}
		if u.id != nil {
			b.WriteString(sep + "id=" + p11EscapeID(u.id))
		}
		again, err := parseP11URI(b.String())
		if err != nil {
			if strings.Contains(err.Error(), "pin-source") || strings.Contains(err.Error(), "PIN source") || strings.Contains(err.Error(), "longer than") {
				return
			}
			t.Fatalf("%q -> %q: %v", uri, b.String(), err)
		}
		if !maps.Equal(again.text, u.text) || !bytes.Equal(again.id, u.id) {
			t.Fatalf("%q -> %q: %v %x, want %v %x", uri, b.String(), again.text, again.id, u.text, u.id)
		}
	})
}
