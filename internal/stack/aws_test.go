package stack_test

import (
	"bytes"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	awssdk "github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/ec2"
	"github.com/aws/aws-sdk-go-v2/service/ec2/types"
	"github.com/aws/aws-sdk-go-v2/service/route53"
	r53types "github.com/aws/aws-sdk-go-v2/service/route53/types"
	"github.com/nats-io/nats.go/jetstream"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/fieldmaskpb"

	"flotilla.dev/flotilla/api/endpoints"
	eventsv1 "flotilla.dev/flotilla/api/gen/flotilla/events/v1"
	inventoryv1 "flotilla.dev/flotilla/api/gen/flotilla/inventory/v1"
	"flotilla.dev/flotilla/api/subjects"
	"flotilla.dev/flotilla/api/vocab"
	"flotilla.dev/flotilla/internal/stack"
	"flotilla.dev/flotilla/internal/stack/stacktest"
	"flotilla.dev/flotilla/libs/apierr"
	"flotilla.dev/flotilla/libs/awsx"
	"flotilla.dev/flotilla/libs/rpc"
	"flotilla.dev/flotilla/libs/testkit"
	awsdriver "flotilla.dev/flotilla/services/provisioner/driver/aws"
)

// awsLab is an AWS account on moto (a VPC, a subnet, a private zone
// fleet.example) and a Flotilla stack with a cloud account for it (its
// secret key kept by the secret broker, read by the provisioner) and a
// network "vpc-a" in it.
type awsLab struct {
	ec      *ec2.Client
	r53     *route53.Client
	zone    *route53.CreateHostedZoneOutput
	images  *ec2.DescribeImagesOutput
	gateway *rpc.Client
	admin   rpc.CallOption
	network *inventoryv1.Network
	bus     *testkit.Bus
	moto    *testkit.Moto
	// imds is the metadata service played VMs ask their instance id;
	// current is the id it answers (the VM played last).
	imds    *httptest.Server
	current atomic.Value
	// disk is the instance's EBS volume as played VMs see it (a loop
	// device, made by the first play); vmRoot is the root of the VM played
	// last, and stop stops it (halt).
	disk   string
	vmRoot string
	stop   func()
}

func newAWSLab(t *testing.T, cfg stack.Config, assignPublicIP bool) *awsLab {
	t.Helper()
	ctx := t.Context()
	m := testkit.StartMoto(t)
	acfg, err := awsx.Config(ctx, m.Account())
	must(t, err)
	lab := &awsLab{ec: ec2.NewFromConfig(acfg), r53: route53.NewFromConfig(acfg), admin: rpc.As(vocab.User("admin")), moto: m}
	lab.current.Store("")
	lab.imds = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch r.URL.Path {
		case "/latest/api/token":
			_, _ = io.WriteString(w, "imds-token")
		case "/latest/meta-data/instance-id":
			_, _ = io.WriteString(w, lab.current.Load().(string))
		default:
			http.NotFound(w, r)
		}
	}))
	t.Cleanup(lab.imds.Close)
	vpc, err := lab.ec.CreateVpc(ctx, &ec2.CreateVpcInput{CidrBlock: awssdk.String("10.30.0.0/16")})
	must(t, err)
	subnet, err := lab.ec.CreateSubnet(ctx, &ec2.CreateSubnetInput{VpcId: vpc.Vpc.VpcId, CidrBlock: awssdk.String("10.30.1.0/24")})
	must(t, err)
	lab.zone, err = lab.r53.CreateHostedZone(ctx, &route53.CreateHostedZoneInput{Name: awssdk.String("fleet.example"),
		CallerReference: awssdk.String("stack"), HostedZoneConfig: &r53types.HostedZoneConfig{PrivateZone: true},
		VPC: &r53types.VPC{VPCId: vpc.Vpc.VpcId, VPCRegion: r53types.VPCRegion(testkit.MotoRegion)}})
	must(t, err)
	lab.images, err = lab.ec.DescribeImages(ctx, &ec2.DescribeImagesInput{Owners: []string{"amazon"}})
	must(t, err)

	lab.bus = testkit.SecureNATS(t)
	bus := lab.bus
	stacktest.Start(t, stacktest.OnBus(cfg, bus))
	lab.gateway = rpc.NewClient(bus.Conn(t, subjects.Gateway), subjects.Gateway, 10*time.Second)
	acct := m.Account()
	acc, err := rpc.Call(ctx, lab.gateway, endpoints.CloudAccountCreate, &inventoryv1.CreateCloudAccountRequest{CloudAccount: &inventoryv1.CloudAccount{
		Name: "lab-aws", Provider: "aws", Aws: &inventoryv1.AwsAccountSettings{Region: acct.Region, EndpointUrl: acct.EndpointURL,
			Credentials: &inventoryv1.AwsCredentials{AccessKeyId: acct.AccessKeyID, SecretAccessKey: acct.SecretAccessKey}}}}, lab.admin)
	must(t, err)
	lab.network, err = rpc.Call(ctx, lab.gateway, endpoints.NetworkCreate, &inventoryv1.CreateNetworkRequest{Network: &inventoryv1.Network{
		Name: "vpc-a", Provider: "aws", HttpsStrategy: "none", AssignPublicIp: assignPublicIP, CloudAccountId: acc.GetId(),
		Aws: &inventoryv1.AwsNetworkSettings{VpcId: awssdk.ToString(vpc.Vpc.VpcId), SubnetId: awssdk.ToString(subnet.Subnet.SubnetId)},
		Dns: &inventoryv1.DnsSettings{PrivateZoneId: awssdk.ToString(lab.zone.HostedZone.Id), HostnamePattern: "{name}.fleet.example"}}}, lab.admin)
	must(t, err)
	return lab
}

