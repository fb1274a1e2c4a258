#!/usr/bin/env bash
# softhsm-test.sh: SoftHSM2 for hsmkms tests, demos and manual use.
#
#   softhsm-test.sh ensure        install SoftHSM2 unless it is already installed
#   softhsm-test.sh test [ARGS]   ensure, then go test -race -count=1 -timeout 30m ./... ARGS
#   softhsm-test.sh demo          ensure, then start hsmkms dev and use it from the AWS CLI
#                                 and an unmodified aws-sdk-go-v2 program (examples/sdkclient)
#   softhsm-test.sh env N DIR     create N SoftHSM2 members under DIR and print
#                                 shell exports: SOFTHSM2_CONF and each member's
#                                 PKCS#11 URI (eval "$(softhsm-test.sh env 3 /tmp/hsms)")
#
# SOFTHSM2_LIB, when set, names libsofthsm2.so; otherwise the Debian, Ubuntu,
# Fedora and Homebrew locations are searched, as softhsmtest.LibraryPath does.
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)

lib_paths=(
	/usr/lib/softhsm/libsofthsm2.so
	/usr/lib/x86_64-linux-gnu/softhsm/libsofthsm2.so
	/usr/lib/aarch64-linux-gnu/softhsm/libsofthsm2.so
	/usr/lib64/pkcs11/libsofthsm2.so
	/usr/lib64/softhsm/libsofthsm2.so
	/opt/homebrew/lib/softhsm/libsofthsm2.so
	/usr/local/lib/softhsm/libsofthsm2.so
)

die() {
	echo "softhsm-test: $*" >&2
	exit 1
}

usage() {
	sed -n '2,13p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//' >&2
	exit 2
}

# find_lib prints the path of libsofthsm2.so, or fails.
find_lib() {
	if [[ -n "${SOFTHSM2_LIB:-}" ]]; then
		[[ -e "$SOFTHSM2_LIB" ]] && echo "$SOFTHSM2_LIB"
		return
	fi
	local p
	for p in "${lib_paths[@]}"; do
		if [[ -e "$p" ]]; then
			echo "$p"
			return 0
		fi
	done
	return 1
}

# as_root runs a command as root, with sudo when needed.
as_root() {
	if [[ $(id -u) -eq 0 ]]; then
		"$@"
	elif command -v sudo >/dev/null; then
		sudo "$@"
	else
		die "need root (or sudo) to run: $*"
	fi
}

ensure() {
	local lib
	if lib=$(find_lib) && command -v softhsm2-util >/dev/null && command -v pkcs11-tool >/dev/null && command -v aws >/dev/null; then
		echo "softhsm-test: SoftHSM2 found: $lib" >&2
		return 0
	fi
	if command -v apt-get >/dev/null; then
		as_root apt-get update
		as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y softhsm2 opensc
		# The AWS CLI, for the server's tests. Ubuntu 24.04 ships it as a snap only.
		if ! command -v aws >/dev/null; then
			as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y awscli ||
				{ command -v snap >/dev/null && as_root snap install aws-cli --classic; } ||
				echo "softhsm-test: could not install the AWS CLI; the CLI tests will say how" >&2
		fi
	elif command -v dnf >/dev/null; then
		as_root dnf install -y softhsm opensc awscli2
	elif command -v brew >/dev/null; then
		brew install softhsm opensc awscli
	else
		die "no apt-get, dnf or brew: install SoftHSM2 by hand and set SOFTHSM2_LIB"
	fi
	lib=$(find_lib) || die "SoftHSM2 installed, but libsofthsm2.so is not in a known place; set SOFTHSM2_LIB"
	command -v softhsm2-util >/dev/null || die "SoftHSM2 installed, but softhsm2-util is not on PATH"
	echo "softhsm-test: SoftHSM2 installed: $lib" >&2
}

