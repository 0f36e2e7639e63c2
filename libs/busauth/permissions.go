package busauth

import (
	"fmt"
	"slices"
	"time"

	"github.com/nats-io/jwt/v2"

	"flotilla.dev/flotilla/api/endpoints"
	"flotilla.dev/flotilla/api/subjects"
)

// Observer is the read-only identity for operators and tools: it replays
// the streams and can neither publish nor call any endpoint.
const Observer = "observer"

// Backup is the identity `flotilla admin backup` snapshots the streams
// with: it lists them and has the servers send it each one's snapshot,
// and can neither publish to a stream nor call any endpoint.
const Backup = "backup"

// Identities are every identity a bus authority mints: one per service,
// the observer and the backup.
func Identities() []string { return append(slices.Clone(subjects.Services), Observer, Backup) }

// InboxPrefix is identity's own inbox prefix: it subscribes to its replies
// there and may read no other identity's.
func InboxPrefix(identity string) string { return "_INBOX_" + identity }

// jsAPI is a JetStream API subject.
func jsAPI(format string, args ...any) string { return "$JS.API." + fmt.Sprintf(format, args...) }

// denied is never allowed to identity, whatever else a set allows:
// removing streams, their messages, or the durable consumers the services
// depend on. (Readers may delete the ephemeral consumers they replay with:
// an ordered consumer deletes its previous one each time it resets.) The
// one exception is purging a stream declared purged by identity
// (StreamUse.Purgers: the agent gateway, the agent-log stream); every
// other stream's purge stays denied to it by name, and undeclared streams
// are not in its allow list at all.
func denied(identity string) []string {
	d := []string{
		jsAPI("STREAM.DELETE.>"),
		jsAPI("STREAM.MSG.DELETE.>"),
		jsAPI("CONSUMER.DURABLE.CREATE.>"),
	}
	purges := false
	for _, u := range endpoints.Streams {
		purges = purges || u.PurgedBy(identity)
	}
	if !purges {
		d = append(d, jsAPI("STREAM.PURGE.>"))
	}
	for _, u := range endpoints.Streams {
		if purges && !u.PurgedBy(identity) {
			d = append(d, jsAPI("STREAM.PURGE.%s", u.Stream))
		}
	}
	for _, u := range endpoints.Streams {
		for _, c := range u.Consumers {
			d = append(d, jsAPI("CONSUMER.DELETE.%s.%s", u.Stream, c.Durable))
		}
	}
	return d
}

// Permissions returns what identity may publish and subscribe to, derived
// from the declarations in api/endpoints: the endpoints it calls (under its
// own name) and answers, the streams it publishes to, consumes and reads,
// its own inbox, and nats micro's discovery subjects for its service.
func Permissions(identity string) (jwt.Permissions, error) {
	if !slices.Contains(Identities(), identity) {
		return jwt.Permissions{}, fmt.Errorf("busauth: %q is not a bus identity (one of %v)", identity, Identities())
	}
	var pub, sub []string
	sub = append(sub, InboxPrefix(identity)+".>")
	serves := false
	for _, ep := range endpoints.All() {
		if ep.CalledBy(identity) {
			pub = append(pub, ep.CallSubject(identity))
		}
		if ep.Service == identity {
			sub = append(sub, ep.ServeSubject())
			serves = true
		}
	}
	if serves {
		// nats micro discovery: $SRV.<verb>, $SRV.<verb>.<name>, $SRV.<verb>.<name>.<id>.
		sub = append(sub, "$SRV.*", "$SRV.*."+identity, "$SRV.*."+identity+".*")
	}
	var deny []string
	usesJetStream := false
	for _, u := range endpoints.Streams {
		st := u.Stream
		durables := u.ConsumedBy(identity)
		if u.PublishedBy(identity) || len(durables) > 0 || u.ReadBy(identity) {
			usesJetStream = true
		}
		for _, p := range u.Publishers {
			if p.Service == identity {
				pub = append(pub, p.Subjects...)
			}
		}
		if u.DeclaredBy(identity) {
			pub = append(pub, jsAPI("STREAM.INFO.%s", st), jsAPI("STREAM.CREATE.%s", st), jsAPI("STREAM.UPDATE.%s", st))
		}
		for _, durable := range durables {
			pub = append(pub,
				jsAPI("CONSUMER.CREATE.%s.%s", st, durable), jsAPI("CONSUMER.CREATE.%s.%s.>", st, durable),
				jsAPI("CONSUMER.INFO.%s.%s", st, durable), jsAPI("CONSUMER.MSG.NEXT.%s.%s", st, durable),
				"$JS.ACK."+st+"."+durable+".>")
		}
		if len(durables) > 0 {
			pub = append(pub, subjects.Poison(identity))
		}
		if u.PurgedBy(identity) {
			pub = append(pub, jsAPI("STREAM.PURGE.%s", st))
		}
		if slices.Contains(endpoints.Inspectors, identity) {
			pub = append(pub, jsAPI("STREAM.INFO.%s", st))
		}
		if u.ReadBy(identity) {
			pub = append(pub, jsAPI("STREAM.INFO.%s", st), jsAPI("STREAM.MSG.GET.%s", st),
				jsAPI("DIRECT.GET.%s", st), jsAPI("DIRECT.GET.%s.>", st),
				// Ephemeral consumers (reads, ordered follows): any name but a durable's.
				jsAPI("CONSUMER.CREATE.%s.*", st), jsAPI("CONSUMER.CREATE.%s.*.>", st),
				jsAPI("CONSUMER.INFO.%s.*", st), jsAPI("CONSUMER.MSG.NEXT.%s.*", st), jsAPI("CONSUMER.DELETE.%s.*", st))
			for _, c := range u.Consumers {
				if c.Service != identity {
					deny = append(deny, jsAPI("CONSUMER.CREATE.%s.%s", st, c.Durable), jsAPI("CONSUMER.CREATE.%s.%s.>", st, c.Durable))
				}
			}
		}
	}
	if usesJetStream {
		pub = append(pub, jsAPI("INFO")) // the account's JetStream limits and usage
	}
	for _, n := range endpoints.Notices {
		if n.Service == identity {
			pub = append(pub, n.Subjects...)
		}
	}
	for _, w := range endpoints.Watches {
		if w.Service == identity {
			sub = append(sub, w.Subjects...)
		}
	}
	switch identity {
	case Observer:
		pub, deny = observer()
		for _, n := range endpoints.Notices {
			sub = append(sub, n.Subjects...) // live status, read only
		}
	case Backup:
		pub = backup()
	}
	p := jwt.Permissions{}
	p.Pub.Allow.Add(unique(pub)...)
	p.Pub.Deny.Add(append(deny, denied(identity)...)...)
	p.Sub.Allow.Add(unique(sub)...)
	if serves {
		// Reply to whoever sent a request, once, within a minute.
		p.Resp = &jwt.ResponsePermission{MaxMsgs: 1, Expires: time.Minute}
	}
	return p, nil
}

