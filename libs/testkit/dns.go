package testkit

import (
	"context"
	"net"
	"strconv"
	"strings"
	"sync"
	"testing"

	awssdk "github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/route53"
	r53types "github.com/aws/aws-sdk-go-v2/service/route53/types"
	"github.com/miekg/dns"
)

// DNS is a DNS server of a test's own on 127.0.0.1 (UDP and TCP): it answers TXT
// questions from a lookup function, A questions with 127.0.0.1, CNAME
// questions with the aliases set (CNAME), and every other question with no
// record; a TXT question for an alias is answered as a recursive resolver
// would, with the alias and the TXT records of its target. Point Pebble
// (PebbleOptions.DNSAddr) and an ACME client's resolvers at it.
type DNS struct {
	// Addr is its host:port.
	Addr string

	mu      sync.Mutex
	aliases map[string]string
}

// CNAME makes name (lower case, without the trailing dot) an alias of
// target.
func (d *DNS) CNAME(name, target string) {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.aliases[name] = target
}

// alias is name's target, "" when it is no alias.
func (d *DNS) alias(name string) string {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.aliases[name]
}

// StartDNS starts a DNS server answering TXT questions with txt(name) (the
// name lower case, without the trailing dot), until the test ends.
func StartDNS(tb testing.TB, txt func(name string) ([]string, error)) *DNS {
	tb.Helper()
	// UDP and TCP on one port (Pebble asks over TCP, lego over UDP).
	var (
		l   net.Listener
		pc  net.PacketConn
		err error
	)
	for range 20 {
		if l, err = net.Listen("tcp", "127.0.0.1:0"); err != nil {
			break
		}
		if pc, err = net.ListenPacket("udp", l.Addr().String()); err == nil {
			break
		}
		_ = l.Close()
	}
	if err != nil {
		tb.Fatalf("testkit: DNS server: %v", err)
	}
	d := &DNS{Addr: l.Addr().String(), aliases: map[string]string{}}
	handler := dns.HandlerFunc(func(w dns.ResponseWriter, q *dns.Msg) {
		m := new(dns.Msg)
		m.SetReply(q)
		m.Authoritative = true
		for _, question := range q.Question {
			name := strings.ToLower(strings.TrimSuffix(question.Name, "."))
			hdr := dns.RR_Header{Name: question.Name, Class: dns.ClassINET, Ttl: 0}
			if target := d.alias(name); target != "" && question.Qtype != dns.TypeA {
				m.Answer = append(m.Answer, &dns.CNAME{Hdr: dns.RR_Header{Name: question.Name, Rrtype: dns.TypeCNAME, Class: dns.ClassINET}, Target: dns.Fqdn(target)})
				if question.Qtype != dns.TypeTXT {
					continue
				}
				name, hdr.Name = target, dns.Fqdn(target)
			}
			switch question.Qtype {
			case dns.TypeTXT:
				values, err := txt(name)
				if err != nil {
					tb.Logf("testkit: DNS: TXT %s: %v", name, err)
					m.Rcode = dns.RcodeServerFailure
				}
				for _, v := range values {
					hdr.Rrtype = dns.TypeTXT
					m.Answer = append(m.Answer, &dns.TXT{Hdr: hdr, Txt: []string{v}})
				}
			case dns.TypeA:
				hdr.Rrtype = dns.TypeA
				m.Answer = append(m.Answer, &dns.A{Hdr: hdr, A: net.IPv4(127, 0, 0, 1)})
			}
		}
		_ = w.WriteMsg(m)
	})
	for _, srv := range []*dns.Server{{PacketConn: pc, Handler: handler}, {Listener: l, Handler: handler}} {
		started := make(chan struct{})
		srv.NotifyStartedFunc = func() { close(started) }
		go func() { _ = srv.ActivateAndServe() }()
		<-started
		tb.Cleanup(func() { _ = srv.Shutdown() })
	}
	return d
}

// Route53TXT looks TXT records up in a Route53 hosted zone through its API
// (moto serves the API but no DNS): given to StartDNS, what was written in
// the zone is what the server answers.
func Route53TXT(ctx context.Context, client *route53.Client, zoneID string) func(name string) ([]string, error) {
	return func(name string) ([]string, error) {
		out, err := client.ListResourceRecordSets(ctx, &route53.ListResourceRecordSetsInput{HostedZoneId: awssdk.String(zoneID),
			StartRecordName: awssdk.String(name), StartRecordType: r53types.RRTypeTxt, MaxItems: awssdk.Int32(1)})
		if err != nil {
			return nil, err
		}
		var values []string
		for _, rs := range out.ResourceRecordSets {
			if rs.Type != r53types.RRTypeTxt || !strings.EqualFold(strings.TrimSuffix(awssdk.ToString(rs.Name), "."), name) {
				continue
			}
			for _, r := range rs.ResourceRecords {
				v := awssdk.ToString(r.Value)
				if u, err := strconv.Unquote(v); err == nil {
					v = u
				}
				values = append(values, v)
			}
		}
		return values, nil
	}
}
