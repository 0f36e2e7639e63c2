// Command flotilla-secrets runs Flotilla's secret broker on its own, against
// an external NATS (FLOTILLA_NATS_URL) and PostgreSQL (FLOTILLA_DATABASE_URL),
// with the master key in FLOTILLA_KMS_KEY_FILE (shared by every manager; it is
// never created here), or an AWS KMS key (FLOTILLA_KMS_PROVIDER=aws,
// FLOTILLA_KMS_AWS_*). See internal/stack.EnvConfig for every setting.
package main

import (
	"os"

	"flotilla.dev/flotilla/api/subjects"
	"flotilla.dev/flotilla/internal/stack"
)

// version is set at build time with -ldflags "-X main.version=...".
var version = "0.1.0-dev"

func main() { os.Exit(stack.Main(subjects.Secrets, version)) }
