// Command flotilla-ca runs Flotilla's fleet CA on its own, against an external
// NATS (FLOTILLA_NATS_URL), signing with FLOTILLA_CA_CERT_FILE and
// FLOTILLA_CA_KEY_FILE (created if neither exists). See internal/stack.EnvConfig for every
// setting.
package main

import (
	"os"

	"flotilla.dev/flotilla/api/subjects"
	"flotilla.dev/flotilla/internal/stack"
)

// version is set at build time with -ldflags "-X main.version=...".
var version = "0.1.0-dev"

func main() { os.Exit(stack.Main(subjects.CA, version)) }
