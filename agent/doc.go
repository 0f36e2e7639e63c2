// Package agent is the node agent that runs on every instance's VM, and the
// node software of the local provider.
//
// [Run] makes an ECDSA P-256 key (kept, mode 0600, in the state directory),
// joins the fleet once with a one-time join token (a CSR exchanged for a
// certificate from the fleet CA whose subject is the instance id), and keeps
// a gRPC stream over mutual TLS to the agent gateway. The certificate is
// presented through tls.Config.GetClientCertificate and renewed when less
// than a third of its lifetime remains, so a renewal needs no restart: the
// stream closes cleanly and reconnects with the new certificate. A broken
// stream reconnects with full-jitter exponential backoff (200ms to 10s).
//
// Over the stream the agent says hello (version, VM id, last completed
// command), sends a heartbeat every few seconds (data-disk usage, load,
// node URL, private IP), and runs the commands it receives one at a time.
// Bootstrap runs the template's setup actions in the data disk's root
// (scripts with FLOTILLA_DATA_DIR and earlier env actions, files confined
// to the data disk, packages through the package installer), with
// ${secret:NAME} resolved over the stream and masked in the logs; then it
// installs and starts the node software as a supervised child, with a
// server certificate from the fleet CA for the self-signed HTTPS strategy.
// Every step is reported as progress; a completed command is remembered in
// the state directory, so a repeated one only reports done again.
//
// Log lines (the agent's own, setup output and the node software's output)
// go into a bounded buffer. A program's output is never dropped: while the
// buffer is full the agent stops reading the program's pipe, so the program
// blocks on its next write. The agent's own lines never wait; past a reserve
// beyond a full buffer they are dropped, and a line says how many. A line
// written to a stream is kept until the gateway acknowledges it (LogAck:
// JetStream stored every line up to that seq); with an older gateway, which
// sends no LogAck, until the stream stayed healthy through a whole heartbeat
// interval or ended cleanly. After a reconnect every line not yet stored is
// sent again; the gateway stores each as "<instance-id>-<seq>", and
// JetStream's de-duplication drops the ones it already has. Sequence numbers
// start at the agent's start time in microseconds, so they keep increasing
// across restarts.
//
// Told to upgrade (agent.v1.UpgradeAgent), the agent makes the binary of
// the version asked for ready — the executable it runs from if that is it
// already, or else one downloaded and checked against its SHA-256 — stops
// the node software and its stream, and Run returns [Upgraded]; [Exec]
// runs the new binary in the same process with the same flags
// ([RunUpgrading] runs the agent again as it was when that fails).
//
// [RunNode] is the node software of the local provider: an HTTP(S) server
// whose page names the instance. [NewCommand] is the `agent` command with
// both, mounted by cmd/flotilla-agent and `flotilla agent`.
package agent
