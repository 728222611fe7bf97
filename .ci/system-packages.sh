#!/usr/bin/env bash
# Debian packages whose files the image-to-image datasets read (photos, faces): rlreg.data.photos.DEBIAN_PACKAGES.
# Idempotent and quiet: installs only what is missing. Needs root; as another user it warns and exits 0, and the
# tests that need these files skip (or fail under RLREG_REQUIRE_SYSTEM_DATA=1).
set -euo pipefail
packages=(opencv-doc darknet gcompris-qt-data visp-images-data)
missing=()
for package in "${packages[@]}"; do
    dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q "install ok installed" || missing+=("$package")
done
[ "${#missing[@]}" -eq 0 ] && exit 0
if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null 2>&1; then
    echo "warning: Debian data packages missing (${missing[*]}); as root run .ci/system-packages.sh" >&2
    exit 0
fi
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
