// Package awsx builds the AWS SDK configuration of a cloud account — its
// region, an optional endpoint (a private endpoint, or a test server), and
// how it signs in: static keys, the manager host's default credential
// chain, or a role assumed through STS — and turns AWS errors into the
// reasons Flotilla reports ("InvalidAMIID.NotFound: …"). Every AWS caller
// (the aws driver, AWS KMS, Secrets Manager references) builds its clients
// from Config, so they all sign in, retry and record their actions alike.
package awsx

import (
	"context"
	"errors"
	"fmt"
	"net/url"
	"strings"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/aws/retry"
	"github.com/aws/aws-sdk-go-v2/config"
	"github.com/aws/aws-sdk-go-v2/credentials"
	"github.com/aws/aws-sdk-go-v2/credentials/stscreds"
	"github.com/aws/aws-sdk-go-v2/service/sts"
	"github.com/aws/smithy-go"
)

// Account is how Flotilla reaches one AWS account. With no keys and no
// role it uses the default credential chain of the manager's host
// (environment, shared files, instance profile).
type Account struct {
	Region string
	// EndpointURL replaces every service's endpoint ("" = AWS's own).
	EndpointURL string
	// Static keys (SessionToken optional).
	AccessKeyID, SecretAccessKey, SessionToken string
	// RoleARN, with the optional ExternalID, is assumed through STS with the
	// credentials above (or the default chain).
	RoleARN, ExternalID string
}

// Validate names the first field that breaks a rule, as the API does.
func (a Account) Validate() error {
	var errs []error
	if a.Region == "" {
		errs = append(errs, errors.New("region: is required"))
	}
	if a.EndpointURL != "" {
		u, err := url.Parse(a.EndpointURL)
		if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
			errs = append(errs, fmt.Errorf("endpointUrl: %q is not an http or https URL", a.EndpointURL))
		}
	}
	if (a.AccessKeyID == "") != (a.SecretAccessKey == "") {
		errs = append(errs, errors.New("credentials: give both accessKeyId and secretAccessKey, or neither"))
	}
	if a.SessionToken != "" && a.AccessKeyID == "" {
		errs = append(errs, errors.New("credentials.sessionToken: needs accessKeyId and secretAccessKey"))
	}
	if a.ExternalID != "" && a.RoleARN == "" {
		errs = append(errs, errors.New("credentials.externalId: needs roleArn"))
	}
	if a.RoleARN != "" && !strings.HasPrefix(a.RoleARN, "arn:") {
		errs = append(errs, fmt.Errorf("credentials.roleArn: %q is not an ARN (arn:aws:iam::<account>:role/<name>)", a.RoleARN))
	}
	return errors.Join(errs...)
}

// Option adjusts the configuration Config builds.
type Option func(*aws.Config)

// WithActions records every AWS action called through the configuration
// (see Actions).
func WithActions(r *Actions) Option {
	return func(c *aws.Config) { c.APIOptions = append(c.APIOptions, r.middleware) }
}

// Config is the SDK configuration for the account: standard retries with
// backoff (throttling included), the account's endpoint and credentials.
// It reads no shared config files when the account has static keys, so a
// manager's ~/.aws never changes which account is used.
func Config(ctx context.Context, a Account, opts ...Option) (aws.Config, error) {
	if err := a.Validate(); err != nil {
		return aws.Config{}, err
	}
	load := []func(*config.LoadOptions) error{
		config.WithRegion(a.Region),
		config.WithRetryer(func() aws.Retryer {
			return retry.NewStandard(func(o *retry.StandardOptions) { o.MaxAttempts = 6 })
		}),
	}
	if a.EndpointURL != "" {
		load = append(load, config.WithBaseEndpoint(a.EndpointURL))
	}
	if a.AccessKeyID != "" {
		load = append(load, config.WithCredentialsProvider(
			credentials.NewStaticCredentialsProvider(a.AccessKeyID, a.SecretAccessKey, a.SessionToken)))
	}
	cfg, err := config.LoadDefaultConfig(ctx, load...)
	if err != nil {
		return aws.Config{}, fmt.Errorf("aws configuration: %w", err)
	}
	for _, o := range opts {
		o(&cfg)
	}
	if a.RoleARN != "" {
		provider := stscreds.NewAssumeRoleProvider(sts.NewFromConfig(cfg), a.RoleARN, func(o *stscreds.AssumeRoleOptions) {
			o.RoleSessionName = "flotilla"
			if a.ExternalID != "" {
				o.ExternalID = aws.String(a.ExternalID)
			}
		})
		cfg.Credentials = aws.NewCredentialsCache(provider)
	}
	return cfg, nil
}

// Reason is an AWS error as Flotilla reports it: "Code: message" for an
// error AWS answered (its code names what went wrong, e.g.
// "InsufficientInstanceCapacity"), the error's text otherwise.
func Reason(err error) string {
	if err == nil {
		return ""
	}
	var api smithy.APIError
	if errors.As(err, &api) {
		if msg := api.ErrorMessage(); msg != "" {
			return api.ErrorCode() + ": " + msg
		}
		return api.ErrorCode()
	}
	return err.Error()
}

// Code is the AWS error code of err ("" when AWS did not answer one).
func Code(err error) string {
	var api smithy.APIError
	if errors.As(err, &api) {
		return api.ErrorCode()
	}
	return ""
}
