package agent

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"time"

	inventoryv1 "flotilla.dev/flotilla/api/gen/flotilla/inventory/v1"
	"flotilla.dev/flotilla/api/vocab"
	"flotilla.dev/flotilla/libs/msgcheck"
)

// DataDirEnv is the environment variable that names the data disk's root
// for setup scripts and the node software.
const DataDirEnv = "FLOTILLA_DATA_DIR"

// secretRef is a reference to one of the instance's secrets in a setup
// action: ${secret:NAME}.
var secretRef = regexp.MustCompile(`\$\{secret:([A-Za-z0-9_.-]{1,128})\}`)

// envName is a variable name an env action may set.
var envName = regexp.MustCompile(`^[A-Za-z_][A-Za-z0-9_]*$`)

// secretEnvPrefix starts the environment variables a script reads its
// secrets from: "${secret:db-password}" in a script becomes
// "${FLOTILLA_SECRET_DB_PASSWORD_0}", set for that script alone. A secret's
// value never becomes script text, so no value can run as code.
const secretEnvPrefix = "FLOTILLA_SECRET_"

// setupRunner runs a Bootstrap's setup actions in order. Env actions add to
// env, which later scripts (and the node software) get.
type setupRunner struct {
	dataDir   string
	installer string
	// env is what env actions set, NAME=value with secrets resolved, for
	// the processes this setup starts; envTemplates is the same with the
	// ${secret:NAME} references kept, which is what is written to disk.
	env          []string
	envTemplates []string
	// log takes a line of output, logErr a line written to standard
	// error (log when nil); they mask secret values.
	log, logErr func(source, text string)
	// secret fetches a secret's value by name.
	secret  func(ctx context.Context, name string) (string, error)
	secrets map[string]string
}

// run runs one action. Its error says what failed and never holds a
// secret's value.
func (r *setupRunner) run(ctx context.Context, act *inventoryv1.SetupAction) error {
	switch vocab.SetupAction(act.GetType()) {
	case vocab.SetupScript:
		script, secretEnv, err := r.scriptSecrets(ctx, act.GetScript())
		if err != nil {
			return err
		}
		return r.command(ctx, []string{"/bin/sh", "-c", script}, "script", secretEnv...)
	case vocab.SetupFile:
		return r.writeFile(ctx, act)
	case vocab.SetupEnv:
		if !envName.MatchString(act.GetName()) {
			return fmt.Errorf("env name %q: must be letters, digits and '_', not starting with a digit", act.GetName())
		}
		v, err := r.expand(ctx, act.GetValue())
		if err != nil {
			return err
		}
		r.env = append(r.env, act.GetName()+"="+v)
		r.envTemplates = append(r.envTemplates, act.GetName()+"="+act.GetValue())
		r.log(SourceSetup, "set "+act.GetName())
		return nil
	case vocab.SetupPackages:
		return r.installPackages(ctx, act.GetPackages())
	}
	return fmt.Errorf("unknown setup action type %q (script, file, env, packages)", act.GetType())
}

// expand replaces every ${secret:NAME} in text with the secret's value,
// for text that is data (a file's content, an environment value), never
// for code.
func (r *setupRunner) expand(ctx context.Context, text string) (string, error) {
	return expandSecrets(ctx, text, r.lookup)
}

// lookup fetches a secret once per setup.
func (r *setupRunner) lookup(ctx context.Context, name string) (string, error) {
	if v, ok := r.secrets[name]; ok {
		return v, nil
	}
	v, err := r.secret(ctx, name)
	if err != nil {
		return "", err
	}
	if r.secrets == nil {
		r.secrets = map[string]string{}
	}
	r.secrets[name] = v
	return v, nil
}

// expandSecrets replaces every ${secret:NAME} in text with the value lookup
// gives for NAME.
func expandSecrets(ctx context.Context, text string, lookup func(context.Context, string) (string, error)) (string, error) {
	var firstErr error
	out := secretRef.ReplaceAllStringFunc(text, func(ref string) string {
		name := secretRef.FindStringSubmatch(ref)[1]
		if firstErr != nil {
			return ""
		}
		v, err := lookup(ctx, name)
		if err != nil {
			firstErr = secretError(name, err)
			return ""
		}
		return v
	})
	return out, firstErr
}

// secretError names the secret an error of its lookup is about, unless the
// error does already.
func secretError(name string, err error) error {
	if strings.Contains(err.Error(), strconv.Quote(name)) {
		return err
	}
	return fmt.Errorf("secret %q: %w", name, err)
}

