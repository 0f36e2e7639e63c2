package stack_test

import (
	"strings"
	"testing"
	"time"

	awssdk "github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/ec2"
	"github.com/aws/aws-sdk-go-v2/service/ec2/types"
	"github.com/aws/aws-sdk-go-v2/service/route53"
	r53types "github.com/aws/aws-sdk-go-v2/service/route53/types"

	"flotilla.dev/flotilla/api/endpoints"
	inventoryv1 "flotilla.dev/flotilla/api/gen/flotilla/inventory/v1"
	"flotilla.dev/flotilla/api/subjects"
	"flotilla.dev/flotilla/api/vocab"
	"flotilla.dev/flotilla/internal/stack"
	"flotilla.dev/flotilla/internal/stack/stacktest"
	"flotilla.dev/flotilla/libs/awsx"
	"flotilla.dev/flotilla/libs/rpc"
	"flotilla.dev/flotilla/libs/testkit"
	awsdriver "flotilla.dev/flotilla/services/provisioner/driver/aws"
)

// TestAWSProvisioningRecordsAWSIds provisions an aws instance on moto
// through the stack: the instance records the EBS volume id as its data
// disk and the EC2 instance id as its VM, deprovisioning terminates the VM
// and keeps the volume, deleting removes the volume. (No agent joins, so
// the step fails after a short agent timeout: the VM is not run here, see
// the aws driver's tests.)
func TestAWSProvisioningRecordsAWSIds(t *testing.T) {
	t.Parallel()
	ctx := t.Context()
	m := testkit.StartMoto(t)
	cfg, err := awsx.Config(ctx, m.Account())
	must(t, err)
	ec := ec2.NewFromConfig(cfg)
	vpc, err := ec.CreateVpc(ctx, &ec2.CreateVpcInput{CidrBlock: awssdk.String("10.30.0.0/16")})
	must(t, err)
	subnet, err := ec.CreateSubnet(ctx, &ec2.CreateSubnetInput{VpcId: vpc.Vpc.VpcId, CidrBlock: awssdk.String("10.30.1.0/24")})
	must(t, err)
	zone, err := route53.NewFromConfig(cfg).CreateHostedZone(ctx, &route53.CreateHostedZoneInput{Name: awssdk.String("fleet.example"),
		CallerReference: awssdk.String("stack"), HostedZoneConfig: &r53types.HostedZoneConfig{PrivateZone: true},
		VPC: &r53types.VPC{VPCId: vpc.Vpc.VpcId, VPCRegion: r53types.VPCRegion(testkit.MotoRegion)}})
	must(t, err)
	images, err := ec.DescribeImages(ctx, &ec2.DescribeImagesInput{Owners: []string{"amazon"}})
	must(t, err)

	bus := testkit.SecureNATS(t)
	stacktest.Start(t, stacktest.OnBus(stack.Config{
		ProvisionerAgentTimeout: 3 * time.Second,
		AgentURL:                "https://manager.fleet.example/agent/flotilla-agent", AgentSHA256: strings.Repeat("0f", 32),
	}, bus))
	gateway := rpc.NewClient(bus.Conn(t, subjects.Gateway), subjects.Gateway, 10*time.Second)
	admin := rpc.As(vocab.User("admin"))
	// The cloud account, its secret key kept by the secret broker and read
	// by the provisioner.
	acct := m.Account()
	acc, err := rpc.Call(ctx, gateway, endpoints.CloudAccountCreate, &inventoryv1.CreateCloudAccountRequest{CloudAccount: &inventoryv1.CloudAccount{
		Name: "lab-aws", Provider: "aws", Aws: &inventoryv1.AwsAccountSettings{Region: acct.Region, EndpointUrl: acct.EndpointURL,
			Credentials: &inventoryv1.AwsCredentials{AccessKeyId: acct.AccessKeyID, SecretAccessKey: acct.SecretAccessKey}}}}, admin)
	must(t, err)
	n, err := rpc.Call(ctx, gateway, endpoints.NetworkCreate, &inventoryv1.CreateNetworkRequest{Network: &inventoryv1.Network{
		Name: "vpc-a", Provider: "aws", HttpsStrategy: "none", AssignPublicIp: true, CloudAccountId: acc.GetId(),
		Aws: &inventoryv1.AwsNetworkSettings{VpcId: awssdk.ToString(vpc.Vpc.VpcId), SubnetId: awssdk.ToString(subnet.Subnet.SubnetId)},
		Dns: &inventoryv1.DnsSettings{PrivateZoneId: awssdk.ToString(zone.HostedZone.Id), HostnamePattern: "{name}.fleet.example"}}}, admin)
	must(t, err)
	tpl, err := rpc.Call(ctx, gateway, endpoints.TemplateCreate, &inventoryv1.CreateTemplateRequest{Template: &inventoryv1.Template{
		Name: "std", Provider: "aws", Image: awssdk.ToString(images.Images[0].ImageId), InstanceType: "t3.micro", DataDiskGb: 2}}, admin)
	must(t, err)
	in, err := rpc.Call(ctx, gateway, endpoints.InstanceCreate, &inventoryv1.CreateInstanceRequest{Instance: &inventoryv1.Instance{
		Name: "web-1", Kind: "design", TemplateId: tpl.GetId(), NetworkId: n.GetId()}}, admin)
	must(t, err)
	id := in.GetId()
	lifecycle := func(a vocab.Action) {
		t.Helper()
		_, err := rpc.Call(ctx, gateway, endpoints.LifecycleRequest, &inventoryv1.LifecycleRequest{Id: id, Action: string(a)}, admin)
		must(t, err)
	}
	waitFor := func(what string, ok func(*inventoryv1.Instance) bool) *inventoryv1.Instance {
		t.Helper()
		deadline := time.Now().Add(60 * time.Second)
		for {
			got, err := rpc.Call(ctx, gateway, endpoints.InstanceGet, &inventoryv1.GetInstanceRequest{Id: id}, admin)
			if err == nil && ok(got) {
				return got
			}
			if time.Now().After(deadline) {
				t.Fatalf("instance never %s: %v %v", what, got, err)
			}
			time.Sleep(100 * time.Millisecond)
		}
	}
	live := func() []types.Instance {
		t.Helper()
		out, err := ec.DescribeInstances(ctx, &ec2.DescribeInstancesInput{Filters: []types.Filter{
			{Name: awssdk.String("tag:" + awsdriver.TagInstanceID), Values: []string{id}},
			{Name: awssdk.String("instance-state-name"), Values: []string{"pending", "running", "stopping", "stopped"}}}})
		must(t, err)
		var insts []types.Instance
		for _, r := range out.Reservations {
			insts = append(insts, r.Instances...)
		}
		return insts
	}
	volume := func(vid string) *types.Volume {
		t.Helper()
		out, err := ec.DescribeVolumes(ctx, &ec2.DescribeVolumesInput{VolumeIds: []string{vid}})
		if awsx.Code(err) == "InvalidVolume.NotFound" || (err == nil && len(out.Volumes) == 0) {
			return nil
		}
		must(t, err)
		return &out.Volumes[0]
	}

	lifecycle(vocab.ActionProvision)
	got := waitFor("waited for its agent on an EC2 instance", func(in *inventoryv1.Instance) bool {
		return in.GetStateDetail() == string(vocab.StepWaitingForAgent)
	})
	vmID, volID := got.GetVmId(), got.GetDataDisk().GetId()
	if !strings.HasPrefix(vmID, "i-") || !strings.HasPrefix(volID, "vol-") {
		t.Fatalf("vmId %q, dataDisk.id %q; want the EC2 instance id and the EBS volume id", vmID, volID)
	}
	if got.GetAddresses().GetPrivateIp() == "" || got.GetAddresses().GetPublicIp() == "" {
		t.Errorf("addresses %v; want private and public", got.GetAddresses())
	}
	if insts := live(); len(insts) != 1 || awssdk.ToString(insts[0].InstanceId) != vmID {
		t.Fatalf("%d live instances of %s, want %s alone", len(insts), id, vmID)
	}
	if v := volume(volID); v == nil || len(v.Attachments) != 1 || awssdk.ToString(v.Attachments[0].InstanceId) != vmID {
		t.Errorf("volume %s: %+v; want attached to %s", volID, v, vmID)
	}

	// No agent joins: the step fails, naming itself.
	got = waitFor("failed waiting for its agent", func(in *inventoryv1.Instance) bool { return in.GetState() == string(vocab.StateFailed) })
	if !strings.HasPrefix(got.GetStateDetail(), string(vocab.StepWaitingForAgent)) || got.GetVmId() != vmID {
		t.Errorf("failed: %q, vmId %q; want %s and %s", got.GetStateDetail(), got.GetVmId(), vocab.StepWaitingForAgent, vmID)
	}

	lifecycle(vocab.ActionDeprovision)
	got = waitFor("deprovisioned", func(in *inventoryv1.Instance) bool { return in.GetState() == string(vocab.StateDeprovisioned) })
	if got.GetVmId() != "" || got.GetDataDisk().GetId() != volID {
		t.Errorf("deprovisioned: vmId %q, dataDisk.id %q; want none and %s", got.GetVmId(), got.GetDataDisk().GetId(), volID)
	}
	if n := len(live()); n != 0 {
		t.Errorf("%d live instances after deprovisioning", n)
	}
	if v := volume(volID); v == nil || v.State != types.VolumeStateAvailable {
		t.Errorf("volume %s after deprovisioning: %+v; want kept and available", volID, v)
	}

	lifecycle(vocab.ActionDelete)
	deadline := time.Now().Add(60 * time.Second)
	for {
		_, err := rpc.Call(ctx, gateway, endpoints.InstanceGet, &inventoryv1.GetInstanceRequest{Id: id}, admin)
		if err != nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("instance not deleted")
		}
		time.Sleep(100 * time.Millisecond)
	}
	if v := volume(volID); v != nil && v.State != types.VolumeStateDeleted {
		t.Errorf("volume %s after deleting the instance: %s", volID, v.State)
	}

	// A template whose AMI does not exist: the step fails with AWS's code.
	bad, err := rpc.Call(ctx, gateway, endpoints.TemplateCreate, &inventoryv1.CreateTemplateRequest{Template: &inventoryv1.Template{
		Name: "no-such-ami", Provider: "aws", Image: "ami-0123456789abcdef0", InstanceType: "t3.micro", DataDiskGb: 2}}, admin)
	must(t, err)
	in, err = rpc.Call(ctx, gateway, endpoints.InstanceCreate, &inventoryv1.CreateInstanceRequest{Instance: &inventoryv1.Instance{
		Name: "web-2", Kind: "design", TemplateId: bad.GetId(), NetworkId: n.GetId()}}, admin)
	must(t, err)
	id = in.GetId()
	lifecycle(vocab.ActionProvision)
	got = waitFor("failed", func(in *inventoryv1.Instance) bool { return in.GetState() == string(vocab.StateFailed) })
	if d := got.GetStateDetail(); !strings.HasPrefix(d, string(vocab.StepLaunchingVM)+": ") || !strings.Contains(d, "InvalidAMIID.NotFound: ") {
		t.Errorf("failed with %q; want the launching-vm step and InvalidAMIID.NotFound", d)
	}
}
