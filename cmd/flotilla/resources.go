package main

import (
	"fmt"
	"os"
	"time"

	"github.com/spf13/cobra"
	"google.golang.org/protobuf/proto"

	inventoryv1 "flotilla.dev/flotilla/api/gen/flotilla/inventory/v1"
	"flotilla.dev/flotilla/api/vocab"
)

// The API's collections the client commands manage.
var (
	cloudAccounts = &resource{
		plural: "cloud-accounts", singular: "cloud account", aliases: []string{"cloud-account", "accounts"},
		item: &inventoryv1.CloudAccount{}, list: &inventoryv1.ListCloudAccountsResponse{},
		columns: columns("NAME=name", "PROVIDER=provider", "REGION=aws.region", "ROLE=aws.credentials.roleArn",
			"KEY SET=aws.credentials.secretAccessKeySet", "VERSION=version", "ID=id"),
		example: `name: lab-aws
provider: aws
aws:
  region: eu-west-1
  credentials: {roleArn: "arn:aws:iam::123456789012:role/flotilla"}
`,
	}
	networks = &resource{
		plural: "networks", singular: "network", aliases: []string{"network", "net"},
		item: &inventoryv1.Network{}, list: &inventoryv1.ListNetworksResponse{},
		changedNote: networkChanged,
		columns: append(columns("NAME=name", "PROVIDER=provider", "HTTPS=httpsStrategy", "PUBLIC IP=assignPublicIp"),
			column{header: "CLOUD ACCOUNT", path: "cloudAccountId", ref: cloudAccounts},
			column{header: "VERSION", path: "version"}, column{header: "ID", path: "id"}),
		refs: map[string]*resource{"cloudAccountId": cloudAccounts},
		example: `name: lab
provider: local
httpsStrategy: self-signed
`,
	}
	templates = &resource{
		plural: "templates", singular: "template", aliases: []string{"template", "tmpl"},
		item: &inventoryv1.Template{}, list: &inventoryv1.ListTemplatesResponse{},
		changedNote: templateChanged,
		columns: columns("NAME=name", "PROVIDER=provider", "IMAGE=image", "TYPE=instanceType", "DISK GB=dataDiskGb",
			"SETUP ACTIONS=setupActions", "VERSION=version", "ID=id"),
		example: `name: small
provider: local
dataDiskGb: 1
setupActions:
  - type: script
    script: echo hello > hello.txt
  - {type: file, path: conf/app.env, content: "MODE=dev\n", mode: "0644"}
`,
	}
	instances = &resource{
		plural: "instances", singular: "instance", aliases: []string{"instance", "inst"},
		item: &inventoryv1.Instance{}, list: &inventoryv1.ListInstancesResponse{},
		columns: append(columns("NAME=name", "KIND=kind", "STATE=state", "DETAIL=stateDetail"),
			column{header: "TEMPLATE", path: "templateId", ref: templates, version: "templateVersion"},
			column{header: "NETWORK", path: "networkId", ref: networks},
			column{header: "AGENT", path: "agent.status"}, column{header: "AGENT VERSION", path: "agent.version"},
			column{header: "URL", path: "addresses.url"},
			column{header: "ID", path: "id"}),
		refs:        map[string]*resource{"templateId": templates, "networkId": networks},
		deleted:     instanceDeleted,
		forceDelete: "remove the record even if the cloud cannot destroy the VM or the data disk (the deleted event names what is left there)",
		changedNote: instanceChanged,
		searchable:  true,
		filters: []listFilter{
			{flag: "state", param: "state", usage: "only instances in this state (running, failed, ...)"},
			{flag: "kind", param: "kind", usage: "only instances of this kind (design, automation or deployer)"},
			{flag: "network", param: "networkId", usage: "only instances in this network (a name or an id)", ref: networks},
			{flag: "template", param: "templateId", usage: "only instances made from this template (a name or an id)", ref: templates},
			{flag: "query", param: "query", usage: "only instances whose name, id, VM id or an address holds this text (any case)"},
			{flag: "sort", param: "orderBy", usage: `"name" to list by name; oldest first without it`},
		},
		listExample: `  flotilla instances list --state failed --network lab
  flotilla instances list --query 10.0.3 --sort name`,
		example: `name: web-1
kind: design
templateId: small     # a name or an id
networkId: lab
ssl: {sans: [web-1.lab.example]}
`,
	}
)

// instancesPath is where the instances are in the API.
const instancesPath = "/api/v1/instances"

