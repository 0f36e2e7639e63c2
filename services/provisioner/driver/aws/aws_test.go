package aws_test

import (
	"context"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	awssdk "github.com/aws/aws-sdk-go-v2/aws"
	awsmiddleware "github.com/aws/aws-sdk-go-v2/aws/middleware"
	"github.com/aws/aws-sdk-go-v2/service/ec2"
	"github.com/aws/aws-sdk-go-v2/service/ec2/types"
	"github.com/aws/aws-sdk-go-v2/service/route53"
	r53types "github.com/aws/aws-sdk-go-v2/service/route53/types"
	"github.com/aws/smithy-go/middleware"

	"flotilla.dev/flotilla/libs/awsx"
	"flotilla.dev/flotilla/libs/testkit"
	"flotilla.dev/flotilla/services/provisioner/driver"
	awsdriver "flotilla.dev/flotilla/services/provisioner/driver/aws"
	"flotilla.dev/flotilla/services/provisioner/driver/bootstrap"
	"flotilla.dev/flotilla/services/provisioner/driver/drivertest"
)

const testCA = "-----BEGIN CERTIFICATE-----\nMIIBfake\n-----END CERTIFICATE-----"

// cloud is one moto server with a VPC, a subnet, a private and a public
// zone and an AMI: what an operator has before adding a network.
type cloud struct {
	moto    *testkit.Moto
	ec2     *ec2.Client
	r53     *route53.Client
	network driver.Network
	ami     string
}

func newCloud(t *testing.T) *cloud {
	t.Helper()
	ctx := t.Context()
	m := testkit.StartMoto(t)
	cfg, err := awsx.Config(ctx, m.Account())
	if err != nil {
		t.Fatal(err)
	}
	c := &cloud{moto: m, ec2: ec2.NewFromConfig(cfg), r53: route53.NewFromConfig(cfg)}
	vpc, err := c.ec2.CreateVpc(ctx, &ec2.CreateVpcInput{CidrBlock: awssdk.String("10.20.0.0/16")})
	if err != nil {
		t.Fatal(err)
	}
	subnet, err := c.ec2.CreateSubnet(ctx, &ec2.CreateSubnetInput{VpcId: vpc.Vpc.VpcId, CidrBlock: awssdk.String("10.20.1.0/24"),
		AvailabilityZone: awssdk.String(testkit.MotoRegion + "b")})
	if err != nil {
		t.Fatal(err)
	}
	private, err := c.r53.CreateHostedZone(ctx, &route53.CreateHostedZoneInput{Name: awssdk.String("fleet.example"),
		CallerReference: awssdk.String("private"), HostedZoneConfig: &r53types.HostedZoneConfig{PrivateZone: true},
		VPC: &r53types.VPC{VPCId: vpc.Vpc.VpcId, VPCRegion: r53types.VPCRegion(testkit.MotoRegion)}})
	if err != nil {
		t.Fatal(err)
	}
	public, err := c.r53.CreateHostedZone(ctx, &route53.CreateHostedZoneInput{Name: awssdk.String("fleet.example"),
		CallerReference: awssdk.String("public")})
	if err != nil {
		t.Fatal(err)
	}
	images, err := c.ec2.DescribeImages(ctx, &ec2.DescribeImagesInput{Owners: []string{"amazon"}})
	if err != nil || len(images.Images) == 0 {
		t.Fatalf("moto's default AMIs: %v, %d images", err, len(images.Images))
	}
	c.ami = awssdk.ToString(images.Images[0].ImageId)
	c.network = driver.Network{ID: "net-" + t.Name(), VPCID: awssdk.ToString(vpc.Vpc.VpcId), SubnetID: awssdk.ToString(subnet.Subnet.SubnetId),
		AssignPublicIP: true, NodePort: 8443, PrivateZoneID: awssdk.ToString(private.HostedZone.Id),
		PublicZoneID: awssdk.ToString(public.HostedZone.Id), HostnamePattern: "{name}.fleet.example"}
	return c
}

// driver is an aws driver on the cloud, recording its actions in rec.
func (c *cloud) driver(t *testing.T, rec *awsx.Actions, opts ...awsx.Option) *awsdriver.Driver {
	t.Helper()
	if rec != nil {
		opts = append(opts, awsx.WithActions(rec))
	}
	d, err := awsdriver.New(t.Context(), c.moto.Account(), awsdriver.Config{Poll: 20 * time.Millisecond, WaitTimeout: time.Minute}, opts...)
	if err != nil {
		t.Fatal(err)
	}
	return d
}

