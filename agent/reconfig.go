package agent

import (
	"context"
	"fmt"
	"slices"

	agentv1 "flotilla.dev/flotilla/api/gen/flotilla/agent/v1"
	inventoryv1 "flotilla.dev/flotilla/api/gen/flotilla/inventory/v1"
	"flotilla.dev/flotilla/api/vocab"
)

// setupRunner is a runner of setup actions on this VM: in its data
// directory, its output in the instance's logs (secret values masked),
// its secrets fetched through the gateway.
func (a *agent) setupRunner() *setupRunner {
	return &setupRunner{
		dataDir:   a.cfg.DataDir,
		installer: a.cfg.PackageInstaller,
		log:       func(source, text string) { a.logs.Add(source, a.mask.Mask(text)) },
		logErr:    func(source, text string) { a.logs.AddStderr(source, a.mask.Mask(text)) },
		secret:    a.fetchSecret,
	}
}

// ranOf is what of acts a setup runs that a refresh does not: its
// scripts and packages, in order.
func ranOf(acts []*inventoryv1.SetupAction) []ranAction {
	out := []ranAction{}
	for _, act := range acts {
		switch t := vocab.SetupAction(act.GetType()); t {
		case vocab.SetupFile, vocab.SetupEnv:
		default:
			out = append(out, ranAction{Type: string(t), Script: act.GetScript(), Packages: act.GetPackages()})
		}
	}
	return out
}

// refreshConfiguration writes the file and env actions of rc again, in
// order, their secrets fetched anew, and restarts the node software with
// the new environment (left stopped if it was stopped). It refuses, having
// changed nothing, when rc's scripts or packages are not those this VM's
// setup ran: they would not run, and a reprovision runs them. A node that
// does not start again with the new environment is started as it was.
// Each outcome is the step refreshing-configuration's progress.
func (a *agent) refreshConfiguration(ctx context.Context, id string, rc *agentv1.RefreshConfiguration) {
	st := a.state.Get()
	cmdID := a.instanceCommandID(st)
	fail := func(format string, args ...any) {
		a.progress(ctx, cmdID, vocab.StepRefreshingConfiguration, vocab.ProgressFailed, a.mask.Mask(fmt.Sprintf(format, args...)), 0)
	}
	switch {
	case st.Node == nil:
		fail("command %s: this VM's setup has not run to the end: provision the instance", id)
		return
	case st.Setup == nil:
		fail("command %s: this VM's setup was run by an agent that did not record it: reprovision the instance once", id)
		return
	}
	if now := ranOf(rc.GetSetupActions()); !slices.EqualFunc(now, st.Setup.Ran, sameRun) {
		fail("the template's scripts or packages are not those this VM's setup ran (%d then, %d now): reprovision the instance to run them",
			len(st.Setup.Ran), len(now))
		return
	}
	a.progress(ctx, cmdID, vocab.StepRefreshingConfiguration, vocab.ProgressStarted, fmt.Sprintf("command %s", id), 0)
	r := a.setupRunner()
	for i, act := range rc.GetSetupActions() {
		if t := vocab.SetupAction(act.GetType()); t != vocab.SetupFile && t != vocab.SetupEnv {
			continue
		}
		if err := r.run(ctx, act); err != nil {
			fail("setupActions[%d]: %v", i, err)
			return
		}
	}
	spec := *st.Node
	spec.Env = r.envTemplates
	what := "files and environment written; the node software is stopped, and starts with them"
	if !spec.Stopped {
		if _, err := a.node.Start(ctx, spec); err != nil {
			if _, again := a.node.Start(ctx, *st.Node); again != nil {
				fail("the node software does not start with the new environment (%v), nor with the one before (%v)", err, again)
				return
			}
			fail("the node software does not start with the new environment, and runs with the one before: %v", err)
			return
		}
		what = "files and environment written; the node software restarted at " + a.node.URL()
	}
	if err := a.state.Update(func(s *state) {
		if s.Node != nil {
			s.Node.Env = spec.Env // the rest may have changed meanwhile (a certificate renewed)
		}
	}); err != nil {
		fail("%v", err)
		return
	}
	a.progress(ctx, cmdID, vocab.StepRefreshingConfiguration, vocab.ProgressSucceeded, what, 0)
}

// sameRun says whether two scripts or packages actions are the same.
func sameRun(x, y ranAction) bool {
	return x.Type == y.Type && x.Script == y.Script && slices.Equal(x.Packages, y.Packages)
}
