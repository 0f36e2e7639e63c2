// Package aws is the provisioning driver of the "aws" provider: a VM is an
// EC2 instance, its data disk an EBS volume, its public address an Elastic
// IP and its name a Route53 A record.
//
// The provisioner names every resource by an id it recorded before the
// call ("vm-…", "disk-…"); the driver tags the resource with that id
// (flotilla:vm-id, flotilla:disk-id) and returns AWS's own id (i-…,
// vol-…), which the provisioner records in its place. Both find the same
// resource afterwards. moto, and AWS after its token expires, do not honour
// RunInstances' ClientToken, so before launching the driver looks for an
// instance already tagged with the VM's id: a crash between RunInstances
// and recording its result never launches a second VM.
//
// Every AWS error is returned with AWS's code and message
// ("InvalidAMIID.NotFound: …", see awsx.Reason).
package aws

import (
	"context"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"strconv"
	"strings"
	"time"

	awssdk "github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/ec2"
	"github.com/aws/aws-sdk-go-v2/service/ec2/types"
	"github.com/aws/aws-sdk-go-v2/service/route53"
	r53types "github.com/aws/aws-sdk-go-v2/service/route53/types"
	"github.com/aws/smithy-go"

	"flotilla.dev/flotilla/api/vocab"
	"flotilla.dev/flotilla/libs/awsx"
	"flotilla.dev/flotilla/services/provisioner/driver"
	"flotilla.dev/flotilla/services/provisioner/driver/bootstrap"
)

// Name is the provider name of this driver.
const Name = "aws"

// Tags the driver puts on what it makes.
const (
	TagInstanceID = "flotilla:instance-id"
	TagVMID       = "flotilla:vm-id"
	TagDiskID     = "flotilla:disk-id"
	TagNetworkID  = "flotilla:network-id"
	// TagPrivateDNS and TagPublicDNS on an instance name the records made
	// for it ("<zone id> <name> <address>"), so DeleteVM removes them (and
	// leaves the name alone once it points at another VM's address).
	TagPrivateDNS = "flotilla:dns-private"
	TagPublicDNS  = "flotilla:dns-public"
)

// DataDevice is where the data disk is attached.
const DataDevice = "/dev/sdf"

// DataDevices are the names the data disk attached at DataDevice has on
// the VM: on NVMe instances (Nitro) the volume appears under its id
// without the dash, on others at the device name (or its xvd alias).
func DataDevices(volumeID string) []string {
	return []string{"/dev/disk/by-id/nvme-Amazon_Elastic_Block_Store_" + strings.ReplaceAll(volumeID, "-", ""), DataDevice, "/dev/xvdf"}
}

// DefaultNodePort is the node software's port when the network names none.
const DefaultNodePort = vocab.AWSNodePort

// recordTTL is the TTL of the A records, in seconds.
const recordTTL = 60

// Config adjusts a Driver.
type Config struct {
	// Log is where the driver says what it did (default: discard).
	Log *slog.Logger
	// WaitTimeout bounds each wait for an instance or a volume to reach a
	// state (default 10 minutes); the caller's context bounds it too.
	WaitTimeout time.Duration
	// Poll is the first pause between looks while waiting; it doubles up
	// to 5 s (default 250 ms).
	Poll time.Duration
}

// Driver provisions on one AWS account and region.
type Driver struct {
	ec2 *ec2.Client
	r53 *route53.Client
	cfg Config
}

// New is a driver for the account a (see awsx.Config; opts e.g. record
// the actions called).
func New(ctx context.Context, a awsx.Account, cfg Config, opts ...awsx.Option) (*Driver, error) {
	ac, err := awsx.Config(ctx, a, opts...)
	if err != nil {
		return nil, err
	}
	return NewFromConfig(ac, cfg), nil
}

// NewFromConfig is a driver calling AWS with the SDK configuration ac.
func NewFromConfig(ac awssdk.Config, cfg Config) *Driver {
	if cfg.Log == nil {
		cfg.Log = slog.New(slog.DiscardHandler)
	}
	if cfg.WaitTimeout <= 0 {
		cfg.WaitTimeout = 10 * time.Minute
	}
	if cfg.Poll <= 0 {
		cfg.Poll = 250 * time.Millisecond
	}
	return &Driver{ec2: ec2.NewFromConfig(ac), r53: route53.NewFromConfig(ac), cfg: cfg}
}

// Name is "aws".
func (d *Driver) Name() string { return Name }

// awsError is an AWS call that failed: what the driver was doing, then
// AWS's code and message.
type awsError struct {
	what string
	err  error
}

func (e *awsError) Error() string { return e.what + ": " + awsx.Reason(e.err) }
func (e *awsError) Unwrap() error { return e.err }

func failed(err error, format string, args ...any) error {
	return &awsError{what: fmt.Sprintf(format, args...), err: err}
}

// notFound reports whether err is AWS saying the thing named does not exist.
func notFound(err error) bool {
	return strings.HasSuffix(awsx.Code(err), ".NotFound") || awsx.Code(err) == "NoSuchHostedZone"
}