// newPlayedLab is an awsLab whose VMs, played by the test (play), run the
// real agent, downloaded from the gateway.
func newPlayedLab(t *testing.T) *awsLab {
	t.Helper()
	agent, err := agentBinary()
	must(t, err)
	port := testkit.FreePort(t)
	return newAWSLab(t, stack.Config{
		HTTPAddr: fmt.Sprintf("127.0.0.1:%d", port), PublicURL: fmt.Sprintf("http://127.0.0.1:%d", port),
		AgentBinary: agent, Version: "1.2.3",
	}, false)
}

// createInstance makes the template std (an AMI of moto's, a 2 GB data
// disk, the setup actions given) and the instance web-1 of it in the
// lab's network, and returns the instance's id.
func (lab *awsLab) createInstance(t *testing.T, setup ...*inventoryv1.SetupAction) string {
	t.Helper()
	tpl, err := rpc.Call(t.Context(), lab.gateway, endpoints.TemplateCreate, &inventoryv1.CreateTemplateRequest{Template: &inventoryv1.Template{
		Name: "std", Provider: "aws", Image: awssdk.ToString(lab.images.Images[0].ImageId), InstanceType: "t3.micro", DataDiskGb: 2,
		SetupActions: setup}}, lab.admin)
	must(t, err)
	in, err := rpc.Call(t.Context(), lab.gateway, endpoints.InstanceCreate, &inventoryv1.CreateInstanceRequest{Instance: &inventoryv1.Instance{
		Name: "web-1", Kind: "design", TemplateId: tpl.GetId(), NetworkId: lab.network.GetId()}}, lab.admin)
	must(t, err)
	return in.GetId()
}

// labInstance drives one of the lab's instances through the gateway, as
// its operator.
type labInstance struct {
	t   *testing.T
	lab *awsLab
	id  string
}

func (lab *awsLab) instance(t *testing.T, id string) *labInstance {
	return &labInstance{t: t, lab: lab, id: id}
}

func (i *labInstance) get() *inventoryv1.Instance {
	i.t.Helper()
	got, err := rpc.Call(i.t.Context(), i.lab.gateway, endpoints.InstanceGet, &inventoryv1.GetInstanceRequest{Id: i.id}, i.lab.admin)
	must(i.t, err)
	return got
}

// waitFor waits (2 minutes at most) until ok holds for the instance, and
// fails the test if it fails first.
func (i *labInstance) waitFor(what string, ok func(*inventoryv1.Instance) bool) *inventoryv1.Instance {
	i.t.Helper()
	deadline := time.Now().Add(2 * time.Minute)
	for {
		got := i.get()
		if ok(got) {
			return got
		}
		if vocab.State(got.GetState()) == vocab.StateFailed || time.Now().After(deadline) {
			i.t.Fatalf("instance never %s: %s %s, VM %s", what, got.GetState(), got.GetStateDetail(), got.GetVmId())
		}
		time.Sleep(100 * time.Millisecond)
	}
}

