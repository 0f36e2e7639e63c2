// Package compose holds Flotilla's development docker compose file
// (docker-compose.yml, with compose/Dockerfile, the NATS and HAProxy
// configurations beside it) and, in its test, the checks that every service
// in it would start: each flotilla-<service>'s environment as compose builds
// it, loaded and validated by the same code the binary runs, with every file
// it names on a volume that holds it.
package compose
