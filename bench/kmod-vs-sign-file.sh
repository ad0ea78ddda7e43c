#!/usr/bin/env bash
# Kernel modules: sign the same 200 real modules with the kernel's
# `sign-file -d`, one process per module as a kernel build runs it, and with
# one `debusine-signing sign` call, with the same key; print both times and
# check that every signature is byte for byte sign-file's. Then the peak
# memory of both on a 1 GiB module (sparse), in both forms.
#
# Needs: go, openssl, linux-kbuild-6.1, GNU time, and the modules
# .ci/fetch-kernel-modules puts in $DEBUSINE_SIGNING_TEST_MODULES.
# Usage: bench/kmod-vs-sign-file.sh [ROUNDS]   (default 3; the best round counts)
set -euo pipefail
cd "$(dirname "$0")/.."
rounds=${1:-3}
modules=${DEBUSINE_SIGNING_TEST_MODULES:-$HOME/.cache/debusine-signing/modules}
sign_file=/usr/lib/linux-kbuild-6.1/scripts/sign-file

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
bin=$work/debusine-signing
CGO_ENABLED=0 go build -o "$bin" .
openssl req -x509 -newkey rsa:2048 -nodes -subj /CN=bench -days 30 \
	-keyout "$work/key.pem" -out "$work/cert.pem" 2>/dev/null
"$bin" generate-service-key "$work/service-key" >/dev/null
printf 'database = "%s"\nservice_keys = ["%s"]\n' "$work/db.sqlite3" "$work/service-key" >"$work/signing.toml"
export DEBUSINE_SIGNING_CONFIG=$work/signing.toml
fpr=$("$bin" import-key --purpose uefi --private-key "$work/key.pem" --certificate "$work/cert.pem" --description bench)

# 200 inputs: the real modules without the build's signature, each copied
# with a few distinct trailing bytes so that no two are the same.
mkdir "$work/in"
srcs=("$modules"/*.ko)
[ -e "${srcs[0]}" ] || { echo "no modules in $modules: run .ci/fetch-kernel-modules" >&2; exit 1; }
for i in $(seq 200); do
	src=${srcs[$((i % ${#srcs[@]}))]}
	size=$(stat -c %s "$src")
	siglen=$((16#$(tail -c 32 "$src" | head -c 4 | od -An -tx1 | tr -d ' \n')))
	head -c $((size - 40 - siglen)) "$src" >"$work/in/$i-$(basename "$src")"
	printf '%08d' "$i" >>"$work/in/$i-$(basename "$src")"
done
files=("$work"/in/*.ko)
bytes=$(cat "${files[@]}" | wc -c)

now() { date +%s.%N; }
least() { awk -v b="$1" -v s="$2" -v e="$3" 'BEGIN { d = e - s; print (d < b ? d : b) }'; }
best_ref=999999 best_ours=999999
for _ in $(seq "$rounds"); do
	t0=$(now)
	for f in "${files[@]}"; do
		"$sign_file" -d sha256 "$work/key.pem" "$work/cert.pem" "$f"
	done
	t1=$(now)
	"$bin" sign --purpose uefi --key "$fpr" "${files[@]}"
	t2=$(now)
	best_ref=$(least "$best_ref" "$t0" "$t1")
	best_ours=$(least "$best_ours" "$t1" "$t2")
done
for f in "${files[@]}"; do
	cmp -s "$f.sig" "$f.p7s" || { echo "$f: signature differs from sign-file's" >&2; exit 1; }
done
awk -v r="$best_ref" -v o="$best_ours" -v n=${#files[@]} -v b="$bytes" 'BEGIN {
	printf "%d modules, %.1f MiB, best of rounds:\n", n, b / 1048576
	printf "  sign-file -d (one process per module): %.2f s\n", r
	printf "  debusine-signing sign (one call):       %.2f s  (%.1fx)\n", o, r / o
}'

# Peak memory on a 1 GiB module.
big=$work/big.ko
cp "${files[0]}" "$big"
truncate -s 1G "$big"
rss() { awk -F': ' '/Maximum resident set size/ { print $2 }' "$1"; }
/usr/bin/time -v -o "$work/t1" "$bin" sign --purpose uefi --key "$fpr" "$big"
/usr/bin/time -v -o "$work/t2" "$bin" sign --purpose uefi --key "$fpr" --mode attached "$big"
/usr/bin/time -v -o "$work/t3" "$sign_file" -d sha256 "$work/key.pem" "$work/cert.pem" "$big"
/usr/bin/time -v -o "$work/t4" "$sign_file" sha256 "$work/key.pem" "$work/cert.pem" "$big" "$big.ref"
cmp -s "$big.sig" "$big.p7s" && cmp -s "$big.signed" "$big.ref" || { echo "1 GiB module: output differs from sign-file's" >&2; exit 1; }
printf '1 GiB module, peak RSS: ours %d KiB detached, %d KiB attached; sign-file %d KiB -d, %d KiB attached\n' \
	"$(rss "$work/t1")" "$(rss "$work/t2")" "$(rss "$work/t3")" "$(rss "$work/t4")"
