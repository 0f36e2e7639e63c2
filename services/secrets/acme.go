package secrets

import (
	"context"
	"crypto/sha256"
	"encoding/pem"
	"errors"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"
	"google.golang.org/protobuf/types/known/emptypb"
	"google.golang.org/protobuf/types/known/timestamppb"

	secretsv1 "flotilla.dev/flotilla/api/gen/flotilla/secrets/v1"
	"flotilla.dev/flotilla/api/vocab"
	"flotilla.dev/flotilla/libs/apierr"
	"flotilla.dev/flotilla/libs/pki"
)

// Names reads of ACME keys have in their SecretAccess audit records.
const (
	acmeAccountAuditName = "acme-account-key"
	acmeCertAuditName    = "acme-certificate-key"
)

// acmeAccountBinding binds a network's ACME account key to the network.
func acmeAccountBinding(networkID string) binding {
	return binding{aad: append([]byte("flotilla acme account v1\x00"), networkID...), ec: acmeAccountContext(networkID)}
}

// acmeCertBinding binds the key of an instance's ACME certificate to the
// instance and to the certificate (its SHA-256): a key moved to another
// instance, or put beside another certificate, does not open.
func acmeCertBinding(instanceID, certificatePEM string) binding {
	sum := sha256.Sum256([]byte(certificatePEM))
	aad := append([]byte("flotilla acme certificate v1\x00"), instanceID...)
	aad = append(append(aad, 0), sum[:]...)
	return binding{aad: aad, ec: acmeCertContext(instanceID)}
}

// getACMEAccountKey opens a network's ACME account key for the CA, which
// hands it to the agent of the instance named (every read audited for it).
// The first read makes the key (ECDSA P-256) and seals it; when two race,
// the first stored wins and both get it. Nothing of the key is logged.
func (s *Service) getACMEAccountKey(ctx context.Context, actor vocab.Actor, r *secretsv1.GetAcmeAccountKeyRequest) (*secretsv1.AcmeAccountKey, error) {
	networkID, err := parseID("networkId", "a network id", r.GetNetworkId())
	if err != nil {
		return nil, err
	}
	instanceID, err := parseInstanceID("instanceId", r.GetInstanceId())
	if err != nil {
		return nil, err
	}
	access := &secretsv1.SecretAccess{InstanceId: instanceID, RequesterInstanceId: instanceID, Name: acmeAccountAuditName,
		Time: timestamppb.New(s.now())}
	sl, found, err := s.acmeAccount(ctx, networkID)
	if err == nil && !found {
		err = s.createACMEAccount(ctx, networkID)
		if err == nil {
			sl, found, err = s.acmeAccount(ctx, networkID)
		}
	}
	if err == nil && !found {
		err = errors.New("the key stored is gone again")
	}
	if err != nil {
		return nil, fmt.Errorf("ACME account key of network %s: %w", networkID, err)
	}
	value, err := s.release(ctx, "ACME account key of network "+networkID, sl, acmeAccountBinding(networkID), access,
		fmt.Sprintf("ACME account of network %s, read by %s", networkID, actor))
	if err != nil {
		return nil, err
	}
	defer clear(value)
	return &secretsv1.AcmeAccountKey{PrivateKeyPem: string(value)}, nil
}

// acmeAccount reads a network's sealed ACME account key.
func (s *Service) acmeAccount(ctx context.Context, networkID string) (sealed, bool, error) {
	var sl sealed
	err := s.store.pool.QueryRow(ctx, `SELECT ciphertext, nonce, wrapped_key, kms_key_id FROM acme_accounts WHERE network_id = $1`, networkID).
		Scan(&sl.ciphertext, &sl.nonce, &sl.wrappedKey, &sl.kmsKeyID)
	if errors.Is(err, pgx.ErrNoRows) {
		return sealed{}, false, nil
	}
	return sl, err == nil, err
}

// createACMEAccount makes a network's ACME account key and seals it,
// unless one is stored already.
func (s *Service) createACMEAccount(ctx context.Context, networkID string) error {
	key, err := pki.GenerateKey()
	if err != nil {
		return err
	}
	value, err := pki.EncodePrivateKeyPEM(key)
	if err != nil {
		return err
	}
	defer clear(value)
	sl, err := seal(ctx, s.kms, value, acmeAccountBinding(networkID))
	if err != nil {
		return fmt.Errorf("seal: %w", err)
	}
	tag, err := s.store.pool.Exec(ctx, `INSERT INTO acme_accounts (network_id, ciphertext, nonce, wrapped_key, kms_key_id, created_at)
		VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (network_id) DO NOTHING`,
		networkID, sl.ciphertext, sl.nonce, sl.wrappedKey, sl.kmsKeyID, s.now().UTC().Truncate(time.Microsecond))
	if err != nil {
		return fmt.Errorf("store: %w", err)
	}
	if tag.RowsAffected() == 1 {
		s.log.InfoContext(ctx, "made a network's ACME account key", "network_id", networkID, "kms_key_id", sl.kmsKeyID)
	}
	return nil
}

