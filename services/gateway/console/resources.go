package console

import (
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"strconv"
	"strings"

	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"

	inventoryv1 "flotilla.dev/flotilla/api/gen/flotilla/inventory/v1"
	"flotilla.dev/flotilla/api/vocab"
)

// resource is one kind of API resource the console creates and edits.
type resource struct {
	noun     string // "network"
	apiPath  string // "/api/v1/networks"
	listPath string // "/networks"
	// new is an empty record to decode the API's answer into.
	new func() proto.Message
	// sets builds the form's fields (they may need lists from the API).
	sets func(s *session) ([]*fieldset, error)
	// done is where the browser goes after a save.
	done func(rec proto.Message) string
	// actions: the form edits setup actions too.
	actions bool
	// createOnly records are made and removed, never edited (API tokens).
	createOnly bool
	// nameField names a record by its proto field ("" is "name").
	nameField string
	// remove is how a record goes: its confirmation and flash.
	remove removal
	// find reads one record ("": GET apiPath/{id}).
	find func(s *session, id string) (proto.Message, error)
	// saved, when set, shows what a save answered instead of going to
	// done (an API token, shown once).
	saved func(c *Console, w http.ResponseWriter, r *http.Request, s *session, rec proto.Message)
}

// removal is what removing a record is called and does.
type removal struct {
	verb, done string // "Delete", "deleted"
	does       string // what the confirmation says happens
}

// deletion is how networks, templates, users and cloud accounts go.
func deletion(does string) removal { return removal{verb: "Delete", done: "deleted", does: does} }

// nameOf is the name a record goes by.
func (res resource) nameOf(rec proto.Message) string {
	if res.nameField != "" {
		return fieldOf(rec, res.nameField)
	}
	return fieldOf(rec, "name")
}

// get reads the record id.
func (res resource) get(s *session, id string) (proto.Message, error) {
	if res.find != nil {
		return res.find(s, id)
	}
	rec := res.new()
	return rec, s.api.get(res.apiPath+"/"+url.PathEscape(id), rec)
}

func words[T ~string](ws []T) []option {
	out := make([]option, len(ws))
	for i, w := range ws {
		out[i] = option{Value: string(w), Label: string(w)}
	}
	return out
}

var networkResource = resource{
	noun: "network", apiPath: "/api/v1/networks", listPath: "/networks",
	new:    func() proto.Message { return &inventoryv1.Network{} },
	done:   func(proto.Message) string { return "/networks" },
	remove: deletion("The network is removed. It cannot be deleted while an instance uses it."),
	sets: func(s *session) ([]*fieldset, error) {
		accounts, err := listAll(s.api, "/api/v1/cloud-accounts", (*inventoryv1.ListCloudAccountsResponse).GetCloudAccounts)
		if err != nil {
			return nil, err
		}
		acc := []option{{Value: "", Label: "none (local and external networks)"}}
		for _, a := range accounts {
			acc = append(acc, option{Value: a.GetId(), Label: a.GetName() + " (" + a.GetProvider() + ")"})
		}
		return []*fieldset{
			{Legend: "Network", Fields: []*formField{
				{Path: "name", Label: "Name", Kind: kindText, Required: true, Help: "1-63 lowercase letters, digits and '-'."},
				{Path: "provider", Label: "Provider", Kind: kindSelect, Options: words(vocab.Providers), Required: true},
				{Path: "httpsStrategy", Label: "HTTPS strategy", Kind: kindSelect, Options: words(vocab.HTTPSStrategies), Required: true},
				{Path: "cloudAccountId", Label: "Cloud account", Kind: kindSelect, Options: acc, Help: "Required with provider aws."},
			}},
			{Legend: "AWS network", Path: "aws", Help: "Provider aws only.", When: "provider=aws", Fields: []*formField{
				{Path: "aws.subnetId", Label: "Subnet id", Kind: kindText, Help: "subnet-…"},
				{Path: "aws.vpcId", Label: "VPC id", Kind: kindText, Help: "vpc-…"},
				{Path: "aws.securityGroupIds", Label: "Security group ids", Kind: kindList, Help: "One per line; none: one is made that opens the node's port."},
				{Path: "aws.region", Label: "Region", Kind: kindText},
				{Path: "assignPublicIp", Label: "Assign public IP addresses", Kind: kindCheckbox},
				{Path: "dns.privateZoneId", Label: "Route53 private zone id", Kind: kindText, Help: "The VMs' names are written there."},
				{Path: "dns.publicZoneId", Label: "Route53 public zone id", Kind: kindText, Help: "Public addresses' names, and DNS-01's records."},
			}},
			{Legend: "DNS", Path: "dns", Fields: []*formField{
				{Path: "dns.hostnamePattern", Label: "Host-name pattern", Kind: kindText,
					Help: "e.g. {name}.fleet.example.com: the instances' names (their certificates, ACME's domains; on aws, Route53 records)."},
			}},
			{Legend: "ACME", Path: "acme", Help: "HTTPS strategy acme only.", When: "httpsStrategy=acme", Fields: []*formField{
				{Path: "acme.contactEmail", Label: "Contact e-mail", Kind: kindText},
				{Path: "acme.directoryUrl", Label: "Directory URL", Kind: kindText, Help: "Empty: Let's Encrypt."},
				{Path: "acme.httpPort", Label: "HTTP-01 port", Kind: kindNumber, Help: "Empty: 80."},
				{Path: "acme.directoryCaPem", Label: "Directory CA (PEM)", Kind: kindTextarea},
			}},
			{Legend: "Custom certificate", Path: "customCertificate", Help: "HTTPS strategy custom-certificate only.", When: "httpsStrategy=custom-certificate", Fields: []*formField{
				{Path: "customCertificate.certificatePem", Label: "Certificate chain (PEM)", Kind: kindTextarea},
				{Path: "customCertificate.privateKeyPem", Label: "Private key (PEM)", Kind: kindSecret, StoredPath: "customCertificate.privateKeyId",
					Help: "Write-only: kept encrypted, never shown again."},
				{Path: "customCertificate.privateKeyRef", Label: "…or AWS Secrets Manager secret id", Kind: kindText},
			}},
		}, nil
	},
}

