#!/usr/bin/env bash
# image/build.sh: the flashable edge-gateway image, from the Debian archive, PyPI wheels and this repo.
#
#   sudo image/build.sh                       # arm64 (Raspberry Pi 3/4/400, CM3/CM4, Zero 2 W)
#   sudo ARCH=amd64 COMPRESS=none image/build.sh   # the fast variant the boot tests use
#
# Stages (each one's time is printed and written to $OUT/timings.txt):
#   base      mmdebstrap of Debian $SUITE with the kernel, firmware, systemd and python3; the kernel's
#             initramfs is generated once, at the end. Cached as a tarball keyed on a hash of the
#             package lists, suite, architecture, mirrors and this stage's code: rebuilds skip it.
#   rootfs    the cached tarball unpacked into $OUT/.work/rootfs
#   wheels    a wheel of this repo and the PyPI wheels it needs, for the image's platform, on the host
#   gateway   a venv in /opt/edge-gateway (--system-site-packages: python3-systemd from Debian)
#             built in the image from those wheels only: nothing compiled, nothing for first boot
#   configure units, sysusers, configuration and the appliance settings (see image/README.md)
#   kernel    vmlinuz and initrd.img copied to $OUT (for qemu -kernel/-initrd)
#   pack      the disk image: MBR, FAT boot partition RASPIFIRM, ext4 root RASPIROOT (lib/pack.sh)
#   compress  $NAME.img.$COMPRESS, its .sha256, the .bmap
#
# Environment:
#   ARCH=arm64|amd64      OUT=image/out/$ARCH     SUITE=bookworm
#   MIRROR=http://deb.debian.org/debian  SECURITY_MIRROR=http://deb.debian.org/debian-security
#   CACHE_DIR=~/.cache/edge-gateway-image (base tarballs, .debs, wheels, the host's build venv)
#   COMPRESS=xz|zst|none (xz)   COMPRESS_LEVEL (xz: 6, zst: 12)
#   KEEP_ROOTFS=1 keeps the finished tree as $OUT/rootfs
#   DISK_IMAGE=0 stops after the kernel stage (no disk image)
#   EXTRA_PACKAGES="pkg ..."    more Debian packages (part of the cache key)
#   ROOT_AUTHORIZED_KEYS=FILE   SSH public keys for root (else nobody can log in)
#   ROOT_PASSWORD_HASH=HASH     a crypt(3) hash for root's console login (else locked)
#   BOOT_MIB=256                size of the FAT boot partition
#   SOURCE_DATE_EPOCH           time stamps (default: the last commit's time)
#   MMDEBSTRAP_MODE=unshare|root (default: unshare when it works here, else root)
#   PYTHON=python3              the host Python that builds the wheels
set -euo pipefail
umask 022

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$HERE/.." && pwd)

ARCH=${ARCH:-arm64}
SUITE=${SUITE:-bookworm}
MIRROR=${MIRROR:-http://deb.debian.org/debian}
SECURITY_MIRROR=${SECURITY_MIRROR:-http://deb.debian.org/debian-security}
OUT=${OUT:-$REPO/image/out/$ARCH}
CACHE_DIR=${CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/edge-gateway-image}
COMPRESS=${COMPRESS:-xz}
COMPRESS_LEVEL=${COMPRESS_LEVEL:-}
KEEP_ROOTFS=${KEEP_ROOTFS:-0}
DISK_IMAGE=${DISK_IMAGE:-1}
EXTRA_PACKAGES=${EXTRA_PACKAGES:-}
ROOT_AUTHORIZED_KEYS=${ROOT_AUTHORIZED_KEYS:-}
ROOT_PASSWORD_HASH=${ROOT_PASSWORD_HASH:-}
BOOT_MIB=${BOOT_MIB:-256}
PYTHON=${PYTHON:-python3}
MMDEBSTRAP_MODE=${MMDEBSTRAP_MODE:-}

log() { printf 'build: %s\n' "$*" >&2; }
die() { printf 'build: error: %s\n' "$*" >&2; exit 1; }

case $ARCH in
arm64) MACHINE=aarch64 ;;
amd64) MACHINE=x86_64 ;;
*) die "ARCH=$ARCH: arm64 or amd64" ;;
esac
case $COMPRESS in xz | zst | none) ;; *) die "COMPRESS=$COMPRESS: xz, zst or none" ;; esac
[ "$(id -u)" -eq 0 ] || die "run as root (the root file system holds files of several owners; mmdebstrap itself runs in a user namespace)"
for tool in mmdebstrap unshare chroot tar sha256sum; do
	command -v "$tool" >/dev/null || die "$tool is missing: scripts/build-image installs what the build needs"