func filter(name string, values ...string) types.Filter {
	return types.Filter{Name: awssdk.String(name), Values: values}
}

func tagsOf(kind types.ResourceType, tags map[string]string) []types.TagSpecification {
	ts := make([]types.Tag, 0, len(tags))
	for k, v := range tags {
		ts = append(ts, types.Tag{Key: awssdk.String(k), Value: awssdk.String(v)})
	}
	return []types.TagSpecification{{ResourceType: kind, Tags: ts}}
}

func tag(tags []types.Tag, key string) string {
	for _, t := range tags {
		if awssdk.ToString(t.Key) == key {
			return awssdk.ToString(t.Value)
		}
	}
	return ""
}

// clientToken is RunInstances' idempotency token for a VM id (at most 64
// ASCII characters).
func clientToken(id string) string {
	sum := sha256.Sum256([]byte("flotilla-vm:" + id))
	return "flotilla-" + hex.EncodeToString(sum[:20])
}

// wait looks at something with done, pausing longer each time, until done
// says so, fails, or the wait's time (and ctx) runs out.
func (d *Driver) wait(ctx context.Context, what string, done func(context.Context) (bool, error)) error {
	ctx, cancel := context.WithTimeout(ctx, d.cfg.WaitTimeout)
	defer cancel()
	delay := d.cfg.Poll
	for {
		ok, err := done(ctx)
		if err != nil {
			return err
		}
		if ok {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("waiting for %s: %w", what, ctx.Err())
		case <-time.After(delay):
		}
		delay = min(delay*2, 5*time.Second)
	}
}

// ---- data disks ----

// EnsureDisk makes the EBS volume of spec.ID exist in the availability
// zone of the network's subnet and returns its volume id.
func (d *Driver) EnsureDisk(ctx context.Context, spec driver.DiskSpec) (driver.Disk, error) {
	if spec.ID == "" {
		return driver.Disk{}, errors.New("disk.id: is required")
	}
	if spec.SizeGB <= 0 {
		return driver.Disk{}, fmt.Errorf("disk.sizeGb: %d is not a positive size", spec.SizeGB)
	}
	vol, err := d.findVolume(ctx, spec.ID)
	if err != nil {
		return driver.Disk{}, err
	}
	if vol == nil {
		if spec.Network.SubnetID == "" {
			return driver.Disk{}, errors.New("network.aws.subnetId: is required to place a data disk")
		}
		az, err := d.zoneOf(ctx, spec.Network.SubnetID)
		if err != nil {
			return driver.Disk{}, err
		}
		tags := map[string]string{}
		for k, v := range spec.Tags {
			tags[k] = v
		}
		tags[TagDiskID], tags[TagInstanceID], tags["Name"] = spec.ID, spec.InstanceID, "flotilla "+spec.ID
		out, err := d.ec2.CreateVolume(ctx, &ec2.CreateVolumeInput{
			AvailabilityZone: awssdk.String(az), Size: awssdk.Int32(spec.SizeGB), VolumeType: types.VolumeTypeGp3,
			ClientToken: awssdk.String(clientToken(spec.ID)), TagSpecifications: tagsOf(types.ResourceTypeVolume, tags),
		})
		if err != nil {
			return driver.Disk{}, failed(err, "create volume for %s", spec.ID)
		}
		d.cfg.Log.InfoContext(ctx, "EBS volume created", "disk", spec.ID, "volume", awssdk.ToString(out.VolumeId), "zone", az)
		vol = &types.Volume{VolumeId: out.VolumeId, Size: out.Size, State: out.State}
	}
	id := awssdk.ToString(vol.VolumeId)
	if err := d.wait(ctx, "volume "+id, func(ctx context.Context) (bool, error) {
		v, err := d.volume(ctx, id)
		if err != nil {
			return false, err
		}
		if v == nil || v.State == types.VolumeStateError {
			return false, fmt.Errorf("create volume for %s: volume %s failed", spec.ID, id)
		}
		vol = v
		return v.State != types.VolumeStateCreating, nil
	}); err != nil {
		return driver.Disk{}, err
	}
	return driver.Disk{ID: id, SizeGB: awssdk.ToInt32(vol.Size)}, nil
}

// DeleteDisk detaches the volume if it is attached and deletes it.
func (d *Driver) DeleteDisk(ctx context.Context, id string) error {
	vol, err := d.findVolume(ctx, id)
	if err != nil || vol == nil {
		return err
	}
	vid := awssdk.ToString(vol.VolumeId)
	if err := d.detach(ctx, vol); err != nil {
		return err
	}
	if _, err := d.ec2.DeleteVolume(ctx, &ec2.DeleteVolumeInput{VolumeId: awssdk.String(vid)}); err != nil && !notFound(err) {
		return failed(err, "delete volume %s", vid)
	}
	d.cfg.Log.InfoContext(ctx, "EBS volume deleted", "disk", id, "volume", vid)
	return nil
}

