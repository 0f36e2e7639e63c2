package gateway

import (
	"context"
	"fmt"
	"net/netip"
	"strings"

	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/peer"
)

// Proxies are the addresses of the reverse proxies (HAProxy in a cluster)
// whose X-Forwarded-For the gateway believes: a request that comes
// through one is taken to come from the address the proxy saw, for the
// per-address login limit and the client's address in audit records.
// Nobody else's X-Forwarded-For counts, so a client cannot name an
// address of its choosing.
type Proxies []netip.Prefix

// ParseProxies reads addresses and CIDR prefixes ("10.77.0.1",
// "10.0.0.0/8"); a bad entry is an error naming it.
func ParseProxies(entries []string) (Proxies, error) {
	var out Proxies
	for _, e := range entries {
		e = strings.TrimSpace(e)
		if e == "" {
			continue
		}
		if p, err := netip.ParsePrefix(e); err == nil {
			out = append(out, p.Masked())
			continue
		}
		a, err := netip.ParseAddr(e)
		if err != nil {
			return nil, fmt.Errorf("%q is neither an IP address nor a CIDR prefix", e)
		}
		out = append(out, netip.PrefixFrom(a.Unmap(), a.Unmap().BitLen()))
	}
	return out, nil
}

func (p Proxies) trusts(a netip.Addr) bool {
	a = a.Unmap()
	for _, pr := range p {
		if pr.Contains(a) {
			return true
		}
	}
	return false
}

// client is the address a request came from: remote (host or host:port,
// the connection's peer) unless that is a trusted proxy, and then the
// nearest address in X-Forwarded-For (the values given, each a
// comma-separated list, every hop appending the address it saw) that is
// not a trusted proxy. An entry that is not an address ends the walk at
// the last address believed.
func (p Proxies) client(remote string, forwarded []string) string {
	host := hostOf(remote)
	a, err := netip.ParseAddr(host)
	if err != nil || len(p) == 0 || !p.trusts(a) {
		return host
	}
	var hops []string
	for _, v := range forwarded {
		hops = append(hops, strings.Split(v, ",")...)
	}
	for i := len(hops) - 1; i >= 0; i-- {
		h, err := netip.ParseAddr(strings.TrimSpace(hops[i]))
		if err != nil {
			break
		}
		a = h.Unmap()
		if !p.trusts(a) {
			break
		}
	}
	return a.String()
}

// grpcClient puts a gRPC call's client address in its context, as the
// HTTP middleware does for REST (clientAddr).
func (g *Gateway) grpcClient(ctx context.Context) context.Context {
	remote := ""
	if pr, ok := peer.FromContext(ctx); ok && pr.Addr != nil {
		remote = pr.Addr.String()
	}
	md, _ := metadata.FromIncomingContext(ctx)
	return context.WithValue(ctx, clientKey{}, g.proxies.client(remote, md.Get("x-forwarded-for")))
}
