#!/usr/bin/env bash
# UEFI signing with a key on a PKCS#11 token (SoftHSM2), against Debusine's
# way of doing it: one `debusine-signing sign` call over 33 EFI files
# (through p11-kit remote: the module in a child process, one session, one
# login) vs `sbsign --engine pkcs11 --key URI --detached` run once per file
# (libp11's engine loading the module, logging in and finding the key each
# time), rounds interleaved, same key and URI; prints the medians of the wall
# times and their ratio (goal: at most 0.3). Every output is checked with
# sbverify.
#
# Needs: go, softhsm2, p11-kit, opensc (pkcs11-tool), openssl,
# libengine-pkcs11-openssl, sbsigntool, shim-unsigned, systemd-boot-efi.
# Usage: bench/sign-pkcs11-vs-sbsign.sh [ROUNDS]   (default 5)
# BIN=PATH runs that binary instead of building this tree.
set -euo pipefail
cd "$(dirname "$0")/.."
rounds=${1:-5}
module=/usr/lib/softhsm/libsofthsm2.so

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
bin=$work/debusine-signing
if [ -n "${BIN:-}" ]; then
	cp "$BIN" "$bin"
else
	CGO_ENABLED=0 go build -o "$bin" .
fi

# A SoftHSM token with one RSA-2048 key, a certificate made through the
# engine, and the key registered as Debusine registers it.
mkdir "$work/tokens"
printf 'directories.tokendir = %s/tokens\nobjectstore.backend = file\nlog.level = ERROR\n' "$work" >"$work/softhsm2.conf"
export SOFTHSM2_CONF=$work/softhsm2.conf PKCS11_MODULE_PATH=$module
softhsm2-util --init-token --free --label bench --pin 1234 --so-pin 5678 >/dev/null
pkcs11-tool --module "$module" --token-label bench --login --pin 1234 \
	--keypairgen --key-type rsa:2048 --id 01 --label bench >/dev/null
# No line end: Debian 12's libp11 would read it as part of the PIN.
printf 1234 >"$work/pin"
chmod 600 "$work/pin"
uri="pkcs11:token=bench;id=%01;pin-source=$work/pin"
openssl req -new -x509 -engine pkcs11 -keyform engine -key "$uri" \
	-subj /CN=bench -days 30 -out "$work/cert.pem" 2>/dev/null
"$bin" generate-service-key "$work/service-key" >/dev/null
cat >"$work/signing.toml" <<EOF
database = "$work/db.sqlite3"
service_keys = ["$work/service-key"]
[[pkcs11.provider]]
address = 'exec:command="p11-kit remote $module"'
EOF
export DEBUSINE_SIGNING_CONFIG=$work/signing.toml
fpr=$("$bin" register-pkcs11-static-key uefi "$uri" "$work/cert.pem" bench)

# 33 EFI inputs: Debian's EFI binaries, as is and with trailing data.
mkdir "$work/in"
n=0
for extra in 0 1 2 3 4 5 6 7 8 9 10; do
	for src in /usr/lib/shim/shimx64.efi /usr/lib/shim/mmx64.efi \
		/usr/lib/systemd/boot/efi/systemd-bootx64.efi; do
		n=$((n + 1))
		f=$work/in/$n-$(basename "$src")
		cp "$src" "$f"
		head -c $((extra * 512)) /dev/urandom >>"$f"
	done
done
files=("$work"/in/*.efi)
echo "${#files[@]} EFI files, $(du -sh "$work/in" | cut -f1), SoftHSM key, $rounds rounds"

now() { date +%s.%N; }
ours=()
theirs=()
for _ in $(seq "$rounds"); do
	rm -f "$work"/in/*.sig
	t0=$(now)
	"$bin" sign --purpose uefi --key "$fpr" --mode detached "${files[@]}"
	t1=$(now)
	for f in "${files[@]}"; do
		sbverify --cert "$work/cert.pem" --detached "$f.sig" "$f" >/dev/null 2>&1
	done
	rm -f "$work"/in/*.sig
	t2=$(now)
	for f in "${files[@]}"; do
		sbsign --engine pkcs11 --key "$uri" --cert "$work/cert.pem" --detached --output "$f.sig" "$f" >/dev/null 2>&1
	done
	t3=$(now)
	for f in "${files[@]}"; do
		sbverify --cert "$work/cert.pem" --detached "$f.sig" "$f" >/dev/null 2>&1
	done
	ours+=("$(echo "$t1 - $t0" | bc)")
	theirs+=("$(echo "$t3 - $t2" | bc)")
done
median() { printf '%s\n' "$@" | sort -n | awk '{ v[NR] = $1 } END { print (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2 }'; }
mo=$(median "${ours[@]}")
mt=$(median "${theirs[@]}")
printf '%-46s %8.3f s\n' "debusine-signing sign, one call, 33 files:" "$mo"
printf '%-46s %8.3f s\n' "sbsign --engine pkcs11, once per file:" "$mt"
printf '%-46s %8.3f (goal: at most 0.3)\n' "ratio (ours / sbsign):" "$(echo "$mo / $mt" | bc -l)"
