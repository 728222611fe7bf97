#!/usr/bin/env bash
# Debian packages the tests read or run: the files of the image-to-image datasets (photos, faces:
# rlreg.data.photos.DEBIAN_PACKAGES), and the DICOM validators that check --format dicom's output (dicom3tools'
# dciodvfy, dcmtk's dcmdump: tests/dicom_tools.py).
# Idempotent and quiet: installs only what is missing. Needs root; as another user it warns and exits 0, and the
# tests that need these packages skip (or fail under RLREG_REQUIRE_SYSTEM_DATA=1 / RLREG_REQUIRE_DICOM_TOOLS=1).
set -euo pipefail
packages=(opencv-doc darknet gcompris-qt-data visp-images-data dicom3tools dcmtk)
missing=()
for package in "${packages[@]}"; do
    dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q "install ok installed" || missing+=("$package")
done
[ "${#missing[@]}" -eq 0 ] && exit 0
if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null 2>&1; then
    echo "warning: Debian packages missing (${missing[*]}); as root run .ci/system-packages.sh" >&2
    exit 0
fi
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
