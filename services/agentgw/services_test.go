package agentgw_test

import (
	"crypto/x509"
	"slices"
	"testing"

	"google.golang.org/protobuf/proto"

	"flotilla.dev/flotilla/api/endpoints"
	agentv1 "flotilla.dev/flotilla/api/gen/flotilla/agent/v1"
	inventoryv1 "flotilla.dev/flotilla/api/gen/flotilla/inventory/v1"
	secretsv1 "flotilla.dev/flotilla/api/gen/flotilla/secrets/v1"
	"flotilla.dev/flotilla/api/vocab"
	"flotilla.dev/flotilla/libs/pki"
	"flotilla.dev/flotilla/libs/rpc"
	"flotilla.dev/flotilla/libs/testkit"
)

func TestMain(m *testing.M) { testkit.Main(m) }

// request calls an endpoint as the gateway does for an operator.
func request[Req, Resp proto.Message](e *env, ep endpoints.Endpoint[Req, Resp], req Req) Resp {
	e.t.Helper()
	resp, err := rpc.Call(e.t.Context(), e.operator, ep, req, rpc.As(vocab.User("admin")))
	if err != nil {
		e.t.Fatalf("%s.%s: %v", ep.Service(), ep.Name(), err)
	}
	return resp
}

// instance creates an instance on a self-signed network with the given SANs
// and asks for it to be provisioned.
func (e *env) instance(name string, sans ...string) string {
	e.t.Helper()
	n := request(e, endpoints.NetworkCreate, &inventoryv1.CreateNetworkRequest{
		Network: &inventoryv1.Network{Name: name + "-net", Provider: "local", HttpsStrategy: "self-signed"}})
	tpl := request(e, endpoints.TemplateCreate, &inventoryv1.CreateTemplateRequest{
		Template: &inventoryv1.Template{Name: name + "-tpl", Provider: "local", DataDiskGb: 1}})
	inst := request(e, endpoints.InstanceCreate, &inventoryv1.CreateInstanceRequest{
		Instance: &inventoryv1.Instance{Name: name, Kind: "design", TemplateId: tpl.GetId(), NetworkId: n.GetId(),
			Ssl: &inventoryv1.SslSettings{Sans: sans}}})
	// Being provisioned, as an instance whose agent joins is (no
	// provisioner runs here: it stays so).
	request(e, endpoints.LifecycleRequest, &inventoryv1.LifecycleRequest{Id: inst.GetId(), Action: string(vocab.ActionProvision)})
	// ...and its VM launched, as the provisioner records before the agent
	// joins.
	if _, err := rpc.Call(e.t.Context(), e.provisioner, endpoints.LifecycleRecord, &inventoryv1.RecordStateRequest{Id: inst.GetId(),
		State: string(vocab.StateProvisioning), StateDetail: string(vocab.StepLaunchingVM), VmId: "vm-" + name}); err != nil {
		e.t.Fatal(err)
	}
	return inst.GetId()
}

func TestSecretsAndServerCertificatesComeFromTheServices(t *testing.T) {
	t.Parallel()
	e := newEnv(t, envOptions{services: true})
	mine := e.instance("alpha", "alpha.example.test", "10.1.2.3")
	other := e.instance("beta")
	request(e, endpoints.SecretCreate, &secretsv1.CreateSecretRequest{InstanceId: mine, Name: "db-password", Value: "pa55word"})
	request(e, endpoints.SecretCreate, &secretsv1.CreateSecretRequest{InstanceId: other, Name: "beta-only", Value: "not-yours"})

	stream := e.connect(mine)
	ask := func(m *agentv1.AgentMessage) *agentv1.GatewayMessage {
		t.Helper()
		if err := stream.Send(m); err != nil {
			t.Fatal(err)
		}
		got, err := stream.Recv()
		if err != nil {
			t.Fatal(err)
		}
		return got
	}
	secret := func(id, name string) *agentv1.SecretResponse {
		return ask(&agentv1.AgentMessage{Body: &agentv1.AgentMessage_SecretRequest{
			SecretRequest: &agentv1.SecretRequest{RequestId: id, Name: name}}}).GetSecretResponse()
	}
	if r := secret("r1", "db-password"); r.GetRequestId() != "r1" || string(r.GetValue()) != "pa55word" || r.GetError() != "" {
		t.Fatalf("own secret: %v", r)
	}
	// The reader is the certificate's instance: another's secret is refused.
	if r := secret("r2", "beta-only"); r.GetRequestId() != "r2" || len(r.GetValue()) != 0 || r.GetError() == "" {
		t.Fatalf("another instance's secret: %v", r)
	}

	key, csr := newCSR(t)
	r := ask(&agentv1.AgentMessage{Body: &agentv1.AgentMessage_ServerCertRequest{
		ServerCertRequest: &agentv1.ServerCertRequest{RequestId: "c1", CsrDer: csr}}}).GetServerCertResponse()
	if r.GetError() != "" || r.GetRequestId() != "c1" {
		t.Fatalf("server certificate: %v", r)
	}
	cert := tlsCert(t, []byte(r.GetCertificatePem()), key).Leaf
	var ips []string
	for _, ip := range cert.IPAddresses {
		ips = append(ips, ip.String())
	}
	if !slices.Equal(cert.DNSNames, []string{"alpha.example.test"}) || !slices.Equal(ips, []string{"10.1.2.3"}) {
		t.Fatalf("certificate for %v %v, want the instance's SANs from the inventory", cert.DNSNames, ips)
	}
	roots, err := pki.CertPool([]byte(r.GetCaPem()))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := cert.Verify(x509.VerifyOptions{Roots: roots, DNSName: "alpha.example.test"}); err != nil {
		t.Fatalf("server certificate does not verify: %v", err)
	}
}
