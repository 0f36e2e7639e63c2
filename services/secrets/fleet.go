package secrets

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"slices"
	"time"

	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/jackc/pgx/v5"
	"google.golang.org/protobuf/types/known/emptypb"
	"google.golang.org/protobuf/types/known/timestamppb"

	"flotilla.dev/flotilla/api/endpoints"
	inventoryv1 "flotilla.dev/flotilla/api/gen/flotilla/inventory/v1"
	secretsv1 "flotilla.dev/flotilla/api/gen/flotilla/secrets/v1"
	"flotilla.dev/flotilla/api/vocab"
	"flotilla.dev/flotilla/libs/apierr"
	"flotilla.dev/flotilla/libs/kms"
	"flotilla.dev/flotilla/libs/rpc"
)

// A fleet secret is one value for the agents of every instance of the
// templates it names, in the networks it names (none: in every network): a
// licence key, a registry's credentials. An agent asking for a name gets
// its instance's own secret of that name if there is one, else the fleet
// secret of that name if its instance's template is among the secret's
// and its network too (when the secret names networks). Sealed like an
// instance's secret, bound to its name and version.

// MaxFleetSecretTemplates is the most templates a fleet secret names, and
// MaxFleetSecretNetworks the most networks.
const (
	MaxFleetSecretTemplates = 100
	MaxFleetSecretNetworks  = 100
)

// contextFleetSecret is the encryption context key of a fleet secret's
// data key: its name.
const contextFleetSecret = "flotilla:fleet-secret-name"

// fleetSecretBinding binds version of fleet secret name: the ciphertext
// to both, the data key to the name.
func fleetSecretBinding(name string, version int64) binding {
	aad := make([]byte, 0, 32+len(name))
	aad = append(aad, "flotilla fleet secret v1\x00"...)
	aad = append(aad, name...)
	aad = append(aad, 0)
	return binding{aad: binary.BigEndian.AppendUint64(aad, uint64(version)), ec: fleetSecretContext(name)}
}

// fleetSecretContext is the encryption context of a fleet secret's data
// key.
func fleetSecretContext(name string) kms.EncryptionContext {
	return kms.EncryptionContext{contextFleetSecret: name}
}

// storedFleetSecret is one row of the fleet_secrets table.
type storedFleetSecret struct {
	name        string
	templateIDs []string
	networkIDs  []string
	version     int64
	sealed      sealed
	ref         string
	createdAt   time.Time
	updatedAt   time.Time
}

// metadata is the row as callers may see it: no value, no key material.
func (r storedFleetSecret) metadata() *secretsv1.FleetSecret {
	return &secretsv1.FleetSecret{
		Name:             r.name,
		TemplateIds:      r.templateIDs,
		NetworkIds:       r.networkIDs,
		Version:          r.version,
		CreateTime:       timestamppb.New(r.createdAt),
		UpdateTime:       timestamppb.New(r.updatedAt),
		KmsKeyId:         r.sealed.kmsKeyID,
		SecretsManagerId: r.ref,
	}
}

// fleetColumns are the columns a storedFleetSecret is scanned from, in
// scanFleet's order.
const fleetColumns = `name, template_ids::text[], network_ids::text[], version, ciphertext, nonce, wrapped_key, COALESCE(kms_key_id, ''), COALESCE(secrets_manager_id, ''), created_at, updated_at`

func scanFleet(row pgx.Row) (storedFleetSecret, error) {
	var r storedFleetSecret
	err := row.Scan(&r.name, &r.templateIDs, &r.networkIDs, &r.version, &r.sealed.ciphertext, &r.sealed.nonce, &r.sealed.wrappedKey, &r.sealed.kmsKeyID, &r.ref, &r.createdAt, &r.updatedAt)
	return r, err
}

// fleetLock names the turn of one fleet secret's writers (see inTurn).
func fleetLock(name string) string { return "fleet secret " + name }