func (i *labInstance) lifecycle(a vocab.Action) {
	i.t.Helper()
	_, err := rpc.Call(i.t.Context(), i.lab.gateway, endpoints.LifecycleRequest, &inventoryv1.LifecycleRequest{Id: i.id, Action: string(a)}, i.lab.admin)
	must(i.t, err)
}

// boot waits until the instance waits for the agent of an EC2 instance
// (other than after, if given) and plays that VM (play); it returns its id.
// A VM before it may still run (played VMs stop only when the next one is
// played), its agent connected: the provisioner waits for the new VM's
// own agent all the same.
func (i *labInstance) boot(after string) string {
	i.t.Helper()
	got := i.waitFor("waiting for its agent", func(in *inventoryv1.Instance) bool {
		return in.GetStateDetail() == string(vocab.StepWaitingForAgent) && strings.HasPrefix(in.GetVmId(), "i-") && in.GetVmId() != after
	})
	i.lab.play(i.t, got.GetVmId())
	return got.GetVmId()
}

// halt stops the VM played last, as terminating it does: its agent and
// node killed, the data disk unmounted.
func (lab *awsLab) halt() {
	if lab.stop != nil {
		lab.stop()
		lab.stop = nil
	}
}

// play plays EC2 instance vmID as cloud-init would: its user data, read
// back from EC2, run with sh in a root of its own, the metadata service
// answering its id, the instance's EBS volume a loop device at the device
// name it is attached at (the agent formats it when empty and mounts it);
// the agent it installs runs until the next VM is played, halt, or the
// end of the test.
func (lab *awsLab) play(t *testing.T, vmID string) {
	t.Helper()
	ctx := t.Context()
	attr, err := lab.ec.DescribeInstanceAttribute(ctx, &ec2.DescribeInstanceAttributeInput{InstanceId: awssdk.String(vmID),
		Attribute: types.InstanceAttributeNameUserData})
	must(t, err)
	script, err := base64.StdEncoding.DecodeString(awssdk.ToString(attr.UserData.Value))
	must(t, err)
	lab.current.Store(vmID)
	lab.halt() // the VM before it was terminated
	if lab.disk == "" {
		lab.disk = testkit.LoopDevice(t, 64)
		t.Cleanup(lab.halt)
	}
	root := t.TempDir()
	lab.vmRoot = root
	must(t, os.MkdirAll(filepath.Join(root, "dev"), 0o755))
	must(t, os.Symlink(lab.disk, filepath.Join(root, awsdriver.DataDevice)))
	cmd := exec.Command("sh", "-s")
	cmd.Stdin = bytes.NewReader(script)
	cmd.Env = append(os.Environ(), "FLOTILLA_VM_ROOT="+root, "FLOTILLA_METADATA_URL="+lab.imds.URL)
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	out, err := cmd.CombinedOutput()
	lab.stop = func() {
		_ = syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
		pid, _ := os.ReadFile(filepath.Join(root, "var/lib/flotilla/agent.pid"))
		if p, err := strconv.Atoi(strings.TrimSpace(string(pid))); err == nil {
			_ = syscall.Kill(p, syscall.SIGKILL)
			for i := 0; i < 100 && syscall.Kill(p, 0) == nil; i++ {
				time.Sleep(20 * time.Millisecond)
			}
		}
		_ = exec.Command("umount", "--lazy", filepath.Join(root, "var/lib/flotilla/data")).Run()
	}
	if err != nil {
		t.Fatalf("user data of %s: %v\n%s", vmID, err, out)
	}
	if b, err := os.ReadFile(filepath.Join(root, "usr/local/bin/flotilla-agent")); err != nil || len(b) == 0 {
		t.Fatalf("the agent was not installed from the gateway: %v", err)
	}
}

// agentless is a stack whose EC2 instances run no agent: a provision fails
// 3 s after the VM is launched, the instance holding the VM and its volume.
func agentless() stack.Config {
	return stack.Config{ProvisionerAgentTimeout: 3 * time.Second,
		AgentURL: "https://manager.fleet.example/agent/flotilla-agent", AgentSHA256: strings.Repeat("0f", 32)}
}

