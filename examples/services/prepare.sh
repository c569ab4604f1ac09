#!/bin/sh
# Copies the host's busybox into this build context, where build.yaml's first
# step expects it. It must be statically linked (Debian: apt-get install
# busybox-static): a dynamically linked one finds no libc in the image. The
# copy is not committed (see .gitignore).
set -eu
here=$(cd "$(dirname "$0")" && pwd)
bb=$(command -v busybox) || {
  echo "prepare.sh: no busybox on PATH; install it (Debian: apt-get install busybox-static)" >&2
  exit 1
}
if ldd "$bb" >/dev/null 2>&1; then
  echo "prepare.sh: $bb is dynamically linked; install a static one (Debian: apt-get install busybox-static)" >&2
  exit 1
fi
cp -L "$bb" "$here/busybox"
chmod 0755 "$here/busybox"
echo "copied $bb to $here/busybox"
