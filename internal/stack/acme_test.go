package stack_test

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	awssdk "github.com/aws/aws-sdk-go-v2/aws"
	"github.com/jackc/pgx/v5/pgxpool"
	"google.golang.org/protobuf/proto"

	"flotilla.dev/flotilla/api/endpoints"
	inventoryv1 "flotilla.dev/flotilla/api/gen/flotilla/inventory/v1"
	"flotilla.dev/flotilla/api/subjects"
	"flotilla.dev/flotilla/api/vocab"
	"flotilla.dev/flotilla/internal/stack"
	"flotilla.dev/flotilla/libs/apierr"
	"flotilla.dev/flotilla/libs/rpc"
	"flotilla.dev/flotilla/libs/testkit"
)

// TestACMEOverDNS01OnAWS is the acme strategy with DNS-01 end to end, on
// moto with played EC2 instances (see TestAWSInstanceRunsAndKeepsItsDisk)
// and Pebble: Pebble resolves through a DNS server that answers from the
// records of the network's Route53 zone, so the TXT record the provisioner
// writes there, with the network's cloud account, for the agent (which
// holds no AWS keys) is what Pebble checks; for a name of another zone,
// whose _acme-challenge is a CNAME into the network's, the record is
// written where the alias leads. The node then serves a
// certificate a client trusting Pebble's root accepts; the record is gone
// afterwards; the network's ACME account key and the certificate's key are
// kept sealed by the secret broker. A reprovisioned instance (a new VM)
// serves the kept certificate with the ACME server gone; the provisioner
// writes no record for another name or for another instance's agent;
// deleting the instance and then the network removes what was kept.
//
// Not parallel: a played VM's node listens on port 443 of every interface,
// as in TestAWSInstanceRunsAndKeepsItsDisk, and the sequential tests of a
// package run before its parallel ones.
func TestACMEOverDNS01OnAWS(t *testing.T) {
	ctx := t.Context()
	agent, err := agentBinary()
	must(t, err)
	port := testkit.FreePort(t)
	dbURL := testkit.NewDatabase(t)
	lab := newAWSLab(t, stack.Config{
		HTTPAddr: fmt.Sprintf("127.0.0.1:%d", port), PublicURL: fmt.Sprintf("http://127.0.0.1:%d", port),
		AgentBinary: agent, Version: "1.2.3", DatabaseURL: dbURL,
	}, false)
	pool, err := pgxpool.New(ctx, dbURL)
	must(t, err)
	t.Cleanup(pool.Close)
	zone := awssdk.ToString(lab.zone.HostedZone.Id)
	txt := testkit.Route53TXT(ctx, lab.r53, zone)
	dns := testkit.StartDNS(t, txt)
	p := testkit.StartPebbleWith(t, testkit.PebbleOptions{DNSAddr: dns.Addr})

	// DNS-01 needs a Route53 zone to write in.
	nw := proto.Clone(lab.network).(*inventoryv1.Network)
	nw.Id, nw.Name, nw.Version, nw.HttpsStrategy = "", "vpc-acme", 0, string(vocab.HTTPSACME)
	nw.Acme = &inventoryv1.AcmeSettings{ContactEmail: "ops@fleet.example", DirectoryUrl: p.DirectoryURL, DirectoryCaPem: p.DirectoryCAPEM,
		Challenge: string(vocab.ACMEDNS01), DnsResolvers: []string{dns.Addr}}
	noZone := proto.Clone(nw).(*inventoryv1.Network)
	noZone.Dns.PrivateZoneId = ""
	_, err = rpc.Call(ctx, lab.gateway, endpoints.NetworkCreate, &inventoryv1.CreateNetworkRequest{Network: noZone}, lab.admin)
	if !apierr.Is(err, apierr.KindInvalid) || !strings.HasPrefix(err.Error(), "dns.publicZoneId:") {
		t.Fatalf("dns-01 without a zone: %v; want invalid dns.publicZoneId", err)
	}
	nw, err = rpc.Call(ctx, lab.gateway, endpoints.NetworkCreate, &inventoryv1.CreateNetworkRequest{Network: nw}, lab.admin)
	must(t, err)
	tpl, err := rpc.Call(ctx, lab.gateway, endpoints.TemplateCreate, &inventoryv1.CreateTemplateRequest{Template: &inventoryv1.Template{
		Name: "std", Provider: "aws", Image: awssdk.ToString(lab.images.Images[0].ImageId), InstanceType: "t3.micro", DataDiskGb: 2}}, lab.admin)
	must(t, err)
	// Its second name is in a zone Flotilla cannot write: its owner
	// delegates the challenges to the network's zone with a CNAME.
	dns.CNAME("_acme-challenge.web-1.customer.test", "web-1-customer.acme.fleet.example")
	in, err := rpc.Call(ctx, lab.gateway, endpoints.InstanceCreate, &inventoryv1.CreateInstanceRequest{Instance: &inventoryv1.Instance{
		Name: "web-1", Kind: "design", TemplateId: tpl.GetId(), NetworkId: nw.GetId(),
		Ssl: &inventoryv1.SslSettings{Domains: []string{"web-1.fleet.example", "web-1.customer.test"}}}}, lab.admin)
	must(t, err)
	id := in.GetId()

	li := lab.instance(t, id)
	waitFor, lifecycle, boot := li.waitFor, li.lifecycle, li.boot
	// leaf fetches the instance's URL as curl --cacert <Pebble's root>
	// would (the name resolving to this host, where the played VM's node
	// listens) and returns the certificate it was served.
	leaf := func(url string) *x509.Certificate {
		t.Helper()
		var served *x509.Certificate
		client := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{
			TLSClientConfig: &tls.Config{RootCAs: p.Roots, MinVersion: tls.VersionTLS12, VerifyConnection: func(cs tls.ConnectionState) error {
				served = cs.PeerCertificates[0]
				return nil
			}},
			DialContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
				_, port, _ := net.SplitHostPort(addr)
				return (&net.Dialer{}).DialContext(ctx, network, net.JoinHostPort("127.0.0.1", port))
			}}}
		resp, err := client.Get(url)
		if err != nil {
			t.Fatalf("GET %s trusting Pebble's root: %v", url, err)
		}
		defer resp.Body.Close()
		body, _ := io.ReadAll(resp.Body)
		if resp.StatusCode != 200 || !strings.Contains(string(body), "web-1") {
			t.Fatalf("GET %s: %d %q", url, resp.StatusCode, body)
		}
		return served
	}
	count := func(table, column, id string) int {
		t.Helper()
		var n int
		must(t, pool.QueryRow(ctx, "SELECT count(*) FROM "+table+" WHERE "+column+" = $1", id).Scan(&n))
		return n
	}

	lifecycle(vocab.ActionProvision)
	vm1 := boot("")
	got := waitFor("running", func(in *inventoryv1.Instance) bool { return vocab.State(in.GetState()) == vocab.StateRunning })
	url := got.GetAddresses().GetUrl()
	if url != "https://web-1.fleet.example:443/" {
		t.Fatalf("node URL %q; want https://web-1.fleet.example:443/", url)
	}
	first := leaf(url)
	for _, name := range []string{"web-1.fleet.example", "web-1.customer.test"} {
		if err := first.VerifyHostname(name); err != nil {
			t.Fatalf("served certificate: %v", err)
		}
	}
	for _, record := range []string{"_acme-challenge.web-1.fleet.example", "web-1-customer.acme.fleet.example"} {
		if values, err := txt(record); err != nil || len(values) != 0 {
			t.Errorf("the DNS-01 record %s is left in the zone: %v %v", record, values, err)
		}
	}
	// Kept sealed: the network's account key, the instance's certificate.
	if n := count("acme_accounts", "network_id", nw.GetId()); n != 1 {
		t.Errorf("%d ACME accounts kept for the network, want 1", n)
	}
	var certPEM string
	var ciphertext []byte
	must(t, pool.QueryRow(ctx, `SELECT certificate_pem, ciphertext FROM acme_certificates WHERE instance_id = $1`, id).Scan(&certPEM, &ciphertext))
	if !strings.Contains(certPEM, "CERTIFICATE") || bytes.Contains(ciphertext, []byte("PRIVATE KEY")) {
		t.Error("the kept certificate's key is not sealed")
	}
	var clear int
	must(t, pool.QueryRow(ctx, `SELECT (SELECT count(*) FROM acme_certificates WHERE certificate_pem LIKE '%PRIVATE KEY%')
		+ (SELECT count(*) FROM acme_accounts WHERE position('PRIVATE KEY' in encode(ciphertext, 'escape')) > 0)`).Scan(&clear))
	if clear != 0 {
		t.Errorf("%d private keys in the clear", clear)
	}

	// Only the instance's own names, only for its own agent.
	agentgw := rpc.NewClient(lab.bus.Conn(t, subjects.AgentGW), subjects.AgentGW, 30*time.Second)
	for _, tc := range []struct {
		name   string
		domain string
		as     vocab.Actor
	}{
		{"another name", "mail.fleet.example", vocab.Agent(id)},
		{"another instance's agent", "web-1.fleet.example", vocab.Agent("0190c3e1-0000-7000-8000-000000000001")},
	} {
		_, err := rpc.Call(ctx, agentgw, endpoints.DNSChallengePut, &inventoryv1.DnsChallengeRequest{InstanceId: id, Domain: tc.domain, Value: "forged"}, rpc.As(tc.as))
		if !apierr.Is(err, apierr.KindPermissionDenied) {
			t.Errorf("%s: %v; want permission denied", tc.name, err)
		}
		if values, _ := txt("_acme-challenge." + tc.domain); len(values) != 0 {
			t.Errorf("%s: a record was written: %v", tc.name, values)
		}
	}

	// A new VM of the instance serves the kept certificate: no order (the
	// ACME server is gone).
	p.Close()
	lifecycle(vocab.ActionReprovision)
	vm2 := boot(vm1)
	waitFor("running on a new VM", func(in *inventoryv1.Instance) bool {
		return vocab.State(in.GetState()) == vocab.StateRunning && in.GetVmId() == vm2
	})
	if again := leaf(url); !again.Equal(first) {
		t.Fatalf("the new VM serves serial %v, want the kept %v", again.SerialNumber, first.SerialNumber)
	}

	// What was kept goes with the instance, then with the network.
	lifecycle(vocab.ActionDeprovision)
	waitFor("deprovisioned", func(in *inventoryv1.Instance) bool { return vocab.State(in.GetState()) == vocab.StateDeprovisioned })
	lifecycle(vocab.ActionDelete)
	deadline := time.Now().Add(2 * time.Minute)
	for count("acme_certificates", "instance_id", id) != 0 {
		if time.Now().After(deadline) {
			t.Fatal("the deleted instance's ACME certificate is still kept")
		}
		time.Sleep(100 * time.Millisecond)
	}
	for {
		_, err := rpc.Call(ctx, lab.gateway, endpoints.NetworkDelete, &inventoryv1.DeleteNetworkRequest{Id: nw.GetId()}, lab.admin)
		if err == nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("delete the network: %v", err)
		}
		time.Sleep(200 * time.Millisecond)
	}
	for count("acme_accounts", "network_id", nw.GetId()) != 0 {
		if time.Now().After(deadline) {
			t.Fatal("the deleted network's ACME account key is still kept")
		}
		time.Sleep(100 * time.Millisecond)
	}
}
