package secrets

import (
	"context"
	"fmt"
	"regexp"
	"time"

	"github.com/google/uuid"
	"google.golang.org/protobuf/types/known/emptypb"
	"google.golang.org/protobuf/types/known/timestamppb"

	"flotilla.dev/flotilla/api/endpoints"
	inventoryv1 "flotilla.dev/flotilla/api/gen/flotilla/inventory/v1"
	secretsv1 "flotilla.dev/flotilla/api/gen/flotilla/secrets/v1"
	"flotilla.dev/flotilla/api/subjects"
	"flotilla.dev/flotilla/api/vocab"
	"flotilla.dev/flotilla/libs/apierr"
	"flotilla.dev/flotilla/libs/bus"
	"flotilla.dev/flotilla/libs/rpc"
)

// Limits on what a secret may be.
const (
	// MaxNameLength is the longest secret name, in characters.
	MaxNameLength = 128
	// MaxValueSize is the largest secret value, in bytes (64 KiB).
	MaxValueSize = 64 << 10
)

// nameRE is the rule for secret names.
var nameRE = regexp.MustCompile(`^[A-Za-z0-9_.-]{1,128}$`)

const (
	// inventoryTimeout bounds the instance lookup of a create.
	inventoryTimeout = 5 * time.Second
)

// Reasons recorded in SecretAccess audit records.
const (
	reasonAllowed       = "bound to the requesting instance"
	reasonFleet         = "a fleet secret for the requesting instance's template"
	reasonNotBound      = "no secret of this name is bound to the requesting instance or given to its template and network"
	reasonInvalidName   = "invalid secret name"
	reasonLookup        = "secret lookup failed"
	reasonUndecryptable = "stored secret cannot be decrypted"
	// reasonFromReference follows the reason of a read of a secret that
	// is a reference; reasonReferenceFailed is a refused one's.
	reasonFromReference   = ", read from AWS Secrets Manager"
	reasonReferenceFailed = "AWS Secrets Manager read failed"
	reasonNotRequester    = "read asked by %s, not by the requesting instance's agent"
)

// create stores a secret, or replaces it with the next version (over the
// version the request names, if it names one).
func (s *Service) create(ctx context.Context, actor vocab.Actor, r *secretsv1.CreateSecretRequest) (*secretsv1.Secret, error) {
	instanceID, err := parseInstanceID("instanceId", r.GetInstanceId())
	if err != nil {
		return nil, err
	}
	name := r.GetName()
	if err := validateName(name); err != nil {
		return nil, err
	}
	ref := r.GetSecretsManagerId()
	if err := valueOrReference(r.GetValue(), ref, false); err != nil {
		return nil, err
	}
	if err := s.checkInstance(ctx, instanceID); err != nil {
		return nil, err
	}

	var sealFn func(int64) (sealed, error)
	if ref == "" {
		value := []byte(r.GetValue())
		defer clear(value)
		sealFn = func(version int64) (sealed, error) {
			sl, err := seal(ctx, s.kms, value, secretBinding(instanceID, name, version))
			if err != nil {
				return sealed{}, fmt.Errorf("seal secret %q of instance %s: %w", name, instanceID, err)
			}
			return sl, nil
		}
	}
	row, err := s.store.replace(ctx, instanceID, name, r.GetVersion(), s.now().UTC().Truncate(time.Microsecond), ref, sealFn)
	if err != nil {
		return nil, err
	}
	s.log.InfoContext(ctx, "secret stored", "instance_id", instanceID, "name", name, "version", row.version, "kms_key_id", row.sealed.kmsKeyID,
		"secrets_manager_id", ref, "actor", actor)
	return row.metadata(), nil
}

// list returns an instance's secrets' metadata, ordered by name.
func (s *Service) list(ctx context.Context, _ vocab.Actor, r *secretsv1.ListSecretsRequest) (*secretsv1.ListSecretsResponse, error) {
	instanceID, err := parseInstanceID("instanceId", r.GetInstanceId())
	if err != nil {
		return nil, err
	}
	items, err := s.store.list(ctx, instanceID)
	if err != nil {
		return nil, err
	}
	if len(items) == 0 {
		if err := s.checkInstance(ctx, instanceID); err != nil {
			return nil, err // no instance, rather than none of its secrets
		}
	}
	return &secretsv1.ListSecretsResponse{Secrets: items}, nil
}

// delete removes one of an instance's secrets.
func (s *Service) delete(ctx context.Context, actor vocab.Actor, r *secretsv1.DeleteSecretRequest) (*emptypb.Empty, error) {
	instanceID, err := parseInstanceID("instanceId", r.GetInstanceId())
	if err != nil {
		return nil, err
	}
	name := r.GetName()
	if err := validateName(name); err != nil {
		return nil, err
	}
	deleted, err := s.store.delete(ctx, instanceID, name)
	if err != nil {
		return nil, err
	}
	if !deleted {
		if err := s.checkInstance(ctx, instanceID); err != nil {
			return nil, err
		}
		return nil, apierr.NotFound("secret", name)
	}
	s.log.InfoContext(ctx, "secret deleted", "instance_id", instanceID, "name", name, "actor", actor)
	return &emptypb.Empty{}, nil
}

