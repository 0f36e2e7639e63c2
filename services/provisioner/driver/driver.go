// Package driver is the interface between the provisioner and a cloud: data
// disks and VMs, created and destroyed idempotently. Every call names the
// resource by an id the provisioner chose and recorded before the call (the
// idempotency token), so a call repeated after a crash finds what the first
// call made instead of making a second one.
package driver

import (
	"context"
	"errors"
)

// ErrNotFound is returned when a disk or VM does not exist.
var ErrNotFound = errors.New("not found")

// Driver creates and destroys an instance's cloud resources.
//
// Ensure calls return the resource's id. A driver may return the cloud's
// own id (an EC2 instance id, an EBS volume id) instead of the one the
// provisioner chose: the provisioner then records the returned id, and
// every later call with either id finds the same resource.
type Driver interface {
	// Name is the provider name, e.g. "local" or "aws".
	Name() string
	// EnsureDisk makes the data disk exist; an existing disk with this id is returned as is.
	EnsureDisk(ctx context.Context, spec DiskSpec) (Disk, error)
	// DeleteDisk destroys a data disk; a missing disk is not an error.
	DeleteDisk(ctx context.Context, id string) error
	// EnsureVM makes the VM exist and run with the disk attached; a running
	// VM with this id is returned as is (its bootstrap is not applied again).
	EnsureVM(ctx context.Context, spec VMSpec) (VM, error)
	// DeleteVM destroys a VM and keeps its data disk; a missing VM is not an error.
	DeleteVM(ctx context.Context, id string) error
}

// Opener is a Driver whose cloud keeps a firewall in front of its VMs.
// OpenNetwork opens, in what the driver made for network n (an aws
// security group), what n needs open now: its node's port and its ACME
// HTTP-01 port. Called when the network changed since its VMs were
// placed; what the operator named (Network.SecurityGroupIDs) is left as
// it is.
type Opener interface {
	OpenNetwork(ctx context.Context, n Network) error
}

// DiskSpec describes a data disk.
type DiskSpec struct {
	ID         string
	InstanceID string
	SizeGB     int32
	Tags       map[string]string
	// Network is where the disk's VM will run (a cloud disk is made in
	// the availability zone of the network's subnet).
	Network Network
}

// Network is where a cloud driver places a VM: the network's provider
// settings as the provisioner read them. Local drivers ignore it.
type Network struct {
	// ID is the network's id in the inventory: what a security group the
	// driver makes for it is tagged and named with.
	ID string
	// VPCID is the VPC the VM runs in (aws).
	VPCID string
	// SubnetID is the subnet the VM runs in; its availability zone is the
	// data disk's.
	SubnetID string
	// SecurityGroupIDs are the VM's security groups; none means the driver
	// makes (once per network) a group that opens NodePort, and
	// ChallengePort if set.
	SecurityGroupIDs []string
	// AssignPublicIP gives the VM a public address (an Elastic IP on aws).
	AssignPublicIP bool
	// NodePort is the TCP port the node software serves on (0: the driver's default).
	NodePort int32
	// ChallengePort is the TCP port the agent answers ACME HTTP-01
	// challenges on, for an "acme" network that uses them (0: none).
	ChallengePort int32
	// PrivateZoneID and PublicZoneID are DNS zones (Route53 hosted zone
	// ids on aws): the VM's name gets an A record of its private address
	// in the first and of its public address in the second.
	PrivateZoneID, PublicZoneID string
	// HostnamePattern forms the VM's name: {name} is the instance's name,
	// {id} its id, e.g. "{name}.fleet.example". Empty: no DNS records.
	HostnamePattern string
}

// Disk is a data disk.
type Disk struct {
	ID     string
	SizeGB int32
}

// VMSpec describes a VM.
type VMSpec struct {
	ID           string
	InstanceID   string
	InstanceName string
	DiskID       string
	DiskSizeGB   int32
	Image        string
	InstanceType string
	Tags         map[string]string
	Bootstrap    Bootstrap
	// Network is where the VM runs.
	Network Network
	// InstanceProfile is the IAM instance profile the VM runs as (aws; optional).
	InstanceProfile string
	// SSHKeyName is the key pair an operator logs in with (aws; optional).
	SSHKeyName string
	// Launched, when set, is told the cloud's own id of the VM as soon as
	// the cloud has it (launched or found again), before EnsureVM waits for
	// it to run: the VM may boot and its agent join before EnsureVM
	// returns, and the agent's certificate names the VM id the instance
	// has recorded then. An error ends EnsureVM.
	Launched func(ctx context.Context, cloudID string) error
}

// Bootstrap is what a new VM's agent starts with.
type Bootstrap struct {
	// GatewayAddr is the agent gateway's host:port.
	GatewayAddr string
	// JoinToken is the one-time token the agent exchanges for its certificate.
	JoinToken string
	// CAPEM is the fleet CA certificate the agent trusts.
	CAPEM string
	// AgentURL is where a cloud VM downloads the agent binary (the
	// gateway's public path of this manager's version).
	AgentURL string
	// AgentSHA256 is the binary's SHA-256, hex: a download that does not
	// match is never run.
	AgentSHA256 string
	// ManagerVersion is the manager's version, which the agent's matches.
	ManagerVersion string
	// DataDevices are the names the data disk's block device may have on
	// the VM (the driver knows them: EBS volumes appear under their volume
	// id on NVMe instances, at the attachment's device name on others).
	// The agent formats the disk when it is empty and mounts it.
	DataDevices []string
}

// VM is a launched VM.
type VM struct {
	ID         string
	PrivateIP  string
	PrivateDNS string
	PublicIP   string
	PublicDNS  string
	// Hostname is the name the driver recorded in DNS ("" when none).
	Hostname string
}
