package secrets_test

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/hex"
	"fmt"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"google.golang.org/protobuf/proto"

	"flotilla.dev/flotilla/api/endpoints"
	secretsv1 "flotilla.dev/flotilla/api/gen/flotilla/secrets/v1"
	"flotilla.dev/flotilla/api/subjects"
	"flotilla.dev/flotilla/libs/pgmanaged"
)

// leakValue is distinctive enough that finding it anywhere is a leak.
const leakValue = "s3cr3t-VALUE-7f3a"

// leakForms are the ways the value could show up: as is, and as the
// encodings PostgreSQL and JSON use for bytes.
var leakForms = func() map[string][]byte {
	v := []byte(leakValue)
	return map[string][]byte{
		"plain":         v,
		"hex":           []byte(hex.EncodeToString(v)),
		"HEX":           []byte(strings.ToUpper(hex.EncodeToString(v))),
		"base64":        []byte(base64.StdEncoding.EncodeToString(v)[:20]), // the stable prefix
		"base64url":     []byte(base64.RawURLEncoding.EncodeToString(v)[:20]),
		"plain, folded": []byte(strings.ToLower(leakValue)),
	}
}()

// assertNoLeak fails t if data holds the value in any form.
func assertNoLeak(t *testing.T, where string, data []byte) {
	t.Helper()
	lower := bytes.ToLower(data)
	for form, needle := range leakForms {
		hay := data
		if form == "plain, folded" {
			hay = lower
		}
		if i := bytes.Index(hay, needle); i >= 0 {
			start, end := max(0, i-60), min(len(data), i+len(needle)+60)
			t.Errorf("the secret value (%s) leaks into %s: …%q…", form, where, data[start:end])
		}
	}
}

