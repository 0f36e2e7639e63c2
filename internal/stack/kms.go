package stack

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"maps"
	"slices"
	"strings"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"go.opentelemetry.io/otel/trace/noop"

	inventoryv1 "flotilla.dev/flotilla/api/gen/flotilla/inventory/v1"
	"flotilla.dev/flotilla/api/subjects"
	"flotilla.dev/flotilla/libs/apierr"
	"flotilla.dev/flotilla/libs/awsx"
	"flotilla.dev/flotilla/libs/datadir"
	"flotilla.dev/flotilla/libs/kms"
	"flotilla.dev/flotilla/libs/pgstore"
	inventoryapp "flotilla.dev/flotilla/services/inventory/app"
	"flotilla.dev/flotilla/services/secrets"
)

// The KMS providers that wrap secrets' data keys (FLOTILLA_KMS_PROVIDER,
// the settings' kms.provider).
const (
	KMSProviderLocal = "local"
	KMSProviderAWS   = "aws"
)

// AWSKMS is an AWS KMS key that wraps the secrets' data keys.
type AWSKMS struct {
	// Account is where the key is: its region, an optional endpoint, and
	// the credentials (the host's default chain, or a role to assume).
	Account awsx.Account
	// CloudAccountID, when set, names the cloud account whose region,
	// endpoint and role Account takes (resolveAccount). Its credentials must
	// not be static keys: the secret broker keeps those sealed under this
	// very key.
	CloudAccountID string
	// KeyID is the key's id, ARN, or alias ("alias/flotilla-secrets").
	KeyID string
	// Actions records the AWS actions called (tests; nil: none).
	Actions *awsx.Actions
}

// validate names the first setting of each broken rule, prefixed.
func (a *AWSKMS) validate(prefix string) error {
	var errs []error
	if a.KeyID == "" {
		errs = append(errs, fmt.Errorf("%sKeyID: is required", prefix))
	}
	if a.CloudAccountID == "" {
		if err := a.Account.Validate(); err != nil {
			errs = append(errs, fmt.Errorf("%sAccount: %w", prefix, err))
		}
	}
	return errors.Join(errs...)
}

// resolveAccount fills Account in from the cloud account CloudAccountID
// names, read from the inventory's table in the database q reaches (the
// secret broker starts before the inventory answers on the bus). Nothing
// is done without CloudAccountID.
func (a *AWSKMS) resolveAccount(ctx context.Context, q pgstore.Querier, field string) error {
	if a == nil || a.CloudAccountID == "" {
		return nil
	}
	var acc inventoryv1.CloudAccount
	if err := inventoryapp.CloudAccountTable.Get(ctx, q, a.CloudAccountID, "", &acc); err != nil {
		if apierr.Is(err, apierr.KindNotFound) {
			return fmt.Errorf("%s: no cloud account has id %q", field, a.CloudAccountID)
		}
		return fmt.Errorf("%s: read cloud account %q: %w", field, a.CloudAccountID, err)
	}
	s, c := acc.GetAws(), acc.GetAws().GetCredentials()
	switch {
	case acc.GetProvider() != KMSProviderAWS:
		return fmt.Errorf("%s: cloud account %q is of provider %q, not aws", field, acc.GetName(), acc.GetProvider())
	case c.GetAccessKeyId() != "":
		return fmt.Errorf("%s: cloud account %q signs in with static keys, which the secret broker keeps sealed under this KMS key: "+
			"give the KMS an account that uses the host's credentials or a role (roleArn)", field, acc.GetName())
	}
	a.Account = awsx.Account{Region: s.GetRegion(), EndpointURL: s.GetEndpointUrl(), RoleARN: c.GetRoleArn(), ExternalID: c.GetExternalId()}
	return nil
}

