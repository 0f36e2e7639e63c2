// Package busauth gives every Flotilla service its own NATS identity, with
// only the permissions its job needs, using NATS's decentralised JWT
// authentication: an operator key signs an account ("FLOTILLA", JetStream
// enabled) and a system account; the account key signs one user per
// identity, whose permissions Permissions derives from the declarations in
// api/endpoints. Each user's JWT and key seed are written as a standard
// NATS .creds file, which the service (or the nats CLI, for the read-only
// observer) connects with. There is no shared token.
//
// The server trusts the operator and resolves the two accounts from memory:
// Configure sets that up for an embedded server, ServerConfig renders it
// for a nats-server configuration file (a cluster).
//
// Keys and files (Dir): operator.nk, system.nk and account.nk (seeds, 0600),
// account.jwt (the account's current JWT, carrying revocations) and one
// <identity>.creds per identity (0600). Rotate mints a new key for an
// identity and revokes the old one.
package busauth

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"github.com/nats-io/jwt/v2"
	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nkeys"
)

// AccountName is the NATS account every Flotilla identity belongs to.
const AccountName = "FLOTILLA"

// Authority holds the operator, the system account and the Flotilla account
// keys, and mints user credentials.
type Authority struct {
	dir      string
	operator nkeys.KeyPair
	system   nkeys.KeyPair
	account  nkeys.KeyPair
	// accountClaims carries the revocations; it is re-signed on change.
	accountClaims *jwt.AccountClaims
}

// Files in an authority's directory.
const (
	operatorSeedFile = "operator.nk"
	systemSeedFile   = "system.nk"
	accountSeedFile  = "account.nk"
	accountJWTFile   = "account.jwt"
)

// SystemCredsFile is, in an authority's directory, the credentials of a
// user of the NATS system account: for an operator administering the NATS
// servers (flotilla cluster brokers remove), never for a service.
const SystemCredsFile = "system.creds"

// CredsFile is where identity's credentials are kept in dir.
func CredsFile(dir, identity string) string { return filepath.Join(dir, identity+".creds") }

// LoadOrCreate opens the authority kept in dir, or creates one there with
// credentials for every identity. Existing credentials keep their keys,
// and get the permissions of this build if theirs differ (a new release
// that declares more or less); missing ones are minted.
func LoadOrCreate(dir string) (*Authority, error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("bus credentials: %w", err)
	}
	a := &Authority{dir: dir}
	var err error
	if a.operator, err = loadOrCreateKey(filepath.Join(dir, operatorSeedFile), nkeys.CreateOperator); err != nil {
		return nil, err
	}
	if a.system, err = loadOrCreateKey(filepath.Join(dir, systemSeedFile), nkeys.CreateAccount); err != nil {
		return nil, err
	}
	if a.account, err = loadOrCreateKey(filepath.Join(dir, accountSeedFile), nkeys.CreateAccount); err != nil {
		return nil, err
	}
	accPub, _ := a.account.PublicKey()
	switch data, err := os.ReadFile(filepath.Join(dir, accountJWTFile)); {
	case errors.Is(err, os.ErrNotExist):
		a.accountClaims = jwt.NewAccountClaims(accPub)
		a.accountClaims.Name = AccountName
		a.accountClaims.Limits.JetStreamLimits = jwt.JetStreamLimits{MemoryStorage: -1, DiskStorage: -1, Streams: -1, Consumer: -1}
		if err := a.saveAccount(); err != nil {
			return nil, err
		}
	case err != nil:
		return nil, fmt.Errorf("bus credentials: %w", err)
	default:
		if a.accountClaims, err = jwt.DecodeAccountClaims(strings.TrimSpace(string(data))); err != nil {
			return nil, fmt.Errorf("bus credentials: %s: %w", accountJWTFile, err)
		}
		if a.accountClaims.Subject != accPub {
			return nil, fmt.Errorf("bus credentials: %s is not the account of %s", accountJWTFile, accountSeedFile)
		}
	}
	for _, id := range Identities() {
		_, err := os.Stat(CredsFile(dir, id))
		if errors.Is(err, os.ErrNotExist) {
			err = a.writeCreds(id)
		} else if err == nil {
			err = a.refreshCreds(id)
		}
		if err != nil {
			return nil, err
		}
	}
	if _, err := os.Stat(a.SystemCreds()); errors.Is(err, os.ErrNotExist) {
		creds, err := mint(a.system, "system", jwt.Permissions{})
		if err != nil {
			return nil, err
		}
		if err := writeFile(a.SystemCreds(), creds); err != nil {
			return nil, err
		}
	}
	return a, nil
}