// findVolume is the live volume with id (a volume id) or tagged with it
// (the provisioner's disk id); nil when there is none.
func (d *Driver) findVolume(ctx context.Context, id string) (*types.Volume, error) {
	live := filter("status", "creating", "available", "in-use")
	out, err := d.ec2.DescribeVolumes(ctx, &ec2.DescribeVolumesInput{Filters: []types.Filter{filter("tag:"+TagDiskID, id), live}})
	if err != nil {
		return nil, failed(err, "find volume of %s", id)
	}
	if len(out.Volumes) > 0 {
		return &out.Volumes[0], nil
	}
	if !strings.HasPrefix(id, "vol-") {
		return nil, nil
	}
	v, err := d.volume(ctx, id)
	if v != nil && (v.State == types.VolumeStateDeleting || v.State == types.VolumeStateDeleted) {
		return nil, nil
	}
	return v, err
}

// volume is the volume with this volume id; nil when AWS has none.
func (d *Driver) volume(ctx context.Context, id string) (*types.Volume, error) {
	out, err := d.ec2.DescribeVolumes(ctx, &ec2.DescribeVolumesInput{VolumeIds: []string{id}})
	if notFound(err) {
		return nil, nil
	}
	if err != nil {
		return nil, failed(err, "describe volume %s", id)
	}
	if len(out.Volumes) == 0 {
		return nil, nil
	}
	return &out.Volumes[0], nil
}

// detach detaches the volume from any instance and waits until it is available.
func (d *Driver) detach(ctx context.Context, vol *types.Volume) error {
	vid := awssdk.ToString(vol.VolumeId)
	for _, a := range vol.Attachments {
		if a.State == types.VolumeAttachmentStateDetached {
			continue
		}
		_, err := d.ec2.DetachVolume(ctx, &ec2.DetachVolumeInput{VolumeId: awssdk.String(vid), InstanceId: a.InstanceId})
		if err != nil && !notFound(err) && awsx.Code(err) != "IncorrectState" {
			return failed(err, "detach volume %s from %s", vid, awssdk.ToString(a.InstanceId))
		}
		d.cfg.Log.InfoContext(ctx, "EBS volume detached", "volume", vid, "instance", awssdk.ToString(a.InstanceId))
	}
	return d.wait(ctx, "volume "+vid+" to be detached", func(ctx context.Context) (bool, error) {
		v, err := d.volume(ctx, vid)
		return v == nil || v.State == types.VolumeStateAvailable, err
	})
}

func (d *Driver) zoneOf(ctx context.Context, subnet string) (string, error) {
	out, err := d.ec2.DescribeSubnets(ctx, &ec2.DescribeSubnetsInput{SubnetIds: []string{subnet}})
	if err != nil {
		return "", failed(err, "network.aws.subnetId %s", subnet)
	}
	if len(out.Subnets) == 0 {
		return "", fmt.Errorf("network.aws.subnetId: subnet %s does not exist", subnet)
	}
	return awssdk.ToString(out.Subnets[0].AvailabilityZone), nil
}

// ---- VMs ----

// EnsureVM launches the EC2 instance of spec.ID unless it exists, waits for
// it to run, attaches the data disk, gives it its Elastic IP and DNS
// records, and returns its instance id and addresses.
func (d *Driver) EnsureVM(ctx context.Context, spec driver.VMSpec) (driver.VM, error) {
	if spec.ID == "" {
		return driver.VM{}, errors.New("vm.id: is required")
	}
	inst, err := d.liveInstance(ctx, spec.ID)
	if err != nil {
		return driver.VM{}, err
	}
	if inst == nil {
		if inst, err = d.launch(ctx, spec); err != nil {
			return driver.VM{}, err
		}
	} else {
		d.cfg.Log.InfoContext(ctx, "EC2 instance found; adopting it", "vm", spec.ID, "instance", awssdk.ToString(inst.InstanceId))
	}
	iid := awssdk.ToString(inst.InstanceId)
	if spec.Launched != nil {
		if err := spec.Launched(ctx, iid); err != nil {
			return driver.VM{}, err
		}
	}
	vmTag := tag(inst.Tags, TagVMID)
	if vmTag == "" {
		vmTag = spec.ID
	}
	if inst, err = d.waitRunning(ctx, iid); err != nil {
		return driver.VM{}, err
	}
	if spec.DiskID != "" {
		if err := d.attach(ctx, spec.DiskID, iid); err != nil {
			return driver.VM{}, err
		}
	}
	if spec.Network.AssignPublicIP {
		if err := d.ensureAddress(ctx, vmTag, spec.InstanceID, iid); err != nil {
			return driver.VM{}, err
		}
		if inst, err = d.instance(ctx, iid); err != nil {
			return driver.VM{}, err
		}
	}
	vm := driver.VM{ID: iid, PrivateIP: awssdk.ToString(inst.PrivateIpAddress), PrivateDNS: awssdk.ToString(inst.PrivateDnsName),
		PublicIP: awssdk.ToString(inst.PublicIpAddress), PublicDNS: awssdk.ToString(inst.PublicDnsName)}
	if vm.Hostname, err = d.ensureRecords(ctx, spec, inst, vm); err != nil {
		return driver.VM{}, err
	}
	return vm, nil
}

