package secrets_test

import (
	"context"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/google/uuid"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	"flotilla.dev/flotilla/api/endpoints"
	inventoryv1 "flotilla.dev/flotilla/api/gen/flotilla/inventory/v1"
	secretsv1 "flotilla.dev/flotilla/api/gen/flotilla/secrets/v1"
	"flotilla.dev/flotilla/libs/apierr"
)

// TestFleetSecretsReachTheInstancesOfTheirTemplates: a fleet secret is
// read by the agents of the instances of its templates and no other; an
// instance's own secret of the name comes first; a new value is the next
// version, new templates alone keep it; every read is audited as the
// fleet secret's; a deleted one is refused like one never set.
func TestFleetSecretsReachTheInstancesOfTheirTemplates(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	ctx := context.Background()
	big, err := e.inventory.CreateTemplate(ctx, "user:test", &inventoryv1.Template{Name: "big", Provider: "local", DataDiskGb: 20})
	if err != nil {
		t.Fatal(err)
	}
	c, err := e.inventory.CreateInstance(ctx, "user:test", &inventoryv1.Instance{Name: "c", Kind: "design", TemplateId: big.GetId(), NetworkId: e.network})
	if err != nil {
		t.Fatal(err)
	}
	reads := func(requester, want string) {
		t.Helper()
		got, err := e.read(requester, "registry")
		switch {
		case want == "" && !apierr.Is(err, apierr.KindPermissionDenied):
			t.Fatalf("%s reads the fleet secret: %v, %v; want permission denied", requester, got, err)
		case want != "" && (err != nil || string(got.GetValue()) != want):
			t.Fatalf("%s reads the fleet secret: %v, %v; want %q", requester, got, err, want)
		}
	}

	// No fleet secret yet: c is refused as for any name it has none of.
	_, errNone := e.read(c.GetId(), "registry")
	sec, err := e.setFleet("registry", "fleet-v1", e.template)
	if err != nil || sec.GetVersion() != 1 || !slices.Equal(sec.GetTemplateIds(), []string{e.template}) || sec.GetKmsKeyId() == "" {
		t.Fatalf("set: %v, %v", sec, err)
	}
	reads(e.a, "fleet-v1")
	reads(e.b, "fleet-v1")
	_, errOther := e.read(c.GetId(), "registry")
	if !apierr.Is(errOther, apierr.KindPermissionDenied) || errOther.Error() != errNone.Error() {
		t.Fatalf("c, of another template: %v; want the refusal of a name never set: %v", errOther, errNone)
	}

	// a's own secret of the name comes first; b still reads the fleet's.
	e.mustCreate(e.a, "registry", "a-own")
	reads(e.a, "a-own")
	reads(e.b, "fleet-v1")

	// A new value for both templates: the next version.
	if sec, err = e.setFleet("registry", "fleet-v2", e.template, big.GetId(), e.template); err != nil || sec.GetVersion() != 2 ||
		!slices.Equal(sec.GetTemplateIds(), []string{e.template, big.GetId()}) {
		t.Fatalf("set again: %v, %v", sec, err)
	}
	reads(e.b, "fleet-v2")
	reads(c.GetId(), "fleet-v2")
	// Its templates alone: the value and version stay.
	if sec, err = e.setFleet("registry", "", big.GetId()); err != nil || sec.GetVersion() != 2 {
		t.Fatalf("set its templates alone: %v, %v", sec, err)
	}
	reads(e.b, "")
	if got, err := e.read(c.GetId(), "registry"); err != nil || string(got.GetValue()) != "fleet-v2" || got.GetVersion() != 2 {
		t.Fatalf("c after the templates changed: %v, %v", got, err)
	}
	list, err := call(e, endpoints.FleetSecretList, &secretsv1.ListFleetSecretsRequest{})
	if err != nil || len(list.GetSecrets()) != 1 || list.GetSecrets()[0].GetName() != "registry" ||
		!slices.Equal(list.GetSecrets()[0].GetTemplateIds(), []string{big.GetId()}) || list.GetSecrets()[0].GetVersion() != 2 {
		t.Fatalf("list: %v, %v", list, err)
	}
	one, err := call(e, endpoints.FleetSecretGet, &secretsv1.GetFleetSecretRequest{Name: "registry"})
	if err != nil || !proto.Equal(one, list.GetSecrets()[0]) {
		t.Fatalf("get: %v, %v; want what the list shows, %v", one, err, list.GetSecrets()[0])
	}
	if _, err := call(e, endpoints.FleetSecretGet, &secretsv1.GetFleetSecretRequest{Name: "never-set"}); !apierr.Is(err, apierr.KindNotFound) {
		t.Fatalf("get of a name never set: %v; want not found", err)
	}
	if _, err := call(e, endpoints.FleetSecretGet, &secretsv1.GetFleetSecretRequest{Name: "bad name"}); !apierr.Is(err, apierr.KindInvalid) || !strings.Contains(err.Error(), "name:") {
		t.Fatalf("get of a bad name: %v; want invalid, naming the field", err)
	}

	// Every read is audited: a fleet secret's released with fleet set and
	// no instance, a refusal as any other.
	type rec struct {
		requester, instance string
		fleet, allowed      bool
	}
	var seen []rec
	for _, r := range e.auditRecords() {
		seen = append(seen, rec{r.GetRequesterInstanceId(), r.GetInstanceId(), r.GetFleet(), r.GetAllowed()})
		if r.GetFleet() && !strings.Contains(r.GetReason(), "fleet secret") {
			t.Errorf("a fleet secret's read audited for %q", r.GetReason())
		}
	}
	want := []rec{
		{c.GetId(), "", false, false},
		{e.a, "", true, true}, {e.b, "", true, true}, {c.GetId(), "", false, false},
		{e.a, e.a, false, true}, {e.b, "", true, true},
		{e.b, "", true, true}, {c.GetId(), "", true, true},
		{e.b, "", false, false}, {c.GetId(), "", true, true},
	}
	if !slices.Equal(seen, want) {
		t.Fatalf("audit records\n got %v\nwant %v", seen, want)
	}

	// Deleted: refused like a name never set; deleted again: not found.
	if _, err := call(e, endpoints.FleetSecretDelete, &secretsv1.DeleteFleetSecretRequest{Name: "registry"}); err != nil {
		t.Fatal(err)
	}
	reads(c.GetId(), "")
	if _, err := call(e, endpoints.FleetSecretDelete, &secretsv1.DeleteFleetSecretRequest{Name: "registry"}); !apierr.Is(err, apierr.KindNotFound) {
		t.Fatalf("deleted twice: %v", err)
	}
}