func (c *cloud) vmSpec(id, instanceID, diskID string) driver.VMSpec {
	return driver.VMSpec{ID: id, InstanceID: instanceID, InstanceName: "web-1", DiskID: diskID, DiskSizeGB: 8,
		Image: c.ami, InstanceType: "t3.micro", Tags: map[string]string{"team": "fleet"}, Network: c.network,
		Bootstrap: driver.Bootstrap{GatewayAddr: "agents.fleet.example:7702", JoinToken: "fjt_secret", CAPEM: testCA,
			AgentURL: "https://manager.fleet.example/agent/v1.2.3/flotilla-agent", AgentSHA256: strings.Repeat("ab", 32), ManagerVersion: "v1.2.3"}}
}

// liveInstances are the instances tagged with the VM id that are not terminated.
func (c *cloud) liveInstances(t *testing.T, vmID string) []types.Instance {
	t.Helper()
	out, err := c.ec2.DescribeInstances(t.Context(), &ec2.DescribeInstancesInput{Filters: []types.Filter{
		{Name: awssdk.String("tag:" + awsdriver.TagVMID), Values: []string{vmID}},
		{Name: awssdk.String("instance-state-name"), Values: []string{"pending", "running", "stopping", "stopped"}}}})
	if err != nil {
		t.Fatal(err)
	}
	var insts []types.Instance
	for _, r := range out.Reservations {
		insts = append(insts, r.Instances...)
	}
	return insts
}

func (c *cloud) volume(t *testing.T, id string) *types.Volume {
	t.Helper()
	out, err := c.ec2.DescribeVolumes(t.Context(), &ec2.DescribeVolumesInput{VolumeIds: []string{id}})
	if awsx.Code(err) == "InvalidVolume.NotFound" {
		return nil
	}
	if err != nil {
		t.Fatal(err)
	}
	if len(out.Volumes) == 0 {
		return nil
	}
	return &out.Volumes[0]
}

// record is the A record of name in zone ("" when there is none).
func (c *cloud) record(t *testing.T, zone, name string) string {
	t.Helper()
	out, err := c.r53.ListResourceRecordSets(t.Context(), &route53.ListResourceRecordSetsInput{HostedZoneId: awssdk.String(zone)})
	if err != nil {
		t.Fatal(err)
	}
	for _, rs := range out.ResourceRecordSets {
		if strings.TrimSuffix(awssdk.ToString(rs.Name), ".") == name && rs.Type == r53types.RRTypeA && len(rs.ResourceRecords) > 0 {
			return awssdk.ToString(rs.ResourceRecords[0].Value)
		}
	}
	return ""
}

// volumesTagged are the volumes tagged with the disk id.
func (c *cloud) volumesTagged(t *testing.T, diskID string) []types.Volume {
	t.Helper()
	out, err := c.ec2.DescribeVolumes(t.Context(), &ec2.DescribeVolumesInput{Filters: []types.Filter{
		{Name: awssdk.String("tag:" + awsdriver.TagDiskID), Values: []string{diskID}}}})
	if err != nil {
		t.Fatal(err)
	}
	return out.Volumes
}

// securityGroupsOf are the security groups tagged with the network id.
func (c *cloud) securityGroupsOf(t *testing.T, networkID string) []types.SecurityGroup {
	t.Helper()
	out, err := c.ec2.DescribeSecurityGroups(t.Context(), &ec2.DescribeSecurityGroupsInput{Filters: []types.Filter{
		{Name: awssdk.String("tag:" + awsdriver.TagNetworkID), Values: []string{networkID}}}})
	if err != nil {
		t.Fatal(err)
	}
	return out.SecurityGroups
}

func (c *cloud) addresses(t *testing.T, vmID string) []types.Address {
	t.Helper()
	out, err := c.ec2.DescribeAddresses(t.Context(), &ec2.DescribeAddressesInput{Filters: []types.Filter{
		{Name: awssdk.String("tag:" + awsdriver.TagVMID), Values: []string{vmID}}}})
	if err != nil {
		t.Fatal(err)
	}
	return out.Addresses
}