// launch runs the instance of spec, tagged with its VM id.
func (d *Driver) launch(ctx context.Context, spec driver.VMSpec) (*types.Instance, error) {
	var errs []error
	if spec.Image == "" {
		errs = append(errs, errors.New("template.image: an AMI id is required for aws"))
	}
	if spec.InstanceType == "" {
		errs = append(errs, errors.New("template.instanceType: is required for aws"))
	}
	if spec.Network.SubnetID == "" {
		errs = append(errs, errors.New("network.aws.subnetId: is required for aws"))
	}
	if spec.DiskID != "" {
		vol, err := d.findVolume(ctx, spec.DiskID)
		if err != nil {
			return nil, err
		}
		if vol == nil {
			return nil, fmt.Errorf("launch vm %s: data disk %s does not exist", spec.ID, spec.DiskID)
		}
		spec.Bootstrap.DataDevices = DataDevices(awssdk.ToString(vol.VolumeId))
	}
	userData, err := bootstrap.Script(spec)
	if err != nil {
		errs = append(errs, err)
	}
	if err := errors.Join(errs...); err != nil {
		return nil, fmt.Errorf("launch vm %s: %w", spec.ID, err)
	}
	groups := spec.Network.SecurityGroupIDs
	if len(groups) == 0 {
		g, err := d.ensureSecurityGroup(ctx, spec.Network)
		if err != nil {
			return nil, err
		}
		groups = []string{g}
	}
	tags := map[string]string{}
	for k, v := range spec.Tags {
		tags[k] = v
	}
	tags[TagInstanceID], tags[TagVMID] = spec.InstanceID, spec.ID
	if spec.InstanceName != "" {
		tags["Name"] = spec.InstanceName
	}
	in := &ec2.RunInstancesInput{
		ImageId: awssdk.String(spec.Image), InstanceType: types.InstanceType(spec.InstanceType),
		MinCount: awssdk.Int32(1), MaxCount: awssdk.Int32(1), ClientToken: awssdk.String(clientToken(spec.ID)),
		SubnetId: awssdk.String(spec.Network.SubnetID), SecurityGroupIds: groups,
		UserData:          awssdk.String(base64.StdEncoding.EncodeToString([]byte(userData))),
		TagSpecifications: tagsOf(types.ResourceTypeInstance, tags),
	}
	if spec.SSHKeyName != "" {
		in.KeyName = awssdk.String(spec.SSHKeyName)
	}
	if p := spec.InstanceProfile; strings.HasPrefix(p, "arn:") {
		in.IamInstanceProfile = &types.IamInstanceProfileSpecification{Arn: awssdk.String(p)}
	} else if p != "" {
		in.IamInstanceProfile = &types.IamInstanceProfileSpecification{Name: awssdk.String(p)}
	}
	out, err := d.ec2.RunInstances(ctx, in)
	if err != nil {
		return nil, failed(err, "run instance for %s", spec.ID)
	}
	if len(out.Instances) != 1 {
		return nil, fmt.Errorf("run instance for %s: AWS answered %d instances", spec.ID, len(out.Instances))
	}
	inst := out.Instances[0]
	d.cfg.Log.InfoContext(ctx, "EC2 instance launched", "vm", spec.ID, "instance", awssdk.ToString(inst.InstanceId), "image", spec.Image)
	return &inst, nil
}

func (d *Driver) waitRunning(ctx context.Context, iid string) (*types.Instance, error) {
	var inst *types.Instance
	err := d.wait(ctx, "instance "+iid+" to run", func(ctx context.Context) (bool, error) {
		i, err := d.instance(ctx, iid)
		if err != nil {
			return false, err
		}
		inst = i
		switch i.State.Name {
		case types.InstanceStateNameRunning:
			return true, nil
		case types.InstanceStateNameStopped:
			if _, err := d.ec2.StartInstances(ctx, &ec2.StartInstancesInput{InstanceIds: []string{iid}}); err != nil {
				return false, failed(err, "start instance %s", iid)
			}
		case types.InstanceStateNameTerminated, types.InstanceStateNameShuttingDown:
			reason := "no reason given"
			if r := i.StateReason; r != nil {
				reason = awssdk.ToString(r.Code) + ": " + awssdk.ToString(r.Message)
			}
			return false, fmt.Errorf("instance %s is %s: %s", iid, i.State.Name, reason)
		}
		return false, nil
	})
	return inst, err
}

