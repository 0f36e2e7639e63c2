// Package agentgw is the agents' front door: a gRPC server
// (agent.v1.AgentGateway) over TLS 1.3 on the agent port, between the node
// agents and the bus.
//
// The gateway presents a server certificate from the fleet CA (asked for
// over the bus at start and renewed before it expires) and accepts client
// certificates issued by that CA only. Join needs no client certificate: it
// forwards a one-time join token and a CSR to the CA. Renew and Connect need
// an agent certificate, and the instance id is always the certificate's
// subject CN, never a field of a message.
//
// On Connect the agent says hello; the gateway then subscribes to the
// agent's command subject (core NATS, no queue group, so a command sent
// while the agent is connected nowhere gets "no responders"), forwards
// every command down the stream, and puts what the agent reports on the
// bus: connects, heartbeats, progress and disconnects as agent.v1.AgentEvent
// to the agent's status subject and, in batches of many agents' events, to
// the inventory's lifecycle.observe-many endpoint, and log lines to the agent-log stream with the message id
// "<instance-id>-<seq>", so lines an agent sends again after a reconnect are
// dropped by JetStream's de-duplication. Secret and server-certificate
// requests are answered from the secrets service and the CA, for the
// certificate's instance and with SANs from the inventory, never from the
// agent. A second stream for the same instance replaces the first, and a
// stream ends when its client certificate expires, so an agent reconnects
// with its renewed one, or when the agent is released (agent.v1.Release):
// the agent closes it, or the gateway does after releaseGrace.
package agentgw
