#!/usr/bin/env bash
# Install what pvepatch and its lab need on a Debian 12 machine, then the Python venv.
# Sourced by ./run-demo and ./run-tests; safe to run again (installs only what is missing).
set -euo pipefail

PROJECT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="$PROJECT/.venv"
APT_PACKAGES=(qemu-system-x86 qemu-utils debootstrap openssh-server openssh-client dpkg-dev
              e2fsprogs iproute2 python3-venv ca-certificates chromium)
# Which command proves each package is there (package -> file).
declare -A PROBE=([qemu-system-x86]=/usr/bin/qemu-system-x86_64 [qemu-utils]=/usr/bin/qemu-img
                  [debootstrap]=/usr/sbin/debootstrap [openssh-server]=/usr/sbin/sshd
                  [openssh-client]=/usr/bin/ssh-keygen [dpkg-dev]=/usr/bin/dpkg-scanpackages
                  [e2fsprogs]=/sbin/mke2fs [iproute2]=/sbin/ip [chromium]=/usr/bin/chromium)

say() { printf '[setup] %s\n' "$*"; }

missing=()
for pkg in "${APT_PACKAGES[@]}"; do
    probe="${PROBE[$pkg]:-}"
    if [ -n "$probe" ]; then
        [ -e "$probe" ] || missing+=("$pkg")
    elif ! dpkg-query -W -f '${Status}' "$pkg" 2>/dev/null | grep -q "ok installed"; then
        missing+=("$pkg")
    fi
done
if ! python3 -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
    say "python3 >= 3.11 is required (Debian 12 ships 3.11); found: $(python3 --version 2>&1 || echo none)"
    exit 1
fi
if ! python3 -m venv --help >/dev/null 2>&1 || ! python3 -c 'import ensurepip' 2>/dev/null; then
    missing+=(python3-venv)
fi

if [ ${#missing[@]} -gt 0 ]; then
    if [ "$(id -u)" -ne 0 ]; then
        say "missing Debian packages: ${missing[*]}"
        say "install them as root:  apt-get install -y ${missing[*]}"
        exit 1
    fi
    say "installing Debian packages: ${missing[*]}"
    # Keep package installs from starting services (openssh-server would start sshd on :22).
    policy=/usr/sbin/policy-rc.d
    created_policy=0
    if [ ! -e "$policy" ]; then
        printf '#!/bin/sh\nexit 101\n' > "$policy"; chmod +x "$policy"; created_policy=1
    fi
    trap '[ "$created_policy" = 1 ] && rm -f "$policy"' EXIT
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
    [ "$created_policy" = 1 ] && rm -f "$policy"
    trap - EXIT
fi

if [ ! -x "$VENV/bin/python" ]; then
    say "creating $VENV"
    python3 -m venv "$VENV"
fi
stamp="$VENV/.requirements.sha256"
want="$(cat "$PROJECT/requirements.txt" "$PROJECT/requirements-dev.txt" "$PROJECT/pyproject.toml" | sha256sum | cut -d' ' -f1)"
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
    say "installing Python packages into $VENV"
    "$VENV/bin/pip" install -q --disable-pip-version-check -r "$PROJECT/requirements-dev.txt"
    # pvepatch itself, editable: its pytest11 entry point loads the plugin in every pytest run
    "$VENV/bin/pip" install -q --disable-pip-version-check --no-deps -e "$PROJECT"
    echo "$want" > "$stamp"
fi
export PATH="$VENV/bin:$PATH"
