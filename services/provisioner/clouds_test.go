package provisioner

import (
	"context"
	"errors"
	"log/slog"
	"strings"
	"testing"

	inventoryv1 "flotilla.dev/flotilla/api/gen/flotilla/inventory/v1"
	"flotilla.dev/flotilla/libs/awsx"
	"flotilla.dev/flotilla/services/provisioner/driver"
	awsdriver "flotilla.dev/flotilla/services/provisioner/driver/aws"
	"flotilla.dev/flotilla/services/provisioner/driver/external"
)

// accounts maps network ids to accounts.
type accounts map[string]awsx.Account

func (a accounts) Account(_ context.Context, n *inventoryv1.Network) (awsx.Account, error) {
	acct, ok := a[n.GetId()]
	if !ok {
		return awsx.Account{}, errors.New("cloudAccountId: no such cloud account")
	}
	return acct, nil
}

// TestDriverFor: a provider's configured driver first; an aws network's
// driver made once per cloud account; an unknown provider or account named.
func TestDriverFor(t *testing.T) {
	t.Parallel()
	a := awsx.Account{Region: "eu-west-1", AccessKeyID: "AKIA1", SecretAccessKey: "s"}
	b := awsx.Account{Region: "us-east-1", AccessKeyID: "AKIA2", SecretAccessKey: "s"}
	s := &Service{log: slog.New(slog.DiscardHandler), drivers: map[string]driver.Driver{external.Name: external.New()},
		d: Deps{CloudAccounts: accounts{"n1": a, "n2": a, "n3": b}}}
	ctx := t.Context()
	awsT := &inventoryv1.Template{Provider: awsdriver.Name}
	d1, err := s.driverFor(ctx, awsT, &inventoryv1.Network{Id: "n1"})
	if err != nil {
		t.Fatal(err)
	}
	d2, _ := s.driverFor(ctx, awsT, &inventoryv1.Network{Id: "n2"})
	d3, _ := s.driverFor(ctx, awsT, &inventoryv1.Network{Id: "n3"})
	if d1 != d2 || d1 == d3 || d1.Name() != awsdriver.Name {
		t.Errorf("drivers %p %p %p: want one per account", d1, d2, d3)
	}
	if d, err := s.driverFor(ctx, &inventoryv1.Template{Provider: external.Name}, &inventoryv1.Network{}); err != nil || d.Name() != external.Name {
		t.Errorf("external: %v, %v", d, err)
	}
	if _, err := s.driverFor(ctx, awsT, &inventoryv1.Network{Id: "n9"}); err == nil || !strings.Contains(err.Error(), "cloudAccountId") {
		t.Errorf("a network without an account: %v", err)
	}
	if _, err := s.driverFor(ctx, &inventoryv1.Template{Provider: "gcp"}, &inventoryv1.Network{}); err == nil || !strings.Contains(err.Error(), `"gcp" is not supported`) {
		t.Errorf("an unknown provider: %v", err)
	}
	n := networkOf(awsT, &inventoryv1.Network{Id: "n1", AssignPublicIp: true,
		Aws: &inventoryv1.AwsNetworkSettings{VpcId: "vpc-1", SubnetId: "subnet-1", SecurityGroupIds: []string{"sg-1"}},
		Dns: &inventoryv1.DnsSettings{PrivateZoneId: "Z1", PublicZoneId: "Z2", HostnamePattern: "{name}.fleet.example"}})
	if n.ID != "n1" || n.VPCID != "vpc-1" || n.SubnetID != "subnet-1" || len(n.SecurityGroupIDs) != 1 || !n.AssignPublicIP ||
		n.PrivateZoneID != "Z1" || n.PublicZoneID != "Z2" || n.HostnamePattern != "{name}.fleet.example" || n.NodePort != awsdriver.DefaultNodePort ||
		n.ChallengePort != 0 {
		t.Errorf("networkOf = %+v", n)
	}
	// An "acme" network's agents answer HTTP-01 on its httpPort (80 when
	// none); with DNS-01, or on another provider, no port is opened for them.
	for _, c := range []struct {
		t    *inventoryv1.Template
		acme *inventoryv1.AcmeSettings
		want int32
	}{
		{awsT, &inventoryv1.AcmeSettings{}, 80},
		{awsT, &inventoryv1.AcmeSettings{Challenge: "http-01", HttpPort: 8080}, 8080},
		{awsT, &inventoryv1.AcmeSettings{Challenge: "dns-01"}, 0},
		{&inventoryv1.Template{Provider: "local"}, &inventoryv1.AcmeSettings{}, 0},
	} {
		if got := networkOf(c.t, &inventoryv1.Network{HttpsStrategy: "acme", Acme: c.acme}).ChallengePort; got != c.want {
			t.Errorf("%s network, acme %v: challenge port %d, want %d", c.t.GetProvider(), c.acme, got, c.want)
		}
	}
}
