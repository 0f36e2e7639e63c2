// Package pgmanaged runs a PostgreSQL server that Flotilla owns inside one
// directory: it finds the server binaries installed on the machine (pg_config
// --bindir, else the newest /usr/lib/postgresql/*/bin), creates the cluster
// with initdb (SCRAM authentication, superuser "flotilla" with a password the
// caller supplies), and starts and stops it with pg_ctl listening on
// 127.0.0.1 only, with no unix socket. `flotilla up` keeps its database in
// <data-dir>/postgres through this package, and the test kit uses it for an
// ephemeral server per test package. PostgreSQL refuses to run as root, so
// when the calling process is root every PostgreSQL command runs as the
// "postgres" system user (Options.OSUser), which must own the data directory
// and be able to traverse each of its parents.
package pgmanaged