// TestOpenNetworkOpensWhatTheNetworkNeedsNow: a network changed to ACME's
// HTTP-01 after its group was made gets the challenge's port opened in
// it (the node's stays), once however often asked; a network with the
// operator's own groups gets no group of Flotilla's.
func TestOpenNetworkOpensWhatTheNetworkNeedsNow(t *testing.T) {
	t.Parallel()
	c := newCloud(t)
	var rec awsx.Actions
	d := c.driver(t, &rec)
	ctx := t.Context()
	ingress := func() []int32 {
		t.Helper()
		sgs := c.securityGroupsOf(t, c.network.ID)
		if len(sgs) != 1 {
			t.Fatalf("the network's security groups: %+v, want one", sgs)
		}
		var ports []int32
		for _, p := range sgs[0].IpPermissions {
			ports = append(ports, awssdk.ToInt32(p.FromPort))
		}
		slices.Sort(ports)
		return ports
	}
	if err := d.OpenNetwork(ctx, c.network); err != nil {
		t.Fatal(err)
	}
	if got := ingress(); !slices.Equal(got, []int32{8443}) {
		t.Fatalf("ingress of a network without HTTP-01: %v, want the node's port alone", got)
	}
	acme := c.network
	acme.ChallengePort = 80
	for range 2 {
		if err := d.OpenNetwork(ctx, acme); err != nil {
			t.Fatal(err)
		}
	}
	if got := ingress(); !slices.Equal(got, []int32{80, 8443}) {
		t.Errorf("ingress once the network answers HTTP-01 on 80: %v, want 80 and 8443", got)
	}
	checkPolicy(t, &rec)

	own := c.network
	own.ID, own.SecurityGroupIDs, own.ChallengePort = "net-own-groups", []string{"sg-0a1b2c3d"}, 80
	if err := d.OpenNetwork(ctx, own); err != nil {
		t.Fatal(err)
	}
	if sgs := c.securityGroupsOf(t, own.ID); len(sgs) != 0 {
		t.Errorf("a network with the operator's groups got Flotilla's: %+v", sgs)
	}
}