func TestTheValueLeaksNowhere(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	ctx := context.Background()

	// Everything an operator and an agent can do with the secret, including
	// mistakes that send the value to the broker in a request it rejects.
	var replies [][]byte
	keep := func(m proto.Message, err error) {
		t.Helper()
		data, merr := proto.Marshal(m)
		if merr != nil {
			t.Fatal(merr)
		}
		replies = append(replies, data)
		if err != nil {
			replies = append(replies, []byte(err.Error()))
		}
	}
	keep(e.create(e.a, "leak-check", leakValue))
	keep(e.create(e.a, "leak-check", leakValue)) // version 2
	keep(e.create(e.a, "bad name", leakValue))
	keep(e.create("not-a-uuid", "leak-check", leakValue))
	keep(e.create("0190c3e1-0000-7000-8000-000000000002", "leak-check", leakValue))
	keep(e.create(e.b, "other", "something-else"))
	items, err := e.list(e.a)
	keep(&secretsv1.ListSecretsResponse{Secrets: items}, err)
	// The same value as a fleet secret of the template a and b are made from.
	keep(e.setFleet("leak-fleet", leakValue, e.template))
	keep(e.setFleet("leak-fleet", leakValue, e.template))
	keep(e.setFleet("leak-fleet", "", e.template))
	keep(e.setFleet("leak-fleet", leakValue, "0190c3e1-0000-7000-8000-000000000002"))
	keep(call(e, endpoints.FleetSecretList, &secretsv1.ListFleetSecretsRequest{}))
	if got, err := e.read(e.b, "leak-fleet"); err != nil || string(got.GetValue()) != leakValue {
		t.Fatalf("an agent of the fleet secret's template reads it: %v, %v", got, err)
	}

	got, err := e.read(e.a, "leak-check")
	if err != nil || string(got.GetValue()) != leakValue || got.GetVersion() != 2 {
		t.Fatalf("the owning agent's read: %v, %v", got, err)
	}
	// The one place the value may appear: secret.read's reply to its owner.
	// (A positive control: the scan finds it there.)
	if data, _ := proto.Marshal(got); !bytes.Contains(data, []byte(leakValue)) {
		t.Fatal("the scan cannot find the value even where it belongs")
	}
	keep(e.read(e.b, "leak-check"))
	keep(e.read(e.a, "no-such"))
	keep(call(e, endpoints.SecretDelete, &secretsv1.DeleteSecretRequest{InstanceId: e.b, Name: "other"}))

	for i, r := range replies {
		assertNoLeak(t, fmt.Sprintf("reply %d", i), r)
	}

	// Every column of every row of the secrets table, as text.
	rows, err := e.pool.Query(ctx, `SELECT s::text FROM secrets s`)
	if err != nil {
		t.Fatal(err)
	}
	texts, err := pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil || len(texts) != 1 {
		t.Fatalf("secrets rows: %d, %v", len(texts), err)
	}
	for _, row := range texts {
		assertNoLeak(t, "the secrets table", []byte(row))
	}
	rows, err = e.pool.Query(ctx, `SELECT s::text FROM fleet_secrets s`)
	if err != nil {
		t.Fatal(err)
	}
	if texts, err = pgx.CollectRows(rows, pgx.RowTo[string]); err != nil || len(texts) != 1 {
		t.Fatalf("fleet_secrets rows: %d, %v", len(texts), err)
	}
	assertNoLeak(t, "the fleet_secrets table", []byte(texts[0]))

	// A full dump of the database.
	assertNoLeak(t, "pg_dump", e.pgDump())

	// Every message on every stream, headers and payload.
	var streams, audits int
	for name := range e.js.StreamNames(ctx).Name() {
		streams++
		for _, m := range e.streamMessages(name) {
			if name == subjects.AuditStream {
				audits++
			}
			assertNoLeak(t, fmt.Sprintf("stream %s message %d (%s)", name, m.Sequence, m.Subject), m.Data)
			assertNoLeak(t, fmt.Sprintf("stream %s message %d headers", name, m.Sequence), []byte(fmt.Sprint(m.Header)))
		}
	}
	if streams < 4 || audits != 4 {
		t.Fatalf("scanned %d streams and %d audit records, want every stream and 4 records", streams, audits)
	}

	// The log, at debug level.
	logs := e.logs.Bytes()
	if !bytes.Contains(logs, []byte(`msg="secret read"`)) || !bytes.Contains(logs, []byte(`msg="secret stored"`)) {
		t.Fatalf("the log lacks the broker's debug lines:\n%s", logs)
	}
	assertNoLeak(t, "the log", logs)

	// Every span: names, attributes, events and status.
	spans := e.spans.Ended()
	var sawRead bool
	for _, s := range spans {
		sawRead = sawRead || s.Name() == "secrets ReadSecretRequest"
		assertNoLeak(t, "span "+s.Name(), spanText(s))
	}
	if !sawRead {
		t.Fatalf("no secret.read span among %d spans", len(spans))
	}
}

// pgDump is a full dump of e's database (pg_dump), which holds the
// secrets table.
func (e *env) pgDump() []byte {
	e.t.Helper()
	bin, err := pgmanaged.FindBinDir()
	if err != nil {
		e.t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	dump, err := exec.CommandContext(ctx, filepath.Join(bin, "pg_dump"), "--no-password", "--dbname="+e.dbURL).Output()
	if err != nil {
		e.t.Fatalf("pg_dump: %v", err)
	}
	if !bytes.Contains(dump, []byte("CREATE TABLE public.secrets")) || !bytes.Contains(dump, []byte("COPY public.secrets")) {
		e.t.Fatalf("pg_dump output does not hold the secrets table (%d bytes)", len(dump))
	}
	return dump
}

// spanText is everything a span says: name, status, attributes, events.
func spanText(s sdktrace.ReadOnlySpan) []byte {
	var b strings.Builder
	fmt.Fprintln(&b, s.Name(), s.Status().Description)
	for _, a := range s.Attributes() {
		fmt.Fprintln(&b, a.Key, a.Value.String())
	}
	for _, ev := range s.Events() {
		fmt.Fprintln(&b, ev.Name)
		for _, a := range ev.Attributes {
			fmt.Fprintln(&b, a.Key, a.Value.String())
		}
	}
	return []byte(b.String())
}