// scriptSecrets rewrites each ${secret:NAME} of a script into a reference
// to an environment variable that holds the value, and returns those
// variables: the shell reads the value as data, it never parses it.
func (r *setupRunner) scriptSecrets(ctx context.Context, script string) (string, []string, error) {
	vars := map[string]string{} // secret name → variable
	var env []string
	var firstErr error
	out := secretRef.ReplaceAllStringFunc(script, func(ref string) string {
		name := secretRef.FindStringSubmatch(ref)[1]
		if v, ok := vars[name]; ok {
			return "${" + v + "}"
		}
		value, err := r.lookup(ctx, name)
		if err != nil {
			if firstErr == nil {
				firstErr = secretError(name, err)
			}
			return ""
		}
		v := secretEnvVar(name, len(vars))
		vars[name] = v
		env = append(env, v+"="+value)
		return "${" + v + "}"
	})
	return out, env, firstErr
}

// secretEnvVar names the variable of the i-th secret of a script:
// FLOTILLA_SECRET_<NAME in capitals, other characters as _>_<i>.
func secretEnvVar(name string, i int) string {
	b := []byte(strings.ToUpper(name))
	for j, c := range b {
		if (c < 'A' || c > 'Z') && (c < '0' || c > '9') {
			b[j] = '_'
		}
	}
	return fmt.Sprintf("%s%s_%d", secretEnvPrefix, b, i)
}

// environ is the environment of scripts and the node software: a few of
// the agent's own variables, the env actions', and FLOTILLA_DATA_DIR.
func (r *setupRunner) environ() []string {
	return environ(r.env, r.dataDir)
}

// inherited are the variables of the agent's environment that setup
// scripts and the node software get; nothing else of it passes (no
// FLOTILLA_*, no credentials an image left in the agent's environment).
var inherited = []string{"PATH", "HOME", "USER", "LOGNAME", "SHELL", "LANG", "LC_ALL", "TZ", "TMPDIR"}

func environ(env []string, dataDir string) []string {
	var out []string
	for _, k := range inherited {
		if v, ok := os.LookupEnv(k); ok {
			out = append(out, k+"="+v)
		}
	}
	if _, ok := os.LookupEnv("PATH"); !ok {
		out = append(out, "PATH=/usr/local/bin:/usr/bin:/bin")
	}
	out = append(out, env...)
	return append(out, DataDirEnv+"="+dataDir)
}

// setupWaitDelay is how long a killed script's process group has to exit,
// and how long its output may stay idle after it exited before the pipe is
// closed (a daemon it started keeps a copy open).
const setupWaitDelay = 5 * time.Second

// command runs argv in the data directory, its output going to the logs
// line by line, with extra variables beside the setup's environment. A
// non-zero exit is an error naming the code.
func (r *setupRunner) command(ctx context.Context, argv []string, what string, extra ...string) error {
	cmd := exec.CommandContext(ctx, argv[0], argv[1:]...)
	cmd.Dir = r.dataDir
	cmd.Env = append(r.environ(), extra...)
	logErr := r.logErr
	if logErr == nil {
		logErr = r.log
	}
	pipes, err := newOutputPipes(func(l string) { r.log(SourceSetup, l) }, func(l string) { logErr(SourceSetup, l) })
	if err != nil {
		return fmt.Errorf("%s: %w", what, err)
	}
	pipes.Attach(cmd)
	ownProcessGroup(cmd, true)
	cmd.WaitDelay = setupWaitDelay
	if err = cmd.Start(); err != nil {
		pipes.Abandon()
	} else {
		pipes.Start()
		err = cmd.Wait()
		// Every line the script printed is logged before its action ends.
		pipes.Wait(setupWaitDelay)
	}
	var exit *exec.ExitError
	switch {
	case err == nil:
		return nil
	case ctx.Err() != nil:
		return fmt.Errorf("%s interrupted: %w", what, ctx.Err())
	case errors.As(err, &exit) && exit.ExitCode() >= 0:
		return fmt.Errorf("%s exited with code %d", what, exit.ExitCode())
	}
	return fmt.Errorf("%s: %w", what, err)
}

