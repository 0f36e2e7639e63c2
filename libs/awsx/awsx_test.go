package awsx_test

import (
	"errors"
	"fmt"
	"strings"
	"testing"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/sts"
	"github.com/aws/smithy-go"

	"flotilla.dev/flotilla/libs/awsx"
	"flotilla.dev/flotilla/libs/testkit"
)

func TestValidateNamesTheField(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		a    awsx.Account
		want string
	}{
		{awsx.Account{}, "region: is required"},
		{awsx.Account{Region: "eu-west-1", EndpointURL: "127.0.0.1:5000"}, "endpointUrl:"},
		{awsx.Account{Region: "eu-west-1", AccessKeyID: "AKIA"}, "credentials: give both"},
		{awsx.Account{Region: "eu-west-1", ExternalID: "x"}, "credentials.externalId: needs roleArn"},
		{awsx.Account{Region: "eu-west-1", RoleARN: "role/x"}, "credentials.roleArn:"},
	} {
		err := tc.a.Validate()
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%+v: got %v, want %q", tc.a, err, tc.want)
		}
	}
	if err := (awsx.Account{Region: "eu-west-1", RoleARN: "arn:aws:iam::123456789012:role/flotilla", ExternalID: "e"}).Validate(); err != nil {
		t.Errorf("a role with an external id: %v", err)
	}
}

// TestConfigSignsInAndRecordsActions calls STS on moto with static keys
// and with an assumed role, and checks the actions recorded and how an
// AWS error reads.
func TestConfigSignsInAndRecordsActions(t *testing.T) {
	t.Parallel()
	m := testkit.StartMoto(t)
	var actions awsx.Actions
	cfg, err := awsx.Config(t.Context(), m.Account(), awsx.WithActions(&actions))
	if err != nil {
		t.Fatal(err)
	}
	id, err := sts.NewFromConfig(cfg).GetCallerIdentity(t.Context(), &sts.GetCallerIdentityInput{})
	if err != nil {
		t.Fatal(err)
	}
	if aws.ToString(id.Account) == "" {
		t.Errorf("GetCallerIdentity: no account: %+v", id)
	}

	role := m.Account()
	role.RoleARN, role.ExternalID = "arn:aws:iam::123456789012:role/flotilla-manager", "fleet-1"
	rcfg, err := awsx.Config(t.Context(), role, awsx.WithActions(&actions))
	if err != nil {
		t.Fatal(err)
	}
	rid, err := sts.NewFromConfig(rcfg).GetCallerIdentity(t.Context(), &sts.GetCallerIdentityInput{})
	if err != nil {
		t.Fatal(err)
	}
	if arn := aws.ToString(rid.Arn); !strings.Contains(arn, "assumed-role/flotilla-manager/flotilla") {
		t.Errorf("with a role: caller %s, want the assumed role's session", arn)
	}
	if got, want := strings.Join(actions.List(), ","), "sts:AssumeRole,sts:GetCallerIdentity"; got != want {
		t.Errorf("actions %s, want %s", got, want)
	}

}

func TestReasonNamesTheAWSCode(t *testing.T) {
	t.Parallel()
	err := fmt.Errorf("run instances: %w", &smithy.GenericAPIError{Code: "InsufficientInstanceCapacity", Message: "no t3.large in eu-west-1a"})
	if got, want := awsx.Reason(err), "InsufficientInstanceCapacity: no t3.large in eu-west-1a"; got != want {
		t.Errorf("Reason = %q, want %q", got, want)
	}
	if got := awsx.Code(err); got != "InsufficientInstanceCapacity" {
		t.Errorf("Code = %q", got)
	}
	if got := awsx.Reason(errors.New("dial tcp: refused")); got != "dial tcp: refused" {
		t.Errorf("Reason of a non-AWS error = %q", got)
	}
}

func TestActionNames(t *testing.T) {
	t.Parallel()
	for in, want := range map[[2]string]string{
		{"EC2", "RunInstances"}:                  "ec2:RunInstances",
		{"Route 53", "ChangeResourceRecordSets"}: "route53:ChangeResourceRecordSets",
		{"Secrets Manager", "GetSecretValue"}:    "secretsmanager:GetSecretValue",
		{"KMS", "GenerateDataKey"}:               "kms:GenerateDataKey",
	} {
		if got := awsx.Action(in[0], in[1]); got != want {
			t.Errorf("Action(%q, %q) = %q, want %q", in[0], in[1], got, want)
		}
	}
}

func TestNotAllowed(t *testing.T) {
	t.Parallel()
	policy := []byte(`{"Version":"2012-10-17","Statement":[
	 {"Effect":"Allow","Action":["ec2:RunInstances","ec2:Describe*"],"Resource":"*"},
	 {"Effect":"Allow","Action":"route53:ChangeResourceRecordSets","Resource":"*"},
	 {"Effect":"Deny","Action":"ec2:TerminateInstances","Resource":"*"}]}`)
	got, err := awsx.NotAllowed(policy, []string{"ec2:RunInstances", "ec2:DescribeVolumes", "EC2:describeinstances",
		"route53:ChangeResourceRecordSets", "ec2:TerminateInstances", "kms:Decrypt"})
	if err != nil {
		t.Fatal(err)
	}
	if want := "ec2:TerminateInstances,kms:Decrypt"; strings.Join(got, ",") != want {
		t.Errorf("NotAllowed = %v, want %s", got, want)
	}
	if _, err := awsx.NotAllowed([]byte(`{"Version":"2008-10-17","Statement":[]}`), nil); err == nil || !strings.Contains(err.Error(), "Version") {
		t.Errorf("an old policy version: %v", err)
	}
}