# pct_encode percent-encodes $1 for a PKCS#11 URI (RFC 7512), keeping
# unreserved characters and '/'.
pct_encode() {
	local s=$1 out='' c i
	for ((i = 0; i < ${#s}; i++)); do
		c=${s:i:1}
		case $c in
		[a-zA-Z0-9/._~-]) out+=$c ;;
		*) out+=$(printf '%%%02X' "'$c") ;;
		esac
	done
	printf '%s' "$out"
}

random_pin() {
	od -An -tx1 -N12 /dev/urandom | tr -d ' \n'
}

# env_cmd N DIR creates N members under DIR and prints shell exports.
env_cmd() {
	local n=$1 dir=$2
	[[ "$n" =~ ^[1-9][0-9]*$ ]] || die "N must be a positive number, got '$n'"
	local lib
	lib=$(find_lib) || die "libsofthsm2.so not found; run: $0 ensure"
	command -v softhsm2-util >/dev/null || die "softhsm2-util not on PATH; run: $0 ensure"
	mkdir -p "$dir"
	dir=$(cd "$dir" && pwd)
	[[ -e "$dir/softhsm2.conf" ]] && die "$dir already holds members; choose an empty directory"
	mkdir -m 700 "$dir/tokens"
	cat >"$dir/softhsm2.conf" <<-EOF
		directories.tokendir = $dir/tokens
		objectstore.backend = file
		log.level = ERROR
		slots.removable = false
	EOF
	export SOFTHSM2_CONF="$dir/softhsm2.conf"
	echo "export SOFTHSM2_CONF='$SOFTHSM2_CONF'"
	local i label mdir mlib pin so_pin
	for ((i = 0; i < n; i++)); do
		label="member-$i"
		mdir="$dir/$label"
		# A copy, not a link: each member is its own library instance.
		mlib="$mdir/libsofthsm2-$label.so"
		mkdir -m 700 "$mdir"
		cp "$lib" "$mlib"
		pin=$(random_pin)
		so_pin=$(random_pin)
		softhsm2-util --init-token --free --label "$label" --so-pin "$so_pin" --pin "$pin" >/dev/null
		echo "# $label: SO PIN $so_pin; pkcs11-tool --module '$mlib' --token-label $label --login --pin $pin -O"
		echo "export HSMKMS_MEMBER_${i}_URI='pkcs11:token=$(pct_encode "$label")?module-path=$(pct_encode "$mlib")&pin-value=$pin'"
	done
}

# need_go makes sure a Go toolchain is on PATH.
need_go() {
	if ! command -v go >/dev/null && [[ -x /usr/local/go/bin/go ]]; then
		PATH=/usr/local/go/bin:$PATH
	fi
	command -v go >/dev/null || die "Go is not installed: get Go 1.26 or later from https://go.dev/dl/"
}

# demo starts `hsmkms dev` (a 3-member SoftHSM2 cluster serving the AWS KMS
# API on 127.0.0.1) in a throwaway state directory, uses it from the AWS CLI
# and from an unmodified aws-sdk-go-v2 program, and stops it.
demo() {
	local bin
	work=$(mktemp -d) # global: the EXIT trap uses it
	bin="$work/hsmkms"
	go build -o "$bin" ./cmd/hsmkms
	"$bin" dev --state "$work/state" --listen 127.0.0.1:0 >"$work/dev.out" 2>"$work/dev.err" &
	pid=$! # global: the EXIT trap uses it
	trap 'kill "$pid" 2>/dev/null; wait "$pid" 2>/dev/null; rm -rf "$work"' EXIT
	local i
	for ((i = 0; i < 300; i++)); do
		grep -q '^export AWS_DEFAULT_REGION' "$work/dev.out" 2>/dev/null && break
		kill -0 "$pid" 2>/dev/null || { cat "$work/dev.err" >&2; die "hsmkms dev exited"; }
		sleep 0.2
	done
	grep -q '^export AWS_DEFAULT_REGION' "$work/dev.out" || die "hsmkms dev did not start in 60 s"
	echo "== hsmkms dev is serving; it printed:"
	grep -E '^(hsmkms dev|export)' "$work/dev.out"
	eval "$(grep '^export' "$work/dev.out")"
	# Keep the demo away from the user's own AWS configuration.
	export AWS_CONFIG_FILE="$work/aws-config" AWS_SHARED_CREDENTIALS_FILE="$work/aws-credentials" AWS_EC2_METADATA_DISABLED=true
	unset AWS_PROFILE AWS_SESSION_TOKEN

	if command -v aws >/dev/null; then
		demo_cli
	else
		echo "(the AWS CLI is not installed: skipping its part of the demo)"
	fi

	echo
	echo "== an unmodified aws-sdk-go-v2 program (go run ./examples/sdkclient)"
	go run ./examples/sdkclient
	echo
	echo "== member health: $(curl -fsS "$AWS_ENDPOINT_URL_KMS/healthz" 2>/dev/null | head -c 200 || true)"
	echo "demo done; see also: go run ./examples/quickstart, ./examples/failover, ./examples/swap"
}

# demo_cli uses the running dev server from the AWS CLI.
demo_cli() {
	echo
	echo "== the AWS CLI (older CLIs need --endpoint-url; newer ones read AWS_ENDPOINT_URL_KMS)"
	local aws=(aws --endpoint-url "$AWS_ENDPOINT_URL_KMS")
	local key
	key=$("${aws[@]}" kms create-key --description demo --query KeyMetadata.KeyId --output text)
	echo "aws kms create-key: $key"
	"${aws[@]}" kms create-alias --alias-name alias/demo --target-key-id "$key"
	printf 'attack at dawn' >"$work/plain.txt"
	"${aws[@]}" kms encrypt --key-id alias/demo --plaintext "fileb://$work/plain.txt" --encryption-context purpose=demo \
		--query CiphertextBlob --output text | base64 -d >"$work/secret.bin"
	echo "aws kms encrypt: $(wc -c <"$work/secret.bin") bytes of ciphertext"
	echo "aws kms decrypt: $("${aws[@]}" kms decrypt --ciphertext-blob "fileb://$work/secret.bin" --encryption-context purpose=demo \
		--query Plaintext --output text | base64 -d)"
	if "${aws[@]}" kms decrypt --ciphertext-blob "fileb://$work/secret.bin" --encryption-context purpose=other >/dev/null 2>"$work/err"; then
		die "decrypt with the wrong encryption context succeeded"
	fi
	echo "aws kms decrypt, wrong context: $(grep -o 'InvalidCiphertextException' "$work/err" | head -1)"
}

cmd=${1:-}
[[ $# -gt 0 ]] && shift
case $cmd in
ensure)
	[[ $# -eq 0 ]] || usage
	ensure
	;;
test)
	ensure
	need_go
	cd "$root"
	go test -race -count=1 -timeout 30m ./... "$@"
	;;
demo)
	[[ $# -eq 0 ]] || usage
	ensure
	need_go
	cd "$root"
	demo
	;;
env)
	[[ $# -eq 2 ]] || usage
	env_cmd "$1" "$2"
	;;
*)
	usage
	;;
esac
