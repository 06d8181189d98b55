#!/usr/bin/env bash
# Install the Debian packages the project uses (readers to cross-check, validators, Xvfb,
# Chromium, Orthanc, dcmtk, Mesa EGL). Installs only when root with apt-get; otherwise prints
# the exact command, and the tests that need a missing tool skip naming it
# (SURGITWIN_REQUIRE_SYSTEM=1 turns those skips into failures).
set -u
missing=()
for p in "$@"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
[ ${#missing[@]} -eq 0 ] && exit 0
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
  echo "installing Debian packages: ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq >/dev/null || true
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null || {
    echo "apt-get install failed for: ${missing[*]}" >&2
    [ "${SURGITWIN_REQUIRE_SYSTEM:-0}" = 1 ] && exit 1 || exit 0; }
else
  echo "Debian packages missing; install them with:"
  echo "  sudo apt-get install -y ${missing[*]}"
  echo "(tests that need them will skip and say so)"
fi
exit 0
