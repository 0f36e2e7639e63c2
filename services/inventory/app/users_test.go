package app_test

import (
	"context"
	"fmt"
	"log/slog"
	"sync"
	"testing"
	"time"

	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/timestamppb"

	auditv1 "flotilla.dev/flotilla/api/gen/flotilla/audit/v1"
	authv1 "flotilla.dev/flotilla/api/gen/flotilla/auth/v1"
	cav1 "flotilla.dev/flotilla/api/gen/flotilla/ca/v1"
	secretsv1 "flotilla.dev/flotilla/api/gen/flotilla/secrets/v1"
	"flotilla.dev/flotilla/api/subjects"
	"flotilla.dev/flotilla/api/vocab"
	"flotilla.dev/flotilla/libs/apierr"
	"flotilla.dev/flotilla/libs/bus"
	"flotilla.dev/flotilla/services/inventory/app"
)

// as is an admin's call through the gateway.
func as(name string, role vocab.Role) app.Caller {
	return app.Caller{Actor: vocab.User(name), Role: role, Source: "127.0.0.1"}
}

// TestTheLastAdminStaysWhenTwoAdminsDemoteEachOtherAtOnce: of two admins
// taking each other's role away at the same moment, exactly one succeeds.
func TestTheLastAdminStaysWhenTwoAdminsDemoteEachOtherAtOnce(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	for round := range 5 {
		a := app.New(newPool(t), slog.New(slog.DiscardHandler))
		if err := a.InitialSetup(ctx, "root", "root-pass"); err != nil {
			t.Fatal(err)
		}
		x, err := a.CreateUser(ctx, as("root", vocab.RoleAdmin), &authv1.CreateUserRequest{Username: "x", Password: "x-password", Role: "admin"})
		if err != nil {
			t.Fatal(err)
		}
		y, err := a.CreateUser(ctx, as("root", vocab.RoleAdmin), &authv1.CreateUserRequest{Username: "y", Password: "y-password", Role: "admin"})
		if err != nil {
			t.Fatal(err)
		}
		root, err := a.ListUsers(ctx, 0, "")
		if err != nil {
			t.Fatal(err)
		}
		if err := a.DeleteUser(ctx, as("x", vocab.RoleAdmin), root.GetUsers()[0].GetId(), 0); err != nil {
			t.Fatal(err)
		}
		var wg sync.WaitGroup
		errs := make([]error, 2)
		for i, pair := range [][2]*authv1.User{{x, y}, {y, x}} {
			wg.Go(func() {
				_, errs[i] = a.UpdateUser(ctx, as(pair[0].GetUsername(), vocab.RoleAdmin),
					&authv1.UpdateUserRequest{Id: pair[1].GetId(), Version: pair[1].GetVersion(), Role: "viewer"})
			})
		}
		wg.Wait()
		failed := 0
		for _, err := range errs {
			if err != nil {
				if apierr.ReasonOf(err) != apierr.ReasonLastAdmin {
					t.Fatalf("round %d: %v", round, err)
				}
				failed++
			}
		}
		if failed != 1 {
			t.Fatalf("round %d: %d of two demotions failed, want exactly one: %v", round, failed, errs)
		}
	}
}