// TestLifecycle provisions, deprovisions, provisions again and deletes,
// and checks that every action the driver called is in the IAM policy.
func TestLifecycle(t *testing.T) {
	t.Parallel()
	c := newCloud(t)
	c.network.ChallengePort = 8080 // an "acme" network answering HTTP-01 there
	var rec awsx.Actions
	d := c.driver(t, &rec)
	ctx := t.Context()

	disk, err := d.EnsureDisk(ctx, driver.DiskSpec{ID: "disk-1", InstanceID: "inst-1", SizeGB: 8, Network: c.network, Tags: map[string]string{"team": "fleet"}})
	if err != nil {
		t.Fatal(err)
	}
	if !strings.HasPrefix(disk.ID, "vol-") || disk.SizeGB != 8 {
		t.Fatalf("EnsureDisk = %+v, want an 8 GiB EBS volume", disk)
	}
	for _, id := range []string{"disk-1", disk.ID} {
		again, err := d.EnsureDisk(ctx, driver.DiskSpec{ID: id, InstanceID: "inst-1", SizeGB: 8, Network: c.network})
		if err != nil || again.ID != disk.ID {
			t.Errorf("EnsureDisk(%s) again = %+v, %v; want %s", id, again, err, disk.ID)
		}
	}
	if v := c.volume(t, disk.ID); awssdk.ToString(v.AvailabilityZone) != testkit.MotoRegion+"b" {
		t.Errorf("volume in %s, want the subnet's zone %sb", awssdk.ToString(v.AvailabilityZone), testkit.MotoRegion)
	}

	spec := c.vmSpec("vm-1", "inst-1", disk.ID)
	// The EC2 id is told at once, before the VM is waited for and set up
	// (the volume attached): its agent may join meanwhile.
	var launched []string
	spec.Launched = func(_ context.Context, iid string) error {
		launched = append(launched, iid)
		if v := c.volume(t, disk.ID); len(v.Attachments) != 0 {
			t.Errorf("Launched(%s) told after the volume was attached", iid)
		}
		return nil
	}
	vm, err := d.EnsureVM(ctx, spec)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.HasPrefix(vm.ID, "i-") || vm.PrivateIP == "" || vm.PublicIP == "" || vm.Hostname != "web-1.fleet.example" {
		t.Fatalf("EnsureVM = %+v; want an instance id, both addresses and its host name", vm)
	}
	if len(launched) != 1 || launched[0] != vm.ID {
		t.Errorf("Launched told %v, want %s once", launched, vm.ID)
	}
	spec.Launched = nil
	checkRunning(t, c, vm, disk.ID, spec)

	// Again, by the recorded instance id and by the VM id: the same VM.
	for _, id := range []string{vm.ID, "vm-1"} {
		s := spec
		s.ID = id
		again, err := d.EnsureVM(ctx, s)
		if err != nil || again.ID != vm.ID || again.PublicIP != vm.PublicIP {
			t.Errorf("EnsureVM(%s) again = %+v, %v; want %+v", id, again, err, vm)
		}
	}
	if n := len(c.liveInstances(t, "vm-1")); n != 1 {
		t.Errorf("%d instances of vm-1, want 1", n)
	}

	// Deprovision: VM gone, disk kept and detached, record and address gone.
	for range 2 {
		if err := d.DeleteVM(ctx, vm.ID); err != nil {
			t.Fatal(err)
		}
	}
	checkDeleted(t, c, vm, "vm-1", disk.ID)

	// Provision again: a new VM, the same volume.
	spec2 := c.vmSpec("vm-2", "inst-1", disk.ID)
	vm2, err := d.EnsureVM(ctx, spec2)
	if err != nil {
		t.Fatal(err)
	}
	if vm2.ID == vm.ID {
		t.Fatalf("the second VM is the first: %s", vm.ID)
	}
	checkRunning(t, c, vm2, disk.ID, spec2)
	// Deleting the first VM again (a retried step) leaves the name, now
	// the second VM's, alone.
	if err := d.DeleteVM(ctx, vm.ID); err != nil {
		t.Fatal(err)
	}
	if vm2.PrivateIP != vm.PrivateIP {
		if got := c.record(t, c.network.PrivateZoneID, "web-1.fleet.example"); got != vm2.PrivateIP {
			t.Errorf("after deleting the first VM again, the private record is %q, want the second VM's %s", got, vm2.PrivateIP)
		}
	}

	// Delete: VM, then the disk (by its recorded disk id or volume id alike).
	if err := d.DeleteVM(ctx, "vm-2"); err != nil {
		t.Fatal(err)
	}
	checkDeleted(t, c, vm2, "vm-2", disk.ID)
	for _, id := range []string{disk.ID, "disk-1"} {
		if err := d.DeleteDisk(ctx, id); err != nil {
			t.Fatalf("DeleteDisk(%s): %v", id, err)
		}
	}
	if v := c.volume(t, disk.ID); v != nil && v.State != types.VolumeStateDeleted {
		t.Errorf("volume %s is %s after DeleteDisk", disk.ID, v.State)
	}

	checkPolicy(t, &rec)
}

// checkPolicy fails t if deployments/aws/iam-policy.json does not allow
// an action rec recorded.
func checkPolicy(t *testing.T, rec *awsx.Actions) {
	t.Helper()
	policy, err := os.ReadFile("../../../../deployments/aws/iam-policy.json")
	if err != nil {
		t.Fatal(err)
	}
	missing, err := awsx.NotAllowed(policy, rec.List())
	if err != nil {
		t.Fatal(err)
	}
	if len(missing) > 0 {
		t.Errorf("deployments/aws/iam-policy.json does not allow %v, which the driver called", missing)
	}
	t.Logf("actions called: %v", rec.List())
}