// OpenKMS opens what wraps the secrets' data keys, as the secret broker
// does. With KMSAWS it is that AWS key, which also unwraps with the local
// master key in KMSKeyFile when one is given (the previous key, read only:
// keep it until `flotilla admin rewrap-secrets` reports none remaining; a
// missing file is skipped when CreateKMSKey is set, as in `flotilla up`).
// Otherwise it is the local master key in KMSKeyFile, created when missing
// if CreateKMSKey is set.
func (c *Config) OpenKMS(ctx context.Context) (kms.KMS, error) {
	if c.KMSAWS == nil {
		if c.CreateKMSKey {
			return kms.OpenLocal(c.KMSKeyFile)
		}
		return kms.LoadLocal(c.KMSKeyFile)
	}
	var opts []awsx.Option
	if c.KMSAWS.Actions != nil {
		opts = append(opts, awsx.WithActions(c.KMSAWS.Actions))
	}
	current, err := kms.OpenAWS(ctx, c.KMSAWS.Account, c.KMSAWS.KeyID, opts...)
	if err != nil {
		return nil, err
	}
	var previous []kms.KMS
	if c.KMSKeyFile != "" {
		l, err := kms.LoadLocal(c.KMSKeyFile)
		switch {
		case err == nil:
			previous = append(previous, l)
		case c.CreateKMSKey && errors.Is(err, fs.ErrNotExist):
			// No local key was ever made: nothing to read with it.
		default:
			return nil, fmt.Errorf("the previous local master key: %w", err)
		}
	}
	return kms.NewKeyring(current, previous...), nil
}

// validateKMS validates the KMS settings of the environment, naming the
// variables.
func (c EnvConfig) validateKMS() error {
	var errs []error
	awsVars := map[string]string{
		"FLOTILLA_KMS_AWS_KEY_ID": c.KMSAWSKeyID, "FLOTILLA_KMS_AWS_REGION": c.KMSAWSRegion,
		"FLOTILLA_KMS_AWS_ENDPOINT_URL": c.KMSAWSEndpointURL, "FLOTILLA_KMS_AWS_ROLE_ARN": c.KMSAWSRoleARN,
		"FLOTILLA_KMS_AWS_CLOUD_ACCOUNT_ID": c.KMSAWSCloudAccountID,
	}
	switch c.KMSProvider {
	case KMSProviderLocal:
		if c.KMSKeyFile == "" {
			errs = append(errs, errors.New("FLOTILLA_KMS_KEY_FILE: is required by this service with FLOTILLA_KMS_PROVIDER=local (the master key file every manager shares)"))
		}
		for _, name := range slices.Sorted(maps.Keys(awsVars)) {
			if awsVars[name] != "" {
				errs = append(errs, fmt.Errorf("%s: is set, but FLOTILLA_KMS_PROVIDER is local: set FLOTILLA_KMS_PROVIDER=aws, or unset it", name))
			}
		}
	case KMSProviderAWS:
		if c.KMSAWSKeyID == "" {
			errs = append(errs, errors.New("FLOTILLA_KMS_AWS_KEY_ID: is required with FLOTILLA_KMS_PROVIDER=aws (a key id, key ARN or alias/NAME)"))
		}
		if c.KMSAWSCloudAccountID != "" {
			for _, name := range []string{"FLOTILLA_KMS_AWS_REGION", "FLOTILLA_KMS_AWS_ENDPOINT_URL", "FLOTILLA_KMS_AWS_ROLE_ARN"} {
				if awsVars[name] != "" {
					errs = append(errs, fmt.Errorf("%s: comes from the cloud account FLOTILLA_KMS_AWS_CLOUD_ACCOUNT_ID names: unset it", name))
				}
			}
		} else if c.KMSAWSRegion == "" {
			errs = append(errs, errors.New("FLOTILLA_KMS_AWS_REGION: is required with FLOTILLA_KMS_PROVIDER=aws (or FLOTILLA_KMS_AWS_CLOUD_ACCOUNT_ID)"))
		}
		if c.KMSAWSEndpointURL != "" {
			if err := checkHTTPURL(c.KMSAWSEndpointURL); err != nil {
				errs = append(errs, fmt.Errorf("FLOTILLA_KMS_AWS_ENDPOINT_URL: %w", err))
			}
		}
		if c.KMSAWSRoleARN != "" && !strings.HasPrefix(c.KMSAWSRoleARN, "arn:") {
			errs = append(errs, fmt.Errorf("FLOTILLA_KMS_AWS_ROLE_ARN: %q is not a role ARN (arn:aws:iam::ACCOUNT:role/NAME)", c.KMSAWSRoleARN))
		}
	default:
		errs = append(errs, fmt.Errorf("FLOTILLA_KMS_PROVIDER: %q is not %s or %s", c.KMSProvider, KMSProviderLocal, KMSProviderAWS))
	}
	return errors.Join(errs...)
}