// setFleet stores the fleet secret name for templateIDs in networkIDs: the
// next version sealed by seal when seal is given, or the next version a
// reference to ref when ref is, else what is stored already with its
// templates and networks changed (false when there is none); over version
// over when it is not 0 (checkOver), and over the update time overUpdate
// when it is not zero (the secret unchanged since it was read).
func (st store) setFleet(ctx context.Context, name string, templateIDs, networkIDs []string, over int64, overUpdate, at time.Time, ref string, seal func(version int64) (sealed, error)) (storedFleetSecret, bool, error) {
	var r storedFleetSecret
	found := true
	err := st.inTurn(ctx, fleetLock(name), func(tx pgx.Tx) error {
		cur, err := scanFleet(tx.QueryRow(ctx, `SELECT `+fleetColumns+` FROM fleet_secrets WHERE name = $1`, name))
		none := errors.Is(err, pgx.ErrNoRows)
		if err != nil && !none {
			return fmt.Errorf("read fleet secret %q: %w", name, err)
		}
		if err := checkUnchanged(name, cur, overUpdate); err != nil {
			return err
		}
		if none && seal == nil && ref == "" {
			found = false
			return nil
		}
		if err := checkOver(fmt.Sprintf("fleet secret %q", name), cur.version, over); err != nil {
			return err
		}
		r = cur
		r.name, r.templateIDs, r.networkIDs, r.updatedAt = name, templateIDs, networkIDs, at
		switch {
		case seal != nil:
			r.version++
			r.ref = ""
			if r.sealed, err = seal(r.version); err != nil {
				return err
			}
		case ref != "":
			r.version++
			r.ref, r.sealed = ref, sealed{}
		}
		err = tx.QueryRow(ctx, `
			INSERT INTO fleet_secrets AS s (name, template_ids, network_ids, version, ciphertext, nonce, wrapped_key, kms_key_id, secrets_manager_id, created_at, updated_at)
			VALUES ($1, $2::uuid[], $3::uuid[], $4, $5, $6, $7, $8, $9, $10, $10)
			ON CONFLICT (name) DO UPDATE SET
				template_ids       = EXCLUDED.template_ids,
				network_ids        = EXCLUDED.network_ids,
				version            = EXCLUDED.version,
				ciphertext         = EXCLUDED.ciphertext,
				nonce              = EXCLUDED.nonce,
				wrapped_key        = EXCLUDED.wrapped_key,
				kms_key_id         = EXCLUDED.kms_key_id,
				secrets_manager_id = EXCLUDED.secrets_manager_id,
				updated_at         = EXCLUDED.updated_at
			RETURNING created_at`,
			r.name, r.templateIDs, nonNil(r.networkIDs), r.version, r.sealed.ciphertext, r.sealed.nonce, r.sealed.wrappedKey, nullIfEmpty(r.sealed.kmsKeyID), nullIfEmpty(r.ref), r.updatedAt,
		).Scan(&r.createdAt)
		if err != nil {
			return fmt.Errorf("store fleet secret %q: %w", name, err)
		}
		return nil
	})
	return r, found, err
}

// checkUnchanged refuses a change of fleet secret name, read as updated at
// read (zero: whatever it is), when it is cur now: changed since, or (cur
// zero) none.
func checkUnchanged(name string, cur storedFleetSecret, read time.Time) error {
	switch {
	case read.IsZero() || cur.updatedAt.Equal(read):
		return nil
	case cur.updatedAt.IsZero():
		return apierr.Conflict(apierr.ReasonVersionMismatch, "fleet secret %q does not exist, so it was not updated at %s: read it again",
			name, read.Format(time.RFC3339Nano))
	}
	return apierr.Conflict(apierr.ReasonVersionMismatch, "fleet secret %q was changed at %s, after it was read (updated at %s): read it again, and retry",
		name, cur.updatedAt.Format(time.RFC3339Nano), read.Format(time.RFC3339Nano))
}

