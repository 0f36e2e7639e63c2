package provisioner

import (
	"context"
	"fmt"
	"net"
	"regexp"
	"slices"
	"strings"
	"time"

	"github.com/miekg/dns"
	"google.golang.org/protobuf/types/known/emptypb"

	"flotilla.dev/flotilla/api/endpoints"
	inventoryv1 "flotilla.dev/flotilla/api/gen/flotilla/inventory/v1"
	"flotilla.dev/flotilla/api/vocab"
	"flotilla.dev/flotilla/libs/apierr"
	"flotilla.dev/flotilla/libs/pki"
	"flotilla.dev/flotilla/libs/rpc"
	awsdriver "flotilla.dev/flotilla/services/provisioner/driver/aws"
)

// challengeValueRE is what a DNS-01 value is: the key authorization's
// SHA-256, base64url without padding (43 characters); a little room is
// left, nothing that would need quoting in a TXT string.
var challengeValueRE = regexp.MustCompile(`^[A-Za-z0-9_-]{1,128}$`)

// dnsChallenge writes (put) or deletes the DNS-01 TXT record of one of an
// instance's ACME domains in its network's Route53 zone, with the
// network's cloud account, for the instance's agent: the agent orders
// with lego but never holds cloud credentials. Only the instance's own
// agent may ask (through the agent gateway), only on a network whose
// acme.challenge is dns-01, and only for a domain its ACME certificate is
// for (pki.ACMEDomains): any other name is refused.
func (s *Service) dnsChallenge(put bool) func(context.Context, vocab.Actor, *inventoryv1.DnsChallengeRequest) (*emptypb.Empty, error) {
	return func(ctx context.Context, actor vocab.Actor, r *inventoryv1.DnsChallengeRequest) (*emptypb.Empty, error) {
		id := r.GetInstanceId()
		if err := apierr.CheckID("instanceId", id); err != nil {
			return nil, err
		}
		if actor.Kind() != vocab.ActorAgent || actor.Name() != id {
			return nil, apierr.PermissionDenied("%s may not write DNS-01 records for instance %s", actor, id)
		}
		domain, ip, err := pki.ParseServerName(r.GetDomain())
		if err != nil {
			return nil, apierr.Invalid("domain", "%q %v", r.GetDomain(), err)
		}
		if ip != nil || strings.HasPrefix(domain, "*.") {
			return nil, apierr.Invalid("domain", "%q: a DNS-01 record is for a DNS name, no address or wildcard", r.GetDomain())
		}
		if !challengeValueRE.MatchString(r.GetValue()) {
			return nil, apierr.Invalid("value", "must be the key authorization's digest: 1-128 letters, digits, '-' or '_'")
		}
		in, err := rpc.Call(ctx, s.bus, endpoints.InstanceGet, &inventoryv1.GetInstanceRequest{Id: id})
		if err != nil {
			return nil, err
		}
		n, err := rpc.Call(ctx, s.bus, endpoints.NetworkGet, &inventoryv1.GetNetworkRequest{Id: in.GetNetworkId()})
		if err != nil {
			return nil, err
		}
		if vocab.HTTPSStrategy(n.GetHttpsStrategy()) != vocab.HTTPSACME || vocab.ACMEChallenge(n.GetAcme().GetChallenge()) != vocab.ACMEDNS01 {
			return nil, apierr.Invalid("instanceId", "instance %q is on network %q, which does not use httpsStrategy %q with acme.challenge %q",
				in.GetName(), n.GetName(), vocab.HTTPSACME, vocab.ACMEDNS01)
		}
		domains := make([]string, 0, 1)
		for _, d := range pki.ACMEDomains(in, n) {
			if name, _, err := pki.ParseServerName(d); err == nil {
				domains = append(domains, name)
			}
		}
		if !slices.Contains(domains, domain) {
			s.log.WarnContext(ctx, "DNS-01 record refused: not one of the instance's ACME domains", "instance_id", id, "domain", domain, "actor", actor)
			return nil, apierr.PermissionDenied("instance %q may not have DNS-01 records written for %q: its ACME domains are %v", in.GetName(), domain, domains)
		}
		zone := n.GetDns().GetPublicZoneId()
		if zone == "" {
			zone = n.GetDns().GetPrivateZoneId()
		}
		drv, err := s.awsDriver(ctx, n)
		if err != nil {
			return nil, err
		}
		name, err := challengeRecord(ctx, domain, n.GetAcme().GetDnsResolvers())
		if err != nil {
			return nil, apierr.Unavailable("DNS-01 record of %q: %v", domain, err)
		}
		if put {
			err = drv.PutChallenge(ctx, zone, name, r.GetValue())
		} else {
			err = drv.DeleteChallenge(ctx, zone, name, r.GetValue())
		}
		if err != nil {
			return nil, apierr.Unavailable("DNS-01 record of %q (%s) in zone %s: %v", domain, name, zone, err)
		}
		s.log.InfoContext(ctx, "DNS-01 record changed for an instance's agent", "instance_id", id, "domain", domain, "record", name, "zone", zone, "written", put)
		return &emptypb.Empty{}, nil
	}
}