// DeleteVM removes the VM's DNS records and Elastic IP, terminates it and
// leaves its data disk detached.
func (d *Driver) DeleteVM(ctx context.Context, id string) error {
	insts, err := d.instancesOf(ctx, id, false)
	if err != nil {
		return err
	}
	for _, inst := range insts {
		iid := awssdk.ToString(inst.InstanceId)
		for _, key := range []string{TagPrivateDNS, TagPublicDNS} {
			if err := d.deleteRecord(ctx, tag(inst.Tags, key)); err != nil {
				return err
			}
		}
		vmTag := tag(inst.Tags, TagVMID)
		if vmTag == "" {
			vmTag = id
		}
		if err := d.releaseAddresses(ctx, vmTag, iid); err != nil {
			return err
		}
		if inst.State.Name != types.InstanceStateNameTerminated {
			if _, err := d.ec2.TerminateInstances(ctx, &ec2.TerminateInstancesInput{InstanceIds: []string{iid}}); err != nil && !notFound(err) {
				return failed(err, "terminate instance %s", iid)
			}
			d.cfg.Log.InfoContext(ctx, "EC2 instance terminated", "vm", id, "instance", iid)
		}
		if err := d.wait(ctx, "instance "+iid+" to terminate", func(ctx context.Context) (bool, error) {
			i, err := d.instance(ctx, iid)
			if notFound(err) {
				return true, nil
			}
			return err == nil && i.State.Name == types.InstanceStateNameTerminated, err
		}); err != nil {
			return err
		}
		// The data disk is kept: AWS detaches it at termination (a
		// volume attached after launch is not deleted with the instance).
		vols, err := d.ec2.DescribeVolumes(ctx, &ec2.DescribeVolumesInput{Filters: []types.Filter{filter("attachment.instance-id", iid)}})
		if err != nil {
			return failed(err, "find volumes of instance %s", iid)
		}
		for i := range vols.Volumes {
			if tag(vols.Volumes[i].Tags, TagDiskID) == "" {
				continue
			}
			if err := d.detach(ctx, &vols.Volumes[i]); err != nil {
				return err
			}
		}
	}
	return nil
}

// liveInstance is the instance with id (an instance id) or tagged with it
// (the provisioner's VM id) that is neither terminated nor terminating.
func (d *Driver) liveInstance(ctx context.Context, id string) (*types.Instance, error) {
	insts, err := d.instancesOf(ctx, id, true)
	if err != nil || len(insts) == 0 {
		return nil, err
	}
	return &insts[0], nil
}

// instancesOf are the instances with id or tagged with it; live only
// those neither terminated nor terminating.
func (d *Driver) instancesOf(ctx context.Context, id string, live bool) ([]types.Instance, error) {
	filters := []types.Filter{filter("tag:"+TagVMID, id)}
	if live {
		filters = append(filters, filter("instance-state-name", "pending", "running", "stopping", "stopped"))
	}
	var out []types.Instance
	p := ec2.NewDescribeInstancesPaginator(d.ec2, &ec2.DescribeInstancesInput{Filters: filters})
	for p.HasMorePages() {
		page, err := p.NextPage(ctx)
		if err != nil {
			return nil, failed(err, "find instance of %s", id)
		}
		for _, r := range page.Reservations {
			out = append(out, r.Instances...)
		}
	}
	if len(out) > 0 || !strings.HasPrefix(id, "i-") {
		return out, nil
	}
	inst, err := d.instance(ctx, id)
	if notFound(err) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	if live && (inst.State.Name == types.InstanceStateNameTerminated || inst.State.Name == types.InstanceStateNameShuttingDown) {
		return nil, nil
	}
	return []types.Instance{*inst}, nil
}

func (d *Driver) instance(ctx context.Context, iid string) (*types.Instance, error) {
	out, err := d.ec2.DescribeInstances(ctx, &ec2.DescribeInstancesInput{InstanceIds: []string{iid}})
	if err != nil {
		return nil, failed(err, "describe instance %s", iid)
	}
	for _, r := range out.Reservations {
		for _, i := range r.Instances {
			return &i, nil
		}
	}
	return nil, failed(&smithy.GenericAPIError{Code: "InvalidInstanceID.NotFound", Message: "no instance " + iid}, "describe instance %s", iid)
}

// attach attaches the data disk to the instance at DataDevice unless it is
// attached there already.
func (d *Driver) attach(ctx context.Context, diskID, iid string) error {
	vol, err := d.findVolume(ctx, diskID)
	if err != nil {
		return err
	}
	if vol == nil {
		return fmt.Errorf("attach data disk %s: it does not exist", diskID)
	}
	vid := awssdk.ToString(vol.VolumeId)
	attached := false
	for _, a := range vol.Attachments {
		switch {
		case a.State == types.VolumeAttachmentStateDetached:
		case awssdk.ToString(a.InstanceId) == iid:
			attached = true
		default:
			// Still on a VM being terminated, or on another VM.
			other, err := d.instance(ctx, awssdk.ToString(a.InstanceId))
			if err != nil && !notFound(err) {
				return err
			}
			if other != nil && other.State.Name != types.InstanceStateNameTerminated && other.State.Name != types.InstanceStateNameShuttingDown {
				return fmt.Errorf("attach data disk %s: volume %s is attached to instance %s", diskID, vid, awssdk.ToString(a.InstanceId))
			}
			if err := d.detach(ctx, vol); err != nil {
				return err
			}
		}
	}
	if !attached {
		_, err := d.ec2.AttachVolume(ctx, &ec2.AttachVolumeInput{VolumeId: awssdk.String(vid), InstanceId: awssdk.String(iid), Device: awssdk.String(DataDevice)})
		if err != nil {
			return failed(err, "attach volume %s to %s", vid, iid)
		}
		d.cfg.Log.InfoContext(ctx, "EBS volume attached", "volume", vid, "instance", iid, "device", DataDevice)
	}
	return d.wait(ctx, "volume "+vid+" to attach", func(ctx context.Context) (bool, error) {
		v, err := d.volume(ctx, vid)
		if err != nil || v == nil {
			return false, err
		}
		for _, a := range v.Attachments {
			if awssdk.ToString(a.InstanceId) == iid && a.State == types.VolumeAttachmentStateAttached {
				return true, nil
			}
		}
		return false, nil
	})
}