// SystemCreds is the file of the system account's user (SystemCredsFile).
func (a *Authority) SystemCreds() string { return filepath.Join(a.dir, SystemCredsFile) }

// Account is the public key of the Flotilla account: the name a NATS
// server knows it by (server.Server.LookupAccount).
func (a *Authority) Account() string {
	pub, _ := a.account.PublicKey()
	return pub
}

// Dir is where the authority keeps its keys and credentials.
func (a *Authority) Dir() string { return a.dir }

// Creds returns the credentials file of identity.
func (a *Authority) Creds(identity string) string { return CredsFile(a.dir, identity) }

// Rotate mints a new key and credentials for identity, replacing its .creds
// file, and revokes the key it replaces: connections with the old
// credentials are refused once the servers have the new account JWT
// (Configure, or ServerConfig and a reload).
func (a *Authority) Rotate(identity string) error {
	_, claims, err := readCreds(a.Creds(identity))
	if err != nil {
		return err
	}
	if err := a.writeCreds(identity); err != nil {
		return err
	}
	a.accountClaims.RevokeAt(claims.Subject, time.Now().Add(time.Second))
	return a.saveAccount()
}

// readCreds reads a .creds file: its content and its user's claims.
func readCreds(path string) ([]byte, *jwt.UserClaims, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, nil, fmt.Errorf("bus credentials: %w", err)
	}
	token, err := jwt.ParseDecoratedJWT(data)
	if err != nil {
		return nil, nil, fmt.Errorf("bus credentials: %s: %w", path, err)
	}
	claims, err := jwt.DecodeUserClaims(token)
	if err != nil {
		return nil, nil, fmt.Errorf("bus credentials: %s: %w", path, err)
	}
	return data, claims, nil
}

// refreshCreds signs identity's user again, with the same key, when the
// permissions in its .creds file are not Permissions(identity).
func (a *Authority) refreshCreds(identity string) error {
	path := a.Creds(identity)
	data, claims, err := readCreds(path)
	if err != nil {
		return err
	}
	perms, err := Permissions(identity)
	if err != nil {
		return err
	}
	have, _ := json.Marshal(claims.Permissions)
	want, _ := json.Marshal(perms)
	if bytes.Equal(have, want) {
		return nil
	}
	key, err := jwt.ParseDecoratedNKey(data)
	if err != nil {
		return fmt.Errorf("bus credentials: %s: %w", path, err)
	}
	seed, err := key.Seed()
	if err != nil {
		return fmt.Errorf("bus credentials: %s: %w", path, err)
	}
	claims.Permissions = perms
	token, err := claims.Encode(a.account)
	if err != nil {
		return fmt.Errorf("bus credentials: sign %s: %w", identity, err)
	}
	creds, err := jwt.FormatUserConfig(token, seed)
	if err != nil {
		return err
	}
	return writeFile(path, creds)
}

// writeCreds mints a user for identity with a fresh key and writes its
// .creds file (0600).
func (a *Authority) writeCreds(identity string) error {
	perms, err := Permissions(identity)
	if err != nil {
		return err
	}
	creds, err := a.Mint(identity, perms)
	if err != nil {
		return err
	}
	return writeFile(a.Creds(identity), creds)
}

// Mint signs a user of the Flotilla account named name, with a fresh key
// and the given permissions, and returns its .creds content. Services get
// theirs from Permissions; tests mint others (a user with empty
// permissions may do anything).
func (a *Authority) Mint(name string, perms jwt.Permissions) ([]byte, error) {
	return mint(a.account, name, perms)
}

// mint signs a user of account named name, with a fresh key and perms, and
// returns its .creds content.
func mint(account nkeys.KeyPair, name string, perms jwt.Permissions) ([]byte, error) {
	user, err := nkeys.CreateUser()
	if err != nil {
		return nil, err
	}
	pub, _ := user.PublicKey()
	seed, _ := user.Seed()
	uc := jwt.NewUserClaims(pub)
	uc.Name = name
	uc.Permissions = perms
	token, err := uc.Encode(account)
	if err != nil {
		return nil, fmt.Errorf("bus credentials: sign %s: %w", name, err)
	}
	return jwt.FormatUserConfig(token, seed)
}

