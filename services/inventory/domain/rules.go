// Package domain holds the inventory's rules: which values a network, template
// or instance may hold, and which lifecycle states allow which changes. It has
// no I/O; the app layer calls it before anything is written.
package domain

import (
	"fmt"

	"net/mail"
	"net/url"
	"path"
	"regexp"
	"strings"
	"time"
	"unicode/utf8"

	"google.golang.org/protobuf/types/known/durationpb"

	inventoryv1 "flotilla.dev/flotilla/api/gen/flotilla/inventory/v1"
	"flotilla.dev/flotilla/api/vocab"
	"flotilla.dev/flotilla/libs/apierr"
	"flotilla.dev/flotilla/libs/bus"
	"flotilla.dev/flotilla/libs/pki"
)

// Limits on resource fields.
const (
	MinDataDiskGB   = 1
	MaxDataDiskGB   = 16384
	MaxSetupActions = 100
	MaxTags         = 50
	MaxSANs         = 100
)

var (
	nameRE     = regexp.MustCompile(`^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$`)
	envNameRE  = regexp.MustCompile(`^[A-Za-z_][A-Za-z0-9_]*$`)
	modeRE     = regexp.MustCompile(`^0?[0-7]{3}$`)
	packageRE  = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9.+_:=~-]*$`)
	dnsLabelRE = regexp.MustCompile(`^(\*\.)?([A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?\.)*[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?$`)
	vpcRE      = regexp.MustCompile(`^vpc-[0-9a-f]{8,17}$`)
	subnetRE   = regexp.MustCompile(`^subnet-[0-9a-f]{8,17}$`)
	sgRE       = regexp.MustCompile(`^sg-[0-9a-f]{8,17}$`)
	regionRE   = regexp.MustCompile(`^[a-z]{2}(-[a-z]+)+-\d$`)
)

func oneOf[T ~string](field, v string, allowed []T) error {
	words := make([]string, len(allowed))
	for i, a := range allowed {
		if string(a) == v {
			return nil
		}
		words[i] = string(a)
	}
	if v == "" {
		return apierr.Invalid(field, "is required (one of %s)", strings.Join(words, ", "))
	}
	return apierr.Invalid(field, "%q is not one of %s", v, strings.Join(words, ", "))
}

// Bounds of an instance list's search.
const (
	MaxInstanceQuery = 200
	MaxInstanceSkip  = 1_000_000
)

// ValidateInstanceList checks a list of instances' filters, order and skip.
func ValidateInstanceList(r *inventoryv1.ListInstancesRequest) error {
	if v := r.GetState(); v != "" {
		if err := oneOf("state", v, vocab.States); err != nil {
			return err
		}
	}
	if v := r.GetKind(); v != "" {
		if err := oneOf("kind", v, vocab.InstanceKinds); err != nil {
			return err
		}
	}
	if v := r.GetNetworkId(); v != "" {
		if err := apierr.CheckID("networkId", v); err != nil {
			return err
		}
	}
	if v := r.GetTemplateId(); v != "" {
		if err := apierr.CheckID("templateId", v); err != nil {
			return err
		}
	}
	if n := utf8.RuneCountInString(strings.TrimSpace(r.GetQuery())); n > MaxInstanceQuery {
		return apierr.Invalid("query", "is %d characters long; at most %d are allowed", n, MaxInstanceQuery)
	}
	if v := r.GetOrderBy(); v != "" && v != "name" {
		return apierr.Invalid("orderBy", "%q is not an order: use \"name\", or leave it out for the oldest first", v)
	}
	if v := r.GetSkip(); v < 0 || v > MaxInstanceSkip {
		return apierr.Invalid("skip", "%d is out of range: must be between 0 and %d", v, MaxInstanceSkip)
	}
	return nil
}

// ValidateName checks a resource name.
func ValidateName(field, name string) error {
	if name == "" {
		return apierr.Invalid(field, "is required")
	}
	if !nameRE.MatchString(name) {
		return apierr.Invalid(field, "%q must be 1-63 lowercase letters, digits or '-', starting and ending with a letter or digit", name)
	}
	return nil
}

// ValidateNetwork checks every field of a network.
func ValidateNetwork(n *inventoryv1.Network) error {
	if err := ValidateName("name", n.GetName()); err != nil {
		return err
	}
	if err := oneOf("provider", n.GetProvider(), vocab.Providers); err != nil {
		return err
	}
	if err := oneOf("httpsStrategy", n.GetHttpsStrategy(), vocab.HTTPSStrategies); err != nil {
		return err
	}
	strategy := vocab.HTTPSStrategy(n.GetHttpsStrategy())
	if cc := NetworkCertificate(n); !cc.Empty() {
		if strategy != vocab.HTTPSCustomCertificate {
			return apierr.Invalid("customCertificate", "is only allowed with httpsStrategy %q", vocab.HTTPSCustomCertificate)
		}
		if err := cc.Validate(nil, time.Now()); err != nil {
			return err
		}
	}
	if strategy == vocab.HTTPSACME {
		email := n.GetAcme().GetContactEmail()
		if email == "" {
			return apierr.Invalid("acme.contactEmail", "is required with httpsStrategy %q", vocab.HTTPSACME)
		}
		if a, err := mail.ParseAddress(email); err != nil || a.Address != email {
			return apierr.Invalid("acme.contactEmail", "%q is not an e-mail address", email)
		}
		if err := validateACME(n.GetAcme()); err != nil {
			return err
		}
	} else if a := n.GetAcme(); a.GetContactEmail() != "" || a.GetDirectoryUrl() != "" || a.GetHttpPort() != 0 || a.GetDirectoryCaPem() != "" ||
		a.GetChallenge() != "" || len(a.GetDnsResolvers()) > 0 {
		return apierr.Invalid("acme", "is only allowed with httpsStrategy %q", vocab.HTTPSACME)
	}
	if aws := n.GetAws(); aws != nil {
		if vocab.Provider(n.GetProvider()) != vocab.ProviderAWS {
			return apierr.Invalid("aws", "is only allowed with provider %q", vocab.ProviderAWS)
		}
		if err := match("aws.vpcId", aws.GetVpcId(), vpcRE, "vpc-<hex>"); err != nil {
			return err
		}
		if err := match("aws.subnetId", aws.GetSubnetId(), subnetRE, "subnet-<hex>"); err != nil {
			return err
		}
		for i, sg := range aws.GetSecurityGroupIds() {
			if err := match(fmt.Sprintf("aws.securityGroupIds[%d]", i), sg, sgRE, "sg-<hex>"); err != nil {
				return err
			}
		}
		if err := match("aws.region", aws.GetRegion(), regionRE, "a region such as eu-west-1"); err != nil {
			return err
		}
	}
	if vocab.Provider(n.GetProvider()) != vocab.ProviderAWS {
		// Only the aws driver gives public addresses and writes Route53
		// records: on another network they would be accepted and do
		// nothing. (A host-name pattern names instances everywhere: their
		// certificates' names, ACME's domains.)
		if n.GetAssignPublicIp() {
			return apierr.Invalid("assignPublicIp", "is only allowed with provider %q (a %s network's instances get no public address)", vocab.ProviderAWS, n.GetProvider())
		}
		if n.GetDns().GetPrivateZoneId() != "" {
			return apierr.Invalid("dns.privateZoneId", "is only allowed with provider %q (a Route53 zone)", vocab.ProviderAWS)
		}
		if n.GetDns().GetPublicZoneId() != "" {
			return apierr.Invalid("dns.publicZoneId", "is only allowed with provider %q (a Route53 zone)", vocab.ProviderAWS)
		}
	}
	if vocab.Provider(n.GetProvider()) == vocab.ProviderAWS && n.GetAws().GetSubnetId() == "" {
		return apierr.Invalid("aws.subnetId", "is required with provider %q", vocab.ProviderAWS)
	}
	switch {
	case vocab.Provider(n.GetProvider()) == vocab.ProviderAWS && n.GetCloudAccountId() == "":
		return apierr.Invalid("cloudAccountId", "is required with provider %q: the cloud account instances are launched with", vocab.ProviderAWS)
	case vocab.Provider(n.GetProvider()) != vocab.ProviderAWS && n.GetCloudAccountId() != "":
		return apierr.Invalid("cloudAccountId", "is only allowed with provider %q", vocab.ProviderAWS)
	}
	if p := n.GetDns().GetHostnamePattern(); p != "" {
		if !strings.Contains(p, "{name}") && !strings.Contains(p, "{id}") {
			return apierr.Invalid("dns.hostnamePattern", "must contain {name} or {id}")
		}
		probe := strings.NewReplacer("{name}", "x", "{id}", "x").Replace(p)
		if !dnsLabelRE.MatchString(probe) || len(probe) > 253 {
			return apierr.Invalid("dns.hostnamePattern", "%q does not form a valid DNS name", p)
		}
	}
	if strategy == vocab.HTTPSACME {
		return validateACMEChallenge(n)
	}
	return nil
}

// cloudProviders are the providers a cloud account may be of.
var cloudProviders = []vocab.Provider{vocab.ProviderAWS}

var (
	accessKeyRE = regexp.MustCompile(`^[A-Z0-9]{16,128}$`)
	roleARNRE   = regexp.MustCompile(`^arn:aws[a-z-]*:iam::\d{12}:role/[\w+=,.@/-]{1,512}$`)
)

// ValidateCloudAccount checks every field of a cloud account. keyStored
// says whether a secret access key is given or already kept for it.
func ValidateCloudAccount(a *inventoryv1.CloudAccount, keyStored bool) error {
	if err := ValidateName("name", a.GetName()); err != nil {
		return err
	}
	if err := oneOf("provider", a.GetProvider(), cloudProviders); err != nil {
		return err
	}
	aws := a.GetAws()
	if aws == nil {
		return apierr.Invalid("aws", "is required with provider %q (region, and how to sign in)", vocab.ProviderAWS)
	}
	if aws.GetRegion() == "" {
		return apierr.Invalid("aws.region", "is required")
	}
	if err := match("aws.region", aws.GetRegion(), regionRE, "a region such as eu-west-1"); err != nil {
		return err
	}
	if u := aws.GetEndpointUrl(); u != "" {
		p, err := url.Parse(u)
		if err != nil || (p.Scheme != "http" && p.Scheme != "https") || p.Host == "" || p.User != nil {
			return apierr.Invalid("aws.endpointUrl", "%q is not an http or https URL without credentials", u)
		}
	}
	c := aws.GetCredentials()
	if err := match("aws.credentials.accessKeyId", c.GetAccessKeyId(), accessKeyRE, "an access key id (16-128 capital letters and digits)"); err != nil {
		return err
	}
	switch {
	case c.GetAccessKeyId() != "" && !keyStored:
		return apierr.Invalid("aws.credentials.secretAccessKey", "is required with accessKeyId")
	case c.GetAccessKeyId() == "" && c.GetSecretAccessKey() != "":
		return apierr.Invalid("aws.credentials.accessKeyId", "is required with secretAccessKey")
	}
	if err := match("aws.credentials.roleArn", c.GetRoleArn(), roleARNRE, "arn:aws:iam::<12-digit account>:role/<name>"); err != nil {
		return err
	}
	if c.GetExternalId() != "" && c.GetRoleArn() == "" {
		return apierr.Invalid("aws.credentials.externalId", "is only used with roleArn")
	}
	if len(c.GetExternalId()) > 1224 {
		return apierr.Invalid("aws.credentials.externalId", "is longer than 1224 characters")
	}
	return nil
}

func match(field, v string, re *regexp.Regexp, want string) error {
	if v != "" && !re.MatchString(v) {
		return apierr.Invalid(field, "%q must look like %s", v, want)
	}
	return nil
}

// ValidateTemplate checks every field of a template.
func ValidateTemplate(t *inventoryv1.Template) error {
	if err := ValidateName("name", t.GetName()); err != nil {
		return err
	}
	if err := oneOf("provider", t.GetProvider(), vocab.Providers); err != nil {
		return err
	}
	if vocab.Provider(t.GetProvider()) == vocab.ProviderAWS {
		if t.GetImage() == "" {
			return apierr.Invalid("image", "is required with provider %q", vocab.ProviderAWS)
		}
		if t.GetInstanceType() == "" {
			return apierr.Invalid("instanceType", "is required with provider %q", vocab.ProviderAWS)
		}
	}
	if d := t.GetDataDiskGb(); d < MinDataDiskGB || d > MaxDataDiskGB {
		return apierr.Invalid("dataDiskGb", "%d is out of range: must be between %d and %d", d, MinDataDiskGB, MaxDataDiskGB)
	}
	if len(t.GetSetupActions()) > MaxSetupActions {
		return apierr.Invalid("setupActions", "at most %d actions", MaxSetupActions)
	}
	for i, a := range t.GetSetupActions() {
		if err := validateAction(fmt.Sprintf("setupActions[%d]", i), a); err != nil {
			return err
		}
	}
	if len(t.GetTags()) > MaxTags {
		return apierr.Invalid("tags", "at most %d tags", MaxTags)
	}
	for k, v := range t.GetTags() {
		if k == "" || len(k) > 128 {
			return apierr.Invalid("tags", "key %q must be 1-128 characters", k)
		}
		if len(v) > 256 {
			return apierr.Invalid("tags."+k, "must be at most 256 characters")
		}
	}
	return nil
}

func validateAction(field string, a *inventoryv1.SetupAction) error {
	if err := oneOf(field+".type", a.GetType(), vocab.SetupActions); err != nil {
		return err
	}
	used := map[string]bool{
		"script": a.GetScript() != "", "path": a.GetPath() != "", "content": a.GetContent() != "",
		"mode": a.GetMode() != "", "name": a.GetName() != "", "value": a.GetValue() != "",
		"packages": len(a.GetPackages()) > 0,
	}
	typ := vocab.SetupAction(a.GetType())
	allowed := map[vocab.SetupAction][]string{
		vocab.SetupScript:   {"script"},
		vocab.SetupFile:     {"path", "content", "mode"},
		vocab.SetupEnv:      {"name", "value"},
		vocab.SetupPackages: {"packages"},
	}[typ]
	for f, set := range used {
		if set && !contains(allowed, f) {
			return apierr.Invalid(field+"."+f, "is not used by a %q action", a.GetType())
		}
	}
	switch typ {
	case vocab.SetupScript:
		if strings.TrimSpace(a.GetScript()) == "" {
			return apierr.Invalid(field+".script", "is required for a script action")
		}
	case vocab.SetupFile:
		p := a.GetPath()
		if p == "" {
			return apierr.Invalid(field+".path", "is required for a file action")
		}
		if path.IsAbs(p) || path.Clean(p) != p || strings.HasPrefix(p, "../") || p == ".." || p == "." {
			return apierr.Invalid(field+".path", "%q must be a clean path relative to the data disk, without '..'", p)
		}
		if m := a.GetMode(); m != "" && !modeRE.MatchString(m) {
			return apierr.Invalid(field+".mode", "%q must be an octal file mode such as 0644", m)
		}
	case vocab.SetupEnv:
		if !envNameRE.MatchString(a.GetName()) {
			return apierr.Invalid(field+".name", "%q must be a shell variable name ([A-Za-z_][A-Za-z0-9_]*)", a.GetName())
		}
	case vocab.SetupPackages:
		if len(a.GetPackages()) == 0 {
			return apierr.Invalid(field+".packages", "is required for a packages action")
		}
		for j, p := range a.GetPackages() {
			if !packageRE.MatchString(p) {
				return apierr.Invalid(fmt.Sprintf("%s.packages[%d]", field, j), "%q is not a package name", p)
			}
		}
	}
	return nil
}

func contains(list []string, v string) bool {
	for _, s := range list {
		if s == v {
			return true
		}
	}
	return false
}

// ValidateInstance checks the fields of an instance that need no lookups; the
// app checks that its template and network exist and agree. reserved are
// the agent gateway's names, which no instance's ssl.sans may hold.
func ValidateInstance(in *inventoryv1.Instance, reserved []string) error {
	if err := ValidateName("name", in.GetName()); err != nil {
		return err
	}
	if err := oneOf("kind", in.GetKind(), vocab.InstanceKinds); err != nil {
		return err
	}
	if in.GetTemplateId() == "" {
		return apierr.Invalid("templateId", "is required")
	}
	if in.GetNetworkId() == "" {
		return apierr.Invalid("networkId", "is required")
	}
	ssl := in.GetSsl()
	if len(ssl.GetSans()) > MaxSANs {
		return apierr.Invalid("ssl.sans", "at most %d names", MaxSANs)
	}
	for i, san := range ssl.GetSans() {
		if _, _, err := pki.CheckInstanceName(san, reserved); err != nil {
			return apierr.Invalid(fmt.Sprintf("ssl.sans[%d]", i), "%s", err)
		}
	}
	for i, d := range ssl.GetDomains() {
		if !dnsLabelRE.MatchString(d) || len(d) > 253 {
			return apierr.Invalid(fmt.Sprintf("ssl.domains[%d]", i), "%q is not a DNS name", d)
		}
	}
	return validateLogRetention(in.GetLogRetention())
}

// validateLogRetention checks an instance's log retention against the
// agent-log stream's ceiling; zero values mean the defaults.
func validateLogRetention(r *inventoryv1.LogRetention) error {
	if n := r.GetMaxLines(); n < 0 || n > bus.AgentLogMaxLines {
		return apierr.Invalid("logRetention.maxLines", "%d is out of range: must be between 1 and %d (0 means %d)",
			n, bus.AgentLogMaxLines, bus.AgentLogDefaultLines)
	}
	if a := r.GetMaxAge(); a != nil {
		d := a.AsDuration()
		if err := a.CheckValid(); err != nil || (d != 0 && (d < bus.AgentLogMinAge || d > bus.AgentLogMaxAge)) {
			return apierr.Invalid("logRetention.maxAge", "%s is out of range: must be between %s and %s (%d days); 0 means %s",
				d, bus.AgentLogMinAge, bus.AgentLogMaxAge, int(bus.AgentLogMaxAge.Hours()/24), bus.AgentLogDefaultAge)
		}
	}
	return nil
}

// FillLogRetention sets the unset fields of an instance's log retention to
// the defaults, so the instance shows what applies.
func FillLogRetention(in *inventoryv1.Instance) {
	lines, age := bus.AgentLogRetention(in.GetLogRetention())
	in.LogRetention = &inventoryv1.LogRetention{MaxLines: int32(lines), MaxAge: durationpb.New(age)}
}

// ValidatePlacement checks that an instance's template and network fit together
// and that the instance's SSL settings suit the network's HTTPS strategy.
func ValidatePlacement(in *inventoryv1.Instance, t *inventoryv1.Template, n *inventoryv1.Network) error {
	if t.GetProvider() != n.GetProvider() {
		return apierr.Invalid("templateId", "template %q is for provider %q but network %q is for provider %q",
			t.GetName(), t.GetProvider(), n.GetName(), n.GetProvider())
	}
	return ValidateSSL(in, n)
}

// ValidateSSL checks that an instance's SSL settings suit its network's
// HTTPS strategy (and its certificate, names).
func ValidateSSL(in *inventoryv1.Instance, n *inventoryv1.Network) error {
	ssl := in.GetSsl()
	custom := !InstanceCertificate(in).Empty()
	switch vocab.HTTPSStrategy(n.GetHttpsStrategy()) {
	case vocab.HTTPSNone:
		if len(ssl.GetSans())+len(ssl.GetDomains()) > 0 || custom {
			return apierr.Invalid("ssl", "network %q uses httpsStrategy %q: no SSL settings apply", n.GetName(), vocab.HTTPSNone)
		}
	case vocab.HTTPSSelfSigned:
		if len(ssl.GetDomains()) > 0 || custom {
			return apierr.Invalid("ssl", "network %q uses httpsStrategy %q: only ssl.sans applies", n.GetName(), vocab.HTTPSSelfSigned)
		}
	case vocab.HTTPSCustomCertificate:
		return validateInstanceCertificate(in, n, time.Now())
	case vocab.HTTPSACME:
		if custom || len(ssl.GetSans()) > 0 {
			return apierr.Invalid("ssl", "network %q uses httpsStrategy %q: only ssl.domains applies", n.GetName(), vocab.HTTPSACME)
		}
		return validateACMEDomains(in, n)
	}
	return nil
}