// TestAPITokensExpireAndTheirUseIsWrittenInBatches: an API token works
// until its expiry and not after; its uses are held in memory, shown by
// the list at once and written by the next flush, and a later use only
// moves the time forward.
func TestAPITokensExpireAndTheirUseIsWrittenInBatches(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	clock := newTestClock()
	now := clock.now
	pool := newPool(t)
	a := app.New(pool, slog.New(slog.DiscardHandler), app.WithClock(now))
	if err := a.InitialSetup(ctx, "root", "root-pass"); err != nil {
		t.Fatal(err)
	}
	root := as("root", vocab.RoleAdmin)
	made, err := a.CreateAPIToken(ctx, root, &authv1.CreateTokenRequest{Name: "ci", Role: "operator", ExpiresIn: durationpb.New(10 * time.Minute)})
	if err != nil {
		t.Fatal(err)
	}
	v, err := a.VerifyToken(ctx, made.GetToken(), "")
	if err != nil || v.GetRole() != "operator" || v.GetKind() != "api" || v.GetApiTokenId() != made.GetApiToken().GetId() {
		t.Fatalf("verify: %v %v", v, err)
	}
	used := now()
	lastUse := func() (listed time.Time, stored *time.Time) {
		t.Helper()
		l, err := a.ListAPITokens(ctx, root, 0, "")
		if err != nil || len(l.GetTokens()) != 1 {
			t.Fatalf("list: %v %v", l, err)
		}
		if err := pool.QueryRow(ctx, "SELECT last_used_at FROM api_tokens WHERE id = $1", made.GetApiToken().GetId()).Scan(&stored); err != nil {
			t.Fatal(err)
		}
		return l.GetTokens()[0].GetLastUseTime().AsTime(), stored
	}
	if listed, stored := lastUse(); !listed.Equal(used) || stored != nil {
		t.Fatalf("before a flush: listed %v, stored %v", listed, stored)
	}
	if err := a.FlushTokenUse(ctx); err != nil {
		t.Fatal(err)
	}
	if listed, stored := lastUse(); !listed.Equal(used) || stored == nil || !stored.Equal(used) {
		t.Fatalf("after a flush: listed %v, stored %v", listed, stored)
	}

	clock.advance(9 * time.Minute)
	if _, err := a.VerifyToken(ctx, made.GetToken(), ""); err != nil {
		t.Fatalf("nine minutes on: %v", err)
	}
	if err := a.FlushTokenUse(ctx); err != nil {
		t.Fatal(err)
	}
	if _, stored := lastUse(); !stored.Equal(now()) {
		t.Fatalf("the later use: stored %v, want %v", stored, now())
	}
	clock.advance(2 * time.Minute)
	if _, err := a.VerifyToken(ctx, made.GetToken(), ""); !apierr.Is(err, apierr.KindUnauthenticated) {
		t.Fatalf("eleven minutes on: %v", err)
	}
	if l, _ := a.ListAPITokens(ctx, root, 0, ""); len(l.GetTokens()) != 0 {
		t.Fatalf("an expired token is listed: %v", l)
	}
	// Its name is free again.
	if _, err := a.CreateAPIToken(ctx, root, &authv1.CreateTokenRequest{Name: "ci", Role: "viewer"}); err != nil {
		t.Fatal(err)
	}
}

// auditMessage is a record of the audit stream as the projection gets it.
func auditMessage(t *testing.T, subject, typ string, actor vocab.Actor, at time.Time, rec proto.Message) app.AuditMessage {
	t.Helper()
	m, err := bus.NewMessage(context.Background(), subject, typ, actor, at, rec)
	if err != nil {
		t.Fatal(err)
	}
	return app.AuditMessage{ID: m.ID(), Subject: m.Subject, Header: m.Header.Get, Data: m.Data}
}

