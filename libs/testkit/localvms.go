package testkit

import "flotilla.dev/flotilla/services/provisioner/driver/local"

// KillLocalVMs stops every local VM under a local provider's root that
// still runs (its agent's process group, and with it the node software).
func KillLocalVMs(root string) { local.KillAll(root) }
