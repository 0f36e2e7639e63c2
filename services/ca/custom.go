package ca

import (
	"context"
	"errors"
	"fmt"
	"strings"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/secretsmanager"
	"google.golang.org/protobuf/types/known/timestamppb"

	"flotilla.dev/flotilla/api/endpoints"
	cav1 "flotilla.dev/flotilla/api/gen/flotilla/ca/v1"
	inventoryv1 "flotilla.dev/flotilla/api/gen/flotilla/inventory/v1"
	secretsv1 "flotilla.dev/flotilla/api/gen/flotilla/secrets/v1"
	"flotilla.dev/flotilla/api/vocab"
	"flotilla.dev/flotilla/libs/apierr"
	"flotilla.dev/flotilla/libs/awsx"
	"flotilla.dev/flotilla/libs/pki"
	"flotilla.dev/flotilla/libs/rpc"
)

// CloudAccountOf gives the AWS account whose Secrets Manager holds the
// private keys a network's certificates reference (privateKeyRef). It is
// the seam to cloud accounts: until networks name one, the stack feeds an
// account from its configuration.
type CloudAccountOf func(ctx context.Context, n *inventoryv1.Network) (awsx.Account, error)

// getCustomCertificate resolves an instance's custom certificate for its
// agent: the instance's own or its network's chain, and the private key
// from the secret broker (uploaded) or AWS Secrets Manager (referenced,
// read now, so a rotated secret is picked up on :refresh-certificate).
// The key must match the certificate. Nothing of the key is logged.
func (s *Service) getCustomCertificate(ctx context.Context, actor vocab.Actor, req *cav1.GetCustomCertificateRequest) (*cav1.CustomCertificate, error) {
	id := req.GetInstanceId()
	inst, netw, err := s.instanceOn(ctx, actor, id, vocab.HTTPSCustomCertificate)
	if err != nil {
		return nil, err
	}
	cc := customOf(inst, netw)
	chain, err := pki.ParseCertificatesPEM([]byte(cc.CertificatePEM))
	if err != nil {
		return nil, apierr.Invalid(cc.Field+".certificatePem", "%v", err)
	}
	var keyPEM string
	switch {
	case cc.PrivateKeyID != "":
		k, err := rpc.Call(ctx, s.bus, endpoints.CertKeyRead, &secretsv1.ReadCertificateKeyRequest{Id: cc.PrivateKeyID, InstanceId: id})
		if err != nil {
			return nil, fmt.Errorf("stored private key of instance %s: %w", id, err)
		}
		keyPEM = k.GetPrivateKeyPem()
	case cc.PrivateKeyRef != "":
		if keyPEM, err = s.secretsManagerKey(ctx, netw, cc.PrivateKeyRef); err != nil {
			return nil, err
		}
	default:
		return nil, apierr.Invalid(cc.Field+".privateKeyPem", "the certificate has no private key")
	}
	if _, err := pki.CheckCustomKey(chain[0], keyPEM); err != nil {
		return nil, apierr.Invalid(cc.Field+"."+keyField(cc), "%v", errors.Unwrap(err))
	}
	s.log.InfoContext(ctx, "custom certificate released to the instance's agent", "instance_id", id,
		"serial", pki.Serial(chain[0]), "not_after", chain[0].NotAfter, "key_source", keyField(cc))
	return &cav1.CustomCertificate{CertificatePem: cc.CertificatePEM, PrivateKeyPem: keyPEM, NotAfter: timestamppb.New(chain[0].NotAfter)}, nil
}

// customSettings are the custom certificate settings that apply to an
// instance: its own ssl settings, or its network's.
type customSettings struct {
	Field                                       string
	CertificatePEM, PrivateKeyRef, PrivateKeyID string
}

func customOf(in *inventoryv1.Instance, n *inventoryv1.Network) customSettings {
	if s := in.GetSsl(); s.GetCertificatePem() != "" {
		return customSettings{"ssl", s.GetCertificatePem(), s.GetPrivateKeyRef(), s.GetPrivateKeyId()}
	}
	c := n.GetCustomCertificate()
	return customSettings{"customCertificate", c.GetCertificatePem(), c.GetPrivateKeyRef(), c.GetPrivateKeyId()}
}

func keyField(cc customSettings) string {
	if cc.PrivateKeyRef != "" {
		return "privateKeyRef"
	}
	return "privateKeyPem"
}

// secretsManagerKey reads a PEM private key from AWS Secrets Manager in the
// network's cloud account. An AWS error is reported with its code.
func (s *Service) secretsManagerKey(ctx context.Context, n *inventoryv1.Network, ref string) (string, error) {
	if s.cloudAccount == nil {
		return "", apierr.Invalid("privateKeyRef", "no cloud account is configured to read AWS Secrets Manager")
	}
	acct, err := s.cloudAccount(ctx, n)
	if err != nil {
		return "", fmt.Errorf("cloud account of network %q: %w", n.GetName(), err)
	}
	cfg, err := awsx.Config(ctx, acct, s.awsOpts...)
	if err != nil {
		return "", apierr.Invalid("privateKeyRef", "cloud account of network %q: %v", n.GetName(), err)
	}
	out, err := secretsmanager.NewFromConfig(cfg).GetSecretValue(ctx, &secretsmanager.GetSecretValueInput{SecretId: aws.String(ref)})
	if err != nil {
		return "", apierr.Invalid("privateKeyRef", "%q: AWS Secrets Manager: %s", ref, awsx.Reason(err))
	}
	v := aws.ToString(out.SecretString)
	if v == "" && len(out.SecretBinary) > 0 {
		v = string(out.SecretBinary)
	}
	if !strings.Contains(v, "PRIVATE KEY") {
		return "", apierr.Invalid("privateKeyRef", "%q: the secret holds no PEM private key", ref)
	}
	return v, nil
}
