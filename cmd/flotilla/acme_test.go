package main

import (
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"strings"
	"testing"
	"time"

	"flotilla.dev/flotilla/libs/testkit"
)

// TestACMEEndToEnd runs `flotilla up` with an "acme" network pointed at
// Pebble: the instance's agent orders its certificate over HTTP-01, the
// instance runs, a client with Pebble's root verifies its URL, and
// :refresh-certificate renews it without restarting the node software.
func TestACMEEndToEnd(t *testing.T) {
	t.Parallel()
	port := testkit.FreePort(t)
	p := testkit.StartPebble(t, port)
	f := newFleet(t)

	// Rules name the field.
	for _, tc := range []struct{ body, field string }{
		{`{"name":"a1","provider":"local","httpsStrategy":"acme"}`, "acme.contactEmail"},
		{`{"name":"a1","provider":"local","httpsStrategy":"acme","acme":{"contactEmail":"ops@fleet.test","directoryUrl":"ftp://x"}}`, "acme.directoryUrl"},
		{`{"name":"a1","provider":"local","httpsStrategy":"acme","acme":{"contactEmail":"ops@fleet.test","httpPort":70000}}`, "acme.httpPort"},
		{`{"name":"a1","provider":"local","httpsStrategy":"acme","acme":{"contactEmail":"ops@fleet.test","challenge":"tls-alpn-01"}}`, "acme.challenge"},
		// DNS-01 records are written in the network's Route53 zone: aws only.
		{`{"name":"a1","provider":"local","httpsStrategy":"acme","acme":{"contactEmail":"ops@fleet.test","challenge":"dns-01"}}`, "acme.challenge"},
		{`{"name":"a1","provider":"local","httpsStrategy":"acme","acme":{"contactEmail":"ops@fleet.test","dnsResolvers":["127.0.0.1"]}}`, "acme.dnsResolvers"},
	} {
		code, out := f.do(t, "POST", "/api/v1/networks", f.token, tc.body)
		if code != 400 || !strings.HasPrefix(fmt.Sprint(out["message"]), tc.field+":") {
			t.Errorf("%s: %d %v; want 400 naming %s", tc.body, code, out, tc.field)
		}
	}
	net := f.api(200, "POST", "/api/v1/networks", fmt.Sprintf(`{"name":"acme-lab","provider":"local","httpsStrategy":"acme","acme":{"contactEmail":"ops@fleet.test","directoryUrl":%q,"httpPort":%d,"directoryCaPem":%s}}`,
		p.DirectoryURL, port, jsonString(p.DirectoryCAPEM)))
	tmpl := f.api(200, "POST", "/api/v1/templates", `{"name":"acme-lab","provider":"local","dataDiskGb":1}`)
	code, out := f.do(t, "POST", "/api/v1/instances", f.token, fmt.Sprintf(`{"name":"x","kind":"design","templateId":"%s","networkId":"%s"}`, tmpl["id"], net["id"]))
	if code != 400 || !strings.HasPrefix(fmt.Sprint(out["message"]), "ssl.domains:") {
		t.Errorf("an instance without domains: %d %v", code, out)
	}
	code, out = f.do(t, "POST", "/api/v1/instances", f.token, fmt.Sprintf(`{"name":"x","kind":"design","templateId":"%s","networkId":"%s","ssl":{"domains":["127.0.0.1"]}}`, tmpl["id"], net["id"]))
	if code != 400 || !strings.HasPrefix(fmt.Sprint(out["message"]), "ssl.domains[0]:") {
		t.Errorf("an address as a domain: %d %v", code, out)
	}
	id := f.instance("web", net, tmpl, `,"ssl":{"domains":["node.test"]}`)
	f.api(200, "POST", "/api/v1/instances/"+id+":provision", "")
	in := f.waitState(id, "running", 3*time.Minute)
	url := in["addresses"].(map[string]any)["url"].(string)
	addr := strings.TrimSuffix(strings.TrimPrefix(url, "https://"), "/")
	leaf := func() *x509.Certificate {
		c, err := tls.Dial("tcp", addr, &tls.Config{RootCAs: p.Roots, ServerName: "node.test"})
		if err != nil {
			t.Fatalf("TLS to %s as node.test with Pebble's root: %v", addr, err)
		}
		defer c.Close()
		return c.ConnectionState().PeerCertificates[0]
	}
	first := leaf()
	f.api(200, "POST", "/api/v1/instances/"+id+":refresh-certificate", "")
	deadline := time.Now().Add(60 * time.Second)
	for c := leaf(); c.Equal(first); c = leaf() {
		if time.Now().After(deadline) {
			t.Fatalf("not renewed after :refresh-certificate\nlogs: %s", f.raw("/api/v1/instances/"+id+"/logs?pageSize=5000"))
		}
		time.Sleep(200 * time.Millisecond)
	}
	// The renewal is in the instance's timeline; the instance still runs.
	deadline = time.Now().Add(30 * time.Second)
	for !strings.Contains(string(f.raw("/api/v1/instances/"+id+"/events")), "renewing-certificate/succeeded") {
		if time.Now().After(deadline) {
			t.Fatalf("no renewal in the timeline: %s", f.raw("/api/v1/instances/"+id+"/events"))
		}
		time.Sleep(200 * time.Millisecond)
	}
	if in := f.api(200, "GET", "/api/v1/instances/"+id, ""); in["state"] != "running" {
		t.Fatalf("after a renewal the instance is %v", in["state"])
	}

	// A new domain on the running instance: the next refresh orders for it,
	// no reprovision needed.
	cur := f.api(200, "GET", "/api/v1/instances/"+id, "")
	f.api(200, "PATCH", "/api/v1/instances/"+id, fmt.Sprintf(`{"version":%q,"ssl":{"domains":["node.test","www.node.test"]}}`, cur["version"]))
	f.api(200, "POST", "/api/v1/instances/"+id+":refresh-certificate", "")
	deadline = time.Now().Add(60 * time.Second)
	for c := leaf(); c.VerifyHostname("www.node.test") != nil; c = leaf() {
		if time.Now().After(deadline) {
			t.Fatalf("the node serves %v after a refresh for a new domain\nlogs: %s", c.DNSNames, f.raw("/api/v1/instances/"+id+"/logs?pageSize=5000"))
		}
		time.Sleep(200 * time.Millisecond)
	}

	// A failing renewal (the ACME server is gone) is in the timeline too,
	// and the node keeps serving its certificate.
	p.Close()
	f.api(200, "POST", "/api/v1/instances/"+id+":refresh-certificate", "")
	deadline = time.Now().Add(60 * time.Second)
	for !strings.Contains(string(f.raw("/api/v1/instances/"+id+"/events")), "renewing-certificate/failed") {
		if time.Now().After(deadline) {
			t.Fatalf("no failed renewal in the timeline: %s", f.raw("/api/v1/instances/"+id+"/events"))
		}
		time.Sleep(200 * time.Millisecond)
	}
	if in := f.api(200, "GET", "/api/v1/instances/"+id, ""); in["state"] != "running" {
		t.Fatalf("after a failed renewal the instance is %v", in["state"])
	}
	_ = leaf()
}