// maxCNAMEs bounds the aliases followed from a challenge's name.
const maxCNAMEs = 8

// challengeRecord is the name of domain's DNS-01 TXT record as the ACME
// server will look for it: _acme-challenge.<domain>, or, when that name is
// an alias (the domain's owner delegating its challenges to the network's
// zone with a CNAME, which ACME servers follow), the name the aliases lead
// to. resolvers (host or host:port; none: the host's, /etc/resolv.conf)
// are asked; Route53 refuses a name outside the network's zone.
func challengeRecord(ctx context.Context, domain string, resolvers []string) (string, error) {
	servers, err := dnsServers(resolvers)
	if err != nil {
		return "", err
	}
	name := dns.Fqdn(awsdriver.ChallengeName(domain))
	for range maxCNAMEs {
		target, err := cnameOf(ctx, name, servers)
		if err != nil {
			return "", err
		}
		if target == "" {
			return strings.TrimSuffix(name, "."), nil
		}
		name = target
	}
	return "", fmt.Errorf("%s: more than %d aliases (CNAME) lead from it", awsdriver.ChallengeName(domain), maxCNAMEs)
}

// dnsServers are the resolvers to ask, host:port each.
func dnsServers(resolvers []string) ([]string, error) {
	if len(resolvers) == 0 {
		cfg, err := dns.ClientConfigFromFile("/etc/resolv.conf")
		if err != nil {
			return nil, fmt.Errorf("the host's DNS resolvers: %w", err)
		}
		for _, s := range cfg.Servers {
			resolvers = append(resolvers, net.JoinHostPort(s, cfg.Port))
		}
	}
	out := make([]string, 0, len(resolvers))
	for _, r := range resolvers {
		if _, _, err := net.SplitHostPort(r); err != nil {
			r = net.JoinHostPort(r, "53")
		}
		out = append(out, r)
	}
	return out, nil
}

// cnameOf is the target of name's CNAME record ("" when it has none), as
// the first of servers that answers says.
func cnameOf(ctx context.Context, name string, servers []string) (string, error) {
	q := new(dns.Msg)
	q.SetQuestion(name, dns.TypeCNAME)
	c := &dns.Client{Timeout: 5 * time.Second}
	var last error
	for _, srv := range servers {
		r, _, err := c.ExchangeContext(ctx, q, srv)
		switch {
		case err != nil:
			last = err
			continue
		case r.Rcode == dns.RcodeNameError:
			return "", nil
		case r.Rcode != dns.RcodeSuccess:
			last = fmt.Errorf("%s answered %s", srv, dns.RcodeToString[r.Rcode])
			continue
		}
		for _, a := range r.Answer {
			if cn, ok := a.(*dns.CNAME); ok && strings.EqualFold(cn.Hdr.Name, name) {
				return dns.Fqdn(cn.Target), nil
			}
		}
		return "", nil
	}
	return "", fmt.Errorf("look up whether %s is an alias (CNAME): %w", strings.TrimSuffix(name, "."), last)
}
