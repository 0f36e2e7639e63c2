package main

import (
	"bufio"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

// TestTheDocumentsCommandsExist: every flotilla command in the documents'
// sh blocks and code spans names commands and flags the client has. "a|b"
// offers alternatives, "[...]" optional words, and "…" elides.
func TestTheDocumentsCommandsExist(t *testing.T) {
	t.Parallel()
	docs, err := filepath.Glob(filepath.Join("..", "..", "docs", "*.md"))
	if err != nil {
		t.Fatal(err)
	}
	checked := 0
	for _, doc := range append(docs, "../../README.md", "../../ARCHITECTURE.md", "../../SECURITY.md", "../../compose/README.md", "../../deployments/README.md") {
		for _, c := range shCommands(t, doc) {
			for _, args := range alternatives(c.args) {
				checked++
				if err := commandExists(args); err != nil {
					t.Errorf("%s:%d: flotilla %s: %v", filepath.Base(doc), c.line, strings.Join(args, " "), err)
				}
			}
		}
	}
	if checked < 50 {
		t.Fatalf("checked %d commands only", checked)
	}
}

// docCommand is a flotilla command of a document: its words after
// "flotilla", and its line.
type docCommand struct {
	line int
	args []string
}

// shCommands are the flotilla commands of doc's sh blocks (those a line
// starts with, and those after a pipe or inside $(…)) and of its code
// spans.
func shCommands(t *testing.T, doc string) []docCommand {
	t.Helper()
	f, err := os.Open(doc)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var out []docCommand
	in := false
	sc := bufio.NewScanner(f)
	for n := 1; sc.Scan(); n++ {
		line := sc.Text()
		switch {
		case strings.HasPrefix(line, "```"):
			in = line == "```sh"
			continue
		case !in:
			// Prose names commands in code spans.
			for _, span := range strings.Split(line, "`")[1:] {
				if words := shellWords(span); len(words) > 1 && words[0] == "flotilla" {
					out = append(out, docCommand{line: n, args: words[1:]})
				}
			}
			continue
		}
		for _, args := range commandsIn(line) {
			out = append(out, docCommand{line: n, args: args})
		}
	}
	if err := sc.Err(); err != nil {
		t.Fatal(err)
	}
	return out
}

// commandsIn finds the flotilla commands of a line of shell: at its
// start, after a pipe, "&&", ";" or an assignment, and inside $(…), quoted
// or not.
func commandsIn(line string) [][]string {
	var out [][]string
	words := shellWords(strings.ReplaceAll(line, "$(", "$( "))
	for i, w := range words {
		if strings.Contains(w, "$( flotilla ") { // a quoted $(…)
			inner, _, _ := strings.Cut(w[strings.Index(w, "$( flotilla ")+3:], ")")
			out = append(out, commandsIn(inner)...)
			continue
		}
		if w != "flotilla" || i > 0 && !strings.HasSuffix(words[i-1], "|") && !strings.HasSuffix(words[i-1], "$(") &&
			!strings.Contains(words[i-1], "=") && words[i-1] != "&&" && words[i-1] != ";" {
			continue
		}
		var args []string
		for _, a := range words[i+1:] {
			if a == "|" || a == ")" || strings.HasPrefix(a, ">") || a == "&&" || a == ";" {
				break
			}
			args = append(args, strings.TrimSuffix(a, ")"))
			if strings.HasSuffix(a, ")") {
				break
			}
		}
		out = append(out, args)
	}
	return out
}

// shellWords splits a line as the shell would, roughly: at spaces outside
// quotes, up to a comment.
func shellWords(line string) []string {
	var words []string
	var w strings.Builder
	quote, started := rune(0), false
	flush := func() {
		if started {
			words = append(words, w.String())
		}
		w.Reset()
		started = false
	}
	for _, r := range line {
		switch {
		case quote != 0:
			if r == quote {
				quote = 0
			} else {
				w.WriteRune(r)
			}
		case r == '\'' || r == '"':
			quote, started = r, true
		case r == ' ' || r == '\t':
			flush()
		case r == '#' && !started:
			flush()
			return words
		default:
			w.WriteRune(r)
			started = true
		}
	}
	flush()
	return words
}

// alternatives expands a command's "a|b" words into each, and drops the
// brackets of optional words and elisions.
func alternatives(args []string) [][]string {
	out := [][]string{nil}
	for _, a := range args {
		a = strings.Trim(a, "[]")
		if a == "" || a == "…" || a == "..." {
			continue
		}
		opts := []string{a}
		if !strings.HasPrefix(a, "-") && strings.Contains(a, "|") {
			opts = strings.Split(a, "|")
		}
		var next [][]string
		for _, o := range out {
			for _, opt := range opts {
				next = append(next, append(append([]string{}, o...), opt))
			}
		}
		out = next
	}
	return out
}

// commandExists says whether args name a command of the client and only
// flags it has. A flag's value written as a placeholder (N, ID) stands for
// one of the flag's type.
func commandExists(args []string) error {
	root := newRoot()
	cmd, rest, err := root.Find(args)
	if err != nil {
		return err
	}
	if !cmd.Runnable() && len(rest) > 0 && !strings.HasPrefix(rest[0], "-") {
		return errUnknown("command " + rest[0] + " of " + cmd.CommandPath())
	}
	rest = slices.Clone(rest)
	for i := 1; i < len(rest); i++ {
		f := cmd.Flags().Lookup(strings.TrimPrefix(rest[i-1], "--"))
		if f == nil || !strings.HasPrefix(rest[i-1], "--") || strings.Trim(rest[i], "ABCDEFGHIJKLMNOPQRSTUVWXYZ_") != "" {
			continue
		}
		switch f.Value.Type() {
		case "int", "int32", "int64":
			rest[i] = "1"
		case "duration":
			rest[i] = "1s"
		}
	}
	if err := cmd.ParseFlags(rest); err != nil && !strings.HasPrefix(err.Error(), "flag needs an argument") {
		return err // prose may name a flag without its value
	}
	return nil
}

type errUnknown string

func (e errUnknown) Error() string { return "unknown " + string(e) }

// TestCommandsInFindsEveryFlotilla: the commands of a line of shell, in a
// pipe, an assignment and $(…), quoted or not; not the word in an argument.
func TestCommandsInFindsEveryFlotilla(t *testing.T) {
	t.Parallel()
	for line, want := range map[string][]string{
		`TOKEN=$(flotilla tokens create deploy --expires-in 24h)`:                             {"tokens create deploy --expires-in 24h"},
		`curl --cacert ca.pem "$(flotilla instances get d-1 -o json | jq -r .addresses.url)"`: {"instances get d-1 -o json"},
		`printf 'name: x\n' | flotilla networks create -f -   # a comment`:                    {"networks create -f -"},
		`FLOTILLA_TOKEN=$TOKEN flotilla instances list`:                                       {"instances list"},
		`flotilla ca cert > ca.pem && flotilla whoami`:                                        {"ca cert", "whoami"},
		`echo flotilla is here`: nil,
	} {
		var got []string
		for _, args := range commandsIn(line) {
			got = append(got, strings.Join(args, " "))
		}
		if !slices.Equal(got, want) {
			t.Errorf("%s: %q, want %q", line, got, want)
		}
	}
}

// TestTheSystemdUnitsCommandsExist: the flotilla commands the systemd
// units run name commands and flags the client has.
func TestTheSystemdUnitsCommandsExist(t *testing.T) {
	t.Parallel()
	units, err := filepath.Glob(filepath.Join("..", "..", "deployments", "systemd", "*.service"))
	if err != nil || len(units) < 2 {
		t.Fatalf("units: %v %v", units, err)
	}
	for _, unit := range units {
		b, err := os.ReadFile(unit)
		if err != nil {
			t.Fatal(err)
		}
		for _, line := range strings.Split(string(b), "\n") {
			cmd, ok := strings.CutPrefix(line, "ExecStart=/usr/local/bin/flotilla ")
			if !ok {
				continue
			}
			if err := commandExists(strings.Fields(cmd)); err != nil {
				t.Errorf("%s: flotilla %s: %v", filepath.Base(unit), cmd, err)
			}
		}
	}
}