// TestTheAuditProjection: every kind of record becomes one row of the
// same shape (a redelivery changes nothing); a record of a kind this
// build does not know is kept with what its headers say; one that cannot
// be decoded is refused as malformed, for the poison stream.
func TestTheAuditProjection(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	a := app.New(newPool(t), slog.New(slog.DiscardHandler))
	at := time.Now().UTC().Truncate(time.Microsecond)
	userID, instanceID := "01234567-89ab-7def-8123-456789abcdef", "11234567-89ab-7def-8123-456789abcdef"
	msgs := []app.AuditMessage{
		auditMessage(t, subjects.Audit(subjects.NounAPI, userID, subjects.VerbCall), "api.call", vocab.User("ann"), at,
			&auditv1.ApiCall{UserId: userID, Username: "ann", Role: "operator", TokenKind: "session", TokenId: "00aa",
				Route: "DELETE /api/v1/instances/{instance_id}/secrets/{name}", Method: "/flotilla.secrets.v1.SecretService/DeleteSecret",
				Target: instanceID, Params: "name=db", Status: 200, Source: "10.0.0.1", TraceId: "0123456789abcdef0123456789abcdef"}),
		auditMessage(t, subjects.Audit(subjects.NounSecret, instanceID, subjects.VerbRead), "secret.read", vocab.Agent(instanceID), at.Add(time.Second),
			&secretsv1.SecretAccess{InstanceId: instanceID, RequesterInstanceId: instanceID, Name: "db", Allowed: false, Reason: "not found", Time: timestamppb.New(at)}),
		auditMessage(t, subjects.Audit(subjects.NounJoinToken, instanceID, subjects.VerbCreate), "jointoken.create", vocab.User("ann"), at.Add(2*time.Second),
			&cav1.JoinTokenAudit{InstanceId: instanceID, VmId: "vm-1", Actor: "user:ann", Source: "10.0.0.1", TokenId: "00bb", ExpireTime: timestamppb.New(at)}),
		auditMessage(t, subjects.Audit(subjects.NounUser, userID, subjects.VerbRoleChanged), "user.role-changed", vocab.User("root"), at.Add(3*time.Second),
			&authv1.AuthAudit{Action: subjects.VerbRoleChanged, Username: "ann", UserId: userID, Actor: "user:root", Role: "viewer", Reason: "operator → viewer", Source: "10.0.0.2"}),
		auditMessage(t, subjects.Audit(subjects.NounUser, subjects.UnknownUser, subjects.VerbLoginFailed), "user.login-failed", vocab.System("inventory"), at.Add(4*time.Second),
			&authv1.AuthAudit{Action: subjects.VerbLoginFailed, Username: "eve", Reason: "no such user", Source: "10.0.0.3"}),
		auditMessage(t, "flotilla.audit.widget.w-1.spun", "widget.spun", vocab.System("future"), at.Add(5*time.Second), &authv1.User{}),
		auditMessage(t, subjects.Audit(subjects.NounSecret, instanceID, subjects.VerbRead), "secret.read", vocab.Agent(instanceID), at.Add(6*time.Second),
			&secretsv1.SecretAccess{RequesterInstanceId: instanceID, Name: "registry", Allowed: true, Fleet: true, Reason: "a fleet secret", Time: timestamppb.New(at)}),
	}
	for _, m := range append(msgs, msgs...) { // each twice: a redelivery
		if err := a.ProjectAudit(ctx, m); err != nil {
			t.Fatal(err)
		}
	}
	got, err := a.ListAudit(ctx, &auditv1.ListAuditRecordsRequest{})
	if err != nil {
		t.Fatal(err)
	}
	want := []*auditv1.AuditRecord{
		{Kind: "secret", Action: "secret.read", Actor: "agent:" + instanceID, Target: instanceID, Result: "ok",
			Detail: "name=registry requester=" + instanceID + " fleet-secret"},
		{Kind: "widget", Action: "widget.spun", Actor: "system:future", Target: "w-1"},
		{Kind: "user", Action: "login-failed", Actor: "system:inventory", Username: "eve", Result: "no such user", Source: "10.0.0.3", Detail: "user=eve"},
		{Kind: "user", Action: "role-changed", Actor: "user:root", Username: "root", Target: userID, Result: "ok", Source: "10.0.0.2",
			Detail: "user=ann role=viewer operator → viewer"},
		{Kind: "jointoken", Action: "jointoken.create", Actor: "user:ann", Username: "ann", Target: instanceID, Result: "ok", Source: "10.0.0.1",
			Detail: "vm=vm-1 token=00bb until=" + at.Format(time.RFC3339)},
		{Kind: "secret", Action: "secret.read", Actor: "agent:" + instanceID, Target: instanceID, Result: "denied: not found",
			Detail: "name=db requester=" + instanceID},
		{Kind: "api", Action: "DELETE /api/v1/instances/{instance_id}/secrets/{name}", Actor: "user:ann", Username: "ann", UserId: userID,
			Role: "operator", Target: instanceID, Status: 200, Result: "ok", Source: "10.0.0.1", TraceId: "0123456789abcdef0123456789abcdef",
			Detail: "name=db method=/flotilla.secrets.v1.SecretService/DeleteSecret token=session:00aa"},
	}
	if len(got.GetRecords()) != len(want) {
		t.Fatalf("%d records, want %d: %v", len(got.GetRecords()), len(want), got)
	}
	for i, r := range got.GetRecords() {
		if r.GetId() != msgs[len(msgs)-1-i].ID || !r.GetTime().AsTime().Equal(at.Add(time.Duration(len(msgs)-1-i)*time.Second)) {
			t.Errorf("record %d: id %s time %v", i, r.GetId(), r.GetTime().AsTime())
		}
		r.Id, r.Time = "", nil
		if r.GetTraceId() != "" && want[i].GetTraceId() == "" {
			r.TraceId = "" // the headers' own trace, when the test has one
		}
		if !proto.Equal(r, want[i]) {
			t.Errorf("record %d:\n%v\nwant\n%v", i, r, want[i])
		}
	}

	bad := msgs[0]
	bad.ID, bad.Data = "bad-1", []byte{0xff, 0xff}
	if err := a.ProjectAudit(ctx, bad); err == nil {
		t.Fatal("a malformed record was projected")
	}
}

// TestAuditRecordsProjectedAtOnceAreEachWrittenOnce: records projected by
// many handlers at once (the audit consumer handles several at a time, and
// their rows are written together) are each written once, redeliveries
// among them included, and every caller hears its own row's outcome.
func TestAuditRecordsProjectedAtOnceAreEachWrittenOnce(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	a := app.New(newPool(t), slog.New(slog.DiscardHandler))
	at := time.Now().UTC().Truncate(time.Microsecond)
	const records = 1500 // more than one statement's worth
	msgs := make([]app.AuditMessage, records)
	for i := range msgs {
		target := fmt.Sprintf("w-%04d", i)
		msgs[i] = auditMessage(t, "flotilla.audit.widget."+target+".spun", "widget.spun", vocab.System("load"), at.Add(time.Duration(i)*time.Millisecond), &authv1.User{})
	}
	var wg sync.WaitGroup
	errs := make(chan error, 2*records)
	for i := range 2 * records { // each twice, the second a redelivery racing the first
		wg.Go(func() { errs <- a.ProjectAudit(ctx, msgs[i%records]) })
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Fatal(err)
		}
	}
	seen := map[string]int{}
	req := &auditv1.ListAuditRecordsRequest{PageSize: 500}
	for {
		page, err := a.ListAudit(ctx, req)
		if err != nil {
			t.Fatal(err)
		}
		for _, r := range page.GetRecords() {
			seen[r.GetTarget()]++
		}
		if page.GetNextPageToken() == "" {
			break
		}
		req.PageToken = page.GetNextPageToken()
	}
	if len(seen) != records {
		t.Fatalf("%d records listed, want %d", len(seen), records)
	}
	for target, n := range seen {
		if n != 1 {
			t.Errorf("%s listed %d times", target, n)
		}
	}
}

