#!/bin/sh
# Debian packages some tests use: dnsmasq (a real DNS server for DNS discovery),
# chromium + chromium-driver (the status page in a real browser), a Java runtime (the
# reference TorchServe is a Java server). Installed when missing
# and we are root; otherwise those tests skip and say why.
set -e
missing=""
command -v dnsmasq >/dev/null 2>&1 || [ -x /usr/sbin/dnsmasq ] || missing="$missing dnsmasq"
command -v chromium >/dev/null 2>&1 || missing="$missing chromium"
command -v chromedriver >/dev/null 2>&1 || missing="$missing chromium-driver"
command -v java >/dev/null 2>&1 || missing="$missing openjdk-17-jre-headless"
[ -z "$missing" ] && exit 0
if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null 2>&1; then
    echo "note: not installing$missing (needs root and apt-get); the tests that use them skip"
    exit 0
fi
export DEBIAN_FRONTEND=noninteractive
apt-get install -y -q --no-install-recommends $missing >/dev/null 2>&1 || {
    apt-get update -q >/dev/null 2>&1 && apt-get install -y -q --no-install-recommends $missing >/dev/null 2>&1
} || echo "note: could not install$missing; the tests that use them skip"
# The package starts a system dnsmasq on port 53; tests run their own.
(service dnsmasq stop || true) >/dev/null 2>&1
exit 0