// observer may list and replay every stream and watch the notices, and
// nothing else; it may not create a consumer under a durable's name.
func observer() (pub, deny []string) {
	pub = []string{jsAPI("INFO"), jsAPI("STREAM.NAMES"), jsAPI("STREAM.LIST"), jsAPI("STREAM.INFO.*"),
		jsAPI("STREAM.MSG.GET.*"), jsAPI("DIRECT.GET.>"), jsAPI("CONSUMER.NAMES.*"), jsAPI("CONSUMER.LIST.*"),
		jsAPI("CONSUMER.INFO.*.*"), jsAPI("CONSUMER.CREATE.*.*"), jsAPI("CONSUMER.CREATE.*.*.>"),
		jsAPI("CONSUMER.MSG.NEXT.*.*"), jsAPI("CONSUMER.DELETE.*.*")}
	for _, u := range endpoints.Streams {
		for _, c := range u.Consumers {
			deny = append(deny, jsAPI("CONSUMER.CREATE.%s.%s", u.Stream, c.Durable), jsAPI("CONSUMER.CREATE.%s.%s.>", u.Stream, c.Durable),
				jsAPI("CONSUMER.MSG.NEXT.%s.%s", u.Stream, c.Durable))
		}
	}
	return pub, deny
}

// backup may list the streams and snapshot them, acknowledging each chunk
// the server sends (to the reply subject under $JS.SNAPSHOT.ACK the server
// names), and nothing else: not restore one, nor read a message another
// way.
func backup() []string {
	return []string{jsAPI("STREAM.NAMES"), jsAPI("STREAM.SNAPSHOT.*"), "$JS.SNAPSHOT.ACK.>"}
}

// Restorer names the user `flotilla admin restore` mints from the
// authority for the time of a cluster's restore: not an identity with
// credentials of its own, since it may put streams back.
const Restorer = "restore"

// RestorerPermissions are the restorer's: to create streams from
// snapshots ($JS.API.STREAM.RESTORE, sending the chunks where the server
// says), to list them, and to delete them (a restore that fails halfway
// deletes the streams it created: jsbackup.Send), nothing else; the
// server refuses a stream that exists, and the restore runs before the
// services first start, into a cluster that has none.
func RestorerPermissions() jwt.Permissions {
	p := jwt.Permissions{}
	p.Pub.Allow.Add(jsAPI("STREAM.NAMES"), jsAPI("STREAM.RESTORE.*"), "$JS.SNAPSHOT.RESTORE.>", jsAPI("STREAM.DELETE.*"))
	p.Sub.Allow.Add(InboxPrefix(Restorer) + ".>")
	return p
}

func unique(s []string) []string {
	slices.Sort(s)
	return slices.Compact(s)
}