// TestFleetSecretsInSomeNetworksReachOnlyThose: a fleet secret naming
// networks is read by its templates' instances in those networks and by
// no other, refused as a name never set; naming none again, every
// network's read it; a network unknown is refused, naming the field.
func TestFleetSecretsInSomeNetworksReachOnlyThose(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	ctx := context.Background()
	prod, err := e.inventory.CreateNetwork(ctx, "user:test", &inventoryv1.Network{Name: "prod", Provider: "local", HttpsStrategy: "none"})
	if err != nil {
		t.Fatal(err)
	}
	d, err := e.inventory.CreateInstance(ctx, "user:test", &inventoryv1.Instance{Name: "d", Kind: "design", TemplateId: e.template, NetworkId: prod.GetId()})
	if err != nil {
		t.Fatal(err)
	}
	set := func(value string, networks ...string) (*secretsv1.FleetSecret, error) {
		return call(e, endpoints.FleetSecretPut, &secretsv1.SetFleetSecretRequest{Name: "registry", Value: value, TemplateIds: []string{e.template}, NetworkIds: networks})
	}
	_, errNone := e.read(d.GetId(), "registry")
	sec, err := set("prod-token", prod.GetId(), prod.GetId())
	if err != nil || !slices.Equal(sec.GetNetworkIds(), []string{prod.GetId()}) {
		t.Fatalf("set for prod: %v, %v", sec, err)
	}
	if got, err := e.read(d.GetId(), "registry"); err != nil || string(got.GetValue()) != "prod-token" {
		t.Fatalf("d, in prod: %v, %v", got, err)
	}
	if _, err := e.read(e.a, "registry"); !apierr.Is(err, apierr.KindPermissionDenied) || err.Error() != strings.Replace(errNone.Error(), d.GetId(), e.a, 1) {
		t.Fatalf("a, of the template in another network: %v; want the refusal of a name never set: %v", err, errNone)
	}
	list, err := call(e, endpoints.FleetSecretList, &secretsv1.ListFleetSecretsRequest{})
	if err != nil || len(list.GetSecrets()) != 1 || !slices.Equal(list.GetSecrets()[0].GetNetworkIds(), []string{prod.GetId()}) {
		t.Fatalf("list: %v, %v", list, err)
	}
	// Its networks alone, none: every network's instances of its template.
	if sec, err = set(""); err != nil || sec.GetVersion() != 1 || len(sec.GetNetworkIds()) != 0 {
		t.Fatalf("set every network: %v, %v", sec, err)
	}
	for _, id := range []string{e.a, d.GetId()} {
		if got, err := e.read(id, "registry"); err != nil || string(got.GetValue()) != "prod-token" {
			t.Fatalf("%s, with the secret in every network: %v, %v", id, got, err)
		}
	}
	for _, c := range []struct {
		networks []string
		want     string
	}{
		{[]string{"prod"}, "networkIds[0]: must be a network id (a UUID)"},
		{[]string{prod.GetId(), uuid.NewString()}, "networkIds[1]: there is no network"},
		{slices.Repeat([]string{prod.GetId()}, 101), "networkIds: must name at most 100 networks, got 101"},
	} {
		if _, err := set("v", c.networks...); !apierr.Is(err, apierr.KindInvalid) || !strings.Contains(err.Error(), c.want) {
			t.Errorf("set for %d networks: %v; want invalid, %q", len(c.networks), err, c.want)
		}
	}
}