// getFleet reads one fleet secret, reporting false when there is none.
func (st store) getFleet(ctx context.Context, name string) (storedFleetSecret, bool, error) {
	r, err := scanFleet(st.pool.QueryRow(ctx, `SELECT `+fleetColumns+` FROM fleet_secrets WHERE name = $1`, name))
	if errors.Is(err, pgx.ErrNoRows) {
		return storedFleetSecret{}, false, nil
	}
	if err != nil {
		return storedFleetSecret{}, false, fmt.Errorf("read fleet secret %q: %w", name, err)
	}
	return r, true, nil
}

// listFleet returns the fleet secrets' metadata, ordered by name (byte
// order).
func (st store) listFleet(ctx context.Context) ([]*secretsv1.FleetSecret, error) {
	rows, err := st.pool.Query(ctx, `SELECT `+fleetColumns+` FROM fleet_secrets ORDER BY name COLLATE "C"`)
	if err != nil {
		return nil, fmt.Errorf("list fleet secrets: %w", err)
	}
	out, err := pgx.CollectRows(rows, func(row pgx.CollectableRow) (*secretsv1.FleetSecret, error) {
		r, err := scanFleet(row)
		return r.metadata(), err
	})
	if err != nil {
		return nil, fmt.Errorf("list fleet secrets: %w", err)
	}
	return out, nil
}

// deleteFleet removes a fleet secret, reporting false when there was none.
func (st store) deleteFleet(ctx context.Context, name string) (bool, error) {
	var deleted bool
	err := st.inTurn(ctx, fleetLock(name), func(tx pgx.Tx) error {
		tag, err := tx.Exec(ctx, `DELETE FROM fleet_secrets WHERE name = $1`, name)
		if err != nil {
			return fmt.Errorf("delete fleet secret %q: %w", name, err)
		}
		deleted = tag.RowsAffected() > 0
		return nil
	})
	return deleted, err
}

// setFleetSecret stores a fleet secret, or replaces it with the next
// version; without a value, it changes the templates and networks of the
// one stored.
func (s *Service) setFleetSecret(ctx context.Context, actor vocab.Actor, r *secretsv1.SetFleetSecretRequest) (*secretsv1.FleetSecret, error) {
	name := r.GetName()
	if err := validateName(name); err != nil {
		return nil, err
	}
	ref := r.GetSecretsManagerId()
	if err := valueOrReference(r.GetValue(), ref, true); err != nil {
		return nil, err
	}
	templates, err := s.checkTemplates(ctx, r.GetTemplateIds())
	if err != nil {
		return nil, err
	}
	networks, err := s.checkNetworks(ctx, r.GetNetworkIds())
	if err != nil {
		return nil, err
	}
	var sealFn func(int64) (sealed, error)
	if r.GetValue() != "" {
		value := []byte(r.GetValue())
		defer clear(value)
		sealFn = func(version int64) (sealed, error) {
			sl, err := seal(ctx, s.kms, value, fleetSecretBinding(name, version))
			if err != nil {
				return sealed{}, fmt.Errorf("seal fleet secret %q: %w", name, err)
			}
			return sl, nil
		}
	}
	var overUpdate time.Time
	if r.GetIfUpdateTime() != nil {
		if err := r.GetIfUpdateTime().CheckValid(); err != nil {
			return nil, apierr.Invalid("ifUpdateTime", "is not a time: %v", err)
		}
		overUpdate = r.GetIfUpdateTime().AsTime()
	}
	row, found, err := s.store.setFleet(ctx, name, templates, networks, r.GetVersion(), overUpdate, s.now().UTC().Truncate(time.Microsecond), ref, sealFn)
	if err != nil {
		return nil, err
	}
	if !found {
		return nil, apierr.Invalid("value", "is required (or secretsManagerId): there is no fleet secret %q to change the templates and networks of", name)
	}
	s.log.InfoContext(ctx, "fleet secret stored", "name", name, "template_ids", templates, "network_ids", networks, "version", row.version,
		"value_changed", sealFn != nil, "secrets_manager_id", row.ref, "kms_key_id", row.sealed.kmsKeyID, "actor", actor)
	return row.metadata(), nil
}

