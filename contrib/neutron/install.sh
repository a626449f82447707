#!/bin/sh
# install.sh [DEST]: install the vmware_dvs ML2 driver without pip: copy the package
# vcagent_ml2 into DEST (default /usr/lib/python3/dist-packages, Debian's python3) and
# write DEST/vcagent_ml2-0.1.0.egg-info, whose entry_points.txt registers it as
# neutron.ml2.mechanism_drivers "vmware_dvs". Idempotent (replaces an older copy).
set -eu
SRC=$(cd "$(dirname "$0")" && pwd)
DEST=${1:-/usr/lib/python3/dist-packages}
VERSION=0.1.0
mkdir -p "$DEST"
rm -rf "$DEST/vcagent_ml2.tmp" "$DEST"/vcagent_ml2-*.egg-info
cp -r "$SRC/vcagent_ml2" "$DEST/vcagent_ml2.tmp"
find "$DEST/vcagent_ml2.tmp" -name __pycache__ -prune -exec rm -rf {} +
rm -rf "$DEST/vcagent_ml2"
mv "$DEST/vcagent_ml2.tmp" "$DEST/vcagent_ml2"
EI=$DEST/vcagent_ml2-$VERSION.egg-info
mkdir -p "$EI"
printf 'Metadata-Version: 1.2\nName: vcagent-ml2\nVersion: %s\nSummary: ML2 mechanism driver vmware_dvs for vcagent\nLicense: Apache-2.0\n' "$VERSION" > "$EI/PKG-INFO"
echo vcagent_ml2 > "$EI/top_level.txt"
cat > "$EI/entry_points.txt" <<EP
[neutron.ml2.mechanism_drivers]
vmware_dvs = vcagent_ml2.driver:VMwareDVSMechanismDriver
EP
echo "installed vcagent_ml2 $VERSION in $DEST"
