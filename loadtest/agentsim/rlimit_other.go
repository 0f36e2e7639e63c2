//go:build !unix

package agentsim

// RaiseFileLimit does nothing where there is no such limit to raise.
func RaiseFileLimit(uint64) error { return nil }