done
if [ "$DISK_IMAGE" = 1 ]; then
	for tool in sfdisk mkfs.vfat mcopy mkfs.ext4; do
		command -v "$tool" >/dev/null || die "$tool is missing: scripts/build-image installs what the build needs"
	done
	if [ "$COMPRESS" != none ]; then
		command -v bmaptool >/dev/null || die "bmaptool is missing (package bmap-tools)"
		command -v "${COMPRESS/zst/zstd}" >/dev/null || die "${COMPRESS/zst/zstd} is missing"
	fi
fi

VERSION=$(sed -n 's/^__version__ = "\(.*\)"$/\1/p' "$REPO/gateway/__init__.py")
[ -n "$VERSION" ] || die "no __version__ in gateway/__init__.py"
NAME=edge-gateway-$VERSION-$ARCH
if [ -z "${SOURCE_DATE_EPOCH:-}" ]; then
	SOURCE_DATE_EPOCH=$(git -C "$REPO" log -1 --format=%ct 2>/dev/null || date +%s)
fi
export SOURCE_DATE_EPOCH
# The base root file system's (cached across commits): Debian 12's release day.
BASE_SOURCE_DATE_EPOCH=1686355200

mkdir -p "$OUT" "$CACHE_DIR"
OUT=$(cd "$OUT" && pwd)
CACHE_DIR=$(cd "$CACHE_DIR" && pwd)
WORK=$OUT/.work
ROOT=$WORK/rootfs
TIMINGS=$OUT/timings.txt
BUILD_START=$(date +%s.%N)

# Remove a tree that may hold a root file system: never across a mount point (a mount left inside
# it must never be followed into the host's file systems).
remove_tree() {
	[ -e "$1" ] || return 0
	if findmnt -rn -o TARGET | awk -v p="$1" '$0 == p || index($0, p "/") == 1 { found = 1 } END { exit !found }'; then
		die "$1 has something mounted inside: not removing it"
	fi
	rm -rf --one-file-system "$1"
}

cleanup() {
	local rc=$?
	if [ "$KEEP_ROOTFS" = 1 ] && [ -d "$ROOT" ] && [ $rc -eq 0 ]; then
		remove_tree "$OUT/rootfs"
		mv "$ROOT" "$OUT/rootfs"
	fi
	remove_tree "$WORK"
	if [ $rc -ne 0 ]; then
		# no partial image, checksum or bmap that could be taken for a finished one
		rm -f "$OUT/$NAME".img*
		log "failed (exit $rc)"
	fi
}
trap cleanup EXIT
trap 'exit 143' TERM
trap 'exit 130' INT