// newResourceCommands are the client commands of the API's collections.
func newResourceCommands(opts *clientOptions) []*cobra.Command {
	inst := instances.command(opts,
		lifecycleCommand(opts, vocab.ActionProvision, "Provision instances: a VM with their data disk, agent and node software",
			"until it runs", `  flotilla instances provision web-1 --wait
  flotilla instances provision web-1 web-2   # returns at once; see flotilla instances list`),
		lifecycleCommand(opts, vocab.ActionDeprovision, "Deprovision instances: the VM goes, the data disk is kept",
			"until the VM is gone", "  flotilla instances deprovision web-1 --wait"),
		lifecycleCommand(opts, vocab.ActionReprovision, "Reprovision instances: a new VM on the same data disk",
			"until the new VM runs", "  flotilla instances reprovision web-1 --wait --timeout 30m"),
		logsCommand(opts), eventsCommand(opts), secretsCommand(opts),
		instances.actionCommand(opts, action{verb: "refresh-certificate",
			short:   "Have instances' agents renew their certificate now (the fleet CA's or an ACME one, for the names the instance has now) or fetch their custom one again, served without a restart",
			example: "  flotilla instances refresh-certificate web-1", answer: &inventoryv1.Instance{},
			line: func(in, _ proto.Message) string {
				return stringField(in, "name") + ": the agent renews its certificate (a custom one: fetches it again)"
			}}),
		refreshConfigurationCommand(opts),
		upgradeAgentCommand(opts), joinTokenCommand(opts))
	accounts := cloudAccounts.command(opts, cloudAccounts.actionCommand(opts, action{verb: "verify",
		short:   "Sign in with cloud accounts' credentials and show who the cloud says they are",
		example: "  flotilla cloud-accounts verify lab-aws", answer: &inventoryv1.CloudAccountVerification{},
		line: func(account, m proto.Message) string {
			name, v := stringField(account, "name"), m.(*inventoryv1.CloudAccountVerification)
			if !v.GetOk() {
				return fmt.Sprintf("%s: refused: %s", name, v.GetMessage())
			}
			return fmt.Sprintf("%s: ok: account %s, signed in as %s", name, v.GetAccount(), v.GetIdentity())
		}}))
	return []*cobra.Command{networks.command(opts), templates.command(opts), inst, accounts}
}

// joinTokenCommand is `flotilla instances join-token`: a one-time token
// for the agent of an instance of provider "external".
func joinTokenCommand(opts *clientOptions) *cobra.Command {
	var (
		ttl     time.Duration
		writeCA string
	)
	cmd := instances.actionCommand(opts, action{verb: "joinToken",
		short: "Mint a one-time join token for the agent of an external instance waiting for it, and show how to start the agent",
		example: `  flotilla instances provision edge-1          # provider external: waits for its agent
  flotilla instances join-token edge-1 --ttl 2h --write-ca ca.pem`,
		answer: &inventoryv1.InstanceJoinToken{},
		body:   func() []byte { return jsonBody(map[string]int64{"ttlSeconds": int64(ttl.Seconds())}) },
		after: func(m proto.Message) error {
			if writeCA == "" {
				return nil
			}
			return os.WriteFile(writeCA, []byte(m.(*inventoryv1.InstanceJoinToken).GetCaCertificatePem()), 0o644)
		},
		line: func(in, m proto.Message) string {
			j := m.(*inventoryv1.InstanceJoinToken)
			ca := "the CA bundle (--write-ca FILE writes it)"
			if writeCA != "" {
				ca = "the CA bundle (" + writeCA + ")"
			}
			return fmt.Sprintf(`Join token for %s, valid once until %s:
  %s
On the machine, with %s and the token in files, start the agent:
  flotilla-agent --gateway %s --ca-file ca.pem --token-file token --vm-id %s \
    --state-dir /var/lib/flotilla-agent --data-dir /data --data-disk-gb %d`,
				stringField(in, "name"), j.GetExpireTime().AsTime().Local().Format(time.RFC1123), j.GetToken(), ca,
				j.GetAgentGatewayAddr(), j.GetVmId(), max(in.(*inventoryv1.Instance).GetDataDisk().GetSizeGb(), 1))
		}})
	cmd.Use = "join-token NAME|ID"
	cmd.Args = cobra.ExactArgs(1)
	ttl = time.Hour
	cmd.Flags().Var(durationFlag{&ttl}, "ttl", "how long the token is valid (at most 24h)")
	cmd.Flags().StringVar(&writeCA, "write-ca", "", "write the CA bundle the agent verifies its gateway with to this file")
	return cmd
}
