#!/usr/bin/env bash
# Regenerates all protobuf code from api/proto:
#   api/gen/flotilla/<area>/v1/*.pb.go, *_grpc.pb.go, *.pb.gw.go
#   api/gen/openapi/flotilla.swagger.json  (one merged OpenAPI v2 document)
#   api/openapi/flotilla.swagger.json      (copy of it, embedded by package openapi)
# and the endpoint table in ARCHITECTURE.md from the declarations in
# api/endpoints.
#
# Needs only Go: buf and the protoc plugins are pinned in tools/buf/go.mod and
# tools/go.mod and run with `go tool`, so the first run downloads them from the
# Go module proxy and builds them (a few minutes); later runs use the build cache.
# The output depends only on the .proto files and the pinned versions.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"

# `go tool -modfile=...` is refused in workspace mode; the tools modules are
# self-contained, so never let a go.work file take part.
export GOWORK=off

gen_dir=api/gen
openapi_out=api/gen/openapi/flotilla.swagger.json
openapi_embed=api/openapi/flotilla.swagger.json

buf=(go tool -modfile=tools/buf/go.mod buf)

# Build every tool once, one after another, before buf starts the plugins in
# parallel; otherwise a cold build cache would compile each plugin several times.
echo "generate: building tools" >&2
"${buf[@]}" --version >/dev/null
for plugin in protoc-gen-go protoc-gen-go-grpc protoc-gen-grpc-gateway protoc-gen-openapiv2; do
	go tool -modfile=tools/go.mod "$plugin" --version >/dev/null
done

# Remove previously generated files (and only those), so that output for a
# deleted or renamed .proto file does not linger.
if [[ -d $gen_dir ]]; then
	find "$gen_dir" -type f \( -name '*.pb.go' -o -name '*.pb.gw.go' -o -name '*.swagger.json' \) -delete
	find "$gen_dir" -mindepth 1 -type d -empty -delete
fi

if [[ -z "$(find api/proto -type f -name '*.proto' -print -quit 2>/dev/null)" ]]; then
	echo "generate: no .proto files under api/proto; writing a placeholder OpenAPI document" >&2
	cat >"$openapi_embed" <<'JSON'
{
  "swagger": "2.0",
  "info": {
    "title": "flotilla",
    "version": "0"
  },
  "paths": {}
}
JSON
	exit 0
fi

echo "generate: buf generate" >&2
"${buf[@]}" generate --template api/buf.gen.yaml

cp "$openapi_out" "$openapi_embed"

echo "generate: endpoint table in ARCHITECTURE.md" >&2
GOWORK= FLOTILLA_UPDATE_DOCS=1 go test -count=1 -run '^TestArchitectureListsTheDeclaredEndpoints$' ./api/endpoints >/dev/null
echo "generate: done" >&2
