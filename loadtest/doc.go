// Package loadtest holds Flotilla's load generators and benchmark drivers.
// It is its own module so their dependencies stay out of the main module;
// go.work ties it to the main module during development.
package loadtest
