// Package openapi embeds the OpenAPI v2 document of the Flotilla HTTP API.
//
// The document is generated from the .proto files under api/proto by
// scripts/generate.sh (protoc-gen-openapiv2, all services merged into one
// file) and copied next to this file, because go:embed cannot reach api/gen.
// Do not edit flotilla.swagger.json by hand.
package openapi

import _ "embed"

//go:embed flotilla.swagger.json
var document string

// JSON returns the OpenAPI v2 (Swagger) document describing every HTTP
// route of the API, as JSON. Each call returns a fresh copy, so callers may
// modify it.
func JSON() []byte {
	return []byte(document)
}