var templateResource = resource{
	noun: "template", apiPath: "/api/v1/templates", listPath: "/templates", actions: true,
	new:    func() proto.Message { return &inventoryv1.Template{} },
	done:   func(proto.Message) string { return "/templates" },
	remove: deletion("The template is removed. It cannot be deleted while an instance uses it."),
	sets: func(*session) ([]*fieldset, error) {
		return []*fieldset{
			{Legend: "Template", Fields: []*formField{
				{Path: "name", Label: "Name", Kind: kindText, Required: true},
				{Path: "provider", Label: "Provider", Kind: kindSelect, Options: words(vocab.Providers), Required: true},
				{Path: "image", Label: "Image", Kind: kindText, Help: "AMI id (aws) or node software version (local)."},
				{Path: "instanceType", Label: "Instance type", Kind: kindText, Help: "e.g. m6i.large (aws)."},
				{Path: "dataDiskGb", Label: "Data disk (GiB)", Kind: kindNumber, Required: true},
				{Path: "instanceProfile", Label: "Runtime instance profile", Kind: kindText},
				{Path: "sshKeyName", Label: "SSH key name", Kind: kindText},
				{Path: "tags", Label: "Tags", Kind: kindTags, Help: "key=value, one per line."},
			}},
		}, nil
	},
}

var instanceResource = resource{
	noun: "instance", apiPath: "/api/v1/instances", listPath: "/instances",
	new:  func() proto.Message { return &inventoryv1.Instance{} },
	done: func(rec proto.Message) string { return "/instances/" + rec.(*inventoryv1.Instance).GetId() },
	sets: func(s *session) ([]*fieldset, error) {
		tpls, err := listAll(s.api, "/api/v1/templates", (*inventoryv1.ListTemplatesResponse).GetTemplates)
		if err != nil {
			return nil, err
		}
		nets, err := listAll(s.api, "/api/v1/networks", (*inventoryv1.ListNetworksResponse).GetNetworks)
		if err != nil {
			return nil, err
		}
		to := []option{{Value: "", Label: "choose a template"}}
		for _, t := range tpls {
			to = append(to, option{Value: t.GetId(), Label: t.GetName() + " (" + t.GetProvider() + ")"})
		}
		no := []option{{Value: "", Label: "choose a network"}}
		for _, n := range nets {
			no = append(no, option{Value: n.GetId(), Label: n.GetName() + " (" + n.GetProvider() + ", " + n.GetHttpsStrategy() + ")"})
		}
		return []*fieldset{
			{Legend: "Instance", Fields: []*formField{
				{Path: "name", Label: "Name", Kind: kindText, Required: true},
				{Path: "kind", Label: "Kind", Kind: kindSelect, Options: words(vocab.InstanceKinds), Required: true},
				{Path: "templateId", Label: "Template", Kind: kindSelect, Options: to, Required: true},
				{Path: "networkId", Label: "Network", Kind: kindSelect, Options: no, Required: true},
			}},
			{Legend: "TLS", Path: "ssl", Help: "What applies depends on the network's HTTPS strategy.", Fields: []*formField{
				{Path: "ssl.sans", Label: "Extra names (self-signed)", Kind: kindList, Help: "DNS names or IP addresses, one per line."},
				{Path: "ssl.domains", Label: "Domains (acme)", Kind: kindList, Help: "One per line."},
				{Path: "ssl.certificatePem", Label: "Certificate chain (custom-certificate)", Kind: kindTextarea},
				{Path: "ssl.privateKeyPem", Label: "Private key (PEM)", Kind: kindSecret, StoredPath: "ssl.privateKeyId",
					Help: "Write-only: kept encrypted, never shown again."},
				{Path: "ssl.privateKeyRef", Label: "…or AWS Secrets Manager secret id", Kind: kindText},
			}},
			{Legend: "Log retention", Path: "logRetention", Fields: []*formField{
				{Path: "logRetention.maxLines", Label: "Most lines kept", Kind: kindNumber, Help: "Empty: 100000."},
				{Path: "logRetention.maxAge", Label: "Oldest line kept", Kind: kindDuration, Help: "e.g. 7d, 12h; empty: 7d."},
			}},
		}, nil
	},
}