// TestFleetSecretValidationNamesTheField: every refusal names the field
// and its rule, and stores nothing.
func TestFleetSecretValidationNamesTheField(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	for _, tc := range []struct {
		name, value string
		templates   []string
		want        string
	}{
		{"bad name", "v", []string{e.template}, "name:"},
		{"", "v", []string{e.template}, "name: is required"},
		{"ok", "v", nil, "templateIds: is required"},
		{"ok", "v", []string{"small"}, "templateIds[0]: must be a template id (a UUID)"},
		{"ok", "v", []string{e.template, uuid.NewString()}, "templateIds[1]: there is no template"},
		{"ok", strings.Repeat("v", 64<<10+1), []string{e.template}, "value: must be at most 65536 bytes"},
		{"ok", "", []string{e.template}, `value: is required (or secretsManagerId): there is no fleet secret "ok"`},
	} {
		_, err := e.setFleet(tc.name, tc.value, tc.templates...)
		if !apierr.Is(err, apierr.KindInvalid) || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("set %q for %v: %v; want invalid, %q", tc.name, tc.templates, err, tc.want)
		}
	}
	if list, err := call(e, endpoints.FleetSecretList, &secretsv1.ListFleetSecretsRequest{}); err != nil || len(list.GetSecrets()) != 0 {
		t.Fatalf("the refusals stored %v, %v", list, err)
	}
}

// TestADeletedTemplateLeavesItsFleetSecrets: a deleted template is taken
// off every fleet secret that named it; the secret stays, for its other
// templates.
func TestADeletedTemplateLeavesItsFleetSecrets(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	ctx := context.Background()
	gone, err := e.inventory.CreateTemplate(ctx, "user:test", &inventoryv1.Template{Name: "gone", Provider: "local", DataDiskGb: 1})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := e.setFleet("registry", "v", gone.GetId(), e.template); err != nil {
		t.Fatal(err)
	}
	if err := e.inventory.DeleteTemplate(ctx, "user:test", gone.GetId(), gone.GetVersion()); err != nil {
		t.Fatal(err)
	}
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(50 * time.Millisecond) {
		list, err := call(e, endpoints.FleetSecretList, &secretsv1.ListFleetSecretsRequest{})
		if err == nil && len(list.GetSecrets()) == 1 && slices.Equal(list.GetSecrets()[0].GetTemplateIds(), []string{e.template}) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the fleet secret after its template's deletion: %v, %v", list, err)
		}
	}
}

