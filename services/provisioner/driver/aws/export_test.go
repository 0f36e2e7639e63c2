package aws

// SetAfterRun makes EnsureVM run f right after RunInstances; an error from
// f ends EnsureVM there, as a crash would.
func SetAfterRun(d *Driver, f func() error) { d.afterRun = f }
