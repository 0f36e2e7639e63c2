// Package agentsim simulates many Flotilla agents from one process, for
// load tests of the agent gateway and the inventory behind it: every
// simulated agent is an instance of provider "external" created and
// provisioned through the public API, joins with a real one-time token from
// the real CA (POST /api/v1/instances/{id}:joinToken) and a real key and
// CSR, holds a real mutual-TLS stream to the agent gateway, answers the
// provisioner's bootstrap command so its instance reaches running, sends
// heartbeats and log lines at the rates asked, and reconnects with the
// agent's own jittered backoff when the stream breaks (a gateway restart).
// At the end it reads back through the API how many of its lines were
// stored, removes what it created, and reports one Summary.
//
// Memory per agent is small: one goroutine (two while a stream is open), a
// key, a certificate, and counters; log lines are made from their sequence
// numbers, so resending after a reconnect needs no buffer. It talks only
// to this machine (loopback), and every count and time is bounded.
//
// loadtest/cmd/agentsim is the command; the test in this package runs it
// against a real stack, with a gateway restart.
package agentsim