// checkTemplates checks a fleet secret's templates: at least one, at most
// MaxFleetSecretTemplates, each the id of a template the inventory has.
// It returns them canonical, without repeats, in the order given.
func (s *Service) checkTemplates(ctx context.Context, ids []string) ([]string, error) {
	switch {
	case len(ids) == 0:
		return nil, apierr.Invalid("templateIds", "is required: the templates whose instances' agents may read the secret, at least one")
	case len(ids) > MaxFleetSecretTemplates:
		return nil, apierr.Invalid("templateIds", "must name at most %d templates, got %d", MaxFleetSecretTemplates, len(ids))
	}
	return s.checkExisting(ctx, "templateIds", "template", ids, func(ctx context.Context, id string) error {
		_, err := rpc.Call(ctx, s.bus, endpoints.TemplateGet, &inventoryv1.GetTemplateRequest{Id: id}, rpc.Timeout(inventoryTimeout))
		return err
	})
}

// checkNetworks checks a fleet secret's networks: none (every network),
// or at most MaxFleetSecretNetworks, each the id of a network the
// inventory has. It returns them canonical, without repeats, in the order
// given.
func (s *Service) checkNetworks(ctx context.Context, ids []string) ([]string, error) {
	if len(ids) > MaxFleetSecretNetworks {
		return nil, apierr.Invalid("networkIds", "must name at most %d networks, got %d", MaxFleetSecretNetworks, len(ids))
	}
	return s.checkExisting(ctx, "networkIds", "network", ids, func(ctx context.Context, id string) error {
		_, err := rpc.Call(ctx, s.bus, endpoints.NetworkGet, &inventoryv1.GetNetworkRequest{Id: id}, rpc.Timeout(inventoryTimeout))
		return err
	})
}

// checkExisting checks that each of ids (the request's field, of kind
// what) is an id the inventory has, asking get; it returns them canonical,
// without repeats, in the order given.
func (s *Service) checkExisting(ctx context.Context, field, what string, ids []string, get func(context.Context, string) error) ([]string, error) {
	var out []string
	for i, v := range ids {
		f := fmt.Sprintf("%s[%d]", field, i)
		id, err := parseID(f, "a "+what+" id", v)
		if err != nil {
			return nil, err
		}
		if slices.Contains(out, id) {
			continue
		}
		err = get(ctx, id)
		switch {
		case apierr.Is(err, apierr.KindNotFound):
			return nil, apierr.Invalid(f, "there is no %s %s", what, id)
		case err != nil:
			s.log.WarnContext(ctx, "cannot check a "+what+" with the inventory", what+"_id", id, "error", err)
			e := apierr.Unavailable("cannot check %s %q with the inventory now; try again shortly", what, id)
			e.Err = err
			return nil, e
		}
		out = append(out, id)
	}
	return out, nil
}

// listFleetSecrets returns the fleet secrets' metadata, ordered by name.
func (s *Service) listFleetSecrets(ctx context.Context, _ vocab.Actor, _ *secretsv1.ListFleetSecretsRequest) (*secretsv1.ListFleetSecretsResponse, error) {
	items, err := s.store.listFleet(ctx)
	if err != nil {
		return nil, err
	}
	return &secretsv1.ListFleetSecretsResponse{Secrets: items}, nil
}

// getFleetSecret returns one fleet secret's metadata.
func (s *Service) getFleetSecret(ctx context.Context, _ vocab.Actor, r *secretsv1.GetFleetSecretRequest) (*secretsv1.FleetSecret, error) {
	name := r.GetName()
	if err := validateName(name); err != nil {
		return nil, err
	}
	row, found, err := s.store.getFleet(ctx, name)
	if err != nil {
		return nil, err
	}
	if !found {
		return nil, apierr.NotFound("fleet secret", name)
	}
	return row.metadata(), nil
}

