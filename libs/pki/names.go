package pki

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"slices"
	"strings"

	inventoryv1 "flotilla.dev/flotilla/api/gen/flotilla/inventory/v1"
)

// GatewayInstanceID is the instance id the agent gateway's own server
// certificate is issued for.
const GatewayInstanceID = "agentgw"

// InstanceServerNames are the names an instance's HTTPS server certificate
// may carry, normalised (ParseServerName), without repeats: its SSL SANs
// that CheckInstanceName accepts (reserved: the agent gateway's names), then
// the addresses its provider and the network's DNS gave it: its DNS name
// (hostname), public DNS name and IP, private IP and DNS name (on the
// local provider, the host's loopback: such a certificate cannot pass for
// the agent gateway, whose certificate comes from a CA of its own). The
// agent gateway asks for these and the CA signs no other name, so an agent
// cannot get a certificate for a name its instance's spec does not give it.
func InstanceServerNames(inst *inventoryv1.Instance, reserved []string) []string {
	var names []string
	add := func(n string, err error) {
		if err == nil && !slices.Contains(names, n) {
			names = append(names, n)
		}
	}
	for _, raw := range inst.GetSsl().GetSans() {
		n, _, err := CheckInstanceName(raw, reserved)
		add(n, err)
	}
	a := inst.GetAddresses()
	for _, raw := range []string{a.GetHostname(), a.GetPublicDns(), a.GetPublicIp(), a.GetPrivateIp(), a.GetPrivateDns()} {
		if raw != "" {
			n, _, err := ParseServerName(raw)
			add(n, err)
		}
	}
	return names
}

// ParseServerName reads one name of a server certificate: an IP address
// (without a zone; IPv4-mapped IPv6 becomes IPv4) or a DNS name, made lower
// case without a trailing dot, whose labels are 1-63 letters, digits and
// inner hyphens (253 characters at most), the first label possibly "*",
// and whose last label is not all digits. It returns the normalised name
// and, for an address, the IP. Its error is a rule, fit to follow a field.
func ParseServerName(raw string) (name string, ip net.IP, err error) {
	if raw == "" {
		return "", nil, errors.New("is empty; want a DNS name or an IP address")
	}
	if addr, err := netip.ParseAddr(raw); err == nil {
		if addr.Zone() != "" {
			return "", nil, fmt.Errorf("%q is an IP address with a zone; want one without", raw)
		}
		addr = addr.Unmap()
		return addr.String(), net.IP(addr.AsSlice()), nil
	}
	name = strings.ToLower(strings.TrimSuffix(raw, "."))
	if err := checkDNSName(name); err != nil {
		return "", nil, fmt.Errorf("%q is neither an IP address nor a DNS name: %s", raw, err)
	}
	return name, nil, nil
}

// CheckInstanceName reads a name an operator gives an instance's server
// certificate (ssl.sans): ParseServerName's rules, and it may not be
// localhost, a loopback or unspecified address, or one of the agent
// gateway's names (reserved). The inventory checks ssl.sans with it and the
// CA signs only names that pass it, so an instance's certificate can never
// name the manager's own host.
func CheckInstanceName(raw string, reserved []string) (name string, ip net.IP, err error) {
	name, ip, err = ParseServerName(raw)
	if err != nil {
		return "", nil, err
	}
	switch {
	case ip != nil && (ip.IsLoopback() || ip.IsUnspecified()):
		return "", nil, fmt.Errorf("%q is a loopback or unspecified address: an instance's certificate may not name the manager's host", raw)
	case name == "localhost" || strings.HasSuffix(name, ".localhost"):
		return "", nil, fmt.Errorf("%q is localhost: an instance's certificate may not name the manager's host", raw)
	}
	for _, r := range reserved {
		if rn, _, err := ParseServerName(r); err == nil && rn == name {
			return "", nil, fmt.Errorf("%q is a name of the agent gateway", raw)
		}
	}
	return name, ip, nil
}

// checkDNSName accepts a lowercase host name of labels of 1-63 letters,
// digits and inner hyphens, at most 253 characters, optionally with "*" as
// its whole first label (a wildcard), whose last label is not all digits
// (so a mistyped IP address is not taken for a name).
func checkDNSName(name string) error {
	if len(name) > 253 {
		return errors.New("longer than 253 characters")
	}
	labels := strings.Split(name, ".")
	if labels[0] == "*" {
		if len(labels) < 2 {
			return errors.New("a wildcard needs a domain after \"*.\"")
		}
		labels = labels[1:]
	}
	for _, l := range labels {
		if l == "" {
			return errors.New("has an empty label")
		}
		if len(l) > 63 {
			return fmt.Errorf("label %q is longer than 63 characters", l)
		}
		for j := 0; j < len(l); j++ {
			c := l[j]
			if !(c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || c == '-') {
				return fmt.Errorf("label %q may hold only letters, digits and '-'", l)
			}
		}
		if l[0] == '-' || l[len(l)-1] == '-' {
			return fmt.Errorf("label %q starts or ends with '-'", l)
		}
	}
	if strings.Trim(labels[len(labels)-1], "0123456789") == "" {
		return errors.New("its last label is all digits")
	}
	return nil
}