// read releases a secret's value to the agent of the instance it is bound
// to (or a fleet secret's, to the agent of an instance of one of its
// templates: lookupFleet), after the audit record of the read is on the
// audit stream. Every read
// that names a valid requester is audited, whatever its outcome.
//
// A name with no secret bound to the requester is denied with the same reply
// whether or not other instances hold a secret of that name: the broker does
// not even look, so neither the reply nor its timing tells an agent what
// other instances hold. The reply is permission denied rather than not found
// because from the agent's side both cases mean "you may not have this".
func (s *Service) read(ctx context.Context, actor vocab.Actor, r *secretsv1.ReadSecretRequest) (*secretsv1.ReadSecretResponse, error) {
	// The agent gateway fills the requester from the agent's certificate; a
	// malformed one is its bug, and cannot name an audit subject.
	requester, err := parseInstanceID("requesterInstanceId", r.GetRequesterInstanceId())
	if err != nil {
		return nil, err
	}
	name := r.GetName()
	access := &secretsv1.SecretAccess{
		RequesterInstanceId: requester,
		Name:                name,
		Time:                timestamppb.New(s.now()),
	}
	// The agent gateway reads for the agent it acts for, never for another
	// instance: such a read is refused, and audited as the attempt it is.
	if actor.Kind() != vocab.ActorAgent || actor.Name() != requester {
		access.Reason = fmt.Sprintf(reasonNotRequester, actor)
		if aerr := s.audit(ctx, access); aerr != nil {
			return nil, aerr
		}
		s.log.WarnContext(ctx, "secret read for another instance refused", "actor", actor, "requester_instance_id", requester, "name", name)
		return nil, apierr.PermissionDenied("%s may not read the secrets of instance %s", actor, requester)
	}
	var resp *secretsv1.ReadSecretResponse
	resp, access.Reason, access.Fleet, err = s.lookup(ctx, requester, name)
	switch {
	case err == nil && access.Fleet:
		access.Allowed = true
	case err == nil:
		access.Allowed = true
		access.InstanceId = requester // the instance the secret is bound to
	}
	if aerr := s.audit(ctx, access); aerr != nil {
		if resp != nil {
			clear(resp.Value)
		}
		return nil, aerr
	}
	if err != nil {
		s.log.WarnContext(ctx, "secret read denied", "requester_instance_id", requester, "name", name, "reason", access.Reason)
		return nil, err
	}
	s.log.DebugContext(ctx, "secret read", "requester_instance_id", requester, "name", name, "version", resp.Version)
	return resp, nil
}

// lookup finds and opens the secret name bound to requester, or else the
// fleet secret of that name for its template (fleet). It returns the
// reason to audit and, on failure, the error for the caller.
func (s *Service) lookup(ctx context.Context, requester, name string) (resp *secretsv1.ReadSecretResponse, reason string, fleet bool, err error) {
	denied := apierr.PermissionDenied("secret %q is not set for this instance (flotilla instances secrets set, or POST /api/v1/instances/{id}/secrets), "+
		"nor is a fleet secret of that name given to its template and network (flotilla secrets set NAME --template T [--network N], or PUT /api/v1/secrets/{name})", name)
	if err := validateName(name); err != nil {
		return nil, reasonInvalidName, false, err
	}
	row, found, err := s.store.get(ctx, requester, name)
	if err != nil {
		return nil, reasonLookup, false, err
	}
	if !found {
		resp, reason, err := s.lookupFleet(ctx, requester, name, denied)
		return resp, reason, err == nil, err
	}
	resp, reason, err = s.value(ctx, nil, requester, name, held{what: fmt.Sprintf("secret %q of instance %s", name, requester), version: row.version,
		sealed: row.sealed, binding: secretBinding(row.instanceID, row.name, row.version), ref: row.ref}, reasonAllowed)
	return resp, reason, false, err
}

// held is a secret found for a read: a sealed value and what it is bound
// to, or a reference (ref) to an AWS Secrets Manager secret; what names it
// in errors.
type held struct {
	what    string
	version int64
	sealed  sealed
	binding binding
	ref     string
}

