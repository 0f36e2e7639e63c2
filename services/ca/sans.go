package ca

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"strings"

	"flotilla.dev/flotilla/libs/apierr"
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
		if raw == "" {
			return l, apierr.Invalid(field, "is empty; want a DNS name or an IP address")
		}
		var name string
		var ip net.IP
		if addr, err := netip.ParseAddr(raw); err == nil {
			if addr.Zone() != "" {
				return l, apierr.Invalid(field, "%q is an IP address with a zone; want one without", raw)
			}
			addr = addr.Unmap()
			name, ip = addr.String(), net.IP(addr.AsSlice())
		} else {
			name = strings.ToLower(strings.TrimSuffix(raw, "."))
			if err := checkDNSName(name); err != nil {
				return l, apierr.Invalid(field, "%q is neither an IP address nor a DNS name: %s", raw, err)
			}
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
