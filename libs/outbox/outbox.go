// Package outbox is Flotilla's transactional outbox, built on watermill-sql:
// a service writes the messages that describe a change (domain events,
// provisioning work) into PostgreSQL in the same transaction as the change
// (Write, with watermill-sql's insert), and a Forwarder
// publishes them to JetStream afterwards. A committed change is never
// missing from the stream; a rolled-back one never appears.
//
// Rows are stored in watermill-sql's PostgreSQL schema, which records the
// writing transaction's id (xid8). The forwarder reads them with that
// schema's snapshot-safe query: only rows of transactions older than every
// transaction still running (pg_snapshot_xmin), in (transaction id, offset)
// order, from the offset it acknowledged last. A transaction that took an
// early row but commits late holds the forwarder back until it commits; it
// is never skipped.
//
// The forwarder publishes a batch at a time without waiting for each
// acknowledgement (PublishMsgAsync), records the offset of the last row
// JetStream stored, and deletes the forwarded rows, in one transaction. A
// crash between publishing and that commit republishes the batch with the
// same Nats-Msg-Id headers, which JetStream drops within its duplicate
// window. Headers, the W3C trace context among them, travel unchanged, so
// the consumer of an event continues the trace of the request that caused it.
package outbox

import (
	"context"
	"embed"
	"fmt"
	"io/fs"
	"log/slog"

	wmsql "github.com/ThreeDotsLabs/watermill-sql/v4/pkg/sql"
	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"flotilla.dev/flotilla/libs/bus"
	"flotilla.dev/flotilla/libs/pgstore"
)

// Table names and the watermill topic and consumer group they serve.
const (
	MessagesTable = "outbox_messages"
	OffsetsTable  = "outbox_offsets"
	topic         = "flotilla_outbox"
	consumerGroup = "jetstream"
)

// DefaultBatch is how many rows the forwarder publishes per transaction.
const DefaultBatch = 500

// newSchema is watermill-sql's PostgreSQL schema on MessagesTable, with
// binary (protobuf) payloads.
func newSchema(batch int) wmsql.DefaultPostgreSQLSchema {
	return wmsql.DefaultPostgreSQLSchema{
		GenerateMessagesTableName: func(string) string { return MessagesTable },
		GeneratePayloadType:       func(string) string { return "BYTEA" },
		SubscribeBatchSize:        batch,
	}
}

// offsets is watermill-sql's PostgreSQL offsets adapter on OffsetsTable.
var offsets = wmsql.DefaultPostgreSQLOffsetsAdapter{
	GenerateMessagesOffsetsTableName: func(string) string { return OffsetsTable },
}

//go:embed migrations/*.sql
var migrations embed.FS

// Migrate creates or updates the outbox tables (goose migrations with their
// own version table, so the outbox can live in any service's database).
func Migrate(ctx context.Context, pool *pgxpool.Pool, log *slog.Logger) error {
	dir, err := fs.Sub(migrations, "migrations")
	if err != nil {
		return err
	}
	return pgstore.Migrate(ctx, pool, pgstore.Schema{Name: "outbox", Migrations: dir,
		VersionTable: "outbox_schema_version", LockID: 0x666c6f746f6d6967}, log)
}

// Write adds msgs to the outbox inside tx, with the insert of
// watermill-sql's schema: they reach JetStream if and only if tx commits, in
// the order given. On a pgstore.Tx the insert waits to travel with the
// transaction's next statement or its commit. The forwarder is woken when
// tx commits.
func Write(ctx context.Context, tx pgx.Tx, msgs ...bus.Message) error {
	if len(msgs) == 0 {
		return nil
	}
	wm := make([]*message.Message, len(msgs))
	for i, m := range msgs {
		wm[i] = toWatermill(m)
	}
	q, err := insertSchema.InsertQuery(wmsql.InsertQueryParams{Topic: topic, Msgs: wm})
	if err != nil {
		return fmt.Errorf("write outbox: %w", err)
	}
	return pgstore.ExecLater(ctx, tx, func(err error) error { return fmt.Errorf("write outbox: %w", err) }, q.Query, q.Args...)
}

// insertSchema is the schema Write inserts with (the batch size is the
// forwarder's concern).
var insertSchema = newSchema(DefaultBatch)

// toWatermill stores a bus message as a watermill message: its id as the
// UUID, its headers (first values) and subject as metadata.
func toWatermill(m bus.Message) *message.Message {
	wm := message.NewMessage(m.ID(), m.Data)
	for k, v := range m.Header {
		if k != bus.HeaderMsgID && len(v) > 0 {
			wm.Metadata.Set(k, v[0])
		}
	}
	wm.Metadata.Set(bus.HeaderSubject, m.Subject)
	return wm
}