// TestAWSProvisioningRecordsAWSIds provisions an aws instance on moto
// through the stack: the instance records the EBS volume id as its data
// disk and the EC2 instance id as its VM, deprovisioning terminates the VM
// and keeps the volume, deleting removes the volume. (No agent joins, so
// the step fails after a short agent timeout: the VM is not run here, see
// the aws driver's tests.)
func TestAWSProvisioningRecordsAWSIds(t *testing.T) {
	t.Parallel()
	ctx := t.Context()
	lab := newAWSLab(t, agentless(), true)
	ec, gateway, admin, n := lab.ec, lab.gateway, lab.admin, lab.network
	images := lab.images
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

// TestAWSForcedDeleteLeavesWhatTheCloudCannotDestroy: with its cloud gone
// (moto stopped), an instance holding an EC2 instance and an EBS volume
// cannot be deleted: the delete fails at stopping-vm and the record stays.
// A forced delete removes the record all the same, and the instance's
// deleted event names the VM and the volume it left in the cloud.
func TestAWSForcedDeleteLeavesWhatTheCloudCannotDestroy(t *testing.T) {
	t.Parallel()
	ctx := t.Context()
	lab := newAWSLab(t, agentless(), false)
	tpl, err := rpc.Call(ctx, lab.gateway, endpoints.TemplateCreate, &inventoryv1.CreateTemplateRequest{Template: &inventoryv1.Template{
		Name: "std", Provider: "aws", Image: awssdk.ToString(lab.images.Images[0].ImageId), InstanceType: "t3.micro", DataDiskGb: 2}}, lab.admin)
	must(t, err)
	in, err := rpc.Call(ctx, lab.gateway, endpoints.InstanceCreate, &inventoryv1.CreateInstanceRequest{Instance: &inventoryv1.Instance{
		Name: "web-f", Kind: "design", TemplateId: tpl.GetId(), NetworkId: lab.network.GetId()}}, lab.admin)
	must(t, err)
	i := lab.instance(t, in.GetId())
	failed := func(what string) *inventoryv1.Instance {
		t.Helper()
		for deadline := time.Now().Add(2 * time.Minute); ; time.Sleep(100 * time.Millisecond) {
			got := i.get()
			if got.GetState() == string(vocab.StateFailed) {
				return got
			}
			if time.Now().After(deadline) {
				t.Fatalf("%s: instance %s %q, never failed", what, got.GetState(), got.GetStateDetail())
			}
		}
	}
	// No agent joins: the instance fails holding its VM and its volume.
	i.lifecycle(vocab.ActionProvision)
	got := failed("provision")
	vmID, volID := got.GetVmId(), got.GetDataDisk().GetId()
	if !strings.HasPrefix(vmID, "i-") || !strings.HasPrefix(volID, "vol-") {
		t.Fatalf("vmId %q, dataDisk.id %q; want an EC2 instance and an EBS volume", vmID, volID)
	}

	lab.moto.Stop()
	deleted, err := rpc.Call(ctx, lab.gateway, endpoints.InstanceDelete, &inventoryv1.DeleteInstanceRequest{Id: i.id}, lab.admin)
	must(t, err)
	if deleted.GetState() != string(vocab.StateDeleting) || deleted.GetDeleteForced() {
		t.Fatalf("delete answered %s (forced %v); want deleting, not forced", deleted.GetState(), deleted.GetDeleteForced())
	}
	for deadline := time.Now().Add(2 * time.Minute); ; time.Sleep(100 * time.Millisecond) {
		got = i.get()
		if got.GetState() == string(vocab.StateFailed) && got.GetDesiredState() == string(vocab.DesiredDeleted) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("delete: instance %s %q, never failed", got.GetState(), got.GetStateDetail())
		}
	}
	if !strings.HasPrefix(got.GetStateDetail(), string(vocab.StepStoppingVM)+": ") || got.GetVmId() != vmID {
		t.Errorf("delete without the cloud failed with %q, vmId %q; want %s, the VM kept", got.GetStateDetail(), got.GetVmId(), vocab.StepStoppingVM)
	}

	forced, err := rpc.Call(ctx, lab.gateway, endpoints.InstanceDelete, &inventoryv1.DeleteInstanceRequest{Id: i.id, Force: true}, lab.admin)
	must(t, err)
	if forced.GetState() != string(vocab.StateDeleting) || !forced.GetDeleteForced() {
		t.Errorf("forced delete answered %s (forced %v); want deleting, forced", forced.GetState(), forced.GetDeleteForced())
	}
	for deadline := time.Now().Add(2 * time.Minute); ; time.Sleep(100 * time.Millisecond) {
		_, err := rpc.Call(ctx, lab.gateway, endpoints.InstanceGet, &inventoryv1.GetInstanceRequest{Id: i.id}, lab.admin)
		if apierr.Is(err, apierr.KindNotFound) {
			break
		}
		must(t, err)
		if time.Now().After(deadline) {
			t.Fatalf("a forced delete never removed the record: %s %q", i.get().GetState(), i.get().GetStateDetail())
		}
	}
	js, err := jetstream.New(lab.bus.Unrestricted(t))
	must(t, err)
	events, err := js.Stream(ctx, subjects.EventsStream)
	must(t, err)
	// The record gone, its event follows through the outbox a moment later.
	var m *jetstream.RawStreamMsg
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(50 * time.Millisecond) {
		m, err = events.GetLastMsgForSubject(ctx, subjects.Event(subjects.NounInstance, i.id, string(vocab.VerbDeleted)))
		if err == nil || !errors.Is(err, jetstream.ErrMsgNotFound) || time.Now().After(deadline) {
			break
		}
	}
	must(t, err)
	ev := &eventsv1.Event{}
	must(t, proto.Unmarshal(m.Data, ev))
	last := &inventoryv1.Instance{}
	must(t, ev.GetData().UnmarshalTo(last))
	d := last.GetStateDetail()
	t.Logf("deleted: %s", d)
	for _, want := range []string{"forced: left in the cloud: ", "vm " + vmID + " (" + string(vocab.StepStoppingVM) + ": ",
		"disk " + volID + " (" + string(vocab.StepDeletingDisk) + ": "} {
		if !strings.Contains(d, want) {
			t.Errorf("deleted event's detail %q; want it to hold %q", d, want)
		}
	}
}

