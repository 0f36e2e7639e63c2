package app

import (
	"context"
	"slices"
	"strings"
	"time"

	"google.golang.org/protobuf/proto"

	inventoryv1 "flotilla.dev/flotilla/api/gen/flotilla/inventory/v1"
	"flotilla.dev/flotilla/libs/apierr"
	"flotilla.dev/flotilla/services/inventory/domain"
)

// KeyStore keeps the uploaded private keys of custom certificates encrypted
// (the secret broker); the inventory keeps only the id it answers.
type KeyStore func(ctx context.Context, privateKeyPEM string) (id string, err error)

// WithKeyStore sets where uploaded TLS private keys go.
func WithKeyStore(k KeyStore) Option { return func(a *App) { a.keys = k } }

// customCert is a custom certificate's fields inside a network or an
// instance, to fill the stored key's id in.
type customCert interface {
	GetCertificatePem() string
	GetPrivateKeyPem() string
	GetPrivateKeyRef() string
	GetPrivateKeyId() string
}

// sealKey checks an uploaded key against its certificate and hands it to
// the key store. It returns the key's id: the new one, the one stored
// before (old) while neither the certificate nor the key source changed,
// or "" when there is no uploaded key. The key itself goes nowhere else.
func (a *App) sealKey(ctx context.Context, field string, c, old customCert) (string, error) {
	if c == nil || c.GetPrivateKeyPem() == "" {
		if c != nil && old != nil && c.GetPrivateKeyRef() == "" && c.GetCertificatePem() != "" &&
			c.GetCertificatePem() == old.GetCertificatePem() {
			return old.GetPrivateKeyId(), nil
		}
		return "", nil
	}
	cc := domain.CustomCertificate{Field: field, CertificatePEM: c.GetCertificatePem(), PrivateKeyPEM: c.GetPrivateKeyPem(), PrivateKeyRef: c.GetPrivateKeyRef()}
	if err := cc.Validate(nil, time.Now()); err != nil {
		return "", err
	}
	if a.keys == nil {
		return "", apierr.Unsupported(field+".privateKeyPem", "this inventory has no secret broker to keep uploaded keys: use privateKeyRef")
	}
	id, err := a.keys(ctx, c.GetPrivateKeyPem())
	if err != nil {
		return "", err
	}
	return id, nil
}

// sealNetworkKey replaces an uploaded key of n by the stored key's id.
func (a *App) sealNetworkKey(ctx context.Context, n, old *inventoryv1.Network) (*inventoryv1.Network, error) {
	if n.GetCustomCertificate() == nil {
		return n, nil
	}
	var oc customCert
	if old != nil && old.GetCustomCertificate() != nil {
		oc = old.GetCustomCertificate()
	}
	id, err := a.sealKey(ctx, "customCertificate", n.GetCustomCertificate(), oc)
	if err != nil {
		return nil, err
	}
	n = proto.Clone(n).(*inventoryv1.Network)
	n.CustomCertificate.PrivateKeyPem, n.CustomCertificate.PrivateKeyId = "", id
	return n, nil
}

// sealInstanceKey replaces an uploaded key of in by the stored key's id.
func (a *App) sealInstanceKey(ctx context.Context, in, old *inventoryv1.Instance) (*inventoryv1.Instance, error) {
	if in.GetSsl() == nil {
		return in, nil
	}
	var oc customCert
	if old != nil && old.GetSsl() != nil {
		oc = old.GetSsl()
	}
	id, err := a.sealKey(ctx, "ssl", in.GetSsl(), oc)
	if err != nil {
		return nil, err
	}
	in = proto.Clone(in).(*inventoryv1.Instance)
	in.Ssl.PrivateKeyPem, in.Ssl.PrivateKeyId = "", id
	return in, nil
}

// keyMask turns a mask path to an uploaded key into the path of the
// stored key's id, which is what changes in the record.
func keyMask(mask []string) []string {
	if !slices.ContainsFunc(mask, func(p string) bool {
		return strings.HasSuffix(p, "rivateKeyPem") || strings.HasSuffix(p, "rivate_key_pem")
	}) {
		return mask
	}
	out := make([]string, 0, len(mask)+1)
	for _, p := range mask {
		switch {
		case strings.HasSuffix(p, "privateKeyPem"):
			out = append(out, strings.TrimSuffix(p, "privateKeyPem")+"privateKeyId")
		case strings.HasSuffix(p, "private_key_pem"):
			out = append(out, strings.TrimSuffix(p, "private_key_pem")+"private_key_id")
		default:
			out = append(out, p)
		}
	}
	return out
}