// TestChallengeRecords: the DNS-01 TXT record of a domain is written
// (replacing an earlier order's value), deleted only while it holds the
// value deleted, and deleting it again is no error; every action called is
// in the IAM policy.
func TestChallengeRecords(t *testing.T) {
	t.Parallel()
	c := newCloud(t)
	var rec awsx.Actions
	d := c.driver(t, &rec)
	ctx := t.Context()
	zone := c.network.PublicZoneID
	name := awsdriver.ChallengeName("web-1.fleet.example")
	lookup := testkit.Route53TXT(ctx, c.r53, zone)
	txt := func() []string {
		t.Helper()
		values, err := lookup("_acme-challenge.web-1.fleet.example")
		if err != nil {
			t.Fatal(err)
		}
		return values
	}
	if err := d.PutChallenge(ctx, zone, name, "first-value"); err != nil {
		t.Fatal(err)
	}
	if err := d.PutChallenge(ctx, zone, name+".", "second_value-2"); err != nil {
		t.Fatal(err)
	}
	if got := txt(); !slices.Equal(got, []string{"second_value-2"}) {
		t.Fatalf("TXT record %v, want the second value alone", got)
	}
	if err := d.DeleteChallenge(ctx, zone, name, "first-value"); err != nil {
		t.Fatal(err)
	}
	if got := txt(); len(got) != 1 {
		t.Fatalf("deleting the first order's value removed the second's: %v", got)
	}
	for range 2 {
		if err := d.DeleteChallenge(ctx, zone, name, "second_value-2"); err != nil {
			t.Fatal(err)
		}
	}
	if got := txt(); len(got) != 0 {
		t.Fatalf("TXT record %v after deleting it", got)
	}
	checkPolicy(t, &rec)
}

func checkRunning(t *testing.T, c *cloud, vm driver.VM, volID string, spec driver.VMSpec) {
	t.Helper()
	ctx := t.Context()
	insts := c.liveInstances(t, spec.ID)
	if len(insts) != 1 || awssdk.ToString(insts[0].InstanceId) != vm.ID {
		t.Fatalf("instances tagged %s: %d, want %s alone", spec.ID, len(insts), vm.ID)
	}
	inst := insts[0]
	if inst.State.Name != types.InstanceStateNameRunning {
		t.Errorf("instance %s is %s", vm.ID, inst.State.Name)
	}
	tags := map[string]string{}
	for _, tg := range inst.Tags {
		tags[awssdk.ToString(tg.Key)] = awssdk.ToString(tg.Value)
	}
	if tags[awsdriver.TagInstanceID] != spec.InstanceID || tags["team"] != "fleet" || tags["Name"] != "web-1" {
		t.Errorf("instance tags %v", tags)
	}
	if awssdk.ToString(inst.ImageId) != c.ami || string(inst.InstanceType) != "t3.micro" || awssdk.ToString(inst.SubnetId) != c.network.SubnetID {
		t.Errorf("instance %s: image %s, type %s, subnet %s", vm.ID, awssdk.ToString(inst.ImageId), inst.InstanceType, awssdk.ToString(inst.SubnetId))
	}
	// The network's own security group, opening the node's port.
	if len(inst.SecurityGroups) != 1 {
		t.Fatalf("instance security groups %+v, want the network's", inst.SecurityGroups)
	}
	sgs, err := c.ec2.DescribeSecurityGroups(ctx, &ec2.DescribeSecurityGroupsInput{GroupIds: []string{awssdk.ToString(inst.SecurityGroups[0].GroupId)}})
	if err != nil {
		t.Fatal(err)
	}
	sg := sgs.SecurityGroups[0]
	want := []int32{spec.Network.NodePort}
	if p := spec.Network.ChallengePort; p != 0 {
		want = append(want, p) // the agent's, for HTTP-01
	}
	for _, port := range want {
		if !slices.ContainsFunc(sg.IpPermissions, func(p types.IpPermission) bool {
			return awssdk.ToInt32(p.FromPort) == port && awssdk.ToString(p.IpProtocol) == "tcp"
		}) {
			t.Errorf("security group %s: ingress %+v; want port %d in", awssdk.ToString(sg.GroupId), sg.IpPermissions, port)
		}
	}
	if len(sg.IpPermissionsEgress) == 0 {
		t.Errorf("security group %s: no egress", awssdk.ToString(sg.GroupId))
	}
	// The user data is the bootstrap script.
	ud, err := c.ec2.DescribeInstanceAttribute(ctx, &ec2.DescribeInstanceAttributeInput{InstanceId: awssdk.String(vm.ID), Attribute: types.InstanceAttributeNameUserData})
	if err != nil {
		t.Fatal(err)
	}
	script, err := base64.StdEncoding.DecodeString(awssdk.ToString(ud.UserData.Value))
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"#!/bin/sh", "'fjt_secret'", spec.Bootstrap.AgentURL, "'agents.fleet.example:7702'"} {
		if !strings.Contains(string(script), want) {
			t.Errorf("user data lacks %q", want)
		}
	}
	// The data disk, at its device.
	v := c.volume(t, volID)
	if v == nil || v.State != types.VolumeStateInUse || len(v.Attachments) != 1 ||
		awssdk.ToString(v.Attachments[0].InstanceId) != vm.ID || awssdk.ToString(v.Attachments[0].Device) != awsdriver.DataDevice {
		t.Errorf("volume %s: %+v; want attached to %s at %s", volID, v, vm.ID, awsdriver.DataDevice)
	}
	// Its Elastic IP and DNS records.
	addrs := c.addresses(t, spec.ID)
	if len(addrs) != 1 || awssdk.ToString(addrs[0].InstanceId) != vm.ID || awssdk.ToString(addrs[0].PublicIp) != vm.PublicIP {
		t.Errorf("Elastic IPs of %s: %+v; want one, %s on %s", spec.ID, addrs, vm.PublicIP, vm.ID)
	}
	if got := c.record(t, c.network.PrivateZoneID, "web-1.fleet.example"); got != vm.PrivateIP {
		t.Errorf("private record %q, want %s", got, vm.PrivateIP)
	}
	if got := c.record(t, c.network.PublicZoneID, "web-1.fleet.example"); got != vm.PublicIP {
		t.Errorf("public record %q, want %s", got, vm.PublicIP)
	}
}

