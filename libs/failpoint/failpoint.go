// Package failpoint lets crash tests stop a process at an exact point. A
// failpoint named in the FLOTILLA_FAILPOINTS environment variable (a comma
// list) ends the process on the spot with exit code ExitCode, as a kill -9
// would: no deferred cleanup, no graceful shutdown. Unset, Hit does nothing.
//
// The crash-resume tests use it to kill the provisioner between recording a
// resource id and creating the resource, and at every other step, because
// those windows are too narrow to hit from outside.
package failpoint

import (
	"fmt"
	"os"
	"slices"
	"strings"
	"sync"
)

// Env is the environment variable naming the enabled failpoints.
const Env = "FLOTILLA_FAILPOINTS"

// ExitCode is the exit status of a process stopped at a failpoint.
const ExitCode = 86

var enabled = sync.OnceValue(func() []string {
	v := os.Getenv(Env)
	if v == "" {
		return nil
	}
	return strings.Split(v, ",")
})

// Hit ends the process if the failpoint name is enabled.
func Hit(name string) {
	if list := enabled(); list != nil && slices.Contains(list, name) {
		fmt.Fprintf(os.Stderr, "failpoint %s: exiting\n", name)
		os.Exit(ExitCode)
	}
}
