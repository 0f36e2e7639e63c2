package app

import (
	"context"
	"math"
	"strings"

	"github.com/jackc/pgx/v5"
	"google.golang.org/protobuf/proto"

	"flotilla.dev/flotilla/api/endpoints"
	inventoryv1 "flotilla.dev/flotilla/api/gen/flotilla/inventory/v1"
	"flotilla.dev/flotilla/api/subjects"
	"flotilla.dev/flotilla/api/vocab"
	"flotilla.dev/flotilla/libs/apierr"
	"flotilla.dev/flotilla/services/inventory/adapters"
	"flotilla.dev/flotilla/services/inventory/domain"
)

// Tables of the inventory's resources.
var (
	NetworkTable  = adapters.Table{Name: "networks", Noun: subjects.NounNetwork}
	TemplateTable = adapters.Table{Name: "templates", Noun: subjects.NounTemplate}
	InstanceTable = adapters.Table{Name: "instances", Noun: subjects.NounInstance, Extra: func(m proto.Message) []adapters.Column {
		in := m.(*inventoryv1.Instance)
		return []adapters.Column{
			{Name: "template_id", Value: in.GetTemplateId()},
			{Name: "network_id", Value: in.GetNetworkId()},
			{Name: "state", Value: in.GetState()},
			{Name: "desired_state", Value: in.GetDesiredState()},
		}
	}}
)

var networks = kind[*inventoryv1.Network]{
	table: NetworkTable,
	new:   func() *inventoryv1.Network { return &inventoryv1.Network{} },
	check: func(ctx context.Context, _ *App, tx pgx.Tx, old, v *inventoryv1.Network) error {
		if err := domain.ValidateNetwork(v); err != nil {
			return err
		}
		if err := checkCloudAccount(ctx, tx, v); err != nil {
			return err
		}
		return checkNetworkChange(ctx, tx, old, v)
	},
	beforeDelete: func(ctx context.Context, tx pgx.Tx, old *inventoryv1.Network) error {
		return usedBy(ctx, tx, "network", old.GetName(), "network_id", old.GetId())
	},
}

var templates = kind[*inventoryv1.Template]{
	table: TemplateTable,
	new:   func() *inventoryv1.Template { return &inventoryv1.Template{} },
	check: func(ctx context.Context, _ *App, tx pgx.Tx, old, v *inventoryv1.Template) error {
		if err := domain.ValidateTemplate(v); err != nil {
			return err
		}
		if old != nil && old.GetProvider() != v.GetProvider() {
			// The provider is the cloud its instances' VMs and disks are in:
			// another would stop and delete them where they are not.
			return usedWhere(ctx, tx, "template", old.GetName(), "template_id = $1", old.GetId(),
				"provider can change only while no instance uses the template: their VMs and disks are on its provider; create another template for another provider")
		}
		return nil
	},
	beforeDelete: func(ctx context.Context, tx pgx.Tx, old *inventoryv1.Template) error {
		return usedBy(ctx, tx, "template", old.GetName(), "template_id", old.GetId())
	},
}

var instances = kind[*inventoryv1.Instance]{
	table: InstanceTable,
	new:   func() *inventoryv1.Instance { return &inventoryv1.Instance{} },
	prepare: func(v *inventoryv1.Instance) {
		v.State = string(vocab.StateCreated)
		v.DesiredState = string(vocab.DesiredDeprovisioned)
	},
	check: checkInstance,
}

// checkNetworkChange says whether the instances on a network allow it to
// change from old to v. Its provider and cloud account are where its
// instances' VMs and disks are, so they change only while no instance uses
// the network; its host name pattern only while none is provisioned. Any
// other change must leave every instance on it valid: its SSL settings
// fitting the new HTTPS strategy, its names the certificate.
func checkNetworkChange(ctx context.Context, tx pgx.Tx, old, v *inventoryv1.Network) error {
	if old == nil || proto.Equal(old, v) {
		return nil
	}
	for _, f := range []struct{ name, was, is string }{
		{"provider", old.GetProvider(), v.GetProvider()},
		{"cloudAccountId", old.GetCloudAccountId(), v.GetCloudAccountId()},
	} {
		if f.was == f.is {
			continue
		}
		if err := usedWhere(ctx, tx, "network", old.GetName(), "network_id = $1", old.GetId(),
			f.name+" can change only while no instance uses the network: their VMs and disks are where it placed them; create another network for another place"); err != nil {
			return err
		}
	}
	if old.GetDns().GetHostnamePattern() != v.GetDns().GetHostnamePattern() {
		// The names it gave are in provisioned instances' DNS records and
		// certificates, and are their ACME domains, renewed as they are.
		if err := usedWhere(ctx, tx, "network", old.GetName(), "network_id = $1 AND state NOT IN ('"+string(vocab.StateCreated)+"', '"+string(vocab.StateDeprovisioned)+"')", old.GetId(),
			"dns.hostnamePattern can change only while no instance on the network is provisioned: their DNS records and certificates carry the names it gave; deprovision them first"); err != nil {
			return err
		}
	}
	if proto.Equal(certificatesOf(old), certificatesOf(v)) {
		return nil
	}
	q := adapters.InstanceFilter{NetworkID: old.GetId()}.Query()
	for token := ""; ; {
		page, next, err := InstanceTable.List(ctx, tx, q, token, 1000, math.MaxInt, func() proto.Message { return &inventoryv1.Instance{} })
		if err != nil {
			return err
		}
		for _, m := range page {
			in := m.(*inventoryv1.Instance)
			if err := domain.ValidateSSL(in, v); err != nil {
				return apierr.Conflict(apierr.ReasonInUse, "network %q is used by instance %q, which the change would leave invalid (%v): change the instance first, or create another network",
					old.GetName(), in.GetName(), err)
			}
		}
		if next == "" {
			return nil
		}
		token = next
	}
}

