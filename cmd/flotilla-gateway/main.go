// Command flotilla-gateway runs Flotilla's public API on its own, against an
// external NATS (FLOTILLA_NATS_URL); it listens on FLOTILLA_HTTP_ADDR and
// FLOTILLA_GRPC_ADDR. See internal/stack.EnvConfig for every
// setting.
package main

import (
	"os"

	"flotilla.dev/flotilla/api/subjects"
	"flotilla.dev/flotilla/internal/stack"
)

// version is set at build time with -ldflags "-X main.version=...".
var version = "0.1.0-dev"

func main() { os.Exit(stack.Main(subjects.Gateway, version)) }