// kmsAWS is the AWS key the environment configures; nil for the local one.
func (c EnvConfig) kmsAWS() *AWSKMS {
	if c.KMSProvider != KMSProviderAWS {
		return nil
	}
	return &AWSKMS{KeyID: c.KMSAWSKeyID, CloudAccountID: c.KMSAWSCloudAccountID, Account: awsx.Account{
		Region: c.KMSAWSRegion, EndpointURL: c.KMSAWSEndpointURL, RoleARN: c.KMSAWSRoleARN,
	}}
}

// RewrapSecretsFromEnv rewraps every secret's data key under the KMS key the
// secret broker's environment configures (FLOTILLA_DATABASE_URL,
// FLOTILLA_KMS_*; environ nil: the process's environment), unwrapping with
// the previous local key FLOTILLA_KMS_KEY_FILE where one is given. It
// returns the report and the id of the key data keys are now wrapped under.
func RewrapSecretsFromEnv(ctx context.Context, environ map[string]string, o secrets.RewrapOptions) (secrets.RewrapReport, string, error) {
	ec, err := LoadEnvConfig(subjects.Secrets, environ, nil)
	if err != nil {
		return secrets.RewrapReport{}, "", err
	}
	var errs []error
	if ec.DatabaseURL == "" {
		errs = append(errs, errors.New("FLOTILLA_DATABASE_URL: is required"))
	}
	errs = append(errs, ec.validateKMS())
	if err := errors.Join(errs...); err != nil {
		return secrets.RewrapReport{}, "", err
	}
	cfg := ec.Config(subjects.Secrets)
	pool, err := pgstore.Open(ctx, ec.DatabaseURL, noop.NewTracerProvider(), 30*time.Second, 2)
	if err != nil {
		return secrets.RewrapReport{}, "", err
	}
	defer pool.Close()
	return rewrap(ctx, pool, &cfg, o)
}

// RewrapSecretsInDataDir rewraps every secret's data key of the data
// directory's database under the KMS key its settings choose (see
// EmbeddedKMSConfig), whether or not `flotilla up` is running.
func RewrapSecretsInDataDir(ctx context.Context, dataDir string, ov datadir.Overrides, o secrets.RewrapOptions) (rep secrets.RewrapReport, keyID string, err error) {
	err = withDatabase(ctx, dataDir, ov, func(ctx context.Context, s *datadir.Settings, pool *pgxpool.Pool) error {
		cfg := EmbeddedKMSConfig(s, datadir.Dir(dataDir))
		rep, keyID, err = rewrap(ctx, pool, &cfg, o)
		return err
	})
	return rep, keyID, err
}

func rewrap(ctx context.Context, pool *pgxpool.Pool, cfg *Config, o secrets.RewrapOptions) (secrets.RewrapReport, string, error) {
	if err := cfg.KMSAWS.resolveAccount(ctx, pool, "kms.cloudAccountId"); err != nil {
		return secrets.RewrapReport{}, "", err
	}
	k, err := cfg.OpenKMS(ctx)
	if err != nil {
		return secrets.RewrapReport{}, "", err
	}
	rep, err := secrets.Rewrap(ctx, pool, k, o)
	return rep, k.KeyID(), err
}
