#!/bin/bash
# Provisioning of one VM of the spines-kr Vagrant lab.  vagrant/Vagrantfile runs it as root, after
# writing the VM's files of the plan (daemon config, systemd-networkd files, units; see
# spines_kr/deploy/vagrant.py).  Idempotent: `vagrant provision` runs it again after a change.
#
# Environment (from the plan's provision_env):
#   SPINES_KR_ROLE    node | host
#   SPINES_KR_IFACES  "MAC=IFNAME ..." the lab's NICs and the names they get (to-<peer>, lan0)
#   SPINES_KR_UNIT    the daemon's unit instance (spines-kr@overlay) on a node
#   SPINES_KR_SRC     the repository synced into the VM (/srv/spines-kr)
#   SPINES_KR_WHEELS  optional: a directory of wheels of spines-kr's dependencies (and setuptools,
#                     wheel); pip then installs from it and the source only, with no index (the
#                     lab of `spines-kr vagrant up`, whose VMs reach no network).  With a wheel
#                     of spines-kr itself in it (built from the checkout), that is installed.
set -euo pipefail

role=${SPINES_KR_ROLE:?SPINES_KR_ROLE is not set}
src=${SPINES_KR_SRC:-/srv/spines-kr}
unit=${SPINES_KR_UNIT:-}
venv=/opt/spines-kr
say() { echo "spines-kr provision ($(hostname)): $*"; }

# 1. Debian packages.
pkgs=(iproute2 iputils-ping)
if [ "$role" = node ]; then pkgs+=(python3-venv nftables); fi
missing=()
for p in "${pkgs[@]}"; do dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p"); done
if [ ${#missing[@]} -gt 0 ]; then
    say "installing ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq "${missing[@]}" >/dev/null
fi

# 2. The lab's NICs: name each (found by its MAC) now; at later boots udev does it from the
#    .link files.  systemd-networkd gives them their addresses (.network files); the box's own
#    first NIC stays with ifupdown, which also keeps providing network-online.target.
for pair in ${SPINES_KR_IFACES:-}; do
    mac=${pair%%=*} name=${pair#*=} cur=
    for d in /sys/class/net/*; do
        if [ "$(cat "$d/address" 2>/dev/null)" = "$mac" ]; then cur=${d##*/}; fi
    done
    if [ -z "$cur" ]; then say "no network interface has MAC $mac (planned as $name)"; exit 1; fi
    if [ "$cur" != "$name" ]; then
        ip link set dev "$cur" down
        ip link set dev "$cur" name "$name"
    fi
done
systemctl enable -q systemd-networkd.service
systemctl disable -q systemd-networkd-wait-online.service 2>/dev/null || true
systemctl restart systemd-networkd.service
sysctl -q --system

if [ "$role" != node ]; then
    say "host ready: $(ip -brief address show dev lan0 2>/dev/null || echo 'no lan0?')"
    exit 0
fi

# 3. spines-kr in a virtual environment, the iproute2 name of its route protocol, the unit.
install -D -m 644 "$src/systemd/iproute2/rt_protos.d/spines.conf" /etc/iproute2/rt_protos.d/spines.conf
[ -x "$venv/bin/python" ] || python3 -m venv "$venv"
pip=("$venv/bin/pip" install -q --disable-pip-version-check --no-cache-dir)
built=$(ls "${SPINES_KR_WHEELS:-/nonexistent}"/spines_kr-*.whl 2>/dev/null | head -n 1 || true)
if [ -n "$built" ]; then
    # a wheel of the checkout, built on the lab's host (spines-kr vagrant up)
    pip+=(--no-index --find-links "$SPINES_KR_WHEELS")
    "${pip[@]}" "$built"                                       # + dependencies
    "${pip[@]}" --no-deps --force-reinstall "$built"           # this checkout
else
    if [ -n "${SPINES_KR_WHEELS:-}" ]; then
        pip+=(--no-index --find-links "$SPINES_KR_WHEELS")
        "${pip[@]}" 'setuptools>=61' wheel                      # to build the source offline
        pip+=(--no-build-isolation)
    fi
    "${pip[@]}" "$src"                                         # + dependencies
    "${pip[@]}" --no-deps --force-reinstall "$src"             # this source
fi
ln -sf "$venv/bin/spines-kr" /usr/local/bin/spines-kr     # where the unit (and PATH) look for it
unit_file="$src/systemd/spines-kr@.service"
if [ ! -f "$unit_file" ]; then
    say "$unit_file is missing: the repository's systemd unit is needed"; exit 1
fi
install -m 644 "$unit_file" /etc/systemd/system/spines-kr@.service
systemctl daemon-reload
systemctl enable -q spines-kr-logical-id.service
systemctl restart spines-kr-logical-id.service
systemctl enable -q "$unit.service"
systemctl restart "$unit.service"
say "$unit is $(systemctl is-active "$unit.service"); see its routes with: ip route show proto spines"