// certificatesOf is what of network n its instances' certificates depend
// on, and so their SSL settings' validity.
func certificatesOf(n *inventoryv1.Network) *inventoryv1.Network {
	return &inventoryv1.Network{HttpsStrategy: n.GetHttpsStrategy(), Acme: n.GetAcme(), Dns: n.GetDns(), CustomCertificate: n.GetCustomCertificate()}
}

func checkInstance(ctx context.Context, a *App, tx pgx.Tx, old, v *inventoryv1.Instance) error {
	if err := domain.ValidateInstance(v, a.reservedNames); err != nil {
		return err
	}
	domain.FillLogRetention(v)
	provisioned := old != nil && !vocab.State(old.GetState()).AtRest()
	if provisioned && (old.GetTemplateId() != v.GetTemplateId() || old.GetNetworkId() != v.GetNetworkId() || old.GetKind() != v.GetKind()) {
		return apierr.Conflict(apierr.ReasonInvalidState, "instance %q is %s: kind, templateId and networkId can change only while it is %s or %s",
			old.GetName(), old.GetState(), vocab.StateCreated, vocab.StateDeprovisioned)
	}
	t := &inventoryv1.Template{}
	if err := TemplateTable.Get(ctx, tx, v.GetTemplateId(), adapters.ForShare, t); err != nil {
		if apierr.Is(err, apierr.KindNotFound) || apierr.Is(err, apierr.KindInvalid) {
			return apierr.Invalid("templateId", "template %q does not exist", v.GetTemplateId())
		}
		return err
	}
	n := &inventoryv1.Network{}
	if err := NetworkTable.Get(ctx, tx, v.GetNetworkId(), adapters.ForShare, n); err != nil {
		if apierr.Is(err, apierr.KindNotFound) || apierr.Is(err, apierr.KindInvalid) {
			return apierr.Invalid("networkId", "network %q does not exist", v.GetNetworkId())
		}
		return err
	}
	if p := n.GetDns().GetHostnamePattern(); provisioned && old.GetName() != v.GetName() && strings.Contains(p, "{name}") {
		// Its VM is known by the name: its DNS records, its certificates,
		// its ACME domains (renewed as they are).
		return apierr.Conflict(apierr.ReasonInvalidState, "instance %q is %s: its name is in its host name (network %q's dns.hostnamePattern %q), so it can change only while it is %s or %s",
			old.GetName(), old.GetState(), n.GetName(), p, vocab.StateCreated, vocab.StateDeprovisioned)
	}
	return domain.ValidatePlacement(v, t, n)
}

// CreateNetwork creates a network.
func (a *App) CreateNetwork(ctx context.Context, actor vocab.Actor, n *inventoryv1.Network) (*inventoryv1.Network, error) {
	n, err := a.sealNetworkKey(ctx, n, nil)
	if err != nil {
		return nil, err
	}
	out, err := create(ctx, a, networks, actor, n)
	afterKeyedWrite(ctx, a, nil, n, out, err, nil)
	return out, err
}

// GetNetwork reads a network.
func (a *App) GetNetwork(ctx context.Context, id string) (*inventoryv1.Network, error) {
	return get(ctx, a, networks, id)
}

// ListNetworks lists networks, oldest first.
func (a *App) ListNetworks(ctx context.Context, pageSize int32, pageToken string) ([]*inventoryv1.Network, string, error) {
	return list(ctx, a, networks, adapters.ListQuery{}, pageSize, pageToken)
}

// UpdateNetwork changes the masked fields of a network at n's version.
func (a *App) UpdateNetwork(ctx context.Context, actor vocab.Actor, n *inventoryv1.Network, mask []string) (*inventoryv1.Network, error) {
	cur, err := a.GetNetwork(ctx, n.GetId())
	if err != nil {
		return nil, err
	}
	if n, err = a.sealNetworkKey(ctx, n, cur); err != nil {
		return nil, err
	}
	out, err := update(ctx, a, networks, actor, n, keyMask(mask))
	afterKeyedWrite(ctx, a, cur, n, out, err, func() (*inventoryv1.Network, error) { return a.GetNetwork(ctx, n.GetId()) })
	return out, err
}

