// Package agent is the node agent that runs on every instance: it joins the
// fleet with a one-time token, holds a certificate from the fleet CA, keeps a
// mutually authenticated stream to the agent gateway, runs setup actions,
// installs and starts the node software, and reports heartbeats, disk usage
// and logs. It arrives with the provisioning path (cmd/flotilla-agent).
package agent
