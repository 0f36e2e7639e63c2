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

// KeyDrop forgets a stored TLS private key by its id (the secret broker).
type KeyDrop func(ctx context.Context, id string) error

// WithKeyDrop sets how stored TLS private keys that no record names any
// more are forgotten.
func WithKeyDrop(d KeyDrop) Option { return func(a *App) { a.dropKey = d } }

// dropKeys forgets the stored keys among ids that are not named (the key
// id the record names now): a key replaced by a new upload or dropped with
// the certificate, or one stored for a change that was not made. After the
// commit, best effort: a failure is logged and leaves a sealed row behind.
// (Deleted networks' and instances' keys are forgotten by the secret
// broker itself, from their deletion events.)
func (a *App) dropKeys(ctx context.Context, named string, ids ...string) {
	if a.dropKey == nil {
		return
	}
	for _, id := range ids {
		if id == "" || id == named {
			continue
		}
		if err := a.dropKey(ctx, id); err != nil {
			a.log.WarnContext(ctx, "a stored TLS private key that no record names was not forgotten", "certificate_key_id", id, "error", err)
		}
	}
}

// keyIDOf is the stored key id a network or an instance names ("" for none).
func keyIDOf(v any) string {
	switch r := v.(type) {
	case *inventoryv1.Network:
		return r.GetCustomCertificate().GetPrivateKeyId()
	case *inventoryv1.Instance:
		return r.GetSsl().GetPrivateKeyId()
	}
	return ""
}

// afterKeyedWrite forgets the keys a write of a network or an instance left
// unnamed: before is the record as read before the write (nil for a
// create), sent the record as sent (its uploaded key stored), out and err
// what the write returned; reread reads the record again after a failed
// update, whose outcome is then taken from the database.
func afterKeyedWrite[T interface{ comparable }](ctx context.Context, a *App, before, sent, out T, err error, reread func() (T, error)) {
	var zero T
	named := keyIDOf(out)
	switch {
	case err == nil:
	case before == zero:
		// A create refused names nothing: its key was stored for nothing.
		// (Any other failure, a commit that may have happened, forgets
		// nothing.)
		switch apierr.KindOf(err) {
		case apierr.KindInvalid, apierr.KindConflict, apierr.KindNotFound, apierr.KindPermissionDenied:
			named = ""
		default:
			return
		}
	default:
		now, gerr := reread()
		if gerr != nil {
			return // unknown: forget nothing
		}
		named = keyIDOf(now)
	}
	var was string
	if before != zero {
		was = keyIDOf(before)
	}
	a.dropKeys(ctx, named, was, keyIDOf(sent))
}

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
