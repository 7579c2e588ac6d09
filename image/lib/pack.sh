#!/usr/bin/env bash
# image/lib/pack.sh BOOT_DIR ROOT_DIR IMAGE
#
# Writes IMAGE, a disk image with an MBR partition table, a FAT32 boot partition (label RASPIFIRM)
# holding the files of BOOT_DIR and an ext4 root partition (label RASPIROOT) holding ROOT_DIR.
# Nothing is mounted and no loop device is used: each file system is made in a file of its own
# (mkfs.vfat + mcopy from mtools, mkfs.ext4 -d) and copied into the image at its offset.
# ROOT_DIR's boot/firmware must be empty (it is the boot partition's mount point).
#
# Environment: BOOT_MIB (256), ROOT_MIB (empty: the content plus a quarter plus ROOT_SPARE_MIB),
# ROOT_SPARE_MIB (256), ALIGN_MIB (4: both partitions start on 4 MiB boundaries, the erase-block
# size of most SD cards), SEED (a string from which the disk id, the volume id and the file system
# UUID are derived, for reproducible images; empty: random), SOURCE_DATE_EPOCH (time stamps of the
# ext4 file system's own metadata; files keep their modification times in both file systems),
# MKE2FS_CONFIG (defaults to ROOT_DIR/etc/mke2fs.conf, so the root file system gets the features
# the image's own e2fsck knows).
set -euo pipefail

