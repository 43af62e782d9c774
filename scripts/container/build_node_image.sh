#!/bin/bash
# Build, offline from any image registry, a node image for skyward's Container provider
# and import it into podman: what the test suite runs its sky.Container pools on (no
# registry is reachable here, so nothing can be pulled). Only Debian's mirror is needed.
#
# Usage: build_node_image.sh WORKDIR IMAGE UV_BINARY PYTHON_PREFIX [PYTHON_PREFIX...]
#   WORKDIR        scratch dir; the rootfs is built in WORKDIR/rootfs (kept: a rebuild
#                  skips debootstrap)
#   IMAGE          the image name to import as (e.g. localhost/skyward-test-node:abc123)
#   UV_BINARY      a uv executable to bake in (the bootstrap then installs none)
#   PYTHON_PREFIX  a CPython install relocatable at the same path (a pyenv version dir);
#                  copied to the same absolute path inside the image, its pythonX.Y linked
#                  into /usr/local/bin, where the bootstrap looks for the client's X.Y
# Env: MIRROR (default http://deb.debian.org/debian); CA_DIR (extra CA certificates to
#      trust, default /usr/local/share/ca-certificates). The containers fetch Skyward's
#      dependencies from the package index through the bridge network, with these CAs.
# podman itself is configured by the caller (CONTAINERS_CONF, CONTAINERS_STORAGE_CONF).
set -euo pipefail
WORKDIR=$1; IMAGE=$2; UV=$3; shift 3
MIRROR=${MIRROR:-http://deb.debian.org/debian}
CA_DIR=${CA_DIR:-/usr/local/share/ca-certificates}
R=$WORKDIR/rootfs
mkdir -p "$WORKDIR"

# 1. A Debian rootfs with sshd, bash and the libraries CPython links against. Built into
#    a side directory and renamed when complete, so an interrupted run starts over.
if [ ! -x "$R/usr/sbin/sshd" ]; then
  rm -rf "$R.partial"
  debootstrap --variant=minbase \
    --include=openssh-server,ca-certificates,procps,iproute2,libffi8,libsqlite3-0,libbz2-1.0,libreadline8,libncursesw6,libexpat1,libssl3,liblzma5,zlib1g,libuuid1 \
    bookworm "$R.partial" "$MIRROR"
  # The provider generates a fresh host key in each container: the image carries none.
  rm -f "$R.partial"/etc/ssh/ssh_host_*
  chroot "$R.partial" sh -c 'apt-get clean; rm -rf /var/lib/apt/lists/*'
  rm -rf "$R"
  mv "$R.partial" "$R"
fi

# 2. uv pre-installed: the bootstrap's `command -v uv` finds it.
cp "$UV" "$R/usr/local/bin/uv"

# 3. Interpreters: the bootstrap looks for pythonX.Y on PATH (sshd's PATH has /usr/local/bin).
#    Without what a node never uses: the tests, the static library, and the packages
#    installed here (nodes install into a venv of their own).
for prefix in "$@"; do
  mkdir -p "$R$(dirname "$prefix")"
  rm -rf "${R:?}$prefix"
  tar -C "$(dirname "$prefix")" --exclude='*/test' --exclude='*/idlelib' --exclude='*/tkinter' \
      --exclude='__pycache__' --exclude='*.a' --exclude='*/site-packages/*' \
      -cf - "$(basename "$prefix")" | tar -C "$R$(dirname "$prefix")" -xf -
  # Any login user may run it (pyenv keeps it under root's home, mode 700).
  d=$(dirname "$prefix")
  while [ "$d" != / ]; do chmod o+x "$R$d"; d=$(dirname "$d"); done
  for exe in "$prefix"/bin/python3.*; do
    [[ "${exe##*/}" =~ ^python3\.[0-9]+$ ]] || continue
    ln -sf "$exe" "$R/usr/local/bin/$(basename "$exe")"
  done
done

# 4. Trust the same extra CAs as this machine (a TLS-intercepting egress), and tell uv to
#    use the system's store (/etc/uv/uv.toml is read in every session, with or without PAM).
if [ -d "$CA_DIR" ]; then cp "$CA_DIR"/*.crt "$R/usr/local/share/ca-certificates/" 2>/dev/null || true; fi
chroot "$R" update-ca-certificates >/dev/null
mkdir -p "$R/etc/uv"
echo 'native-tls = true' > "$R/etc/uv/uv.toml"

# 5. Import (replacing an image of the same name).
podman rmi -f "$IMAGE" >/dev/null 2>&1 || true
tar -C "$R" -c . | podman import --change 'CMD ["/bin/bash"]' - "$IMAGE" >/dev/null
echo "built $IMAGE"
