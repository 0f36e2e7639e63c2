// Command flotilla-agentgw runs Flotilla's agent gateway on its own, against
// an external NATS (FLOTILLA_NATS_URL), taking agents on FLOTILLA_AGENT_ADDR
// with a certificate for FLOTILLA_AGENT_SERVER_NAMES. See internal/stack.EnvConfig for every
// setting.
package main

import (
	"os"

	"flotilla.dev/flotilla/api/subjects"
	"flotilla.dev/flotilla/internal/stack"
)

// version is set at build time with -ldflags "-X main.version=...".
var version = "0.1.0-dev"

func main() { os.Exit(stack.Main(subjects.AgentGW, version)) }
