package kms

import (
	"context"
	"errors"
	"fmt"

	"github.com/aws/aws-sdk-go-v2/aws"
	awskms "github.com/aws/aws-sdk-go-v2/service/kms"
	"github.com/aws/aws-sdk-go-v2/service/kms/types"

	"flotilla.dev/flotilla/libs/awsx"
)

// AWS is a KMS whose master key is a symmetric key in AWS KMS: data keys
// come from GenerateDataKey, are wrapped with Encrypt (rewrapping a key
// another KMS wrapped) and unwrapped with Decrypt, each with the encryption
// context, so AWS refuses to unwrap a key moved to another secret. The
// master key never leaves AWS. It is safe for concurrent use.
//
// The IAM actions it needs on the key: kms:DescribeKey (once, when opened),
// kms:GenerateDataKey, kms:Encrypt and kms:Decrypt.
type AWS struct {
	client *awskms.Client
	arn    string
}

// OpenAWS resolves keyID (a key id, key ARN, alias name "alias/…" or alias
// ARN) in the account to its key ARN, which becomes the KeyID stored with
// every data key it wraps, so that repointing an alias later never makes
// stored keys unreadable. It refuses a key that is not an enabled symmetric
// encryption key. opts adjust the SDK configuration (awsx.WithActions).
func OpenAWS(ctx context.Context, account awsx.Account, keyID string, opts ...awsx.Option) (*AWS, error) {
	if keyID == "" {
		return nil, errors.New("kms: keyId: is required (a key id, key ARN or alias/NAME)")
	}
	cfg, err := awsx.Config(ctx, account, opts...)
	if err != nil {
		return nil, fmt.Errorf("kms: %w", err)
	}
	client := awskms.NewFromConfig(cfg)
	out, err := client.DescribeKey(ctx, &awskms.DescribeKeyInput{KeyId: aws.String(keyID)})
	if err != nil {
		return nil, awsError(fmt.Sprintf("kms: describe key %q", keyID), err)
	}
	md := out.KeyMetadata
	switch {
	case md == nil || md.Arn == nil:
		return nil, fmt.Errorf("kms: describe key %q: AWS returned no key ARN", keyID)
	case md.KeyState != types.KeyStateEnabled:
		return nil, fmt.Errorf("kms: key %s is %s, not Enabled", *md.Arn, md.KeyState)
	case md.KeyUsage != types.KeyUsageTypeEncryptDecrypt || md.KeySpec != types.KeySpecSymmetricDefault:
		return nil, fmt.Errorf("kms: key %s is a %s key for %s: a SYMMETRIC_DEFAULT key for ENCRYPT_DECRYPT is required", *md.Arn, md.KeySpec, md.KeyUsage)
	}
	return &AWS{client: client, arn: *md.Arn}, nil
}

// KeyID returns the master key's ARN.
func (a *AWS) KeyID() string { return a.arn }

// GenerateDataKey asks AWS KMS for a fresh data key of size bytes, in plain
// and wrapped form.
func (a *AWS) GenerateDataKey(ctx context.Context, size int, ec EncryptionContext) ([]byte, []byte, error) {
	if err := checkDataKeySize(size); err != nil {
		return nil, nil, err
	}
	if size > 1024 {
		return nil, nil, fmt.Errorf("kms: AWS generates data keys of at most 1024 bytes, not %d", size)
	}
	out, err := a.client.GenerateDataKey(ctx, &awskms.GenerateDataKeyInput{
		KeyId: aws.String(a.arn), NumberOfBytes: aws.Int32(int32(size)), EncryptionContext: ec,
	})
	if err != nil {
		return nil, nil, awsError("kms: generate a data key with "+a.arn, err)
	}
	if len(out.Plaintext) != size || len(out.CiphertextBlob) == 0 {
		clear(out.Plaintext)
		return nil, nil, fmt.Errorf("kms: generate a data key with %s: AWS returned %d bytes, want %d", a.arn, len(out.Plaintext), size)
	}
	return out.Plaintext, out.CiphertextBlob, nil
}

// Encrypt wraps dataKey under the master key with ec.
func (a *AWS) Encrypt(ctx context.Context, dataKey []byte, ec EncryptionContext) ([]byte, error) {
	if err := checkDataKeySize(len(dataKey)); err != nil {
		return nil, err
	}
	out, err := a.client.Encrypt(ctx, &awskms.EncryptInput{KeyId: aws.String(a.arn), Plaintext: dataKey, EncryptionContext: ec})
	if err != nil {
		return nil, awsError("kms: wrap a data key with "+a.arn, err)
	}
	return out.CiphertextBlob, nil
}

// Decrypt unwraps a data key wrapped under the master key named keyID with
// ec. A keyID other than this key's ARN, and a wrapped key AWS finds under
// another key, are ErrWrongKey; one that fails authentication (altered,
// or another encryption context) is ErrTampered.
func (a *AWS) Decrypt(ctx context.Context, keyID string, wrapped []byte, ec EncryptionContext) ([]byte, error) {
	if keyID != a.arn {
		return nil, fmt.Errorf("%w: it names key %q but the AWS KMS key is %q", ErrWrongKey, keyID, a.arn)
	}
	out, err := a.client.Decrypt(ctx, &awskms.DecryptInput{KeyId: aws.String(a.arn), CiphertextBlob: wrapped, EncryptionContext: ec})
	var invalid *types.InvalidCiphertextException
	var incorrect *types.IncorrectKeyException
	switch {
	case errors.As(err, &invalid):
		return nil, fmt.Errorf("%w: %s", ErrTampered, awsx.Reason(err))
	case errors.As(err, &incorrect):
		return nil, fmt.Errorf("%w: %s", ErrWrongKey, awsx.Reason(err))
	case err != nil:
		return nil, awsError("kms: unwrap a data key with "+a.arn, err)
	}
	if out.KeyId == nil || *out.KeyId != a.arn {
		clear(out.Plaintext)
		return nil, fmt.Errorf("%w: AWS unwrapped it with key %q, not %q", ErrWrongKey, aws.ToString(out.KeyId), a.arn)
	}
	return out.Plaintext, nil
}

// reasonError reads as the AWS reason ("AccessDeniedException: …") after
// what was being done, and still wraps the cause (a cancelled context).
type reasonError struct {
	msg string
	err error
}

func (e *reasonError) Error() string { return e.msg }
func (e *reasonError) Unwrap() error { return e.err }

func awsError(doing string, err error) error {
	return &reasonError{msg: doing + ": " + awsx.Reason(err), err: err}
}
