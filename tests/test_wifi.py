"""`[network.wifi]` over the air, in QEMU (x86_64): the image's
wpa_supplicant, supervised by init, associates with a WPA2-PSK access point
and the station answers pings across the (virtual) radio link.

Radios: `mac80211_hwsim` (two virtual radios, wlan0 and wlan1, on one
simulated medium), loaded through `host.modules`. Cairn's station uses
wlan0 and leases its address by DHCP (`dhcp` is the default) from the
access point. The image has no shell, so
the access point is a privileged `hostNetwork` pod of a tiny image built
here (the host's static busybox and `iw`): it moves wlan1's phy into a
network namespace of its own (`unshare -n`, `iw phy set netns`), so that the
only way from it to the station is over the air, and runs the image's own
wpa_supplicant (through a hostPath of the node's root, with the dynamic
loader and libraries from there) in AP mode (`mode=2`), then pings the
station's leased address from inside that namespace.

The SSID has a quote, a backslash and a non-ASCII letter (the station's
config must use the hex form) and the passphrase a quote, a `#` and spaces
(which wpa_supplicant cannot read quoted: init derives the raw key); the
access point is given the raw PSK computed here (PBKDF2 of the two), so a
wrongly written SSID or key cannot associate. The access point also runs
busybox `udhcpd` with a pool of one address, the one it then pings. Neither
the passphrase nor a part of it may reach the console (wpa_supplicant
quotes what it failed to parse).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import socket
import subprocess
import time

import pytest

import harness

SSID = 'cairn "lab" \\ü'
PASSPHRASE = 'Zq"7k #9 vT3xw'
STATION, AP = "10.77.0.2", "10.77.0.1"

AP_SCRIPT = """\
set -eu
. /node.sh
phy=$(cat /sys/class/net/wlan1/phy80211/name)
unshare -n sleep 3600 &
ns=$!
sleep 1
node /bin/iw phy "$phy" set netns "$ns"
echo "ap: $phy moved into the namespace of $ns"
cat > /ap.conf <<EOF
network={
	ssid=%(ssid_hex)s
	mode=2
	frequency=2412
	key_mgmt=WPA-PSK
	proto=RSN
	pairwise=CCMP
	group=CCMP
	psk=%(psk_hex)s
}
EOF
nsenter -t "$ns" -n sh -c '
  set -eu
  ip link set lo up
  ip link set wlan1 up
  ip addr add %(ap)s/24 dev wlan1
  ip addr show wlan1
  . /node.sh
  node /host/sbin/wpa_supplicant -D nl80211 -i wlan1 -c /ap.conf &
  printf "start %(station)s\\nend %(station)s\\ninterface wlan1\\nlease_file /leases\\noption subnet 255.255.255.0\\n" > /udhcpd.conf
  udhcpd -f /udhcpd.conf &
  for i in $(seq 100); do
    if ping -c 1 -W 2 %(station)s; then echo "ap: station answered over the air"; exit 0; fi
    sleep 1
  done
  echo "ap: no answer from the station"; exit 1
'
"""

# `node PROGRAM ARGS`: runs a program with the node's dynamic loader and
# libraries (libnl, OpenSSL, ...), from the hostPath of its root.
NODE_SH = """\
L=/host/lib/x86_64-linux-gnu
node() { $L/ld-linux-x86-64.so.2 --library-path $L:/host/usr/lib/x86_64-linux-gnu "$@"; }
"""

POD = """\
apiVersion: v1
kind: Pod
metadata:
  name: ap
spec:
  hostNetwork: true
  restartPolicy: Never
  containers:
  - name: ap
    image: localhost/test/wifi-ap:1
    imagePullPolicy: Never
    command: ["/bin/sh", "/ap.sh"]
    securityContext: {privileged: true}
    volumeMounts: [{name: root, mountPath: /host, readOnly: true}]
  volumes:
  - name: root
    hostPath: {path: /}
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def kubectl(kubeconfig, *args, stdin=None, timeout=90) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["kubectl", "--kubeconfig", str(kubeconfig), "--request-timeout", "30s", *args],
        capture_output=True, text=True, input=stdin, timeout=timeout,
    )


