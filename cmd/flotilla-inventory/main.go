// Command flotilla-inventory runs Flotilla's inventory on its own, against an
// external NATS (FLOTILLA_NATS_URL) and PostgreSQL (FLOTILLA_DATABASE_URL). See internal/stack.EnvConfig for every
// setting.
package main

import (
	"os"

	"flotilla.dev/flotilla/api/subjects"
	"flotilla.dev/flotilla/internal/stack"
)

// version is set at build time with -ldflags "-X main.version=...".
var version = "0.1.0-dev"

func main() { os.Exit(stack.Main(subjects.Inventory, version)) }
