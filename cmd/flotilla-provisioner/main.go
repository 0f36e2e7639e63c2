// Command flotilla-provisioner runs Flotilla's provisioner on its own, against
// an external NATS (FLOTILLA_NATS_URL). FLOTILLA_LOCAL_ROOT enables the local
// provider; new agents are told to reach FLOTILLA_AGENT_GATEWAY_ADDR. See internal/stack.EnvConfig for every
// setting.
package main

import (
	"os"

	"flotilla.dev/flotilla/api/subjects"
	"flotilla.dev/flotilla/internal/stack"
)

// version is set at build time with -ldflags "-X main.version=...".
var version = "0.1.0-dev"

func main() { os.Exit(stack.Main(subjects.Provisioner, version)) }
