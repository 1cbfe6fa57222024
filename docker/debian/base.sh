#!/usr/bin/env bash
# The base image where Docker Hub cannot be reached: Debian bookworm from the Debian mirror apt is
# configured with (debootstrap --variant=minbase, about 40 s), imported as shopml-debian:bookworm.
# Where Docker Hub is reachable nothing here is needed: the compose file's official images are the
# default (docker/docker-compose.yaml); docker/compose.debian.yaml swaps in images built on this one.
set -euo pipefail
name="${1:-shopml-debian:bookworm}"
if docker image inspect "$name" >/dev/null 2>&1; then echo "$name: present"; exit 0; fi
mirror="${DEBIAN_MIRROR:-$(sed -n 's/^URIs: *//p' /etc/apt/sources.list.d/debian.sources 2>/dev/null | head -1)}"
mirror="${mirror:-http://deb.debian.org/debian}"
root="$(mktemp -d)"
trap 'rm -rf "$root"' EXIT
debootstrap --variant=minbase bookworm "$root" "$mirror" > "$root.log" 2>&1 || { tail -20 "$root.log"; exit 1; }
tar -C "$root" -c . | docker import --change 'CMD ["/bin/bash"]' - "$name"
echo "$name: built from $mirror"
