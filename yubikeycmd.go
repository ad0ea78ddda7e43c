package main

// Command-line entry points for keys held on a YubiKey.

import (
	"flag"
	"fmt"
	"strconv"
)

// parseYubiKeyTarget reads --serial (or generate-key's --yubikey) and --slot.
func parseYubiKeyTarget(serial, slot string) (uint32, byte, error) {
	if serial == "" {
		return 0, 0, usagef("the YubiKey's serial number is required (ykman list --serials prints it)")
	}
	n, err := strconv.ParseUint(serial, 10, 32)
	if err != nil {
		return 0, 0, usagef("YubiKey serial %q: not a decimal serial number", serial)
	}
	if slot == "" {
		return 0, 0, usagef("--slot is required (9c is the PIV digital signature slot)")
	}
	s, err := parseSlotName(slot)
	if err != nil {
		return 0, 0, usagef("--slot: %v", err)
	}
	return uint32(n), s, nil
}

func cmdRegisterYubiKey(e *env, args []string) error {
	fs := flag.NewFlagSet("register-yubikey-key", flag.ContinueOnError)
	purpose := fs.String("purpose", "", "key purpose: uefi")
	serial := fs.String("serial", "", "the YubiKey's serial `number`")
	slot := fs.String("slot", "", "PIV `slot` holding the key (9a, 9c, 9d, 9e, 82..95)")
	description := fs.String("description", "", "description")
	certificate := fs.String("certificate", "", "certificate `file` (PEM); default: the one in the slot")
	if err := parseFlags(fs, e, args); err != nil {
		return err
	}
	if fs.NArg() != 0 {
		return usagef("register-yubikey-key takes no positional arguments")
	}
	if *purpose != purposeUEFI {
		return usagef("register-yubikey-key: --purpose must be %s (only UEFI keys are held on a YubiKey), not %q", purposeUEFI, *purpose)
	}
	sn, sl, err := parseYubiKeyTarget(*serial, *slot)
	if err != nil {
		return err
	}
	var certPEM []byte
	if *certificate != "" {
		if certPEM, err = readInput(*certificate, "certificate", maxKeyFileSize); err != nil {
			return err
		}
	}
	st, err := e.openStore()
	if err != nil {
		return err
	}
	fpr, err := registerYubiKeyKey(st, sn, sl, *description, certPEM)
	if err != nil {
		return err
	}
	fmt.Fprintln(e.stdout, fpr)
	return nil
}

// generateYubiKeyCommand is generate-key's --yubikey SERIAL --slot SLOT
// branch: it checks the arguments and generates on the token.
func generateYubiKeyCommand(st *Store, purpose, description, serial, slot string) (string, error) {
	if purpose != purposeUEFI {
		return "", usagef("generate-key --yubikey: --purpose must be %s (only UEFI keys are generated on a YubiKey), not %q", purposeUEFI, purpose)
	}
	sn, sl, err := parseYubiKeyTarget(serial, slot)
	if err != nil {
		return "", err
	}
	return generateYubiKeyKey(st, sn, sl, description, nil)
}
