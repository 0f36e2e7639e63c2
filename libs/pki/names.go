package pki

import (
	"slices"

	inventoryv1 "flotilla.dev/flotilla/api/gen/flotilla/inventory/v1"
)

// GatewayInstanceID is the instance id the agent gateway's own server
// certificate is issued for.
const GatewayInstanceID = "agentgw"

// InstanceServerNames are the names an instance's HTTPS server certificate
// may carry: its SSL SANs, then its private IP and private DNS name, without
// blanks or repeats. The agent gateway asks for these and the CA signs no
// other name, so an agent cannot get a certificate for a name its
// instance's spec does not give it.
func InstanceServerNames(inst *inventoryv1.Instance) []string {
	var names []string
	for _, n := range append(slices.Clone(inst.GetSsl().GetSans()),
		inst.GetAddresses().GetPrivateIp(), inst.GetAddresses().GetPrivateDns()) {
		if n != "" && !slices.Contains(names, n) {
			names = append(names, n)
		}
	}
	return names
}