// TestAWSInstanceRunsAndKeepsItsDisk is the AWS lifecycle end to end on
// moto, with the test playing each EC2 instance: it reads the user data
// back from EC2 and runs it with sh in a scratch root (FLOTILLA_VM_ROOT),
// answering the metadata service's instance id, so the real agent is
// downloaded from the gateway (SHA-256 checked), joins with its one-time
// token and reaches running over mutual TLS. Deprovisioning terminates
// the VM, keeps the volume detached and removes the DNS record;
// provisioning again attaches the same volume, as does reprovisioning;
// deleting removes volume and record.
func TestAWSInstanceRunsAndKeepsItsDisk(t *testing.T) {
	t.Parallel()
	ctx := t.Context()
	lab := newPlayedLab(t)
	ec, r53, zone, gateway, admin := lab.ec, lab.r53, lab.zone, lab.gateway, lab.admin
	id := lab.createInstance(t, &inventoryv1.SetupAction{Type: "script", Script: "echo set up on $(hostname); echo set up >> boots"})

	li := lab.instance(t, id)
	waitFor, lifecycle := li.waitFor, li.lifecycle
	record := func() []string {
		t.Helper()
		out, err := r53.ListResourceRecordSets(ctx, &route53.ListResourceRecordSetsInput{HostedZoneId: zone.HostedZone.Id})
		must(t, err)
		var values []string
		for _, rs := range out.ResourceRecordSets {
			if strings.TrimSuffix(awssdk.ToString(rs.Name), ".") == "web-1.fleet.example" && rs.Type == r53types.RRTypeA {
				for _, v := range rs.ResourceRecords {
					values = append(values, awssdk.ToString(v.Value))
				}
			}
		}
		return values
	}
	volumeOf := func(vid string) *types.Volume {
		t.Helper()
		out, err := ec.DescribeVolumes(ctx, &ec2.DescribeVolumesInput{VolumeIds: []string{vid}})
		if awsx.Code(err) == "InvalidVolume.NotFound" || (err == nil && len(out.Volumes) == 0) {
			return nil
		}
		must(t, err)
		return &out.Volumes[0]
	}
	boot := func() string { return li.boot("") }

	// Provision: running, through the played VM's agent.
	lifecycle(vocab.ActionProvision)
	vm1 := boot()
	got := waitFor("running", func(in *inventoryv1.Instance) bool { return vocab.State(in.GetState()) == vocab.StateRunning })
	volID := got.GetDataDisk().GetId()
	if got.GetVmId() != vm1 || !strings.HasPrefix(volID, "vol-") || got.GetAgent().GetStatus() != string(vocab.AgentConnected) {
		t.Fatalf("running: vmId %q (want %s), dataDisk.id %q, agent %v", got.GetVmId(), vm1, volID, got.GetAgent())
	}
	if u := got.GetAddresses().GetUrl(); !strings.Contains(u, "web-1.fleet.example:443") {
		t.Errorf("node URL %q: want the instance's DNS name and the node port", u)
	}
	if h := got.GetAddresses().GetHostname(); h != "web-1.fleet.example" {
		t.Errorf("addresses.hostname %q: want the DNS record's name (a self-signed certificate carries it)", h)
	}
	if ips := record(); len(ips) != 1 || ips[0] != got.GetAddresses().GetPrivateIp() {
		t.Errorf("DNS record %v, want the private address %s", ips, got.GetAddresses().GetPrivateIp())
	}
	if v := volumeOf(volID); v == nil || len(v.Attachments) != 1 || awssdk.ToString(v.Attachments[0].InstanceId) != vm1 {
		t.Fatalf("volume %s: %+v; want attached to %s", volID, v, vm1)
	}

	// Deprovision: the VM terminated, the volume kept and detached, the
	// record gone.
	lifecycle(vocab.ActionDeprovision)
	waitFor("deprovisioned", func(in *inventoryv1.Instance) bool { return vocab.State(in.GetState()) == vocab.StateDeprovisioned })
	st, err := ec.DescribeInstances(ctx, &ec2.DescribeInstancesInput{InstanceIds: []string{vm1}})
	must(t, err)
	if s := st.Reservations[0].Instances[0].State.Name; s != types.InstanceStateNameTerminated && s != types.InstanceStateNameShuttingDown {
		t.Errorf("VM %s after deprovisioning: %s", vm1, s)
	}
	if v := volumeOf(volID); v == nil || v.State != types.VolumeStateAvailable {
		t.Errorf("volume %s after deprovisioning: %+v; want kept and detached", volID, v)
	}
	if ips := record(); len(ips) != 0 {
		t.Errorf("DNS record after deprovisioning: %v", ips)
	}

	// Provision again: a new VM, the same volume.
	lifecycle(vocab.ActionProvision)
	vm2 := boot()
	got = waitFor("running again", func(in *inventoryv1.Instance) bool { return vocab.State(in.GetState()) == vocab.StateRunning })
	if vm2 == vm1 || got.GetDataDisk().GetId() != volID {
		t.Fatalf("provisioned again: VM %s (first %s), volume %s (want %s)", vm2, vm1, got.GetDataDisk().GetId(), volID)
	}
	if v := volumeOf(volID); v == nil || len(v.Attachments) != 1 || awssdk.ToString(v.Attachments[0].InstanceId) != vm2 {
		t.Fatalf("volume %s: %+v; want attached to %s", volID, v, vm2)
	}

	// Reprovision: the VM replaced, the volume kept.
	lifecycle(vocab.ActionReprovision)
	vm3 := li.boot(vm2)
	got = waitFor("running after reprovisioning", func(in *inventoryv1.Instance) bool {
		return vocab.State(in.GetState()) == vocab.StateRunning && in.GetVmId() == vm3
	})
	if vm3 == vm2 || got.GetDataDisk().GetId() != volID {
		t.Fatalf("reprovisioned: VM %s (before %s), volume %s (want %s)", vm3, vm2, got.GetDataDisk().GetId(), volID)
	}
	// The volume was formatted once, by the first VM's agent, and each VM's
	// setup wrote on it: the third VM sees all three.
	boots, err := os.ReadFile(filepath.Join(lab.vmRoot, "var/lib/flotilla/data/boots"))
	must(t, err)
	if n := strings.Count(string(boots), "set up\n"); n != 3 {
		t.Errorf("the data disk records %d setups, want 3, one per VM (formatted again, or not mounted?): %q", n, boots)
	}

	// Delete (once deprovisioned): the VM, the volume and the record go.
	lifecycle(vocab.ActionDeprovision)
	waitFor("deprovisioned", func(in *inventoryv1.Instance) bool { return vocab.State(in.GetState()) == vocab.StateDeprovisioned })
	lifecycle(vocab.ActionDelete)
	deadline := time.Now().Add(90 * time.Second)
	for {
		if _, err := rpc.Call(ctx, gateway, endpoints.InstanceGet, &inventoryv1.GetInstanceRequest{Id: id}, admin); err != nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("instance not deleted")
		}
		time.Sleep(100 * time.Millisecond)
	}
	if v := volumeOf(volID); v != nil && v.State != types.VolumeStateDeleted {
		t.Errorf("volume %s after deleting the instance: %s", volID, v.State)
	}
	if ips := record(); len(ips) != 0 {
		t.Errorf("DNS record after deleting: %v", ips)
	}
}

