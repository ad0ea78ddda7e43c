#!/usr/bin/env bash
# Sign the same 20 real EFI binaries with `sbsign --detached`, one process
# per file as Debusine runs it, and with one `debusine-signing sign` call,
# using the same key for both; print both times and the ratio. Every output
# is then checked with sbverify.
#
# Needs: go, openssl, sbsigntool, shim-unsigned, systemd-boot-efi.
# Usage: bench/sign-vs-sbsign.sh [ROUNDS]   (default 5; the best round counts)
set -euo pipefail
cd "$(dirname "$0")/.."
rounds=${1:-5}

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
bin=$work/debusine-signing
CGO_ENABLED=0 go build -o "$bin" .

# One key, made by openssl for sbsign and imported into the store.
openssl req -x509 -newkey rsa:2048 -nodes -subj /CN=bench -days 30 \
	-keyout "$work/key.pem" -out "$work/cert.pem" 2>/dev/null
"$bin" generate-service-key "$work/service-key" >/dev/null
printf 'database = "%s"\nservice_keys = ["%s"]\n' "$work/db.sqlite3" "$work/service-key" >"$work/signing.toml"
export DEBUSINE_SIGNING_CONFIG=$work/signing.toml
fpr=$("$bin" import-key --purpose uefi --private-key "$work/key.pem" --certificate "$work/cert.pem" --description bench)

# 20 inputs: the 5 Debian EFI binaries, each as is and with 1, 2 and 3 KiB
# of trailing data (as a build that appends data would make).
mkdir "$work/in"
n=0
for src in /usr/lib/shim/shimx64.efi /usr/lib/shim/mmx64.efi /usr/lib/shim/fbx64.efi \
	/usr/lib/systemd/boot/efi/systemd-bootx64.efi /usr/lib/systemd/boot/efi/linuxx64.efi.stub; do
	for extra in 0 1 2 3; do
		n=$((n + 1))
		f=$work/in/$n-$(basename "$src")
		cp "$src" "$f"
		head -c $((extra * 1024)) /dev/urandom >>"$f"
	done
done
files=("$work"/in/*.efi "$work"/in/*.stub)
[ ${#files[@]} -eq 20 ] || { echo "expected 20 inputs, got ${#files[@]}" >&2; exit 1; }
bytes=$(cat "${files[@]}" | wc -c)

now() { date +%s.%N; }
# least BEST START END: the smaller of BEST and END - START.
least() { awk -v b="$1" -v s="$2" -v e="$3" 'BEGIN { d = e - s; print (d < b ? d : b) }'; }
best_sbsign=999999 best_ours=999999
for _ in $(seq "$rounds"); do
	t0=$(now)
	for f in "${files[@]}"; do
		sbsign --key "$work/key.pem" --cert "$work/cert.pem" --detached --output "$f.pk7" "$f" 2>/dev/null
	done
	t1=$(now)
	"$bin" sign --purpose uefi --key "$fpr" "${files[@]}"
	t2=$(now)
	best_sbsign=$(least "$best_sbsign" "$t0" "$t1")
	best_ours=$(least "$best_ours" "$t1" "$t2")
done

for f in "${files[@]}"; do
	sbverify --cert "$work/cert.pem" --detached "$f.sig" "$f" >/dev/null 2>&1 ||
		{ echo "sbverify failed for $f.sig" >&2; exit 1; }
	sbverify --cert "$work/cert.pem" --detached "$f.pk7" "$f" >/dev/null 2>&1 ||
		{ echo "sbverify failed for $f.pk7" >&2; exit 1; }
done

awk -v s="$best_sbsign" -v o="$best_ours" -v n="${#files[@]}" -v b="$bytes" -v r="$rounds" 'BEGIN {
	printf "%d files, %.1f MiB, best of %d rounds\n", n, b / 1048576, r
	printf "sbsign --detached (one process per file): %.3f s\n", s
	printf "debusine-signing sign (one call):          %.3f s\n", o
	printf "ratio: %.1fx\n", s / o
}'
