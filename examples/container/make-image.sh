#!/bin/sh
# Build the example image localhost/orch-test:busybox without a registry:
# busybox-static's applets, a non-root user `tester` (uid 1000), imported
# with `podman import` (or `docker import`: ENGINE=docker).
set -eu
ENGINE=${ENGINE:-podman}
BUSYBOX=${BUSYBOX:-/bin/busybox}
root=$(mktemp -d)
chmod 755 "$root"   # mktemp makes it 0700: the image's / would shut out the test user
trap 'rm -rf "$root"' EXIT
mkdir -p "$root/bin" "$root/etc" "$root/tmp" "$root/root" "$root/home/tester"
cp "$BUSYBOX" "$root/bin/busybox"
for applet in $("$BUSYBOX" --list); do
  [ "$applet" = busybox ] || ln -s busybox "$root/bin/$applet"
done
printf 'root:x:0:0:root:/root:/bin/sh\ntester:x:1000:1000:tester:/home/tester:/bin/sh\n' > "$root/etc/passwd"
printf 'root:x:0:\ntester:x:1000:\n' > "$root/etc/group"
chmod 1777 "$root/tmp"
chown 1000:1000 "$root/home/tester" 2>/dev/null || true
tar -C "$root" -cf - . | "$ENGINE" import --change 'CMD ["/bin/sh"]' --change 'ENV PATH=/bin' - localhost/orch-test:busybox
