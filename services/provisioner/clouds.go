package provisioner

import (
	"context"
	"fmt"
	"sync"

	inventoryv1 "flotilla.dev/flotilla/api/gen/flotilla/inventory/v1"
	"flotilla.dev/flotilla/api/vocab"
	"flotilla.dev/flotilla/libs/awsx"
	"flotilla.dev/flotilla/services/provisioner/driver"
	awsdriver "flotilla.dev/flotilla/services/provisioner/driver/aws"
)

// CloudAccounts resolves the cloud account a network provisions in: its
// region, endpoint and credentials (the cloud-accounts resource; a
// network names its account).
type CloudAccounts interface {
	// Account is the AWS account of the network n.
	Account(ctx context.Context, n *inventoryv1.Network) (awsx.Account, error)
}

// clouds are the drivers of cloud accounts, one per account, made the
// first time a network of the account is worked on.
type clouds struct {
	mu  sync.Mutex
	aws map[awsx.Account]*awsdriver.Driver
}

// driverFor is the driver of an instance of template t on network n: a
// driver given in Deps.Drivers for the template's provider, else (aws) the
// driver of the network's cloud account.
func (s *Service) driverFor(ctx context.Context, t *inventoryv1.Template, n *inventoryv1.Network) (driver.Driver, error) {
	if drv, ok := s.drivers[t.GetProvider()]; ok {
		return drv, nil
	}
	if t.GetProvider() != awsdriver.Name || s.d.CloudAccounts == nil {
		return nil, fmt.Errorf("provider %q is not supported yet", t.GetProvider())
	}
	return s.awsDriver(ctx, n)
}

// awsDriver is the aws driver of network n's cloud account.
func (s *Service) awsDriver(ctx context.Context, n *inventoryv1.Network) (*awsdriver.Driver, error) {
	if s.d.CloudAccounts == nil {
		return nil, fmt.Errorf("network %s: no cloud accounts are configured", n.GetId())
	}
	acct, err := s.d.CloudAccounts.Account(ctx, n)
	if err != nil {
		return nil, fmt.Errorf("cloud account of network %s: %w", n.GetId(), err)
	}
	s.clouds.mu.Lock()
	defer s.clouds.mu.Unlock()
	if drv, ok := s.clouds.aws[acct]; ok {
		return drv, nil
	}
	drv, err := awsdriver.New(ctx, acct, awsdriver.Config{Log: s.log.With("provider", awsdriver.Name, "region", acct.Region)})
	if err != nil {
		return nil, fmt.Errorf("cloud account of network %s: %w", n.GetId(), err)
	}
	if s.clouds.aws == nil {
		s.clouds.aws = map[awsx.Account]*awsdriver.Driver{}
	}
	s.clouds.aws[acct] = drv
	return drv, nil
}

// networkOf is where a driver places an instance of template t on network n.
func networkOf(t *inventoryv1.Template, n *inventoryv1.Network) driver.Network {
	out := driver.Network{
		ID: n.GetId(), VPCID: n.GetAws().GetVpcId(), SubnetID: n.GetAws().GetSubnetId(),
		SecurityGroupIDs: n.GetAws().GetSecurityGroupIds(), AssignPublicIP: n.GetAssignPublicIp(),
		PrivateZoneID: n.GetDns().GetPrivateZoneId(), PublicZoneID: n.GetDns().GetPublicZoneId(),
		HostnamePattern: n.GetDns().GetHostnamePattern(),
	}
	if t.GetProvider() == awsdriver.Name {
		// A cloud VM's node listens where its security group lets clients in.
		out.NodePort = awsdriver.DefaultNodePort
		// So does its agent, for the ACME server's HTTP-01 challenges.
		if vocab.HTTPSStrategy(n.GetHttpsStrategy()) == vocab.HTTPSACME && vocab.ACMEChallenge(n.GetAcme().GetChallenge()) != vocab.ACMEDNS01 {
			out.ChallengePort = vocab.ACMEHTTPPort(n.GetAcme().GetHttpPort())
		}
	}
	return out
}
