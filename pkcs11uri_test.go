package main

import (
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
