package gateway

import (
	"context"
	"net"
	"strings"
	"testing"

	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/peer"
)

// TestTheClientBehindATrustedProxy: a request's client is its peer unless
// the peer is a trusted proxy; then it is the nearest address in
// X-Forwarded-For that is not one, so an untrusted client's header, or
// what a client wrote before the proxy's entry, names nobody.
func TestTheClientBehindATrustedProxy(t *testing.T) {
	t.Parallel()
	p, err := ParseProxies([]string{"10.77.0.1", " 10.77.0.0/24", "fd00::/8", ""})
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		name, remote string
		forwarded    []string
		want         string
	}{
		{"no proxy", "198.51.100.4:5555", nil, "198.51.100.4"},
		{"an untrusted peer's header is ignored", "198.51.100.4:5555", []string{"203.0.113.7"}, "198.51.100.4"},
		{"through the proxy", "10.77.0.1:40000", []string{"203.0.113.7"}, "203.0.113.7"},
		{"what the client wrote before the proxy's entry", "10.77.0.1:40000", []string{"192.0.2.66, 203.0.113.7"}, "203.0.113.7"},
		{"two trusted proxies in a row", "10.77.0.1:40000", []string{"203.0.113.7, 10.77.0.9"}, "203.0.113.7"},
		{"several header lines", "10.77.0.1:40000", []string{"192.0.2.66", "203.0.113.8"}, "203.0.113.8"},
		{"no header: the proxy itself", "10.77.0.1:40000", nil, "10.77.0.1"},
		{"garbage ends the walk", "10.77.0.1:40000", []string{"203.0.113.7, not-an-address"}, "10.77.0.1"},
		{"IPv6", "[fd00::1]:40000", []string{"2001:db8::5"}, "2001:db8::5"},
		{"an IPv4-mapped peer", "[::ffff:10.77.0.1]:40000", []string{"203.0.113.7"}, "203.0.113.7"},
	} {
		if got := p.client(c.remote, c.forwarded); got != c.want {
			t.Errorf("%s: %q; want %q", c.name, got, c.want)
		}
	}
	// Without trusted proxies nothing is believed.
	if got := Proxies(nil).client("10.77.0.1:40000", []string{"203.0.113.7"}); got != "10.77.0.1" {
		t.Errorf("no trusted proxies: %q", got)
	}
	if _, err := ParseProxies([]string{"10.77.0.1", "haproxy.internal"}); err == nil || !strings.Contains(err.Error(), "haproxy.internal") {
		t.Errorf("a host name: %v; want an error naming it", err)
	}

	// gRPC: the peer and the x-forwarded-for metadata, the same way.
	g := &Gateway{proxies: p}
	ctx := peer.NewContext(t.Context(), &peer.Peer{Addr: &net.TCPAddr{IP: net.ParseIP("10.77.0.1"), Port: 40000}})
	ctx = metadata.NewIncomingContext(ctx, metadata.Pairs("x-forwarded-for", "203.0.113.9"))
	if got := clientAddr(g.grpcClient(ctx)); got != "203.0.113.9" {
		t.Errorf("gRPC through the proxy: %q", got)
	}
	if got := clientAddr(g.grpcClient(context.Background())); got != "" {
		t.Errorf("gRPC without a peer: %q", got)
	}
}