func checkDeleted(t *testing.T, c *cloud, vm driver.VM, vmID, volID string) {
	t.Helper()
	if n := len(c.liveInstances(t, vmID)); n != 0 {
		t.Errorf("%d instances of %s after DeleteVM", n, vmID)
	}
	v := c.volume(t, volID)
	if v == nil || v.State != types.VolumeStateAvailable {
		t.Errorf("volume %s after DeleteVM: %+v; want kept, available", volID, v)
	}
	for _, a := range v.Attachments {
		if a.State != types.VolumeAttachmentStateDetached {
			t.Errorf("volume %s still attached: %+v", volID, a)
		}
	}
	if n := len(c.addresses(t, vmID)); n != 0 {
		t.Errorf("%d Elastic IPs of %s after DeleteVM", n, vmID)
	}
	for _, zone := range []string{c.network.PrivateZoneID, c.network.PublicZoneID} {
		if got := c.record(t, zone, "web-1.fleet.example"); got != "" {
			t.Errorf("record of %s still in zone %s: %s", vm.ID, zone, got)
		}
	}
}

// crashAfter is an awsx option that fails the first call of operation
// after AWS has carried it out, as a provisioner dying between a call and
// recording its result would: the call's effect is there, the caller never
// learns it. The error is crash.
func crashAfter(operation string, crash error) awsx.Option {
	var once sync.Once
	return func(c *awssdk.Config) {
		c.APIOptions = append(c.APIOptions, func(stack *middleware.Stack) error {
			return stack.Initialize.Add(middleware.InitializeMiddlewareFunc("TestCrashAfter",
				func(ctx context.Context, in middleware.InitializeInput, next middleware.InitializeHandler) (middleware.InitializeOutput, middleware.Metadata, error) {
					out, md, err := next.HandleInitialize(ctx, in)
					if err == nil && awsmiddleware.GetOperationName(ctx) == operation {
						once.Do(func() { err = crash })
					}
					return out, md, err
				}), middleware.After)
		})
	}
}

