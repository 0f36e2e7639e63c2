package secrets

import (
	"context"
	"encoding/pem"
	"errors"
	"fmt"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"
	"google.golang.org/protobuf/types/known/emptypb"
	"google.golang.org/protobuf/types/known/timestamppb"

	secretsv1 "flotilla.dev/flotilla/api/gen/flotilla/secrets/v1"
	"flotilla.dev/flotilla/api/vocab"
	"flotilla.dev/flotilla/libs/apierr"
)

// certKeyAuditName is the name a read of a stored TLS private key has in
// its SecretAccess audit record.
const certKeyAuditName = "tls-private-key"

// certKeyBinding binds a stored key's ciphertext and data key to its id.
func certKeyBinding(id string) binding {
	return binding{aad: append([]byte("flotilla certificate key v1\x00"), id...), ec: certKeyContext(id)}
}

// createCertKey seals an uploaded TLS private key under a new id. The
// inventory validated it against its certificate; here it only has to be
// PEM. Nothing of the key is logged.
func (s *Service) createCertKey(ctx context.Context, _ vocab.Actor, r *secretsv1.StoreCertificateKeyRequest) (*secretsv1.CertificateKey, error) {
	value := []byte(r.GetPrivateKeyPem())
	defer clear(value)
	if len(value) == 0 {
		return nil, apierr.Invalid("privateKeyPem", "is required")
	}
	if len(value) > MaxValueSize {
		return nil, apierr.Invalid("privateKeyPem", "must be at most %d bytes", MaxValueSize)
	}
	if b, _ := pem.Decode(value); b == nil {
		return nil, apierr.Invalid("privateKeyPem", "is not PEM")
	}
	id := uuid.NewString()
	sl, err := seal(ctx, s.kms, value, certKeyBinding(id))
	if err != nil {
		return nil, fmt.Errorf("seal certificate key %s: %w", id, err)
	}
	_, err = s.store.pool.Exec(ctx, `INSERT INTO certificate_keys (id, ciphertext, nonce, wrapped_key, kms_key_id, created_at)
		VALUES ($1, $2, $3, $4, $5, $6)`, id, sl.ciphertext, sl.nonce, sl.wrappedKey, sl.kmsKeyID, s.now().UTC().Truncate(time.Microsecond))
	if err != nil {
		return nil, fmt.Errorf("store certificate key %s: %w", id, err)
	}
	s.log.InfoContext(ctx, "stored a TLS private key", "certificate_key_id", id, "kms_key_id", sl.kmsKeyID)
	return &secretsv1.CertificateKey{Id: id}, nil
}

// readCertKey opens a stored TLS private key for the CA, which hands it to
// the instance's agent; every read is audited, for that instance.
func (s *Service) readCertKey(ctx context.Context, actor vocab.Actor, r *secretsv1.ReadCertificateKeyRequest) (*secretsv1.ReadCertificateKeyResponse, error) {
	id, err := uuid.Parse(r.GetId())
	if err != nil {
		return nil, apierr.Invalid("id", "must be a certificate key id (a UUID)")
	}
	instanceID, err := parseInstanceID("instanceId", r.GetInstanceId())
	if err != nil {
		return nil, err
	}
	access := &secretsv1.SecretAccess{InstanceId: instanceID, RequesterInstanceId: instanceID, Name: certKeyAuditName,
		Time: timestamppb.New(s.now())}
	var sl sealed
	err = s.store.pool.QueryRow(ctx, `SELECT ciphertext, nonce, wrapped_key, kms_key_id FROM certificate_keys WHERE id = $1`, id.String()).
		Scan(&sl.ciphertext, &sl.nonce, &sl.wrappedKey, &sl.kmsKeyID)
	if errors.Is(err, pgx.ErrNoRows) {
		access.Reason = reasonNotBound
		if aerr := s.audit(ctx, access); aerr != nil {
			return nil, aerr
		}
		return nil, apierr.NotFound("certificate key", id.String())
	}
	if err != nil {
		return nil, fmt.Errorf("read certificate key %s: %w", id, err)
	}
	value, err := s.release(ctx, "read certificate key "+id.String(), sl, certKeyBinding(id.String()), access,
		fmt.Sprintf("custom certificate of the instance, read by %s", actor))
	if err != nil {
		return nil, err
	}
	defer clear(value)
	return &secretsv1.ReadCertificateKeyResponse{PrivateKeyPem: string(value)}, nil
}

// deleteCertKey forgets a stored TLS private key that no network or
// instance names any more; none stored is fine.
func (s *Service) deleteCertKey(ctx context.Context, _ vocab.Actor, r *secretsv1.DeleteCertificateKeyRequest) (*emptypb.Empty, error) {
	id, err := uuid.Parse(r.GetId())
	if err != nil {
		return nil, apierr.Invalid("id", "must be a certificate key id (a UUID)")
	}
	tag, err := s.store.pool.Exec(ctx, `DELETE FROM certificate_keys WHERE id = $1`, id.String())
	if err != nil {
		return nil, fmt.Errorf("delete certificate key %s: %w", id, err)
	}
	if tag.RowsAffected() > 0 {
		s.log.InfoContext(ctx, "forgot a TLS private key no record names", "certificate_key_id", id.String())
	}
	return &emptypb.Empty{}, nil
}
