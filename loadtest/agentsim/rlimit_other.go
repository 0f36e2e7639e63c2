//go:build !unix

package agentsim

// raiseFileLimit does nothing where there is no such limit to raise.
func raiseFileLimit() error { return nil }
