#!/usr/bin/env bash
# Triton's perf_analyzer on a machine with glibc older than 2.38 (Debian 12 has 2.36).
#
# The perf-analyzer wheel is built for manylinux_2_38. This script downloads it and Debian 13's libc6,
# libstdc++6 and libgcc-s1 packages, unpacks them (dpkg -x, nothing is installed system-wide) into
# $PIH2T_PERF_ANALYZER_HOME (default ~/.cache/pih2t/perf_analyzer) and writes bin/perf_analyzer there: a
# wrapper that starts the binary through that folder's ld-linux-x86-64.so.2 --library-path.
#
#   bash benchmarks/perf_analyzer.sh            # set up (once), print the wrapper's path
#   "$(bash benchmarks/perf_analyzer.sh)" -m digits-lt_image -u 127.0.0.1:8000 ...
set -euo pipefail

HOME_DIR="${PIH2T_PERF_ANALYZER_HOME:-$HOME/.cache/pih2t/perf_analyzer}"
VERSION=2.60.0
DEBIAN=http://deb.debian.org/debian/pool/main
PACKAGES=(
  "g/glibc/libc6_2.41-12+deb13u5_amd64.deb"
  "g/gcc-14/libstdc++6_14.2.0-19_amd64.deb"
  "g/gcc-14/libgcc-s1_14.2.0-19_amd64.deb"
)
WRAPPER="$HOME_DIR/bin/perf_analyzer"
if [[ -x "$WRAPPER" ]]; then
  echo "$WRAPPER"
  exit 0
fi
mkdir -p "$HOME_DIR/downloads" "$HOME_DIR/root" "$HOME_DIR/bin"
cd "$HOME_DIR/downloads"
python -m pip download --quiet --no-deps "perf-analyzer==$VERSION" \
  --platform manylinux_2_38_x86_64 --only-binary=:all: -d . >&2
for package in "${PACKAGES[@]}"; do
  curl --fail --silent --show-error -O "$DEBIAN/$package" >&2
  dpkg -x "$(basename "$package")" "$HOME_DIR/root"
done
python -m zipfile -e "perf_analyzer-$VERSION-py3-none-manylinux_2_38_x86_64.whl" "$HOME_DIR/wheel"
chmod +x "$HOME_DIR/wheel/perf_analyzer/bin/perf_analyzer"
LIBS="$HOME_DIR/root/usr/lib/x86_64-linux-gnu"
cat > "$WRAPPER.tmp" <<WRAP
#!/usr/bin/env bash
exec "$LIBS/ld-linux-x86-64.so.2" --library-path "$LIBS" "$HOME_DIR/wheel/perf_analyzer/bin/perf_analyzer" "\$@"
WRAP
chmod +x "$WRAPPER.tmp"
mv "$WRAPPER.tmp" "$WRAPPER"
echo "$WRAPPER"
