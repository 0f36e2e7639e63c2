package ca

import (
	"fmt"
	"net"

	"flotilla.dev/flotilla/libs/apierr"
	"flotilla.dev/flotilla/libs/pki"
)

// MaxSANs bounds the names of one server certificate.
const MaxSANs = 100

// sanList is a server certificate's validated subject alternative names.
type sanList struct {
	all []string // normalised, in request order, without duplicates
	dns []string
	ips []net.IP
}

// parseSANs sorts sans into DNS names and IP addresses, reporting the first
// that is neither against "sans[i]". DNS names are lowercased and lose a
// trailing dot; duplicates are dropped.
func parseSANs(sans []string) (sanList, error) {
	var l sanList
	if len(sans) > MaxSANs {
		return l, apierr.Invalid("sans", "has %d names; at most %d", len(sans), MaxSANs)
	}
	seen := make(map[string]bool, len(sans))
	for i, raw := range sans {
		field := fmt.Sprintf("sans[%d]", i)
		name, ip, err := pki.ParseServerName(raw)
		if err != nil {
			return l, apierr.Invalid(field, "%s", err)
		}
		if seen[name] {
			continue
		}
		seen[name] = true
		l.all = append(l.all, name)
		if ip != nil {
			l.ips = append(l.ips, ip)
		} else {
			l.dns = append(l.dns, name)
		}
	}
	return l, nil
}
