// Package testkit starts the real dependencies Flotilla's tests run against:
// an embedded nats-server with JetStream per test (NATS, NATSConn), and one
// ephemeral PostgreSQL server per test package (libs/pgmanaged, initdb into a
// temp dir, random port, durability off for speed), on which every test gets
// a fresh database of its own, so tests run in parallel without truncating
// tables. A package that needs PostgreSQL hands its TestMain to Main:
//
//	func TestMain(m *testing.M) { testkit.Main(m) }
//
//	func TestCreateShip(t *testing.T) {
//		t.Parallel()
//		pool, err := pgxpool.New(t.Context(), testkit.NewDatabase(t))
//		...
//		nc := testkit.NATSConn(t, testkit.NATS(t))
//		...
//	}
//
// Main starts the server the first time a test calls NewDatabase (a package
// whose selected tests need none starts nothing), runs the tests, stops the
// server and removes its directory whether tests pass or fail, and exits. If
// the test binary dies before that (a panic, -timeout, a signal), a watchdog
// process stops the server and removes its directory. When the PostgreSQL
// binaries are missing, NewDatabase fails the test, never skips it: CI must
// run these tests. A TestMain that needs more control uses StartPostgres and
// Postgres.NewDatabase instead.
package testkit