// saveAccount re-signs the account JWT with the operator key and saves it.
func (a *Authority) saveAccount() error {
	token, err := a.accountClaims.Encode(a.operator)
	if err != nil {
		return fmt.Errorf("bus credentials: sign the account: %w", err)
	}
	return writeFile(filepath.Join(a.dir, accountJWTFile), []byte(token+"\n"))
}

// jwts returns the operator's, the system account's and the Flotilla
// account's JWTs.
func (a *Authority) jwts() (op *jwt.OperatorClaims, sysJWT, accJWT string, err error) {
	opPub, _ := a.operator.PublicKey()
	sysPub, _ := a.system.PublicKey()
	op = jwt.NewOperatorClaims(opPub)
	op.Name = "flotilla"
	op.SystemAccount = sysPub
	sys := jwt.NewAccountClaims(sysPub)
	sys.Name = "SYS"
	if sysJWT, err = sys.Encode(a.operator); err != nil {
		return nil, "", "", err
	}
	if accJWT, err = a.accountClaims.Encode(a.operator); err != nil {
		return nil, "", "", err
	}
	return op, sysJWT, accJWT, nil
}

// Configure makes an embedded server trust the authority's operator and
// resolve its accounts from memory.
func (a *Authority) Configure(opts *server.Options) error {
	op, sysJWT, accJWT, err := a.jwts()
	if err != nil {
		return err
	}
	res := &server.MemAccResolver{}
	sysPub, _ := a.system.PublicKey()
	accPub, _ := a.account.PublicKey()
	if err := res.Store(sysPub, sysJWT); err != nil {
		return err
	}
	if err := res.Store(accPub, accJWT); err != nil {
		return err
	}
	opts.TrustedOperators = []*jwt.OperatorClaims{op}
	opts.AccountResolver = res
	opts.SystemAccount = sysPub
	if opts.MaxControlLine < MaxControlLine {
		opts.MaxControlLine = MaxControlLine
	}
	return nil
}

// MaxControlLine is the longest protocol line a server configured by an
// authority accepts. A client's CONNECT line carries its user JWT, whose
// permissions list every subject it may use: the gateway's is longer than
// nats-server's default 4 KiB.
const MaxControlLine = 32 << 10

// ServerConfig renders the authority for a nats-server configuration file:
// the operator JWT, the system account and a memory resolver preloaded with
// both accounts. Include it in every server of a cluster, and reload them
// after Rotate.
func (a *Authority) ServerConfig() (string, error) {
	op, sysJWT, accJWT, err := a.jwts()
	if err != nil {
		return "", err
	}
	opJWT, err := op.Encode(a.operator)
	if err != nil {
		return "", err
	}
	sysPub, _ := a.system.PublicKey()
	accPub, _ := a.account.PublicKey()
	var b bytes.Buffer
	fmt.Fprintf(&b, "# Flotilla bus authority: generated by `flotilla admin bus-credentials`; do not edit.\n")
	fmt.Fprintf(&b, "max_control_line: %d\n", MaxControlLine)
	fmt.Fprintf(&b, "operator: %s\nsystem_account: %s\nresolver: MEMORY\nresolver_preload: {\n", opJWT, sysPub)
	fmt.Fprintf(&b, "  %s: %s\n  %s: %s\n}\n", sysPub, sysJWT, accPub, accJWT)
	return b.String(), nil
}

// ConnectOptions are the nats.go options identity connects with: its
// credentials and its own inbox prefix. The credentials file is read at the
// first connect and kept for the connection's life: reconnects present the
// same credentials, not whatever file was put in its place meanwhile (a
// service checks its file at start, CheckCreds, and takes new credentials
// when it is restarted, as rotation says).
func ConnectOptions(identity, credsFile string) []nats.Option {
	c := &pinnedCreds{file: credsFile}
	return []nats.Option{nats.UserJWT(c.userJWT, c.sign), nats.CustomInboxPrefix(InboxPrefix(identity))}
}

// pinnedCreds are a credentials file's user JWT and key, read once it is
// first needed (until a read succeeds, each connect attempt reads again).
type pinnedCreds struct {
	file string
	mu   sync.Mutex
	jwt  string
	key  nkeys.KeyPair
}