// value opens h for the agent of requester (in, when it has been read
// already), or reads it from AWS Secrets Manager: the reason to audit
// (allowed, and that way) and, on failure, the error for the caller.
func (s *Service) value(ctx context.Context, in *inventoryv1.Instance, requester, name string, h held, allowed string) (*secretsv1.ReadSecretResponse, string, error) {
	if h.ref != "" {
		if in == nil {
			var err error
			if in, err = s.instance(ctx, requester); err != nil {
				return nil, reasonLookup, err
			}
		}
		v, err := s.readReference(ctx, in, name, h.ref)
		if err != nil {
			return nil, reasonReferenceFailed, err
		}
		return &secretsv1.ReadSecretResponse{Value: v, Version: h.version}, allowed + reasonFromReference, nil
	}
	v, err := open(ctx, s.kms, h.sealed, h.binding)
	if err != nil {
		// Internal: the caller gets an error id, the log the cause (never
		// the value, which nobody has).
		return nil, reasonUndecryptable, fmt.Errorf("read %s version %d: %w", h.what, h.version, err)
	}
	return &secretsv1.ReadSecretResponse{Value: v, Version: h.version}, allowed, nil
}

// audit publishes one SecretAccess record to the audit stream and waits for
// JetStream to store it.
func (s *Service) audit(ctx context.Context, a *secretsv1.SecretAccess) error {
	err := bus.PublishAudit(ctx, s.js, subjects.Audit(subjects.NounSecret, a.GetRequesterInstanceId(), subjects.VerbRead),
		subjects.EventType(subjects.NounSecret, subjects.VerbRead), vocab.Agent(a.GetRequesterInstanceId()), a.GetTime().AsTime(), a)
	if err != nil {
		s.log.ErrorContext(ctx, "audit record not written: secret read refused", "requester_instance_id", a.GetRequesterInstanceId(), "name", a.GetName(), "error", err)
		e := apierr.Unavailable("the audit log cannot record this read now, so the secret is not released; try again shortly")
		e.Err = err
		return e
	}
	return nil
}

// release opens sl, bound as b, for a read audited as access: the record
// (allowed, for reason) is stored before the value is returned, and a
// value that does not open is audited as such (what names it in the
// error). The caller owns, and should clear, the value.
func (s *Service) release(ctx context.Context, what string, sl sealed, b binding, access *secretsv1.SecretAccess, reason string) ([]byte, error) {
	value, err := open(ctx, s.kms, sl, b)
	if err != nil {
		access.Reason = reasonUndecryptable
		_ = s.audit(ctx, access)
		return nil, fmt.Errorf("%s: %w", what, err)
	}
	access.Allowed, access.Reason = true, reason
	if err := s.audit(ctx, access); err != nil {
		clear(value)
		return nil, err
	}
	return value, nil
}

// auditCloudKey records a read of a cloud account's secret key; like a
// secret's, the key is released only once the record is stored.
func (s *Service) auditCloudKey(ctx context.Context, a *secretsv1.SecretAccess, accountID string, actor vocab.Actor) error {
	err := bus.PublishAudit(ctx, s.js, subjects.Audit(subjects.NounCloudKey, accountID, subjects.VerbRead),
		subjects.EventType(subjects.NounCloudKey, subjects.VerbRead), actor, a.GetTime().AsTime(), a)
	if err != nil {
		s.log.ErrorContext(ctx, "audit record not written: cloud key read refused", "cloud_account_id", accountID, "error", err)
		e := apierr.Unavailable("the audit log cannot record this read now, so the key is not released; try again shortly")
		e.Err = err
		return e
	}
	return nil
}

// checkInstance asks the inventory whether the instance exists.
func (s *Service) checkInstance(ctx context.Context, instanceID string) error {
	_, err := rpc.Call(ctx, s.bus, endpoints.InstanceGet, &inventoryv1.GetInstanceRequest{Id: instanceID}, rpc.Timeout(inventoryTimeout))
	if err == nil {
		return nil
	}
	if apierr.Is(err, apierr.KindNotFound) {
		return apierr.NotFound("instance", instanceID)
	}
	s.log.WarnContext(ctx, "cannot check instance with the inventory", "instance_id", instanceID, "error", err)
	e := apierr.Unavailable("cannot check instance %q with the inventory now; try again shortly", instanceID)
	e.Err = err
	return e
}

// parseInstanceID checks that v is a UUID and returns its canonical form.
func parseInstanceID(field, v string) (string, error) { return parseID(field, "an instance id", v) }

// parseID checks and canonicalises the id (what: "an instance id") in
// field.
func parseID(field, what, v string) (string, error) {
	if v == "" {
		return "", apierr.Invalid(field, "is required")
	}
	id, err := uuid.Parse(v)
	if err != nil || id == uuid.Nil {
		return "", apierr.Invalid(field, "must be %s (a UUID)", what)
	}
	return id.String(), nil
}

// validateName checks a secret name against the naming rule.
func validateName(name string) error {
	switch {
	case name == "":
		return apierr.Invalid("name", "is required")
	case len(name) > MaxNameLength:
		return apierr.Invalid("name", "must be at most %d characters, got %d", MaxNameLength, len(name))
	case !nameRE.MatchString(name):
		return apierr.Invalid("name", "%q must be 1-%d letters, digits, '_', '-' or '.'", name, MaxNameLength)
	}
	return nil
}