# stage NAME FUNCTION: run it, print and record how long it took.
stage() {
	local name=$1 t0 t1 took
	shift
	t0=$(date +%s.%N)
	log "stage $name ..."
	"$@"
	t1=$(date +%s.%N)
	took=$(awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.1f", b - a }')
	log "stage $name: $took s${STAGE_NOTE:+ ($STAGE_NOTE)}"
	printf '%-10s %8s s  %s\n' "$name" "$took" "${STAGE_NOTE:-}" >>"$TIMINGS"
	STAGE_NOTE=
}
STAGE_NOTE=

# Run a command inside the target tree: a private mount namespace (and PID namespace) whose /proc,
# /sys, /dev, /run and /tmp mounts exist only as long as the command runs; nothing can be left
# mounted inside $ROOT, whatever happens. arm64 programs run through binfmt_misc + qemu-user-static.
in_target() {
	unshare --mount --propagation private --pid --fork --kill-child -- /bin/sh -euc '
		R=$1; shift
		mount -t proc proc "$R/proc"
		mount -t sysfs -o ro sysfs "$R/sys"
		mount --rbind /dev "$R/dev"
		mount -t tmpfs -o mode=0755 tmpfs "$R/run"
		mount -t tmpfs -o mode=1777 tmpfs "$R/tmp"
		exec chroot "$R" /usr/bin/env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin HOME=/root LC_ALL=C.UTF-8 \
			DEBIAN_FRONTEND=noninteractive SOURCE_DATE_EPOCH="$SOURCE_DATE_EPOCH" "$@"' sh "$ROOT" "$@"
}

# ---------------------------------------------------------------------------------------------
# base: mmdebstrap, cached

package_list() {
	cat "$HERE/packages/common.list" "$HERE/packages/$ARCH.list" | sed 's/#.*//' | tr -s ' \t' '\n' | grep -v '^$'
	for p in $EXTRA_PACKAGES; do echo "$p"; done
}

apt_sources() {
	echo "deb $MIRROR $SUITE main non-free-firmware"
	echo "deb $MIRROR $SUITE-updates main non-free-firmware"
	echo "deb $SECURITY_MIRROR $SUITE-security main non-free-firmware"
}

# Runs mmdebstrap; its hooks:
#  - essential: the image's initramfs configuration (files/base), and update-initramfs diverted to
#    a no-op, so that installing the kernel, initramfs-tools, raspi-firmware, udev, ... does not
#    generate the initramfs once per trigger (under arm64 emulation each run takes minutes);
#  - customize: the diversion removed, raspi-firmware's settings (files/raspi-firmware: the root
#    by label, the consoles) and update-initramfs run once per installed kernel, which also runs
#    raspi-firmware's hook (kernel, initrd, device trees, config.txt, cmdline.txt into
#    /boot/firmware, a plain directory here: it becomes the boot partition).
mmdebstrap_base() {
	local target=$1 log_file=$2 mode=$3
	local -a sources=()
	mapfile -t sources < <(apt_sources)
	mkdir -p "$CACHE_DIR/debs/$ARCH"
	# shellcheck disable=SC2016 # the hooks are run by mmdebstrap's sh, with $1 = the chroot
	mmdebstrap --mode="$mode" --format=tar --variant=minbase --architectures="$ARCH" \
		--aptopt='APT::Install-Recommends "false"' \
		--aptopt='Acquire::Retries "3"' \
		--include="$(package_list | paste -sd, -)" \
		--skip=essential/unlink \
		--setup-hook='mkdir -p "$1/var/cache/apt/archives/"' \
		--setup-hook="sync-in $CACHE_DIR/debs/$ARCH /var/cache/apt/archives/" \
		--essential-hook="sync-in $HERE/files/base /" \
		--essential-hook='chroot "$1" dpkg-divert --quiet --local --rename --divert /usr/sbin/update-initramfs.image-build --add /usr/sbin/update-initramfs' \
		--essential-hook='printf "#!/bin/sh\necho \"\$*\" >>/var/log/update-initramfs.deferred\n" >"$1/usr/sbin/update-initramfs" && chmod 0755 "$1/usr/sbin/update-initramfs"' \
		--customize-hook="sync-out /var/cache/apt/archives $CACHE_DIR/debs/$ARCH" \
		--customize-hook='rm "$1/usr/sbin/update-initramfs" && chroot "$1" dpkg-divert --quiet --local --rename --remove /usr/sbin/update-initramfs' \
		--customize-hook='sed "s/^/edge-gateway-image: deferred: update-initramfs /" "$1/var/log/update-initramfs.deferred" 2>/dev/null; rm -f "$1/var/log/update-initramfs.deferred"' \
		--customize-hook="if [ -f \"\$1/etc/default/raspi-firmware\" ]; then cat $HERE/files/raspi-firmware/raspi-firmware.defaults >>\"\$1/etc/default/raspi-firmware\"; fi" \
		--customize-hook='t0=$(date +%s); for v in $(ls "$1/lib/modules"); do chroot "$1" update-initramfs -c -k "$v"; done; echo "edge-gateway-image: initramfs took $(($(date +%s) - t0)) s"' \
		"$SUITE" "$target" "${sources[@]}" \
		> >(tee "$log_file" | grep --line-buffered -E '^(I: (running|installing|downloading|extracting|creating|success)|E: |W: |edge-gateway-image: |update-initramfs)' >&2) 2>&1
}

pick_mode() {
	if [ -n "$MMDEBSTRAP_MODE" ]; then
		echo "$MMDEBSTRAP_MODE"
	elif unshare --user --map-root-user --mount --pid --fork true 2>/dev/null; then
		echo unshare
	else
		echo root
	fi
}

check_foreign_arch() {
	if [ "$ARCH" = amd64 ] && [ "$(uname -m)" = x86_64 ]; then return 0; fi
	if [ "$ARCH" = arm64 ] && [ "$(uname -m)" = aarch64 ]; then return 0; fi
	if command -v arch-test >/dev/null && arch-test "$ARCH" >/dev/null 2>&1; then return 0; fi
	# binfmt_misc may just not be mounted (containers): mount it and enable qemu-user-static's entry.
	if [ ! -e /proc/sys/fs/binfmt_misc/register ]; then
		mount -t binfmt_misc binfmt_misc /proc/sys/fs/binfmt_misc 2>/dev/null || true
	fi
	if command -v update-binfmts >/dev/null; then update-binfmts --enable "qemu-$MACHINE" 2>/dev/null || true; fi
	if command -v arch-test >/dev/null && arch-test "$ARCH" >/dev/null 2>&1; then return 0; fi
	die "cannot run $ARCH programs here: install qemu-user-static and binfmt-support (binfmt_misc with the F flag)"
}

BASE_TAR=
stage_base() {
	local key mode
	key=$({
		echo "edge-gateway-image base v2 $SUITE $ARCH"
		apt_sources
		package_list
		(cd "$HERE/files" && find base raspi-firmware -type f -print0 | sort -z | xargs -0 sha256sum)
		declare -f mmdebstrap_base
	} | sha256sum | cut -c1-16)
	BASE_TAR=$CACHE_DIR/base-$SUITE-$ARCH-$key.tar
	mkdir -p "$CACHE_DIR"
	exec 9>"$CACHE_DIR/.lock-$ARCH"
	flock 9
	if [ -s "$BASE_TAR" ]; then
		# the log of the run that made it comes along (the initramfs check of the tests reads it)
		if [ -f "$BASE_TAR.log" ]; then cp "$BASE_TAR.log" "$OUT/mmdebstrap.log"; fi
		STAGE_NOTE="cached: $(basename "$BASE_TAR")"
		flock -u 9
		return 0
	fi
	check_foreign_arch
	mode=$(pick_mode)
	log "mmdebstrap ($mode mode) of $SUITE/$ARCH: $(package_list | wc -l) packages and their dependencies"
	local tmp="$BASE_TAR.tmp.$$"
	# Whatever the mode, mmdebstrap runs in a private mount namespace: a mount it (or a hook) makes
	# can never outlive it.
	# The base's own time stamps (the initramfs's above all) must not depend on the commit that
	# happens to build it: it is cached across commits, and a rebuild must give the same image.
	if ! SOURCE_DATE_EPOCH=$BASE_SOURCE_DATE_EPOCH unshare --mount --propagation private -- \
		bash -c "$(declare -f mmdebstrap_base apt_sources package_list); $(declare -p HERE ARCH SUITE MIRROR SECURITY_MIRROR CACHE_DIR EXTRA_PACKAGES); mmdebstrap_base \"\$@\"" \
		sh "$tmp" "$OUT/mmdebstrap.log" "$mode"; then
		rm -f "$tmp"
		die "mmdebstrap failed: see $OUT/mmdebstrap.log"
	fi
	cp "$OUT/mmdebstrap.log" "$BASE_TAR.log"
	mv "$tmp" "$BASE_TAR"
	local initramfs
	initramfs=$(sed -n 's/^edge-gateway-image: initramfs took \([0-9]*\) s$/\1/p' "$OUT/mmdebstrap.log" | tail -n 1)
	STAGE_NOTE="built $(basename "$BASE_TAR"), $mode mode; initramfs ${initramfs:-?} s of it"
	# keep the three newest base tarballs of this architecture
	ls -1t "$CACHE_DIR"/base-"$SUITE"-"$ARCH"-*.tar 2>/dev/null | tail -n +4 | while read -r old; do rm -f "$old" "$old.log"; done
	flock -u 9
}

stage_rootfs() {
	remove_tree "$WORK"
	mkdir -p "$ROOT"
	tar --numeric-owner --xattrs --xattrs-include='*' -xpf "$BASE_TAR" -C "$ROOT"
	[ -x "$ROOT/usr/bin/python3" ] || die "the base has no python3"
}

# ---------------------------------------------------------------------------------------------
# wheels: on the host (fast, native), for the image's platform

HOST_VENV=
WHEELHOUSE=
GATEWAY_WHEEL=
TARGET_PY=
stage_wheels() {
	TARGET_PY=$(readlink "$ROOT/usr/bin/python3")            # python3.11
	TARGET_PY=${TARGET_PY#python}
	local glibc
	glibc=$(dpkg-query --admindir="$ROOT/var/lib/dpkg" -W -f='${Version}' libc6)
	glibc=${glibc%%-*}
	HOST_VENV=$CACHE_DIR/host-venv
	if ! "$HOST_VENV/bin/python" -c 'import packaging' 2>/dev/null; then
		"$PYTHON" -m venv "$HOST_VENV"
		"$HOST_VENV/bin/pip" install -q packaging
	fi
	# A clean copy of the sources (tracked and untracked-but-not-ignored files): the build writes
	# build/ and *.egg-info, which must not land in the working tree.
	local src=$WORK/src
	mkdir -p "$src" "$WORK/dist"
	if git -C "$REPO" rev-parse --git-dir >/dev/null 2>&1; then
		(cd "$REPO" && git ls-files -z --cached --others --exclude-standard | grep -z -v '^image/' |
			xargs -0 -r stat --printf='%n\0' 2>/dev/null | tar --null -T - -cf -) | tar -xf - -C "$src"
	else
		tar -C "$REPO" --exclude=./image --exclude=./.git --exclude='*.egg-info' --exclude=./build -cf - . | tar -xf - -C "$src"
	fi
	"$HOST_VENV/bin/pip" wheel -q --no-deps -w "$WORK/dist" "$src"
	GATEWAY_WHEEL=$(ls "$WORK"/dist/edge_gateway-*.whl)
	# Its requirements for the image (python3-systemd comes from Debian), as binary wheels only.
	"$HOST_VENV/bin/python" "$HERE/lib/requirements.py" "$GATEWAY_WHEEL" "$TARGET_PY" "$MACHINE" systemd-python \
		>"$WORK/requirements.txt"
	WHEELHOUSE=$CACHE_DIR/wheels/$ARCH-cp${TARGET_PY/./}
	mkdir -p "$WHEELHOUSE"
	local -a platforms=()
	local minor
	for ((minor = ${glibc#*.}; minor >= 17; minor--)); do platforms+=(--platform "manylinux_2_${minor}_$MACHINE"); done
	platforms+=(--platform "manylinux2014_$MACHINE")
	"$HOST_VENV/bin/pip" download -q --only-binary=:all: "${platforms[@]}" --python-version "$TARGET_PY" \
		--implementation cp -d "$WHEELHOUSE" -r "$WORK/requirements.txt"
	STAGE_NOTE="$(basename "$GATEWAY_WHEEL"); $(paste -sd' ' "$WORK/requirements.txt")"
}

# ---------------------------------------------------------------------------------------------
# gateway: the venv, built in the image

stage_gateway() {
	local w=$ROOT/var/tmp/edge-gateway-wheels
	mkdir -p "$w"
	cp "$GATEWAY_WHEEL" "$WORK/requirements.txt" "$w/"
	cp "$WHEELHOUSE"/*.whl "$w/"
	in_target python3 -m venv --system-site-packages /opt/edge-gateway
	in_target /opt/edge-gateway/bin/python -m pip install --no-index --find-links /var/tmp/edge-gateway-wheels \
		--no-cache-dir --disable-pip-version-check --no-warn-script-location -q \
		-r /var/tmp/edge-gateway-wheels/requirements.txt "/var/tmp/edge-gateway-wheels/$(basename "$GATEWAY_WHEEL")"
	rm -rf "$w"
	# The same check the service's ExecStartPre= runs, and the imports it needs at run time.
	in_target /opt/edge-gateway/bin/python -c 'import gateway, aiocoap, paho.mqtt, serial, cbor2, systemd.journal, gpiod'
	STAGE_NOTE="$(ls "$ROOT/opt/edge-gateway/lib/python$TARGET_PY/site-packages" | sed -n 's/\.dist-info$//p' | paste -sd' ' -)"
}

# ---------------------------------------------------------------------------------------------
# configure: the service, the appliance settings

stage_configure() {
	local R=$ROOT
	# The image's own files (fstab, journald, sysctl, network, first-boot units, ...)
	cp -r --preserve=mode --no-preserve=ownership "$HERE/files/rootfs/." "$R/"

	# The gateway's units, system user, configuration, documentation
	install -m 0644 "$REPO"/systemd/edge-gateway.service "$REPO"/systemd/edge-gateway-provision-import.service "$R/etc/systemd/system/"
	install -D -m 0644 "$REPO/systemd/edge-gateway.sysusers" "$R/etc/sysusers.d/edge-gateway.conf"
	install -D -m 0644 "$REPO/config/gateway.toml" "$R/etc/edge-gateway/gateway.toml"
	install -d -m 0755 "$R/etc/edge-gateway/gateway.d"
	install -D -m 0644 -t "$R/etc/edge-gateway/profiles" "$REPO"/config/profiles/*.toml
	install -D -m 0644 "$REPO/README.md" "$R/usr/share/doc/edge-gateway/README.md"
	install -D -m 0644 "$HERE/README.md" "$R/usr/share/doc/edge-gateway/IMAGE.md"
	ln -sf /opt/edge-gateway/bin/edge-gateway "$R/usr/local/bin/edge-gateway"
	in_target systemd-sysusers
	in_target /opt/edge-gateway/bin/edge-gateway check-config /etc/edge-gateway/gateway.toml >/dev/null
	in_target /opt/edge-gateway/bin/edge-gateway profiles check -c /etc/edge-gateway/gateway.toml >/dev/null
	# /tmp in RAM
	cp "$R/usr/share/systemd/tmp.mount" "$R/etc/systemd/system/tmp.mount"
	in_target systemctl enable --quiet edge-gateway.service edge-gateway-provision-import.service \
		edge-gateway-ssh-host-keys.service edge-gateway-grow-root.service \
		systemd-networkd.service systemd-resolved.service systemd-timesyncd.service tmp.mount
	# No interactive questions on the first boot of an appliance, and no daily package list
	# downloads (SD card wear; the image is updated as a whole or by an operator).
	in_target systemctl mask --quiet systemd-firstboot.service
	in_target systemctl disable --quiet apt-daily.timer apt-daily-upgrade.timer
	ln -sfn ../run/systemd/resolve/stub-resolv.conf "$R/etc/resolv.conf"

	# Identity: made on each board's first boot.
	printf 'uninitialized\n' >"$R/etc/machine-id"
	rm -f "$R/var/lib/dbus/machine-id" "$R"/etc/ssh/ssh_host_* "$R/var/lib/systemd/random-seed" \
		"$R/var/lib/systemd/credential.secret"
	# Locale and time zone without questions.
	printf 'LANG=C.UTF-8\n' >"$R/etc/locale.conf"
	printf 'LANG=C.UTF-8\n' >"$R/etc/default/locale"
	ln -sfn /usr/share/zoneinfo/Etc/UTC "$R/etc/localtime"
	printf 'Etc/UTC\n' >"$R/etc/timezone"

	# Logins: root is locked unless the builder configured a key or a password.
	if [ -n "$ROOT_PASSWORD_HASH" ]; then
		in_target usermod -p "$ROOT_PASSWORD_HASH" root
	else
		in_target usermod -p '!*' root
	fi
	if [ -n "$ROOT_AUTHORIZED_KEYS" ]; then
		install -d -m 0700 "$R/root/.ssh"
		install -m 0600 "$ROOT_AUTHORIZED_KEYS" "$R/root/.ssh/authorized_keys"
	fi

	# The boot partition's extra files (raspi-firmware put the rest there in the base stage).
	install -d -m 0755 "$R/boot/firmware"
	install -m 0644 "$HERE/files/boot/README.txt" "$HERE/files/boot/edge-gateway-provision.toml.example" "$R/boot/firmware/"

	# What the build leaves behind
	rm -rf "$R/root/.cache" "$R/var/tmp/"* "$R/tmp/"* "$R/var/cache/apt/"*.bin "$R/var/lib/apt/lists/"* 2>/dev/null || true
	find "$R/var/log" -type f \( -name '*.log' -o -name 'lastlog' -o -name '*tmp' \) -exec truncate -s 0 {} +
	printf '%s\n' "edge-gateway image $VERSION ($ARCH, Debian $SUITE), built $(date -u -d "@$SOURCE_DATE_EPOCH" +%Y-%m-%dT%H:%M:%SZ)" \
		>"$R/etc/edge-gateway-image"

	# The manifest: every Debian package and Python distribution, with its version.
	{
		echo "# $NAME"
		dpkg-query --admindir="$R/var/lib/dpkg" -W -f='deb ${Package} ${Version} ${Architecture}\n'
		ls "$R/opt/edge-gateway/lib/python$TARGET_PY/site-packages" | sed -n 's/^\(.*\)-\([^-]*\)\.dist-info$/pypi \1 \2/p'
	} >"$OUT/$NAME.manifest"
	STAGE_NOTE="$(grep -c '^deb ' "$OUT/$NAME.manifest") Debian packages"
}

stage_kernel() {
	local vmlinuz initrd
	vmlinuz=$(ls "$ROOT"/boot/vmlinuz-* | sort -V | tail -n 1)
	initrd=$(ls "$ROOT"/boot/initrd.img-* | sort -V | tail -n 1)
	cp "$vmlinuz" "$OUT/$NAME.vmlinuz"
	cp "$initrd" "$OUT/$NAME.initrd.img"
	STAGE_NOTE="$(basename "$vmlinuz"), initrd $(du -h "$initrd" | cut -f1)"
}

stage_pack() {
	local boot=$WORK/boot
	remove_tree "$boot"
	mkdir -p "$boot"
	# Reproducible: nothing in either file system is newer than SOURCE_DATE_EPOCH (files written
	# during the build would otherwise carry the build's own time; contents are already equal).
	find "$ROOT" -xdev -newermt "@$SOURCE_DATE_EPOCH" -print0 |
		xargs -0r touch --no-dereference --date="@$SOURCE_DATE_EPOCH"
	# The boot partition's files leave the tree (its /boot/firmware is the mount point)...
	find "$ROOT/boot/firmware" -mindepth 1 -maxdepth 1 -exec mv -t "$boot" {} +
	touch --no-dereference --date="@$SOURCE_DATE_EPOCH" "$boot" "$ROOT/boot/firmware"
	BOOT_MIB=$BOOT_MIB SEED="$NAME/$SOURCE_DATE_EPOCH" "$HERE/lib/pack.sh" "$boot" "$ROOT" "$OUT/$NAME.img" >&2
	# ... and come back, for KEEP_ROOTFS.
	find "$boot" -mindepth 1 -maxdepth 1 -exec mv -t "$ROOT/boot/firmware" {} +
	STAGE_NOTE="$(du -h --apparent-size "$OUT/$NAME.img" | cut -f1) image, $(du -h "$OUT/$NAME.img" | cut -f1) of data"
}

stage_compress() {
	local img=$OUT/$NAME.img out
	bmaptool -q create -o "$img.bmap" "$img"
	case $COMPRESS in
	xz) out=$img.xz; xz -T0 "-${COMPRESS_LEVEL:-6}" -c "$img" >"$out.tmp" ;;
	zst) out=$img.zst; zstd -q -T0 "-${COMPRESS_LEVEL:-12}" -c "$img" >"$out.tmp" ;;
	esac
	mv "$out.tmp" "$out"
	(cd "$OUT" && sha256sum "$(basename "$out")" >"$(basename "$out").sha256")
	STAGE_NOTE="$(basename "$out") $(du -h "$out" | cut -f1)"
}

# ---------------------------------------------------------------------------------------------

main() {
	: >"$TIMINGS"
	rm -f "$OUT/$NAME".img*
	remove_tree "$OUT/rootfs"
	log "$NAME: OUT=$OUT CACHE_DIR=$CACHE_DIR"
	stage base stage_base
	stage rootfs stage_rootfs
	stage wheels stage_wheels
	stage gateway stage_gateway
	stage configure stage_configure
	stage kernel stage_kernel
	if [ "$DISK_IMAGE" = 1 ]; then
		stage pack stage_pack
		if [ "$COMPRESS" != none ]; then stage compress stage_compress; fi
	fi
	total=$(awk -v a="$BUILD_START" -v b="$(date +%s.%N)" 'BEGIN { printf "%.1f", b - a }')
	printf '%-10s %8s s\n' total "$total" >>"$TIMINGS"
	log "done in $total s; stage times in $TIMINGS:"
	sed 's/^/  /' "$TIMINGS" >&2
	ls -l "$OUT" | sed 's/^/  /' >&2
}

# Everything above is only definitions; bash has read the whole file before the build starts, so
# editing this script while a build runs cannot derail it.
main "$@"; exit $?