// TestAWSBadCredentialsFailTheStep: an account whose keys AWS refuses
// (moto checking signatures) is reported by :verify, and provisioning an
// instance in it ends in failed, the step naming AWS's error code; the
// instance can be provisioned again, and fails the same way, with no
// step left hanging.
func TestAWSBadCredentialsFailTheStep(t *testing.T) {
	t.Parallel()
	ctx := t.Context()
	m := testkit.StartMoto(t, testkit.MotoAuth)
	bus := testkit.SecureNATS(t)
	stacktest.Start(t, stacktest.OnBus(stack.Config{
		AgentURL: "https://manager.fleet.example/agent/flotilla-agent", AgentSHA256: strings.Repeat("0f", 32),
	}, bus))
	gateway := rpc.NewClient(bus.Conn(t, subjects.Gateway), subjects.Gateway, 10*time.Second)
	admin := rpc.As(vocab.User("admin"))
	acct := m.Account()
	acc, err := rpc.Call(ctx, gateway, endpoints.CloudAccountCreate, &inventoryv1.CreateCloudAccountRequest{CloudAccount: &inventoryv1.CloudAccount{
		Name: "refused", Provider: "aws", Aws: &inventoryv1.AwsAccountSettings{Region: acct.Region, EndpointUrl: acct.EndpointURL,
			Credentials: &inventoryv1.AwsCredentials{AccessKeyId: acct.AccessKeyID, SecretAccessKey: acct.SecretAccessKey}}}}, admin)
	must(t, err)
	v, err := rpc.Call(ctx, gateway, endpoints.CloudAccountVerify, &inventoryv1.VerifyCloudAccountRequest{Id: acc.GetId()}, admin)
	must(t, err)
	if v.GetOk() || !strings.Contains(v.GetMessage(), "InvalidClientTokenId: ") {
		t.Errorf("verify: ok %v, message %q; want refused with InvalidClientTokenId named", v.GetOk(), v.GetMessage())
	}
	n, err := rpc.Call(ctx, gateway, endpoints.NetworkCreate, &inventoryv1.CreateNetworkRequest{Network: &inventoryv1.Network{
		Name: "vpc-r", Provider: "aws", HttpsStrategy: "none", CloudAccountId: acc.GetId(),
		Aws: &inventoryv1.AwsNetworkSettings{VpcId: "vpc-0a1b2c3d", SubnetId: "subnet-0a1b2c3d", SecurityGroupIds: []string{"sg-0a1b2c3d"}}}}, admin)
	must(t, err)
	tpl, err := rpc.Call(ctx, gateway, endpoints.TemplateCreate, &inventoryv1.CreateTemplateRequest{Template: &inventoryv1.Template{
		Name: "std", Provider: "aws", Image: "ami-0a1b2c3d4e5f60718", InstanceType: "t3.micro", DataDiskGb: 2}}, admin)
	must(t, err)
	in, err := rpc.Call(ctx, gateway, endpoints.InstanceCreate, &inventoryv1.CreateInstanceRequest{Instance: &inventoryv1.Instance{
		Name: "web-r", Kind: "design", TemplateId: tpl.GetId(), NetworkId: n.GetId()}}, admin)
	must(t, err)
	for round := 1; round <= 2; round++ {
		_, err := rpc.Call(ctx, gateway, endpoints.LifecycleRequest, &inventoryv1.LifecycleRequest{Id: in.GetId(), Action: string(vocab.ActionProvision)}, admin)
		must(t, err)
		var got *inventoryv1.Instance
		for deadline := time.Now().Add(60 * time.Second); ; time.Sleep(100 * time.Millisecond) {
			got, err = rpc.Call(ctx, gateway, endpoints.InstanceGet, &inventoryv1.GetInstanceRequest{Id: in.GetId()}, admin)
			must(t, err)
			if got.GetState() == string(vocab.StateFailed) {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("round %d: instance %s %q, never failed", round, got.GetState(), got.GetStateDetail())
			}
		}
		d := got.GetStateDetail()
		// EC2 names refused keys AuthFailure (STS: InvalidClientTokenId).
		if !strings.HasPrefix(d, string(vocab.StepAllocatingDisk)+": ") || !strings.Contains(d, "AuthFailure: ") {
			t.Errorf("round %d: failed with %q; want the %s step naming AuthFailure", round, d, vocab.StepAllocatingDisk)
		}
		if got.GetVmId() != "" && strings.HasPrefix(got.GetVmId(), "i-") {
			t.Errorf("round %d: vmId %q recorded though AWS refused every call", round, got.GetVmId())
		}
	}
}