// ---- public addresses ----

// ensureAddress gives the instance the Elastic IP tagged with its VM id,
// allocating it first if need be.
func (d *Driver) ensureAddress(ctx context.Context, vmTag, instanceID, iid string) error {
	addrs, err := d.addressesOf(ctx, vmTag)
	if err != nil {
		return err
	}
	var alloc string
	if len(addrs) > 0 {
		if awssdk.ToString(addrs[0].InstanceId) == iid {
			return nil
		}
		alloc = awssdk.ToString(addrs[0].AllocationId)
	} else {
		out, err := d.ec2.AllocateAddress(ctx, &ec2.AllocateAddressInput{Domain: types.DomainTypeVpc,
			TagSpecifications: tagsOf(types.ResourceTypeElasticIp, map[string]string{TagVMID: vmTag, TagInstanceID: instanceID})})
		if err != nil {
			return failed(err, "allocate an Elastic IP for %s", vmTag)
		}
		alloc = awssdk.ToString(out.AllocationId)
		d.cfg.Log.InfoContext(ctx, "Elastic IP allocated", "vm", vmTag, "allocation", alloc, "ip", awssdk.ToString(out.PublicIp))
	}
	if _, err := d.ec2.AssociateAddress(ctx, &ec2.AssociateAddressInput{AllocationId: awssdk.String(alloc), InstanceId: awssdk.String(iid)}); err != nil {
		return failed(err, "associate Elastic IP %s with %s", alloc, iid)
	}
	return nil
}

func (d *Driver) addressesOf(ctx context.Context, vmTag string) ([]types.Address, error) {
	out, err := d.ec2.DescribeAddresses(ctx, &ec2.DescribeAddressesInput{Filters: []types.Filter{filter("tag:"+TagVMID, vmTag)}})
	if err != nil {
		return nil, failed(err, "find the Elastic IP of %s", vmTag)
	}
	return out.Addresses, nil
}

// releaseAddresses releases the Elastic IPs tagged with the VM id.
func (d *Driver) releaseAddresses(ctx context.Context, vmTag, iid string) error {
	addrs, err := d.addressesOf(ctx, vmTag)
	if err != nil {
		return err
	}
	for _, a := range addrs {
		alloc := awssdk.ToString(a.AllocationId)
		if a.AssociationId != nil {
			_, err := d.ec2.DisassociateAddress(ctx, &ec2.DisassociateAddressInput{AssociationId: a.AssociationId})
			if err != nil && !notFound(err) {
				return failed(err, "disassociate Elastic IP %s from %s", alloc, iid)
			}
		}
		if _, err := d.ec2.ReleaseAddress(ctx, &ec2.ReleaseAddressInput{AllocationId: a.AllocationId}); err != nil && !notFound(err) {
			return failed(err, "release Elastic IP %s", alloc)
		}
		d.cfg.Log.InfoContext(ctx, "Elastic IP released", "vm", vmTag, "allocation", alloc)
	}
	return nil
}

// ---- security groups ----

// OpenNetwork opens in the security group the driver made for network n
// (made now if missing) the node's port and n's HTTP-01 port, if any; a
// network with security groups of the operator's is left as it is
// (driver.Opener).
func (d *Driver) OpenNetwork(ctx context.Context, n driver.Network) error {
	if len(n.SecurityGroupIDs) > 0 {
		return nil
	}
	_, err := d.ensureSecurityGroup(ctx, n)
	return err
}