// TestARevokedTokenPresentedIsAnAuditRecord: a logged-out session or a
// revoked API token presented again is refused and recorded, naming its
// user and the client's address, once per token in RefusedTokenQuiet; a
// token never issued is refused without a record; the trail shows the
// record's result as "revoked".
func TestARevokedTokenPresentedIsAnAuditRecord(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	clock := newTestClock()
	pool := newPool(t)
	a := app.New(pool, slog.New(slog.DiscardHandler), app.WithClock(clock.now))
	if err := a.InitialSetup(ctx, "root", "root-pass"); err != nil {
		t.Fatal(err)
	}
	session, err := a.Login(ctx, "root", "root-pass", "10.0.0.1")
	if err != nil {
		t.Fatal(err)
	}
	api, err := a.CreateAPIToken(ctx, as("root", vocab.RoleAdmin), &authv1.CreateTokenRequest{Name: "ci", Role: "viewer", ExpiresIn: durationpb.New(time.Hour)})
	if err != nil {
		t.Fatal(err)
	}
	if err := a.RevokeToken(ctx, session.GetToken(), "10.0.0.1"); err != nil {
		t.Fatal(err)
	}
	if err := a.RevokeToken(ctx, api.GetToken(), "10.0.0.1"); err != nil {
		t.Fatal(err)
	}
	refused := func(token, source string) {
		t.Helper()
		if _, err := a.VerifyToken(ctx, token, source); !apierr.Is(err, apierr.KindUnauthenticated) {
			t.Fatalf("verify %s…: %v; want unauthenticated", token[:6], err)
		}
	}
	refused(session.GetToken(), "10.0.0.9")
	refused(session.GetToken(), "10.0.0.9") // within the quiet time: no second record
	refused(api.GetToken(), "10.0.0.8")
	refused(app.TokenPrefix+"never-issued", "10.0.0.7")
	clock.advance(app.RefusedTokenQuiet + time.Second)
	refused(session.GetToken(), "10.0.0.6")

	rows, err := pool.Query(ctx, `SELECT metadata->>'Flotilla-Subject', payload FROM outbox_messages
		WHERE metadata->>'Flotilla-Subject' LIKE '%.token-refused' ORDER BY "offset"`)
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	var msgs []app.AuditMessage
	for rows.Next() {
		var subject string
		var payload []byte
		if err := rows.Scan(&subject, &payload); err != nil {
			t.Fatal(err)
		}
		rec := &authv1.AuthAudit{}
		if err := proto.Unmarshal(payload, rec); err != nil {
			t.Fatal(err)
		}
		if subject != subjects.Audit(subjects.NounUser, rec.GetUserId(), subjects.VerbTokenRefused) || rec.GetUsername() != "root" || rec.GetReason() != "revoked" {
			t.Errorf("record %s: %v", subject, rec)
		}
		got = append(got, fmt.Sprintf("%s api=%t", rec.GetSource(), rec.GetApiTokenId() == api.GetApiToken().GetId()))
		msgs = append(msgs, auditMessage(t, subject, "user.token-refused", vocab.System("inventory"), rec.GetTime().AsTime(), rec))
	}
	if err := rows.Err(); err != nil {
		t.Fatal(err)
	}
	if want := []string{"10.0.0.9 api=false", "10.0.0.8 api=true", "10.0.0.6 api=false"}; fmt.Sprint(got) != fmt.Sprint(want) {
		t.Errorf("token-refused records: %v; want %v", got, want)
	}
	for _, m := range msgs {
		if err := a.ProjectAudit(ctx, m); err != nil {
			t.Fatal(err)
		}
	}
	trail, err := a.ListAudit(ctx, &auditv1.ListAuditRecordsRequest{})
	if err != nil {
		t.Fatal(err)
	}
	if len(trail.GetRecords()) != 3 {
		t.Fatalf("the trail: %v", trail)
	}
	if r := trail.GetRecords()[0]; r.GetAction() != "token-refused" || r.GetResult() != "revoked" || r.GetSource() != "10.0.0.6" || r.GetUsername() != "root" {
		t.Errorf("the trail's newest record: %v", r)
	}
}