func (c *pinnedCreds) load() (string, nkeys.KeyPair, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.key != nil {
		return c.jwt, c.key, nil
	}
	data, _, err := readCreds(c.file)
	if err != nil {
		return "", nil, err
	}
	token, _ := jwt.ParseDecoratedJWT(data) // readCreds parsed it
	key, err := nkeys.ParseDecoratedNKey(data)
	if err != nil {
		return "", nil, fmt.Errorf("bus credentials: %s: %w", c.file, err)
	}
	c.jwt, c.key = token, key
	return token, key, nil
}

func (c *pinnedCreds) userJWT() (string, error) {
	token, _, err := c.load()
	return token, err
}

func (c *pinnedCreds) sign(nonce []byte) ([]byte, error) {
	_, key, err := c.load()
	if err != nil {
		return nil, err
	}
	return key.Sign(nonce)
}

// Files lists the credentials files an authority writes, by identity.
func (a *Authority) Files() map[string]string {
	out := map[string]string{}
	for _, id := range Identities() {
		out[id] = a.Creds(id)
	}
	return out
}

func loadOrCreateKey(path string, create func() (nkeys.KeyPair, error)) (nkeys.KeyPair, error) {
	seed, err := os.ReadFile(path)
	if errors.Is(err, os.ErrNotExist) {
		kp, err := create()
		if err != nil {
			return nil, err
		}
		s, _ := kp.Seed()
		return kp, writeFile(path, append(s, '\n'))
	}
	if err != nil {
		return nil, fmt.Errorf("bus credentials: %w", err)
	}
	kp, err := nkeys.FromSeed(bytes.TrimSpace(seed))
	if err != nil {
		return nil, fmt.Errorf("bus credentials: %s: %w", path, err)
	}
	return kp, nil
}

// writeFile writes data atomically with mode 0600.
func writeFile(path string, data []byte) error {
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, data, 0o600); err != nil {
		return fmt.Errorf("bus credentials: %w", err)
	}
	if err := os.Rename(tmp, path); err != nil {
		return fmt.Errorf("bus credentials: %w", err)
	}
	return nil
}

// CheckCreds reports how the permissions in the credentials file of
// identity differ from this release's (Permissions): nil when they are the
// same. A cluster's services get their .creds files from the operator, who
// signs them again with each release (flotilla admin bus-credentials init)
// and copies them to the hosts: a file left from another release lacks
// what this one calls, or grants what it dropped. It reads the file only:
// the servers decide what the credentials may do.
func CheckCreds(identity, file string) error {
	_, claims, err := readCreds(file)
	if err != nil {
		return err
	}
	want, err := Permissions(identity)
	if err != nil {
		return err
	}
	have := claims.Permissions
	var diffs []string
	for _, l := range []struct {
		lacks, grants string // what a subject missing, or extra, means
		have, want    jwt.StringList
	}{
		{"do not let it publish to", "let it publish to", have.Pub.Allow, want.Pub.Allow},
		{"do not let it subscribe to", "let it subscribe to", have.Sub.Allow, want.Sub.Allow},
		{"do not deny it publishing to", "deny it publishing to", have.Pub.Deny, want.Pub.Deny},
		{"do not deny it subscribing to", "deny it subscribing to", have.Sub.Deny, want.Sub.Deny},
	} {
		if missing := without(l.want, l.have); len(missing) > 0 {
			diffs = append(diffs, fmt.Sprintf("they %s %s", l.lacks, sample(missing)))
		}
		if extra := without(l.have, l.want); len(extra) > 0 {
			diffs = append(diffs, fmt.Sprintf("they %s %s, which this release does not", l.grants, sample(extra)))
		}
	}
	if (have.Resp == nil) != (want.Resp == nil) || (have.Resp != nil && *have.Resp != *want.Resp) {
		diffs = append(diffs, "their permission to answer requests differs")
	}
	if len(diffs) == 0 {
		return nil
	}
	return fmt.Errorf("the bus credentials in %s are not this release's for %s: %s", file, identity, strings.Join(diffs, "; "))
}

// without returns the subjects of a not in b.
func without(a, b jwt.StringList) []string {
	var out []string
	for _, s := range a {
		if !b.Contains(s) {
			out = append(out, s)
		}
	}
	return out
}

// sample names up to three subjects of s, and how many more there are.
func sample(s []string) string {
	if len(s) <= 3 {
		return strings.Join(s, ", ")
	}
	return fmt.Sprintf("%s and %d more", strings.Join(s[:3], ", "), len(s)-3)
}