// ensureSecurityGroup is the network's own group: found by its tag, else
// made (one name per network, so two provisioners racing make one) with
// the node's port open and all egress allowed.
func (d *Driver) ensureSecurityGroup(ctx context.Context, n driver.Network) (string, error) {
	if n.VPCID == "" || n.ID == "" {
		return "", errors.New("network.aws.securityGroupIds: none given, and making one needs network.aws.vpcId")
	}
	name := "flotilla-" + n.ID
	find := func(f types.Filter) (*types.SecurityGroup, error) {
		out, err := d.ec2.DescribeSecurityGroups(ctx, &ec2.DescribeSecurityGroupsInput{Filters: []types.Filter{filter("vpc-id", n.VPCID), f}})
		if err != nil {
			return nil, failed(err, "find the security group of network %s", n.ID)
		}
		if len(out.SecurityGroups) == 0 {
			return nil, nil
		}
		return &out.SecurityGroups[0], nil
	}
	sg, err := find(filter("tag:"+TagNetworkID, n.ID))
	if err != nil {
		return "", err
	}
	if sg == nil {
		out, err := d.ec2.CreateSecurityGroup(ctx, &ec2.CreateSecurityGroupInput{
			GroupName: awssdk.String(name), VpcId: awssdk.String(n.VPCID),
			Description:       awssdk.String("Flotilla network " + n.ID + ": the node's port in (and HTTP-01's, for acme), everything out"),
			TagSpecifications: tagsOf(types.ResourceTypeSecurityGroup, map[string]string{TagNetworkID: n.ID, "Name": name}),
		})
		switch {
		case awsx.Code(err) == "InvalidGroup.Duplicate":
			if sg, err = find(filter("group-name", name)); err != nil {
				return "", err
			}
			if sg == nil {
				return "", fmt.Errorf("find security group %s: AWS says it exists in %s, and lists none", name, n.VPCID)
			}
		case err != nil:
			return "", failed(err, "create the security group of network %s", n.ID)
		default:
			sg = &types.SecurityGroup{GroupId: out.GroupId}
			d.cfg.Log.InfoContext(ctx, "security group created", "network", n.ID, "group", awssdk.ToString(out.GroupId))
		}
	}
	// The rules are checked on every call: a crash between making the
	// group and opening it leaves a group without them.
	gid := awssdk.ToString(sg.GroupId)
	port := n.NodePort
	if port == 0 {
		port = DefaultNodePort
	}
	anywhere := []types.IpRange{{CidrIp: awssdk.String("0.0.0.0/0")}}
	ports := []int32{port}
	if n.ChallengePort != 0 && n.ChallengePort != port {
		ports = append(ports, n.ChallengePort)
	}
	for _, p := range ports {
		in := types.IpPermission{IpProtocol: awssdk.String("tcp"), FromPort: awssdk.Int32(p), ToPort: awssdk.Int32(p), IpRanges: anywhere}
		if opens(sg.IpPermissions, in) {
			continue
		}
		_, err = d.ec2.AuthorizeSecurityGroupIngress(ctx, &ec2.AuthorizeSecurityGroupIngressInput{GroupId: sg.GroupId,
			IpPermissions: []types.IpPermission{in}})
		if err != nil && awsx.Code(err) != "InvalidPermission.Duplicate" {
			return "", failed(err, "open port %d in security group %s", p, gid)
		}
	}
	everything := types.IpPermission{IpProtocol: awssdk.String("-1"), IpRanges: anywhere}
	if !opens(sg.IpPermissionsEgress, everything) {
		_, err = d.ec2.AuthorizeSecurityGroupEgress(ctx, &ec2.AuthorizeSecurityGroupEgressInput{GroupId: sg.GroupId,
			IpPermissions: []types.IpPermission{everything}})
		if err != nil && awsx.Code(err) != "InvalidPermission.Duplicate" {
			return "", failed(err, "allow egress from security group %s", gid)
		}
	}
	return gid, nil
}

// opens reports whether perms has a rule for want's protocol and ports
// open to want's first address range.
func opens(perms []types.IpPermission, want types.IpPermission) bool {
	return slices.ContainsFunc(perms, func(p types.IpPermission) bool {
		return awssdk.ToString(p.IpProtocol) == awssdk.ToString(want.IpProtocol) &&
			awssdk.ToInt32(p.FromPort) == awssdk.ToInt32(want.FromPort) && awssdk.ToInt32(p.ToPort) == awssdk.ToInt32(want.ToPort) &&
			slices.ContainsFunc(p.IpRanges, func(r types.IpRange) bool {
				return awssdk.ToString(r.CidrIp) == awssdk.ToString(want.IpRanges[0].CidrIp)
			})
	})
}

// ---- DNS ----

// Hostname is the VM's name from the network's pattern ("" when none).
func Hostname(pattern, instanceName, instanceID string) string {
	return strings.NewReplacer("{name}", instanceName, "{id}", instanceID).Replace(pattern)
}

// ensureRecords points the VM's name at its private address in the private
// zone and its public address in the public zone, tagging the instance
// with each record first so DeleteVM finds them even after a crash.
func (d *Driver) ensureRecords(ctx context.Context, spec driver.VMSpec, inst *types.Instance, vm driver.VM) (string, error) {
	name := Hostname(spec.Network.HostnamePattern, spec.InstanceName, spec.InstanceID)
	if name == "" {
		return "", nil
	}
	for _, r := range []struct{ zone, ip, key string }{
		{spec.Network.PrivateZoneID, vm.PrivateIP, TagPrivateDNS},
		{spec.Network.PublicZoneID, vm.PublicIP, TagPublicDNS},
	} {
		if r.zone == "" || r.ip == "" {
			continue
		}
		zone := strings.TrimPrefix(r.zone, "/hostedzone/")
		value := zone + " " + name + " " + r.ip
		if tag(inst.Tags, r.key) != value {
			if _, err := d.ec2.CreateTags(ctx, &ec2.CreateTagsInput{Resources: []string{vm.ID},
				Tags: []types.Tag{{Key: awssdk.String(r.key), Value: awssdk.String(value)}}}); err != nil {
				return "", failed(err, "tag instance %s with its DNS name", vm.ID)
			}
		}
		if err := d.changeRecord(ctx, r53types.ChangeActionUpsert, zone, &r53types.ResourceRecordSet{
			Name: awssdk.String(name), Type: r53types.RRTypeA, TTL: awssdk.Int64(recordTTL),
			ResourceRecords: []r53types.ResourceRecord{{Value: awssdk.String(r.ip)}},
		}); err != nil {
			return "", err
		}
		d.cfg.Log.InfoContext(ctx, "DNS record written", "zone", zone, "name", name, "ip", r.ip)
	}
	return name, nil
}

