#!/bin/sh
# Vendors onnxruntime-web for the browser page's "this tab" mode (docs/browser.md): the npm
# registry's package at VERSION, its tarball checked against SHA512, the WebAssembly build
# (and package.json, for its version and MIT licence) copied into DEST. `make setup` runs it
# into clients/web/vendor/onnxruntime-web; the container images run it in a build stage.
# Usage: clients/vendor-onnxruntime-web.sh DEST [WORKDIR]
set -eu
VERSION=1.30.0
SHA512=ab4cbe26baedba45d2cec05610c71c55fa97db92d19a8b171c5f8269126683ca590a5cdc57bb2f35ce2b298de32f4d956fb42644c0ecd528a0a91e025c07ca61
FILES="ort.wasm.min.mjs ort-wasm-simd-threaded.mjs ort-wasm-simd-threaded.wasm
       ort.webgpu.min.mjs ort-wasm-simd-threaded.asyncify.mjs ort-wasm-simd-threaded.asyncify.wasm"

dest=${1:?usage: $0 DEST [WORKDIR]}
work=${2:-$(mktemp -d)}
rm -rf "$work" "$dest"
mkdir -p "$work" "$dest"
(cd "$work" && npm pack --silent "onnxruntime-web@$VERSION" >/dev/null)
tarball="$work/onnxruntime-web-$VERSION.tgz"
echo "$SHA512  $tarball" | sha512sum -c --quiet
tar -xzf "$tarball" -C "$work"
for name in $FILES package.json; do
    case $name in package.json) src="$work/package/$name" ;; *) src="$work/package/dist/$name" ;; esac
    cp "$src" "$dest/"
done
rm -rf "$work"
touch "$dest/.version-$VERSION"
echo "vendored onnxruntime-web $VERSION into $dest"
