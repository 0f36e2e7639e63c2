package app

import (
	"testing"

	"google.golang.org/protobuf/proto"

	inventoryv1 "flotilla.dev/flotilla/api/gen/flotilla/inventory/v1"
	"flotilla.dev/flotilla/libs/apierr"
)

func TestApplyMask(t *testing.T) {
	t.Parallel()
	cur := &inventoryv1.Network{Id: "id1", Name: "lab", Provider: "aws", HttpsStrategy: "none", Version: 3,
		Aws: &inventoryv1.AwsNetworkSettings{SubnetId: "subnet-1", Region: "eu-west-1"},
		Dns: &inventoryv1.DnsSettings{PrivateZoneId: "Z1", HostnamePattern: "{name}.x"}}
	in := &inventoryv1.Network{Id: "other", Version: 99, Name: "lab2",
		Aws: &inventoryv1.AwsNetworkSettings{Region: "us-east-1"}}

	got := proto.Clone(cur).(*inventoryv1.Network)
	// REST sends JSON names; gRPC clients send proto names. "dns" is absent in
	// the input, so naming it clears it.
	if err := applyMask(got, in, []string{"name", "aws.region", "dns", "id", "version"}); err != nil {
		t.Fatal(err)
	}
	if got.GetName() != "lab2" || got.GetAws().GetRegion() != "us-east-1" || got.GetAws().GetSubnetId() != "subnet-1" ||
		got.GetDns() != nil || got.GetId() != "id1" || got.GetVersion() != 3 || got.GetHttpsStrategy() != "none" {
		t.Fatalf("masked update gave %v", got)
	}
	got = proto.Clone(cur).(*inventoryv1.Network)
	if err := applyMask(got, in, []string{"httpsStrategy"}); err != nil || got.GetHttpsStrategy() != "" {
		t.Fatalf("JSON-named path: %v %v", got, err)
	}
	for _, bad := range []string{"colour", "name.first", "aws.nope"} {
		err := applyMask(proto.Clone(cur), in, []string{bad})
		if !apierr.Is(err, apierr.KindInvalid) {
			t.Errorf("path %q: %v, want invalid argument", bad, err)
		}
	}
	// An empty mask replaces every client-settable field, keeping server-owned ones.
	got = proto.Clone(cur).(*inventoryv1.Network)
	if err := applyMask(got, in, nil); err != nil {
		t.Fatal(err)
	}
	if got.GetProvider() != "" || got.GetName() != "lab2" || got.GetId() != "id1" || got.GetVersion() != 3 {
		t.Fatalf("full replace gave %v", got)
	}
}
