#!/usr/bin/env bash
# Peak memory of `debusine-signing sign` on a 1 GiB PE image, in both
# modes: the image hash and the attached copy stream through a fixed
# buffer, so the peak RSS must stay under 64 MiB. The input is shimx64.efi
# extended to 1 GiB with sparse trailing data (covered by the image hash).
#
# Then OpenPGP, which streams too: detached signatures of 16 MiB and 1 GiB
# and clear signatures of 16 MiB and 256 MiB of text must each stay under
# 32 MiB, and the larger input may not take more than 4 MiB more than the
# smaller (memory flat with file size).
#
# Needs: go, GNU time (/usr/bin/time), sbsigntool, shim-unsigned, gpgv.
# Usage: bench/peak-memory.sh
set -euo pipefail
cd "$(dirname "$0")/.."
limit_kib=$((64 * 1024))

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
bin=$work/debusine-signing
CGO_ENABLED=0 go build -o "$bin" .
"$bin" generate-service-key "$work/service-key" >/dev/null
printf 'database = "%s"\nservice_keys = ["%s"]\n' "$work/db.sqlite3" "$work/service-key" >"$work/signing.toml"
export DEBUSINE_SIGNING_CONFIG=$work/signing.toml
fpr=$("$bin" generate-key --purpose uefi --description "peak memory")
"$bin" export-public-key --purpose uefi --key "$fpr" >"$work/cert.pem"

big=$work/big.efi
cp /usr/lib/shim/shimx64.efi "$big"
truncate -s 1G "$big"

status=0
for mode in detached attached; do
	/usr/bin/time -v -o "$work/time-$mode" "$bin" sign --purpose uefi --key "$fpr" --mode "$mode" "$big"
	rss=$(awk -F': ' '/Maximum resident set size/ { print $2 }' "$work/time-$mode")
	secs=$(awk -F': ' '/Elapsed \(wall clock\)/ { print $2 }' "$work/time-$mode")
	printf '%-8s 1 GiB: peak RSS %d KiB (%.1f MiB), wall %s\n' "$mode" "$rss" "$(awk -v k="$rss" 'BEGIN { print k / 1024 }')" "$secs"
	[ "$rss" -lt "$limit_kib" ] || { echo "peak RSS above 64 MiB" >&2; status=1; }
done

# The signatures must be real: sbverify reads the whole image.
sbverify --cert "$work/cert.pem" --detached "$big.sig" "$big" >/dev/null 2>&1 || { echo "sbverify: detached signature fails" >&2; status=1; }
sbverify --cert "$work/cert.pem" "$big.signed" >/dev/null 2>&1 || { echo "sbverify: signed image fails" >&2; status=1; }

# OpenPGP.
pgp_limit_kib=$((32 * 1024))
pgpfpr=$("$bin" generate-key --purpose openpgp --description "peak memory")
mkdir -m 700 "$work/gnupg"
"$bin" export-public-key --purpose openpgp --key "$pgpfpr" | GNUPGHOME=$work/gnupg gpg --dearmor >"$work/keyring.gpg" 2>/dev/null
truncate -s 16M "$work/pgp-16M"
truncate -s 1G "$work/pgp-1G"
text() { (yes "Package: hello, Version: 1.0-1, Architecture: amd64 -- trailing space " || true) | head -c "$1"; }
text 16M >"$work/text-16M"
text 256M >"$work/text-256M"
# pgp MODE FILE: prints the peak RSS in KiB after checking the signature.
pgp() {
	/usr/bin/time -v -o "$work/time-pgp" "$bin" sign --purpose openpgp --key "$pgpfpr" --mode "$1" "$2"
	if [ "$1" = detached ]; then
		gpgv --keyring "$work/keyring.gpg" "$2.asc" "$2" 2>/dev/null || { echo "gpgv: $2.asc fails" >&2; return 1; }
	else
		gpgv --keyring "$work/keyring.gpg" "$2.asc" 2>/dev/null || { echo "gpgv: $2.asc fails" >&2; return 1; }
	fi
	rm -f "$2.asc"
	awk -F': ' '/Maximum resident set size/ { print $2 }' "$work/time-pgp"
}
for pair in "detached pgp-16M pgp-1G" "clear text-16M text-256M"; do
	set -- $pair
	small=$(pgp "$1" "$work/$2") || status=1
	large=$(pgp "$1" "$work/$3") || status=1
	printf 'openpgp %-8s %s: peak RSS %d KiB, %s: %d KiB\n' "$1" "${2#*-}" "$small" "${3#*-}" "$large"
	[ "$small" -lt "$pgp_limit_kib" ] && [ "$large" -lt "$pgp_limit_kib" ] || { echo "peak RSS above 32 MiB" >&2; status=1; }
	[ $((large - small)) -le 4096 ] || { echo "peak RSS grows with file size" >&2; status=1; }
done
exit $status
