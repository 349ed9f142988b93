#!/bin/bash
# Stand-in for the XMS installer, for tests: installs services named like XMS's and a management API
# stand-in, and ends with an error as the real one does in a build container (the build goes on).
set -e
if [ "$1" != -a ] || [ "$2" != -s ]; then
    echo "usage: xms_install.sh -a -s (unattended, silent)" >&2
    exit 64
fi
here=$(cd "$(dirname "$0")" && pwd)
install -d /opt/standin-xms /usr/dialogic/cfg/mitconfig /var/lib/xms/meters
install -m 0755 "$here/busybox" "$here/oam-reply" /opt/standin-xms/
# The real installer binds RTP to this machine's address here; an image must not keep it.
echo '<rtp_addr ip="172.17.0.99"/>' > /usr/dialogic/cfg/mitconfig/ipms_rtp_addr_cfg.xml

unit() {
    printf '[Unit]\nDescription=XMS stand-in %s\n[Service]\nExecStart=%s\n[Install]\nWantedBy=multi-user.target\n' \
        "$1" "$2" > "/etc/systemd/system/$1.service"
    systemctl enable "$1.service"
}
for service in nodecontroller broker xmserver appmanager xmsrest; do
    unit "$service" "/bin/sleep infinity"
done
# XMS lets faxservice be down; the stand-in's always fails, so readiness must allow it.
unit faxservice /bin/false
unit xms-oam "/opt/standin-xms/busybox nc -ll -p 10080 -e /opt/standin-xms/oam-reply"
echo "stand-in XMS installed"
echo "warning: cannot start services during the install" >&2
exit 3