// TestAWSRefreshOpensTheHTTP01PortOfANetworkChangedToACME: a network
// changed to ACME by HTTP-01 after its instance's VM was placed has the
// challenge's port opened in the security group Flotilla made for it
// when the instance's certificate is refreshed, before its agent is asked
// to answer there.
//
// Not parallel: its played VM's node listens on port 443 of every
// interface, as TestAWSInstanceRunsAndKeepsItsDisk's does (see
// TestACMEOverDNS01OnAWS).
func TestAWSRefreshOpensTheHTTP01PortOfANetworkChangedToACME(t *testing.T) {
	ctx := t.Context()
	lab := newPlayedLab(t)
	id := lab.createInstance(t)
	li := lab.instance(t, id)
	li.lifecycle(vocab.ActionProvision)
	li.boot("")
	li.waitFor("running", func(in *inventoryv1.Instance) bool { return vocab.State(in.GetState()) == vocab.StateRunning })

	ingress := func() []int32 {
		t.Helper()
		out, err := lab.ec.DescribeSecurityGroups(ctx, &ec2.DescribeSecurityGroupsInput{Filters: []types.Filter{
			{Name: awssdk.String("tag:" + awsdriver.TagNetworkID), Values: []string{lab.network.GetId()}}}})
		must(t, err)
		if len(out.SecurityGroups) != 1 {
			t.Fatalf("the network's security groups: %+v, want the one Flotilla made", out.SecurityGroups)
		}
		var ports []int32
		for _, p := range out.SecurityGroups[0].IpPermissions {
			ports = append(ports, awssdk.ToInt32(p.FromPort))
		}
		return ports
	}
	if slices.Contains(ingress(), 8081) {
		t.Fatal("port 8081 is open before the network answers HTTP-01 on it")
	}
	n, err := rpc.Call(ctx, lab.gateway, endpoints.NetworkGet, &inventoryv1.GetNetworkRequest{Id: lab.network.GetId()}, lab.admin)
	must(t, err)
	n.HttpsStrategy = string(vocab.HTTPSACME)
	n.Acme = &inventoryv1.AcmeSettings{ContactEmail: "ops@example.test", HttpPort: 8081, DirectoryUrl: "http://127.0.0.1:9/directory"}
	_, err = rpc.Call(ctx, lab.gateway, endpoints.NetworkUpdate, &inventoryv1.UpdateNetworkRequest{Network: n,
		UpdateMask: &fieldmaskpb.FieldMask{Paths: []string{"httpsStrategy", "acme"}}}, lab.admin)
	must(t, err)
	_, err = rpc.Call(ctx, lab.gateway, endpoints.CertificateRefresh, &inventoryv1.InstanceActionRequest{Id: id}, lab.admin)
	must(t, err)
	if got := ingress(); !slices.Contains(got, 8081) || !slices.Contains(got, int32(awsdriver.DefaultNodePort)) {
		t.Errorf("ingress after the refresh: %v, want the node's port and HTTP-01's, 8081", got)
	}
}
