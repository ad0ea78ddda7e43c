#!/usr/bin/env bash
# Every way debusine-signing is run, each against its reference tool on the
# same inputs with the same key, rounds interleaved; prints medians and the
# ratios. Outputs are checked with sbverify and gpgv.
#
#   uefi, one call      one `sign` over 20 EFI files vs `sbsign --detached`
#                       once per file (as Debusine runs it): wall time
#   uefi, per file      `sign` once per file vs `sbsign` once per file (as
#                       shell loops and build scripts run it): CPU time
#   start-up alone      `version` once per file vs the same sbsign loop: the
#                       part of the per-file cost that is the Go runtime and
#                       the package initialisation of this binary, before
#                       any signing work
#   openpgp, 100 MB     `sign --mode detached` vs `gpg --armor --detach-sign`
#                       (Ed25519, SHA-512) on one 100 MB file: wall time
#   openpgp, 200 small  one `sign --mode detached` over 200 small files vs
#                       gpg once per file: wall time
#   image hash          Authenticode image hash of a 64 MiB image (Go
#                       benchmark), alone and in the one pass that also
#                       computes the audited SHA-256 of the file (the two
#                       hashes on two cores), vs `openssl speed -evp sha256
#                       -bytes 16384`: throughput. The one pass runs two
#                       SHA-256 streams at once, so its bound is openssl
#                       with two streams at once (-multi 2), per stream,
#                       also printed.
#
# For times the ratio is ours / reference (below 1: faster); for the image
# hash it is our throughput / openssl's (goal: at least 0.9).
#
# Needs: go, openssl, sbsigntool, shim-unsigned, systemd-boot-efi, gnupg,
# gpgv, GNU time (/usr/bin/time); perf (linux-perf) if present, for exact
# CPU times.
# Usage: bench/sign-vs-sbsign.sh [ROUNDS]   (default 5; medians are reported)
# BIN=PATH runs that binary instead of building this tree (for before/after).
set -euo pipefail
cd "$(dirname "$0")/.."
rounds=${1:-5}

work=$(mktemp -d)
export GNUPGHOME=$work/gnupg
cleanup() {
	gpgconf --kill gpg-agent 2>/dev/null || true
	rm -rf "$work"
}
trap cleanup EXIT
bin=$work/debusine-signing
if [ -n "${BIN:-}" ]; then
	cp "$BIN" "$bin"
else
	CGO_ENABLED=0 go build -o "$bin" .
fi
go test -c -o "$work/pe.test" . >/dev/null

# One UEFI key, made by openssl for sbsign and imported into the store.
openssl req -x509 -newkey rsa:2048 -nodes -subj /CN=bench -days 30 \
	-keyout "$work/key.pem" -out "$work/cert.pem" 2>/dev/null
"$bin" generate-service-key "$work/service-key" >/dev/null
printf 'database = "%s"\nservice_keys = ["%s"]\n' "$work/db.sqlite3" "$work/service-key" >"$work/signing.toml"
export DEBUSINE_SIGNING_CONFIG=$work/signing.toml
fpr=$("$bin" import-key --purpose uefi --private-key "$work/key.pem" --certificate "$work/cert.pem" --description bench)

# One OpenPGP key (Ed25519), made by gpg and imported into the store.
mkdir -m 700 "$GNUPGHOME"
gpg --batch --passphrase '' --quick-gen-key "bench <bench@example.org>" ed25519 sign never 2>/dev/null
pgpfpr=$(gpg --with-colons --list-secret-keys | awk -F: '/^fpr:/ { print $10; exit }')
gpg --batch --pinentry-mode loopback --passphrase '' --armor --export-secret-keys "$pgpfpr" >"$work/pgp-secret.asc"
"$bin" import-key --purpose openpgp --private-key "$work/pgp-secret.asc" >/dev/null
gpg --export "$pgpfpr" >"$work/pgp-keyring.gpg"