// TestResumeAfterACrashAtEachStep: for every AWS call that creates or
// changes something while an instance is provisioned, the provisioner
// dies right after AWS carried it out; a new provisioner process provisions
// the same instance again (the ids it recorded before the crash: VM and
// disk ids, not AWS's). Afterwards there is exactly one EC2 instance, one
// volume, one security group, one Elastic IP and one DNS record for it,
// counted by tag, and the volume is attached to the instance.
func TestResumeAfterACrashAtEachStep(t *testing.T) {
	t.Parallel()
	c := newCloud(t)
	agentURL, agentSum := serveAgent(t)
	steps := []string{"CreateVolume", "CreateSecurityGroup", "AuthorizeSecurityGroupIngress",
		"RunInstances", "AttachVolume", "AllocateAddress", "AssociateAddress", "CreateTags", "ChangeResourceRecordSets"}
	for i, op := range steps {
		t.Run(op, func(t *testing.T) {
			t.Parallel()
			ctx := t.Context()
			n := c.network
			n.ID = "net-crash-" + op // a security group of its own
			name := fmt.Sprintf("crash-%d", i)
			vmID, instID, diskID := "vm-"+name, "inst-"+name, "disk-"+name
			provision := func(d *awsdriver.Driver) (driver.VM, error) {
				disk, err := d.EnsureDisk(ctx, driver.DiskSpec{ID: diskID, InstanceID: instID, SizeGB: 4, Network: n})
				if err != nil {
					return driver.VM{}, err
				}
				spec := c.vmSpec(vmID, instID, disk.ID)
				spec.InstanceName, spec.Network = name, n
				spec.Bootstrap.AgentURL, spec.Bootstrap.AgentSHA256 = agentURL, agentSum
				return d.EnsureVM(ctx, spec)
			}
			crash := errors.New("crashed after " + op)
			if _, err := provision(c.driver(t, nil, crashAfter(op, crash))); !errors.Is(err, crash) {
				t.Fatalf("provisioning with a crash after %s: %v; want the crash", op, err)
			}
			restarted := c.driver(t, nil) // a new provisioner process
			vm, err := provision(restarted)
			if err != nil {
				t.Fatalf("provisioning again after the crash: %v", err)
			}
			if again, err := provision(restarted); err != nil || again.ID != vm.ID {
				t.Fatalf("provisioning once more: %v, %v; want %s again", again.ID, err, vm.ID)
			}

			if insts := c.liveInstances(t, vmID); len(insts) != 1 || awssdk.ToString(insts[0].InstanceId) != vm.ID {
				t.Errorf("%d live EC2 instances tagged %s, want exactly one (%s)", len(insts), vmID, vm.ID)
			}
			vols := c.volumesTagged(t, diskID)
			if len(vols) != 1 {
				t.Fatalf("%d volumes tagged %s, want exactly one", len(vols), diskID)
			}
			if a := vols[0].Attachments; len(a) != 1 || awssdk.ToString(a[0].InstanceId) != vm.ID {
				t.Errorf("volume %s attachments %+v; want attached to %s", awssdk.ToString(vols[0].VolumeId), a, vm.ID)
			}
			if addrs := c.addresses(t, vmID); len(addrs) != 1 || awssdk.ToString(addrs[0].InstanceId) != vm.ID {
				t.Errorf("Elastic IPs of %s: %+v; want one, associated with %s", vmID, addrs, vm.ID)
			}
			if got := c.record(t, n.PrivateZoneID, name+".fleet.example"); got != vm.PrivateIP {
				t.Errorf("DNS record of %s: %q, want %s", name, got, vm.PrivateIP)
			}
			if got := c.record(t, n.PublicZoneID, name+".fleet.example"); got != vm.PublicIP {
				t.Errorf("public DNS record of %s: %q, want %s", name, got, vm.PublicIP)
			}
			sgs := c.securityGroupsOf(t, n.ID)
			if len(sgs) != 1 {
				t.Fatalf("%d security groups for network %s, want one", len(sgs), n.ID)
			}
			if !slices.ContainsFunc(sgs[0].IpPermissions, func(p types.IpPermission) bool { return awssdk.ToInt32(p.FromPort) == n.NodePort }) {
				t.Errorf("security group %s does not open the node's port %d: %+v", awssdk.ToString(sgs[0].GroupId), n.NodePort, sgs[0].IpPermissions)
			}
			playVM(t, c, vm.ID, vmID)
		})
	}
}

// fakeAgent records its arguments in $FAKE_AGENT_OUT.
const fakeAgent = "#!/bin/sh\nfor a in \"$@\"; do printf '%s\\n' \"$a\"; done >\"$FAKE_AGENT_OUT.tmp\"\nmv \"$FAKE_AGENT_OUT.tmp\" \"$FAKE_AGENT_OUT\"\n"

// serveAgent serves fakeAgent as the manager serves the agent binary.
func serveAgent(t *testing.T) (url, sum string) {
	t.Helper()
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) { _, _ = w.Write([]byte(fakeAgent)) }))
	t.Cleanup(srv.Close)
	h := sha256.Sum256([]byte(fakeAgent))
	return srv.URL + "/agent/flotilla-agent", hex.EncodeToString(h[:])
}

