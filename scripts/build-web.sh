#!/usr/bin/env bash
# Build the web Administrator Console (web/src, TypeScript + Preact, noVNC, xterm.js) into
# web/dist/, which corral-api embeds in the binary (crates/corral-api/src/web/assets.rs).
# Everything comes from the npm registry through web/package-lock.json (npm ci); the output
# is a pure function of the sources and that lock file, so CI rebuilds it and compares.
#
#   scripts/build-web.sh           build into web/dist/
#   scripts/build-web.sh --check   build into a temporary directory and fail when it differs
#                                  from the committed web/dist/ (or that is missing)
set -euo pipefail
cd "$(dirname "$0")/../web"

if [[ ! -d node_modules/esbuild || ! -d node_modules/preact || node_modules/.package-lock.json -ot package-lock.json ]]; then
  npm ci --no-audit --no-fund --silent
fi

out=dist
if [[ "${1:-}" == "--check" ]]; then
  out=$(mktemp -d)
  trap 'rm -rf "$out"' EXIT
fi

# Types first: a type error fails the build.
node_modules/.bin/tsc -p tsconfig.json
node_modules/.bin/esbuild src/main.tsx --bundle --minify --format=iife --target=es2020 \
  --jsx=automatic --jsx-import-source=preact --legal-comments=none --charset=utf8 \
  --log-level=warning --outfile="$out/app.js"
cp index.html "$out/index.html"

if [[ "${1:-}" == "--check" ]]; then
  for f in index.html app.js app.css; do
    if ! cmp -s "$out/$f" "dist/$f"; then
      echo "web/dist/$f differs from a fresh build of web/src: run scripts/build-web.sh and commit web/dist" >&2
      exit 1
    fi
  done
  echo "web/dist is a fresh build of web/src"
else
  total=$(cat "$out/app.js" "$out/app.css" "$out/index.html" | gzip -9n | wc -c)
  echo "web/dist: $(wc -c <"$out/app.js") B js, $(wc -c <"$out/app.css") B css, $total B gzip in total"
fi