if [ $# -ne 3 ]; then
	sed -n '2,4p' "$0" >&2
	exit 2
fi
boot_dir=$1 root_dir=$2 img=$3
BOOT_MIB=${BOOT_MIB:-256}
ROOT_MIB=${ROOT_MIB:-}
ROOT_SPARE_MIB=${ROOT_SPARE_MIB:-256}
ALIGN_MIB=${ALIGN_MIB:-4}
SEED=${SEED:-}

for tool in sfdisk mkfs.vfat mcopy mkfs.ext4 debugfs dd truncate; do
	command -v "$tool" >/dev/null || { echo "pack: $tool is missing (packages: fdisk dosfstools mtools e2fsprogs)" >&2; exit 1; }
done
[ -d "$boot_dir" ] || { echo "pack: $boot_dir is not a directory" >&2; exit 1; }
[ -d "$root_dir" ] || { echo "pack: $root_dir is not a directory" >&2; exit 1; }
if [ -d "$root_dir/boot/firmware" ] && [ -n "$(ls -A "$root_dir/boot/firmware")" ]; then
	echo "pack: $root_dir/boot/firmware is not empty (its files belong in the boot partition)" >&2
	exit 1
fi

hex() { printf '%s' "$SEED/$1" | sha256sum | cut -c1-"$2"; }
if [ -n "$SEED" ]; then
	disk_id=$(hex disk 8)
	vol_id=$(hex vfat 8)
	u=$(hex ext4 32)
	root_uuid="${u:0:8}-${u:8:4}-4${u:13:3}-a${u:17:3}-${u:20:12}"
	hash_seed=$(u=$(hex htree 32); echo "${u:0:8}-${u:8:4}-4${u:13:3}-a${u:17:3}-${u:20:12}")
else
	disk_id=$(od -An -N4 -tx4 /dev/urandom | tr -d ' ')
	vol_id=$(od -An -N4 -tx4 /dev/urandom | tr -d ' ')
	root_uuid=$(cat /proc/sys/kernel/random/uuid)
	hash_seed=$(cat /proc/sys/kernel/random/uuid)
fi

work=$(mktemp -d "$(dirname "$img")/.pack.XXXXXX")
# On failure or a signal, nothing is left behind: neither the work directory nor a partial image.
trap 'rc=$?; rm -rf "$work"; if [ $rc -ne 0 ]; then rm -f "$img"; fi' EXIT
trap 'exit 143' TERM
trap 'exit 130' INT

# The root file system: what the tree takes on disk (4 KiB blocks, as in ext4), a quarter more for
# metadata and inodes, and some spare room (first boot grows it to the card anyway).
if [ -z "$ROOT_MIB" ]; then
	used_kib=$(du -s -x -k "$root_dir" | cut -f1)
	ROOT_MIB=$(((used_kib * 5 / 4 + 1023) / 1024 + ROOT_SPARE_MIB))
	ROOT_MIB=$(((ROOT_MIB + ALIGN_MIB - 1) / ALIGN_MIB * ALIGN_MIB))
fi
if [ -z "${MKE2FS_CONFIG:-}" ] && [ -f "$root_dir/etc/mke2fs.conf" ]; then
	export MKE2FS_CONFIG=$root_dir/etc/mke2fs.conf
fi
if [ -n "${SOURCE_DATE_EPOCH:-}" ]; then
	export E2FSPROGS_FAKE_TIME=$SOURCE_DATE_EPOCH
fi
truncate -s "${ROOT_MIB}M" "$work/root.ext4"
mkfs.ext4 -q -F -L RASPIROOT -U "$root_uuid" -E "hash_seed=$hash_seed" -b 4096 -i 16384 -I 256 \
	-d "$root_dir" "$work/root.ext4" "${ROOT_MIB}M"
if [ -n "${SOURCE_DATE_EPOCH:-}" ]; then
	# mkfs.ext4 -d copies each file's ctime, which nothing can set in the tree (the time the build
	# wrote the file), and its atime (the time the build last read it). Clamp both in the new file
	# system with debugfs, two commands per path. Paths are quoted; a path debugfs cannot quote
	# stops the build rather than stay unclamped.
	if (cd "$root_dir" && find . -xdev -print0) | grep -qz '["\\]'; then
		echo "pack: a path in $root_dir holds a quote or backslash: cannot clamp its ctime" >&2
		exit 1
	fi
	(cd "$root_dir" && find . -xdev -printf 'sif "/%P" ctime @'"$SOURCE_DATE_EPOCH"'\nsif "/%P" atime @'"$SOURCE_DATE_EPOCH"'\n') \
		>"$work/ctime.cmds"
	debugfs -w -f "$work/ctime.cmds" "$work/root.ext4" >/dev/null 2>"$work/ctime.err" || {
		cat "$work/ctime.err" >&2
		exit 1
	}
	if grep -v '^debugfs ' "$work/ctime.err" | grep -q .; then
		echo "pack: debugfs could not clamp every ctime:" >&2
		head -5 "$work/ctime.err" >&2
		exit 1
	fi
fi

# The boot partition: FAT32 (the Pi's boot ROM reads FAT16 and FAT32), files copied in with mtools.
export MTOOLS_SKIP_CHECK=1
mkfs.vfat -F 32 -n RASPIFIRM -i "$vol_id" ${SEED:+--invariant} -C "$work/boot.vfat" $((BOOT_MIB * 1024)) >/dev/null
mapfile -d '' boot_files < <(find "$boot_dir" -mindepth 1 -maxdepth 1 -print0 | sort -z)
if [ ${#boot_files[@]} -gt 0 ]; then
	mcopy -i "$work/boot.vfat" -s -m -Q -D o "${boot_files[@]}" ::/
fi

# The disk: MBR, partition 1 = FAT32 LBA (0x0c, what the Pi's boot ROM looks for), 2 = Linux.
boot_start=$ALIGN_MIB
root_start=$((boot_start + BOOT_MIB))
total_mib=$((root_start + ROOT_MIB))
rm -f "$img"
truncate -s "${total_mib}M" "$img"
sfdisk --quiet --no-reread --no-tell-kernel "$img" <<EOF
label: dos
label-id: 0x$disk_id
unit: sectors

start=$((boot_start * 2048)), size=$((BOOT_MIB * 2048)), type=c, bootable
start=$((root_start * 2048)), size=$((ROOT_MIB * 2048)), type=83
EOF
dd if="$work/boot.vfat" of="$img" bs=1M seek="$boot_start" conv=notrunc,sparse status=none
dd if="$work/root.ext4" of="$img" bs=1M seek="$root_start" conv=notrunc,sparse status=none
echo "pack: $img: ${total_mib} MiB (boot ${BOOT_MIB} MiB at ${boot_start} MiB, root ${ROOT_MIB} MiB at ${root_start} MiB)"