// playVM runs the instance's user data, read back from EC2, as its VM
// would at boot (in a scratch root, without systemd), and checks the
// agent was started with its join token and CA bundle.
func playVM(t *testing.T, c *cloud, iid, vmID string) {
	t.Helper()
	ud, err := c.ec2.DescribeInstanceAttribute(t.Context(), &ec2.DescribeInstanceAttributeInput{InstanceId: awssdk.String(iid), Attribute: types.InstanceAttributeNameUserData})
	if err != nil {
		t.Fatal(err)
	}
	script, err := base64.StdEncoding.DecodeString(awssdk.ToString(ud.UserData.Value))
	if err != nil {
		t.Fatal(err)
	}
	root, out := t.TempDir(), filepath.Join(t.TempDir(), "args")
	cmd := exec.Command("sh", "-c", string(script))
	cmd.Env = []string{"PATH=" + testkit.VMPath(t), "FLOTILLA_VM_ROOT=" + root, "FLOTILLA_METADATA_URL=", "FAKE_AGENT_OUT=" + out}
	if b, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("user data: %v\n%s", err, b)
	}
	var args []byte
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(20 * time.Millisecond) {
		if args, err = os.ReadFile(out); err == nil || time.Now().After(deadline) {
			break
		}
	}
	if err != nil {
		t.Fatalf("the agent was not started: %v", err)
	}
	for _, want := range []string{"--gateway\nagents.fleet.example:7702\n", "--token-file\n" + root + bootstrap.TokenFile + "\n", "--vm-id\n" + vmID + "\n", "--data-device\n" + root + awsdriver.DataDevice + "\n"} {
		if !strings.Contains(string(args), want) {
			t.Errorf("agent arguments lack %q:\n%s", want, args)
		}
	}
	if b, err := os.ReadFile(root + bootstrap.TokenFile); err != nil || string(b) != "fjt_secret\n" {
		t.Errorf("join token file: %q, %v", b, err)
	}
}

// TestMissingAMI: the error names AWS's code, and nothing is left running.
func TestMissingAMI(t *testing.T) {
	t.Parallel()
	c := newCloud(t)
	d := c.driver(t, nil)
	spec := c.vmSpec("vm-m", "inst-m", "")
	spec.Image = "ami-0123456789abcdef0"
	_, err := d.EnsureVM(t.Context(), spec)
	if err == nil || !strings.Contains(err.Error(), "InvalidAMIID.NotFound: ") {
		t.Fatalf("EnsureVM with a missing AMI: %v; want InvalidAMIID.NotFound named", err)
	}
	if n := len(c.liveInstances(t, "vm-m")); n != 0 {
		t.Errorf("%d instances launched from a missing AMI", n)
	}
}

// TestBadCredentials: with moto checking signatures, keys AWS does not
// know fail with AWS's code.
func TestBadCredentials(t *testing.T) {
	t.Parallel()
	m := testkit.StartMoto(t, testkit.MotoAuth)
	d, err := awsdriver.New(t.Context(), m.Account(), awsdriver.Config{})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
	defer cancel()
	_, err = d.EnsureDisk(ctx, driver.DiskSpec{ID: "disk-b", InstanceID: "inst-b", SizeGB: 1, Network: driver.Network{SubnetID: "subnet-1"}})
	if err == nil {
		t.Fatal("EnsureDisk with unknown keys succeeded")
	}
	if code := awsx.Code(err); code != "InvalidClientTokenId" && code != "AuthFailure" {
		t.Errorf("error code %q (%v); want InvalidClientTokenId or AuthFailure", code, err)
	}
	if !strings.Contains(err.Error(), awsx.Code(err)+": ") {
		t.Errorf("error %q does not name its code", err)
	}
}

// TestContract runs the drivers' shared suite on moto.
func TestContract(t *testing.T) {
	t.Parallel()
	c := newCloud(t)
	drivertest.RunWith(t, c.driver(t, nil), func(disk *driver.DiskSpec, vm *driver.VMSpec) {
		disk.Network = c.network
		spec := c.vmSpec(vm.ID, vm.InstanceID, vm.DiskID)
		spec.InstanceName = vm.InstanceName
		*vm = spec
	})
}