// deleteFleetSecret removes a fleet secret.
func (s *Service) deleteFleetSecret(ctx context.Context, actor vocab.Actor, r *secretsv1.DeleteFleetSecretRequest) (*emptypb.Empty, error) {
	name := r.GetName()
	if err := validateName(name); err != nil {
		return nil, err
	}
	deleted, err := s.store.deleteFleet(ctx, name)
	if err != nil {
		return nil, err
	}
	if !deleted {
		return nil, apierr.NotFound("fleet secret", name)
	}
	s.log.InfoContext(ctx, "fleet secret deleted", "name", name, "actor", actor)
	return &emptypb.Empty{}, nil
}

// lookupFleet finds the fleet secret name for the agent of requester,
// whose own secrets hold none of that name: it is released when the
// instance's template is among the secret's, and its network too when the
// secret names networks. The instance is read
// whether or not there is such a secret, so the time a refusal takes does
// not tell the agent which fleet secrets exist. It returns the reason to
// audit and, on failure, the error for the caller.
func (s *Service) lookupFleet(ctx context.Context, requester, name string, denied error) (*secretsv1.ReadSecretResponse, string, error) {
	row, found, err := s.store.getFleet(ctx, name)
	if err != nil {
		return nil, reasonLookup, err
	}
	in, err := s.instance(ctx, requester)
	if err != nil {
		return nil, reasonLookup, err
	}
	if !found || !slices.Contains(row.templateIDs, in.GetTemplateId()) ||
		(len(row.networkIDs) > 0 && !slices.Contains(row.networkIDs, in.GetNetworkId())) {
		return nil, reasonNotBound, denied
	}
	return s.value(ctx, in, requester, name, held{what: fmt.Sprintf("fleet secret %q", name), version: row.version,
		sealed: row.sealed, binding: fleetSecretBinding(row.name, row.version), ref: row.ref}, reasonFleet)
}

// instance reads the requesting instance from the inventory.
func (s *Service) instance(ctx context.Context, id string) (*inventoryv1.Instance, error) {
	in, err := rpc.Call(ctx, s.bus, endpoints.InstanceGet, &inventoryv1.GetInstanceRequest{Id: id}, rpc.Timeout(inventoryTimeout))
	if err != nil {
		s.log.WarnContext(ctx, "cannot read the requesting instance", "requester_instance_id", id, "error", err)
		e := apierr.Unavailable("cannot read instance %q now; try again shortly", id)
		e.Err = err
		return nil, e
	}
	return in, nil
}

// removeDeletedTemplate handles a template.deleted event: the template
// goes from every fleet secret's templates (a secret left with none is
// kept, for the operator to give it templates again or delete it). A
// deleted network stays in the secrets' networks: taking the last one out
// would make a secret for every network.
func (s *Service) removeDeletedTemplate(msg *message.Message) error {
	id, err := s.deleted(msg, &inventoryv1.Template{})
	if err != nil {
		return err
	}
	tag, err := s.store.pool.Exec(msg.Context(), `UPDATE fleet_secrets SET template_ids = array_remove(template_ids, $1::uuid) WHERE $1::uuid = ANY(template_ids)`, id)
	if err != nil {
		return fmt.Errorf("remove deleted template %s from the fleet secrets: %w", id, err)
	}
	if n := tag.RowsAffected(); n > 0 {
		s.log.InfoContext(msg.Context(), "removed a deleted template from fleet secrets", "template_id", id, "fleet_secrets", n)
	}
	return nil
}

// nonNil is ids, or an empty list for none (an array, not NULL).
func nonNil(ids []string) []string {
	if ids == nil {
		return []string{}
	}
	return ids
}
