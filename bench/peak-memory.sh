#!/usr/bin/env bash
# Peak memory of `debusine-signing sign` on a 1 GiB PE image, in both
# modes: the image hash and the attached copy stream through a fixed
# buffer, so the peak RSS must stay under 64 MiB. The input is shimx64.efi
# extended to 1 GiB with sparse trailing data (covered by the image hash).
#
# Needs: go, GNU time (/usr/bin/time), sbsigntool, shim-unsigned.
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
exit $status