// TestASecretWriteOverAVersionIsRefusedWhenItMovedOn: a write that names
// the version it replaces (as read) is refused when another write came
// first, or there is nothing at that version, for an instance's secret
// and a fleet secret alike, and a templates-only change too; it goes
// through at the version read, and without one at whatever it is.
func TestASecretWriteOverAVersionIsRefusedWhenItMovedOn(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	create := func(value string, over int64) (*secretsv1.Secret, error) {
		return call(e, endpoints.SecretCreate, &secretsv1.CreateSecretRequest{InstanceId: e.a, Name: "db", Value: value, Version: over})
	}
	set := func(value string, over int64) (*secretsv1.FleetSecret, error) {
		return call(e, endpoints.FleetSecretPut, &secretsv1.SetFleetSecretRequest{Name: "registry", Value: value, TemplateIds: []string{e.template}, Version: over})
	}
	mismatch := func(err error, want string) {
		t.Helper()
		if apierr.ReasonOf(err) != apierr.ReasonVersionMismatch || !strings.Contains(err.Error(), want) {
			t.Errorf("%v; want version_mismatch saying %q", err, want)
		}
	}
	_, err := create("v1", 1)
	mismatch(err, `secret "db" of instance `+e.a+` does not exist, so it is not at version 1`)
	if s, err := create("v1", 0); err != nil || s.GetVersion() != 1 {
		t.Fatalf("the first: %v, %v", s, err)
	}
	if s, err := create("v2", 1); err != nil || s.GetVersion() != 2 {
		t.Fatalf("over version 1: %v, %v", s, err)
	}
	_, err = create("v3", 1)
	mismatch(err, "is at version 2, not 1")
	if got, err := e.read(e.a, "db"); err != nil || string(got.GetValue()) != "v2" {
		t.Fatalf("after a refused write: %v, %v", got, err)
	}

	_, err = set("f1", 3)
	mismatch(err, `fleet secret "registry" does not exist, so it is not at version 3`)
	if s, err := set("f1", 0); err != nil || s.GetVersion() != 1 {
		t.Fatalf("the first fleet secret: %v, %v", s, err)
	}
	_, err = set("", 2)
	mismatch(err, `fleet secret "registry" is at version 1, not 2`)
	if s, err := set("f2", 1); err != nil || s.GetVersion() != 2 {
		t.Fatalf("over version 1: %v, %v", s, err)
	}
}

// TestAFleetSecretChangeOverAnUpdateTimeIsRefusedWhenItChanged: a change
// that names the update time it read is refused when the secret changed
// since, even by its templates alone (which keep its version), or when
// there is none; it goes through over the update time read, and the
// secret is as the change left it.
func TestAFleetSecretChangeOverAnUpdateTimeIsRefusedWhenItChanged(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	set := func(value string, templates []string, read *timestamppb.Timestamp) (*secretsv1.FleetSecret, error) {
		return call(e, endpoints.FleetSecretPut, &secretsv1.SetFleetSecretRequest{Name: "registry", Value: value, TemplateIds: templates, IfUpdateTime: read})
	}
	big, err := e.inventory.CreateTemplate(context.Background(), "user:test", &inventoryv1.Template{Name: "big", Provider: "local", DataDiskGb: 20})
	if err != nil {
		t.Fatal(err)
	}
	never := timestamppb.New(time.Date(2026, 1, 2, 3, 4, 5, 6000, time.UTC))
	for _, value := range []string{"f1", ""} { // a new one, or new templates for one
		_, err = set(value, []string{e.template}, never)
		if apierr.ReasonOf(err) != apierr.ReasonVersionMismatch || !strings.Contains(err.Error(), `fleet secret "registry" does not exist, so it was not updated at 2026-01-02T03:04:05.000006Z`) {
			t.Fatalf("over an update time with none (value %q): %v", value, err)
		}
	}
	first, err := set("f1", []string{e.template}, nil)
	if err != nil {
		t.Fatal(err)
	}
	// Another gives it big too, its value and version kept.
	second, err := set("", []string{e.template, big.GetId()}, first.GetUpdateTime())
	if err != nil || second.GetVersion() != 1 || second.GetUpdateTime().AsTime().Equal(first.GetUpdateTime().AsTime()) {
		t.Fatalf("over the update time read: %v, %v", second, err)
	}
	// The first reader's change, over what it read, is refused.
	_, err = set("", []string{e.template}, first.GetUpdateTime())
	if apierr.ReasonOf(err) != apierr.ReasonVersionMismatch || !strings.Contains(err.Error(), "after it was read") {
		t.Fatalf("a change over an update time gone: %v", err)
	}
	_, err = set("f2", []string{e.template}, first.GetUpdateTime())
	if apierr.ReasonOf(err) != apierr.ReasonVersionMismatch {
		t.Fatalf("a new value over an update time gone: %v", err)
	}
	got, err := call(e, endpoints.FleetSecretGet, &secretsv1.GetFleetSecretRequest{Name: "registry"})
	if err != nil || got.GetVersion() != 1 || len(got.GetTemplateIds()) != 2 || !got.GetUpdateTime().AsTime().Equal(second.GetUpdateTime().AsTime()) {
		t.Fatalf("after the refusals: %v, %v", got, err)
	}
	if read, err := e.read(e.a, "registry"); err != nil || string(read.GetValue()) != "f1" {
		t.Fatalf("the value after the refusals: %v, %v", read, err)
	}
}