// writeFile writes a file action's content to its path under the data
// directory with its mode (default 0644; always 0600 when the content holds
// a secret), creating parent directories 0700. A path that would leave the
// data directory (absolute, "..", or through a symbolic link) is refused.
func (r *setupRunner) writeFile(ctx context.Context, act *inventoryv1.SetupAction) error {
	p := act.GetPath()
	if !filepath.IsLocal(p) {
		return fmt.Errorf("file path %q: must be relative to the data disk and stay inside it", p)
	}
	mode := fs.FileMode(0o644)
	if m := act.GetMode(); m != "" {
		v, err := strconv.ParseUint(m, 8, 32)
		if err != nil || v > 0o777 {
			return fmt.Errorf("file mode %q: must be octal permissions such as 0644", m)
		}
		mode = fs.FileMode(v)
	}
	content, err := r.expand(ctx, act.GetContent())
	if err != nil {
		return err
	}
	if secretRef.MatchString(act.GetContent()) {
		mode = 0o600 // a secret is for the node software's user alone
	}
	root, err := os.OpenRoot(r.dataDir)
	if err != nil {
		return fmt.Errorf("open the data disk: %w", err)
	}
	defer root.Close()
	if dir := filepath.Dir(p); dir != "." {
		if err := root.MkdirAll(dir, 0o700); err != nil {
			return fmt.Errorf("file %s: %w", p, unwrapPath(err))
		}
	}
	if err := root.WriteFile(p, []byte(content), mode); err != nil {
		return fmt.Errorf("file %s: %w", p, unwrapPath(err))
	}
	if err := root.Chmod(p, mode); err != nil { // WriteFile's mode is subject to the umask
		return fmt.Errorf("file %s: %w", p, unwrapPath(err))
	}
	r.log(SourceSetup, fmt.Sprintf("wrote %s (%d bytes, mode %04o)", p, len(content), mode))
	return nil
}

// installPackages runs the package installer with the packages, or only
// logs them when the installer is "none".
func (r *setupRunner) installPackages(ctx context.Context, pkgs []string) error {
	for _, p := range pkgs {
		if p == "" || strings.HasPrefix(p, "-") || strings.ContainsAny(p, " \t\n") {
			return fmt.Errorf("package name %q: must be a plain package name", p)
		}
	}
	if len(pkgs) == 0 {
		return nil
	}
	if r.installer == NoPackageInstaller {
		r.log(SourceSetup, "would install packages "+strings.Join(pkgs, " ")+" (the package installer is none)")
		return nil
	}
	argv := append(strings.Fields(r.installer), pkgs...)
	return r.command(ctx, argv, "package installer")
}

// unwrapPath drops the *PathError's path, which the caller names itself.
func unwrapPath(err error) error {
	var pe *fs.PathError
	if errors.As(err, &pe) {
		return pe.Err
	}
	return err
}

// masker replaces the secret values the agent has fetched with "****" in
// text bound for the logs.
type masker struct {
	mu     sync.Mutex
	values []string
}

// minMasked is the shortest value masked: shorter ones would garble
// ordinary output.
const minMasked = 4

// Add remembers a secret value.
func (m *masker) Add(v string) {
	if len(v) < minMasked {
		return
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	for _, x := range m.values {
		if x == v {
			return
		}
	}
	m.values = append(m.values, v)
}

// Mask returns text with every remembered value replaced.
func (m *masker) Mask(text string) string {
	m.mu.Lock()
	defer m.mu.Unlock()
	for _, v := range m.values {
		text = strings.ReplaceAll(text, v, "****")
	}
	return text
}

// lineWriter calls emit for each line written to it; Close emits the last
// line if it had no newline. Very long lines are cut into pieces.
type lineWriter struct {
	mu   sync.Mutex
	buf  bytes.Buffer
	emit func(string)
}

// maxLine is the longest line emitted in one piece.
const maxLine = 16 << 10

func newLineWriter(emit func(string)) *lineWriter { return &lineWriter{emit: emit} }

func (w *lineWriter) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.buf.Write(p)
	for {
		b := w.buf.Bytes()
		i := bytes.IndexByte(b, '\n')
		if i < 0 {
			if len(b) >= maxLine {
				cut := msgcheck.RuneCut(string(b), maxLine) // never inside a UTF-8 sequence
				w.emit(string(b[:cut]))
				w.buf.Next(cut)
				continue
			}
			return len(p), nil
		}
		w.emit(strings.TrimSuffix(string(b[:i]), "\r"))
		w.buf.Next(i + 1)
	}
}

// Close emits what is left.
func (w *lineWriter) Close() {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.buf.Len() > 0 {
		w.emit(w.buf.String())
		w.buf.Reset()
	}
}