// editForm serves a resource's new (no id) or edit form: GET shows it
// (filled from the API), POST saves it through the API, showing the API's
// error beside the field it names, or that the record changed meanwhile.
func (c *Console) editForm(w http.ResponseWriter, r *http.Request, s *session, res resource) {
	id := r.PathValue("id")
	sets, err := res.sets(s)
	if err != nil {
		c.fail(w, r, s, err)
		return
	}
	if id != "" {
		sets = editable(sets)
	}
	f := &form{Sets: sets, HasActions: res.actions, Cancel: res.listPath, Title: "New " + res.noun, Submit: "Create " + res.noun, Action: res.listPath + "/new"}
	if id != "" {
		f.Title, f.Submit, f.Action = "Edit "+res.noun, "Save", res.listPath+"/"+url.PathEscape(id)+"/edit"
		f.Reload = f.Action
		if res.noun == "instance" {
			f.Cancel = "/instances/" + url.PathEscape(id)
		}
	}
	if r.Method == http.MethodGet {
		if id != "" {
			rec, err := res.get(s, id)
			if err != nil {
				c.fail(w, r, s, err)
				return
			}
			if err := f.fill(rec); err != nil {
				c.fail(w, r, s, err)
				return
			}
			if t, ok := rec.(*inventoryv1.Template); ok {
				f.Actions = actionRows(t.GetSetupActions())
			}
			f.Title += " " + res.nameOf(rec)
		} else {
			c.defaults(f, r)
		}
		c.render(w, r, s, http.StatusOK, "form", f.Title, numbered(f))
		return
	}
	f.read(r.PostFormValue)
	if res.actions {
		n, _ := strconv.Atoi(r.PostFormValue("actionCount"))
		f.Actions = readActions(r.PostFormValue, n)
		if op := r.PostFormValue("op"); op != "" {
			var focus int
			f.Actions, focus = reorder(f.Actions, op)
			if focus >= 0 {
				f.Focus = inputID(fmt.Sprintf("setupActions[%d].type", focus))
			}
			c.render(w, r, s, http.StatusOK, "form", f.Title, numbered(f))
			return
		}
	}
	body, ferr := f.body()
	if ferr == nil {
		if res.actions {
			body["setupActions"] = actionsJSON(f.Actions)
		}
		rec := res.new()
		if id == "" {
			err = s.api.do(http.MethodPost, res.apiPath, body, rec)
		} else {
			err = s.api.do(http.MethodPatch, res.apiPath+"/"+url.PathEscape(id), body, rec)
		}
		if err == nil && res.saved != nil {
			res.saved(c, w, r, s, rec)
			return
		}
		if err == nil {
			redirect(w, r, res.done(rec), fmt.Sprintf("The %s %s is saved.", res.noun, res.nameOf(rec)))
			return
		}
		if !errors.As(err, &ferr) || ferr.Status == http.StatusUnauthorized {
			c.fail(w, r, s, err)
			return
		}
	}
	f.setErr(ferr)
	c.render(w, r, s, ferr.Status, "form", f.Title, numbered(f))
}

// defaults pre-fills a new form: a provider and strategy, and a template
// or network named in the query (?templateId=…).
func (c *Console) defaults(f *form, r *http.Request) {
	for _, fd := range f.fields() {
		if v := r.URL.Query().Get(fd.Path); v != "" {
			fd.Value = v
		}
	}
	if fd := f.field("dataDiskGb"); fd != nil && fd.Value == "" {
		fd.Value = "10"
	}
}

// numbered numbers a form's setup actions before it renders.
func numbered(f *form) *form {
	f.Actions = index(f.Actions)
	return f
}

// actionRows turns a template's setup actions into form rows.
func actionRows(as []*inventoryv1.SetupAction) []*setupActionRow {
	out := make([]*setupActionRow, len(as))
	for i, a := range as {
		out[i] = &setupActionRow{Type: a.GetType(), Script: a.GetScript(), Path: a.GetPath(), Content: a.GetContent(),
			Mode: a.GetMode(), Name: a.GetName(), Value: a.GetValue(), Packages: strings.Join(a.GetPackages(), " ")}
	}
	return out
}

// fieldOf reads a string field of a record by its proto name.
func fieldOf(rec proto.Message, name string) string {
	m := rec.ProtoReflect()
	fd := m.Descriptor().Fields().ByName(protoreflect.Name(name))
	if fd == nil {
		return ""
	}
	return m.Get(fd).String()
}