@pytest.mark.boots(1)
def test_station_associates_and_answers_over_the_air(arch, image, workdir):
    if arch != "x86_64":
        pytest.skip("the access point's image is built from the host's x86_64 busybox and iw")
    busybox = shutil.which("busybox")
    iw = shutil.which("iw", path="/usr/sbin:/sbin")
    if harness.which("kubectl") or not busybox or not iw:
        pytest.fail("kubectl, busybox-static and iw must be installed (make deps)")
    port = free_port()
    out = workdir / "cfg"
    harness.tool("config", "init", "--server", f"https://127.0.0.1:{port}", out)
    kubeconfig = out / "kubeconfig.yaml"
    config = (out / "config.toml").read_text()
    assert "\n[host]\n" in config
    config = config.replace("\n[host]\n", '\n[host]\nmodules = ["mac80211_hwsim"]\n', 1)
    ssid_toml = SSID.replace("\\", "\\\\").replace('"', '\\"')
    config += (
        "\n[network.wifi]\n"
        f'ssid = "{ssid_toml}"\n'
        f"psk = '{PASSPHRASE}'\n"
        'country = "DE"\n'
    )
    (out / "config.toml").write_text(config)
    harness.tool("config", "validate", out / "config.toml")
    harness.tool("config", "write", image, out / "config.toml")

    psk = hashlib.pbkdf2_hmac("sha1", PASSPHRASE.encode(), SSID.encode(), 4096, 32)
    script = workdir / "ap.sh"
    script.write_text(AP_SCRIPT % {
        "ssid_hex": SSID.encode().hex(), "psk_hex": psk.hex(), "ap": AP, "station": STATION,
    })
    node_sh = workdir / "node.sh"
    node_sh.write_text(NODE_SH)
    archive = workdir / "ap.tar"
    applets = ("sh", "cat", "sleep", "unshare", "nsenter", "ip", "ping", "seq", "printf", "udhcpd")
    harness.tool(
        "oci", "--name", "localhost/test/wifi-ap:1", "--arch", arch,
        "--entrypoint", "/bin/sh", f"--file={busybox}=bin/busybox",
        *[f"--link=bin/{a}=busybox" for a in applets],
        f"--file={iw}=bin/iw", f"--file={script}=ap.sh", f"--file={node_sh}=node.sh", archive,
    )
    offset = harness.partitions(image)["config"]["offset"]
    harness.run(["mmd", "-i", f"{image}@@{offset}", "::images"],
                env=dict(os.environ, MTOOLS_SKIP_CHECK="1"), check=False)
    harness.mcopy_to_partition(image, "config", archive, "images/wifi-ap.tar")

    log = workdir / "console.log"
    vm = harness.boot(arch, image, log, forwards=[(port, 6443)], memory=1024)
    try:
        vm.wait_for(harness.READY, harness.ready_timeout(arch) + 60)
        vm.wait_for(r"\[wpa_supplicant\] Successfully initialized wpa_supplicant", 60)
        assert kubectl(kubeconfig, "apply", "-f", "-", stdin=POD).returncode == 0
        deadline = time.time() + 360
        while True:
            pod = json.loads(kubectl(kubeconfig, "get", "pod", "ap", "-o", "json").stdout)
            phase = pod.get("status", {}).get("phase")
            if phase in ("Succeeded", "Failed"):
                break
            assert time.time() < deadline, f"access point pod still {phase} ({log})"
            time.sleep(3)
        logs = kubectl(kubeconfig, "logs", "ap").stdout
        assert phase == "Succeeded", f"{logs}\n{pod.get('status')} ({log})"
        assert "station answered over the air" in logs, logs
        # The station's side: the supplicant reports the association.
        vm.wait_for(r"\[wpa_supplicant\] wlan0: CTRL-EVENT-CONNECTED", 30)
        vm.wait_for(rf"dhcp: lease acquired.*interface=wlan0.*{STATION}|interface=wlan0 address={STATION}/24", 30)
        console = vm.console
        assert "failed to parse" not in console
        for part in [PASSPHRASE, *(p for p in PASSPHRASE.split() if len(p) > 3)]:
            assert part not in console and part not in logs, part
        assert "not applied" not in console, "Wi-Fi is applied now"
        harness.power_off(vm)
    finally:
        vm.kill()