// DeleteNetwork deletes a network no instance uses.
func (a *App) DeleteNetwork(ctx context.Context, actor vocab.Actor, id string, version int64) error {
	return remove(ctx, a, networks, actor, id, version)
}

// CreateTemplate creates a template.
func (a *App) CreateTemplate(ctx context.Context, actor vocab.Actor, t *inventoryv1.Template) (*inventoryv1.Template, error) {
	return create(ctx, a, templates, actor, t)
}

// GetTemplate reads a template.
func (a *App) GetTemplate(ctx context.Context, id string) (*inventoryv1.Template, error) {
	return get(ctx, a, templates, id)
}

// ListTemplates lists templates, oldest first.
func (a *App) ListTemplates(ctx context.Context, pageSize int32, pageToken string) ([]*inventoryv1.Template, string, error) {
	return list(ctx, a, templates, adapters.ListQuery{}, pageSize, pageToken)
}

// UpdateTemplate changes the masked fields of a template at t's version.
func (a *App) UpdateTemplate(ctx context.Context, actor vocab.Actor, t *inventoryv1.Template, mask []string) (*inventoryv1.Template, error) {
	return update(ctx, a, templates, actor, t, mask)
}

// DeleteTemplate deletes a template no instance uses.
func (a *App) DeleteTemplate(ctx context.Context, actor vocab.Actor, id string, version int64) error {
	return remove(ctx, a, templates, actor, id, version)
}

// CreateInstance creates an instance record in state "created".
func (a *App) CreateInstance(ctx context.Context, actor vocab.Actor, in *inventoryv1.Instance) (*inventoryv1.Instance, error) {
	in, err := a.sealInstanceKey(ctx, in, nil)
	if err != nil {
		return nil, err
	}
	out, err := create(ctx, a, instances, actor, in)
	afterKeyedWrite(ctx, a, nil, in, out, err, nil)
	return out, err
}

// GetInstance reads an instance.
func (a *App) GetInstance(ctx context.Context, id string) (*inventoryv1.Instance, error) {
	in, err := get(ctx, a, instances, id)
	if err != nil {
		return nil, err
	}
	return in, a.withLiveness(ctx, in)
}

// GetInstances reads the instances named by ids, leaving out those that do
// not exist, in no particular order.
func (a *App) GetInstances(ctx context.Context, ids []string) ([]*inventoryv1.Instance, error) {
	if len(ids) > endpoints.MaxBatch {
		return nil, apierr.Invalid("ids", "must hold at most %d ids, got %d", endpoints.MaxBatch, len(ids))
	}
	ins, err := getMany(ctx, a, instances, ids)
	if err != nil {
		return nil, err
	}
	return ins, a.withLiveness(ctx, ins...)
}

// ListInstances lists the instances r's filters let through, oldest first
// or by name, and says how many there are in all pages.
func (a *App) ListInstances(ctx context.Context, r *inventoryv1.ListInstancesRequest) (*inventoryv1.ListInstancesResponse, error) {
	if err := domain.ValidateInstanceList(r); err != nil {
		return nil, err
	}
	q := adapters.InstanceFilter{State: r.GetState(), Kind: r.GetKind(), NetworkID: r.GetNetworkId(), TemplateID: r.GetTemplateId(),
		Text: strings.TrimSpace(r.GetQuery()), ByName: r.GetOrderBy() == "name", Skip: int(r.GetSkip())}.Query()
	ins, next, err := list(ctx, a, instances, q, r.GetPageSize(), r.GetPageToken())
	if err != nil {
		return nil, err
	}
	total, err := instances.table.Count(ctx, a.pool, q)
	if err != nil {
		return nil, err
	}
	return &inventoryv1.ListInstancesResponse{Instances: ins, NextPageToken: next, TotalSize: int32(min(total, math.MaxInt32))},
		a.withLiveness(ctx, ins...)
}

// UpdateInstance changes the masked fields of an instance at in's version.
func (a *App) UpdateInstance(ctx context.Context, actor vocab.Actor, in *inventoryv1.Instance, mask []string) (*inventoryv1.Instance, error) {
	defer a.live.forget(in.GetId())
	cur, err := get(ctx, a, instances, in.GetId())
	if err != nil {
		return nil, err
	}
	if in, err = a.sealInstanceKey(ctx, in, cur); err != nil {
		return nil, err
	}
	out, err := update(ctx, a, instances, actor, in, keyMask(mask))
	afterKeyedWrite(ctx, a, cur, in, out, err, func() (*inventoryv1.Instance, error) { return get(ctx, a, instances, in.GetId()) })
	return out, err
}

// DeleteInstance deletes an instance: at once if it was never provisioned,
// else through the provisioner, which destroys its data disk first. A
// forced delete removes the record even if the cloud cannot destroy them.
func (a *App) DeleteInstance(ctx context.Context, actor vocab.Actor, id string, version int64, force bool) (*inventoryv1.Instance, error) {
	if !force {
		return a.Lifecycle(ctx, actor, id, vocab.ActionDelete, version)
	}
	return a.lifecycle(ctx, actor, id, vocab.ActionDelete, version, domain.ForceDelete)
}