// putACMECertificate keeps an instance's ACME certificate, its key sealed,
// replacing the one kept. The CA checked it against the instance; here it
// only has to be a PEM chain and a PEM key. Nothing of the key is logged.
func (s *Service) putACMECertificate(ctx context.Context, _ vocab.Actor, r *secretsv1.PutAcmeCertificateRequest) (*emptypb.Empty, error) {
	instanceID, err := parseInstanceID("instanceId", r.GetInstanceId())
	if err != nil {
		return nil, err
	}
	networkID, err := parseID("networkId", "a network id", r.GetNetworkId())
	if err != nil {
		return nil, err
	}
	if r.GetDirectoryUrl() == "" {
		return nil, apierr.Invalid("directoryUrl", "is required")
	}
	chain, err := pki.ParseCertificatesPEM([]byte(r.GetCertificatePem()))
	if err != nil {
		return nil, apierr.Invalid("certificatePem", "%v", err)
	}
	value := []byte(r.GetPrivateKeyPem())
	defer clear(value)
	switch b, _ := pem.Decode(value); {
	case len(value) == 0:
		return nil, apierr.Invalid("privateKeyPem", "is required")
	case len(value) > MaxValueSize:
		return nil, apierr.Invalid("privateKeyPem", "must be at most %d bytes", MaxValueSize)
	case b == nil:
		return nil, apierr.Invalid("privateKeyPem", "is not PEM")
	}
	sl, err := seal(ctx, s.kms, value, acmeCertBinding(instanceID, r.GetCertificatePem()))
	if err != nil {
		return nil, fmt.Errorf("seal the ACME certificate key of instance %s: %w", instanceID, err)
	}
	now := s.now().UTC().Truncate(time.Microsecond)
	_, err = s.store.pool.Exec(ctx, `
		INSERT INTO acme_certificates (instance_id, network_id, directory_url, certificate_pem, not_after,
			ciphertext, nonce, wrapped_key, kms_key_id, created_at, updated_at)
		VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $10)
		ON CONFLICT (instance_id) DO UPDATE SET
			network_id = EXCLUDED.network_id, directory_url = EXCLUDED.directory_url,
			certificate_pem = EXCLUDED.certificate_pem, not_after = EXCLUDED.not_after,
			ciphertext = EXCLUDED.ciphertext, nonce = EXCLUDED.nonce, wrapped_key = EXCLUDED.wrapped_key,
			kms_key_id = EXCLUDED.kms_key_id, updated_at = EXCLUDED.updated_at`,
		instanceID, networkID, r.GetDirectoryUrl(), r.GetCertificatePem(), chain[0].NotAfter.UTC(),
		sl.ciphertext, sl.nonce, sl.wrappedKey, sl.kmsKeyID, now)
	if err != nil {
		return nil, fmt.Errorf("keep the ACME certificate of instance %s: %w", instanceID, err)
	}
	s.log.InfoContext(ctx, "kept an instance's ACME certificate", "instance_id", instanceID, "serial", pki.Serial(chain[0]),
		"not_after", chain[0].NotAfter, "kms_key_id", sl.kmsKeyID)
	return &emptypb.Empty{}, nil
}

// readACMECertificate opens the ACME certificate kept for an instance for
// the CA, which hands it to the instance's agent; every read is audited,
// for that instance, whether one is kept or not.
func (s *Service) readACMECertificate(ctx context.Context, actor vocab.Actor, r *secretsv1.ReadAcmeCertificateRequest) (*secretsv1.AcmeCertificate, error) {
	instanceID, err := parseInstanceID("instanceId", r.GetInstanceId())
	if err != nil {
		return nil, err
	}
	access := &secretsv1.SecretAccess{InstanceId: instanceID, RequesterInstanceId: instanceID, Name: acmeCertAuditName,
		Time: timestamppb.New(s.now())}
	out := &secretsv1.AcmeCertificate{}
	var (
		sl       sealed
		notAfter time.Time
	)
	err = s.store.pool.QueryRow(ctx, `SELECT directory_url, certificate_pem, not_after, ciphertext, nonce, wrapped_key, kms_key_id
		FROM acme_certificates WHERE instance_id = $1`, instanceID).
		Scan(&out.DirectoryUrl, &out.CertificatePem, &notAfter, &sl.ciphertext, &sl.nonce, &sl.wrappedKey, &sl.kmsKeyID)
	if errors.Is(err, pgx.ErrNoRows) {
		access.Reason = "no ACME certificate is kept for the instance"
		if aerr := s.audit(ctx, access); aerr != nil {
			return nil, aerr
		}
		return nil, apierr.NotFound("ACME certificate of instance", instanceID)
	}
	if err != nil {
		return nil, fmt.Errorf("read the ACME certificate of instance %s: %w", instanceID, err)
	}
	value, err := s.release(ctx, "read the ACME certificate of instance "+instanceID, sl, acmeCertBinding(instanceID, out.CertificatePem), access,
		fmt.Sprintf("ACME certificate of the instance, read by %s", actor))
	if err != nil {
		return nil, err
	}
	defer clear(value)
	out.PrivateKeyPem, out.NotAfter = string(value), timestamppb.New(notAfter)
	return out, nil
}
