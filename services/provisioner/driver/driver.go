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

// DiskSpec describes a data disk.
type DiskSpec struct {
	ID         string
	InstanceID string
	SizeGB     int32
	Tags       map[string]string
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
}

// Bootstrap is what a new VM's agent starts with.
type Bootstrap struct {
	// GatewayAddr is the agent gateway's host:port.
	GatewayAddr string
	// JoinToken is the one-time token the agent exchanges for its certificate.
	JoinToken string
	// CAPEM is the fleet CA certificate the agent trusts.
	CAPEM string
}

// VM is a launched VM.
type VM struct {
	ID         string
	PrivateIP  string
	PrivateDNS string
	PublicIP   string
}