# 20 EFI inputs: the 5 Debian EFI binaries, each as is and with 1, 2 and 3
# KiB of trailing data (as a build that appends data would make).
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
efi=("$work"/in/*.efi "$work"/in/*.stub)
[ ${#efi[@]} -eq 20 ] || { echo "expected 20 inputs, got ${#efi[@]}" >&2; exit 1; }

# OpenPGP inputs: one 100 MB file, 200 files of 2 KiB.
head -c 100000000 /dev/urandom >"$work/big"
mkdir "$work/small"
for i in $(seq 200); do head -c 2048 /dev/urandom >"$work/small/$i"; done
small=("$work"/small/*)

# measure NAME CMD...: append "wall cpu peak-KiB" of CMD to $work/res/NAME.
mkdir "$work/res"
measure() {
	local name=$1
	shift
	/usr/bin/time -f '%e %U %S %M' -o "$work/time" "$@" >/dev/null
	awk '{ printf "%s %.3f %s\n", $1, $2 + $3, $4 }' "$work/time" >>"$work/res/$name"
}
# measure_cpu NAME CMD...: the same, the CPU time being perf's task-clock
# (CMD and all its children, accounted exactly) when perf is installed:
# the tick-based accounting behind GNU time's figures is coarse for
# processes that each run for a few milliseconds.
measure_cpu() {
	local name=$1
	shift
	if ! command -v perf >/dev/null; then
		measure "$name" "$@"
		return
	fi
	local t0 t1
	t0=$(date +%s.%N)
	perf stat -x, -e task-clock -o "$work/perf" "$@" >/dev/null
	t1=$(date +%s.%N)
	awk -F, -v w="$(awk -v a="$t0" -v b="$t1" 'BEGIN { print b - a }')" '$3 == "task-clock" { printf "%.3f %.3f 0\n", w, $1 / 1000 }' "$work/perf" >>"$work/res/$name"
}
# The Go benchmark and openssl report MB/s (10^6 bytes; openssl says "k"
# for 1000 bytes).
imagehash() {
	local b
	for b in imagehash onepass; do
		"$work/pe.test" -test.run '^$' -test.bench "ImageHash/64MiB/$b\$" -test.benchtime 20x |
			awk '/MB\/s/ { for (i = 1; i < NF; i++) if ($(i + 1) == "MB/s") print $i }' >>"$work/res/$b"
	done
}
opensslspeed() {
	openssl speed -elapsed -evp sha256 -bytes 16384 -seconds 2 2>/dev/null |
		awk '$1 == "sha256" { sub(/k$/, "", $2); print $2 / 1000 }' >>"$work/res/openssl"
	openssl speed -elapsed -multi 2 -evp sha256 -bytes 16384 -seconds 2 2>/dev/null |
		awk '$1 == "sha256" { sub(/k$/, "", $2); print $2 / 2000 }' >>"$work/res/openssl2"
}

for _ in $(seq "$rounds"); do
	measure_cpu sbsign-loop bash -c 'k=$1 c=$2; shift 2; for f; do sbsign --key "$k" --cert "$c" --detached --output "$f.pk7" "$f" 2>/dev/null; done' _ "$work/key.pem" "$work/cert.pem" "${efi[@]}"
	measure sign-once "$bin" sign --purpose uefi --key "$fpr" "${efi[@]}"
	measure_cpu sign-loop bash -c 'b=$1 k=$2; shift 2; for f; do "$b" sign --purpose uefi --key "$k" "$f"; done' _ "$bin" "$fpr" "${efi[@]}"
	measure_cpu version-loop bash -c 'b=$1; shift; for f; do "$b" version >/dev/null; done' _ "$bin" "${efi[@]}"
	measure gpg-big gpg --batch --yes --armor --detach-sign --digest-algo SHA512 -u "$pgpfpr" -o "$work/big.gpg.asc" "$work/big"
	measure pgp-big "$bin" sign --purpose openpgp --key "$pgpfpr" --mode detached "$work/big"
	measure gpg-small bash -c 'k=$1; shift; for f; do gpg --batch --yes --armor --detach-sign --digest-algo SHA512 -u "$k" -o "$f.gpg.asc" "$f"; done' _ "$pgpfpr" "${small[@]}"
	measure pgp-small "$bin" sign --purpose openpgp --key "$pgpfpr" --mode detached "${small[@]}"
	opensslspeed
	imagehash
done

for f in "${efi[@]}"; do
	for sig in "$f.sig" "$f.pk7"; do
		sbverify --cert "$work/cert.pem" --detached "$sig" "$f" >/dev/null 2>&1 ||
			{ echo "sbverify failed for $sig" >&2; exit 1; }
	done
done
for f in "$work/big" "${small[@]}"; do
	for sig in "$f.asc" "$f.gpg.asc"; do
		gpgv --keyring "$work/pgp-keyring.gpg" "$sig" "$f" 2>/dev/null ||
			{ echo "gpgv failed for $sig" >&2; exit 1; }
	done
done

# median FILE COLUMN
median() { awk -v c="$2" '{ print $c }' "$work/res/$1" | sort -g | awk '{ v[NR] = $1 } END { print (NR % 2 ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2) }'; }
row() { # LABEL OURS-FILE REF-FILE COLUMN UNIT GOAL
	awk -v l="$1" -v o="$(median "$2" "$4")" -v r="$(median "$3" "$4")" -v u="$5" -v g="$6" 'BEGIN {
		d = (u == "MiB" ? 1024 : 1) # peak RSS is recorded in KiB
		printf "%-34s %10.3f %-5s %10.3f %-5s %7.2fx   %s\n", l, o / d, u, r / d, u, o / r, g
	}'
}
echo "$(nproc) cores, medians of $rounds rounds; ratio = ours / reference"
printf '%-34s %16s %16s %8s   %s\n' comparison ours reference ratio goal
row "uefi: 20 files, one call (wall)" sign-once sbsign-loop 1 s "< 1"
row "uefi: once per file (CPU)" sign-loop sbsign-loop 2 s "<= 1"
row "start-up alone, per file (CPU)" version-loop sbsign-loop 2 s "(floor)"
row "openpgp: 100 MB detached (wall)" pgp-big gpg-big 1 s "<= 1"
row "openpgp: 100 MB detached (peak)" pgp-big gpg-big 3 MiB "< 32 MiB"
row "openpgp: 200 small files (wall)" pgp-small gpg-small 1 s "< 1"
row "image hash vs openssl (MB/s)" imagehash openssl 1 MB/s ">= 0.9"
row "image + file hash, one pass" onepass openssl 1 MB/s "<= 2-stream bound"
row "openssl 2 streams at once, each" openssl2 openssl 1 MB/s "(bound)"