// deleteRecord deletes the A record a DNS tag ("<zone> <name> <address>")
// names, if it still exists and still points at that address (a later VM
// of the instance, with the same name, has its own).
func (d *Driver) deleteRecord(ctx context.Context, value string) error {
	f := strings.Fields(value)
	if len(f) != 3 {
		return nil
	}
	return d.deleteRecordHolding(ctx, f[0], f[1], r53types.RRTypeA, f[2])
}

// deleteRecordHolding deletes the record of name and type in zone if it
// still exists and holds value; none (or one holding other values) is
// left as it is.
func (d *Driver) deleteRecordHolding(ctx context.Context, zone, name string, typ r53types.RRType, value string) error {
	out, err := d.r53.ListResourceRecordSets(ctx, &route53.ListResourceRecordSetsInput{HostedZoneId: awssdk.String(zone),
		StartRecordName: awssdk.String(name), StartRecordType: typ, MaxItems: awssdk.Int32(1)})
	if notFound(err) {
		return nil
	}
	if err != nil {
		return failed(err, "find DNS record %s in zone %s", name, zone)
	}
	for _, rs := range out.ResourceRecordSets {
		if strings.TrimSuffix(awssdk.ToString(rs.Name), ".") != strings.TrimSuffix(name, ".") || rs.Type != typ ||
			!slices.ContainsFunc(rs.ResourceRecords, func(r r53types.ResourceRecord) bool { return awssdk.ToString(r.Value) == value }) {
			continue
		}
		if err := d.changeRecord(ctx, r53types.ChangeActionDelete, zone, &rs); err != nil {
			return err
		}
		d.cfg.Log.InfoContext(ctx, "DNS record deleted", "zone", zone, "name", name, "type", typ)
	}
	return nil
}

// ---- ACME DNS-01 ----

// challengeTTL is the TTL of DNS-01 TXT records, in seconds: short, so a
// resolver that looked before the record was written looks again soon.
const challengeTTL = 60

// ChallengeName is the name of domain's DNS-01 TXT record.
func ChallengeName(domain string) string { return "_acme-challenge." + strings.TrimSuffix(domain, ".") }

// challengeValue is value as Route53 holds a TXT string: quoted.
func challengeValue(value string) string { return strconv.Quote(value) }

// PutChallenge writes a DNS-01 record in zone: the TXT record name (a
// domain's ChallengeName, or the name that one is an alias of) holding
// value (an UPSERT, so a value left from an earlier order is replaced).
// value is what the ACME server expects (the key authorization's digest,
// base64url): no quotes to escape.
func (d *Driver) PutChallenge(ctx context.Context, zone, name, value string) error {
	zone, name = strings.TrimPrefix(zone, "/hostedzone/"), strings.TrimSuffix(name, ".")
	if err := d.changeRecord(ctx, r53types.ChangeActionUpsert, zone, &r53types.ResourceRecordSet{
		Name: awssdk.String(name), Type: r53types.RRTypeTxt, TTL: awssdk.Int64(challengeTTL),
		ResourceRecords: []r53types.ResourceRecord{{Value: awssdk.String(challengeValue(value))}},
	}); err != nil {
		return err
	}
	d.cfg.Log.InfoContext(ctx, "DNS-01 record written", "zone", zone, "name", name)
	return nil
}

// DeleteChallenge deletes the DNS-01 record name from zone if it still
// holds value (a later order's record is left alone); none is fine.
func (d *Driver) DeleteChallenge(ctx context.Context, zone, name, value string) error {
	return d.deleteRecordHolding(ctx, strings.TrimPrefix(zone, "/hostedzone/"), strings.TrimSuffix(name, "."), r53types.RRTypeTxt, challengeValue(value))
}

func (d *Driver) changeRecord(ctx context.Context, action r53types.ChangeAction, zone string, rs *r53types.ResourceRecordSet) error {
	_, err := d.r53.ChangeResourceRecordSets(ctx, &route53.ChangeResourceRecordSetsInput{HostedZoneId: awssdk.String(zone),
		ChangeBatch: &r53types.ChangeBatch{Comment: awssdk.String("flotilla"), Changes: []r53types.Change{{Action: action, ResourceRecordSet: rs}}}})
	if err != nil && !(action == r53types.ChangeActionDelete && awsx.Code(err) == "InvalidChangeBatch") {
		return failed(err, "%s DNS record %s in zone %s", strings.ToLower(string(action)), awssdk.ToString(rs.Name), zone)
	}
	return nil
}

var _ driver.Driver = (*Driver)(nil)
