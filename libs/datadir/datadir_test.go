package datadir

import (
	"os"
	"strings"
	"testing"
)

func TestPrepareCreatesLayoutAndKeepsSettings(t *testing.T) {
	t.Parallel()
	d := Dir(t.TempDir())
	s, err := Prepare(d, Overrides{})
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range []string{d.SettingsFile(), d.Logs(), d.NATS()} {
		if _, err := os.Stat(p); err != nil {
			t.Errorf("missing %s: %v", p, err)
		}
	}
	fi, _ := os.Stat(d.SettingsFile())
	if fi.Mode().Perm() != 0o600 {
		t.Errorf("settings mode %v, want 0600", fi.Mode().Perm())
	}
	if s.BasePort != DefaultBasePort || !s.ManagedPostgres || !strings.Contains(s.DatabaseURL, ":7704/") {
		t.Errorf("unexpected defaults %+v", s)
	}
	again, err := Prepare(d, Overrides{BasePort: 9100})
	if err != nil {
		t.Fatal(err)
	}
	if again.PostgresPassword != s.PostgresPassword {
		t.Error("second start changed the generated credentials")
	}
	if again.BasePort != 9100 || !strings.Contains(again.DatabaseURL, ":9104/") {
		t.Errorf("port override not applied: %+v", again)
	}
	ext, err := Prepare(d, Overrides{DatabaseURL: "postgres://u:p@db:5432/flotilla"})
	if err != nil {
		t.Fatal(err)
	}
	if ext.ManagedPostgres || ext.DatabaseURL != "postgres://u:p@db:5432/flotilla" {
		t.Errorf("external database not applied: %+v", ext)
	}
}

func TestValidateNamesSettings(t *testing.T) {
	t.Parallel()
	err := (&Settings{BasePort: 0, BindAddress: "nope", DatabaseURL: "mysql://x", ManagedPostgres: true}).Validate()
	for _, want := range []string{"basePort", "bindAddress", "databaseURL", "postgresPassword"} {
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("error %v does not name %s", err, want)
		}
	}
}

func TestValidateNamesTheKMSSettings(t *testing.T) {
	t.Parallel()
	good := Settings{BasePort: DefaultBasePort, BindAddress: "127.0.0.1", DatabaseURL: "postgres://db/flotilla"}
	for _, k := range []*KMSSettings{nil, {Provider: "local"}, {Provider: "aws", KeyID: "alias/flotilla", Region: "eu-west-1"},
		{Provider: "aws", KeyID: "k", Region: "eu-west-1", EndpointURL: "https://kms.internal", RoleARN: "arn:aws:iam::1:role/f"}} {
		s := good
		s.KMS = k
		if err := s.Validate(); err != nil {
			t.Errorf("kms %+v refused: %v", k, err)
		}
	}
	for _, c := range []struct {
		kms  KMSSettings
		want []string
	}{
		{KMSSettings{Provider: "vault"}, []string{`kms.provider: "vault" is not "local" or "aws"`}},
		{KMSSettings{Provider: "aws"}, []string{"kms.keyId: is required", "kms.region: is required"}},
		{KMSSettings{Provider: "aws", KeyID: "k", Region: "r", EndpointURL: "ftp://x", RoleARN: "role"}, []string{`kms.endpointUrl: "ftp://x"`, `kms.roleArn: "role" is not a role ARN`}},
		{KMSSettings{Provider: "local", KeyID: "k"}, []string{`apply only when kms.provider is "aws"`}},
		{KMSSettings{Provider: "local", CloudAccountID: "0190c1d2-0000-7000-8000-000000000001"}, []string{`apply only when kms.provider is "aws"`}},
		{KMSSettings{Provider: "aws", KeyID: "k", CloudAccountID: "lab"}, []string{`kms.cloudAccountId: "lab" is not a cloud account id`}},
		{KMSSettings{Provider: "aws", KeyID: "k", CloudAccountID: "0190c1d2-0000-7000-8000-000000000001", Region: "r", RoleARN: "arn:aws:iam::1:role/x"},
			[]string{"kms.region: comes from the cloud account kms.cloudAccountId names", "kms.roleArn: comes from the cloud account"}},
	} {
		s := good
		s.KMS = &c.kms
		err := s.Validate()
		for _, w := range c.want {
			if err == nil || !strings.Contains(err.Error(), w) {
				t.Errorf("kms %+v: error %v does not say %q", c.kms, err, w)
			}
		}
	}
}
